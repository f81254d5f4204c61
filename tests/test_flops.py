"""FLOPs formula against counted matmuls; peak table look-ups; CPU peak cache; MFU text."""

from __future__ import annotations

import json
import types

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nanogpt import flops
from nanogpt.config import GPTConfig
from nanogpt.model import GPT


def _tiny(**kw) -> GPTConfig:
    base = dict(block_size=32, vocab_size=101, n_layer=2, n_head=2, n_embd=32)
    return GPTConfig(**{**base, **kw})


def _counted(config: GPTConfig, B: int, T: int, backward: bool) -> dict:
    """Matmul FLOPs recorded by torch's flop counter for one forward (+ backward) pass."""
    torch.manual_seed(0)
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (B, T))
    # The math SDPA kernel decomposes attention into bmm calls the counter sees (the fused CPU
    # kernel is opaque to it); it computes the full T x T scores, which is what we count.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(idx, idx)
        if backward:
            loss.backward()
    return {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}, counter.get_total_flops()


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
@pytest.mark.parametrize("backward", [True, False])
@pytest.mark.parametrize("T", [32, 17])
def test_formula_equals_counted_matmul_flops(backward, T, arch):
    config = _tiny(arch=arch, tie_embeddings=arch == "gpt2")
    B = 3
    _, total = _counted(config, B, T, backward)
    assert total == pytest.approx(B * T * flops.flops_per_token(config, T, backward=backward), rel=0, abs=0)


def test_attention_term_is_the_bmm_part():
    config = _tiny()
    B, T = 2, 32
    by_op, _ = _counted(config, B, T, backward=True)
    bmm = by_op.get("aten.bmm", 0)
    assert bmm == B * T * 12 * config.n_layer * config.n_embd * T
    # and the rest is exactly 6N
    assert sum(by_op.values()) - bmm == B * T * 6 * flops.matmul_params(config)


def test_breakdown_sums_to_forward_and_counts_n():
    config = _tiny(n_layer=3, n_embd=48, n_head=4, vocab_size=500)
    parts = flops.flops_breakdown(config, 20)
    assert set(parts) == {"qkv", "attn_scores", "attn_values", "attn_proj", "mlp_fc", "mlp_proj", "lm_head", "total"}
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert parts["total"] == flops.flops_per_token(config, 20, backward=False)
    # N: every Linear weight of the model (lm_head once, tied to wte); biases/norms/wpe excluded
    model = GPT(config)
    linear_weights = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert flops.matmul_params(config) == sum(linear_weights.values())


def test_gpt2_small_numbers():
    # GPT-2 124M at T=1024: N = 12*12*768^2 + 50257*768 = 123.5M; 6N + 12*L*C*T per token
    cfg = GPTConfig()
    assert flops.matmul_params(cfg) == 84_934_656 + 38_597_376
    assert flops.flops_per_token(cfg, 1024) == 6 * 123_532_032 + 12 * 12 * 768 * 1024


def test_bad_seq_len():
    with pytest.raises(ValueError):
        flops.flops_per_token(_tiny(), 0)


@pytest.mark.parametrize(
    "name, key",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA GeForce RTX 3090", "RTX 3090"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("Tesla V100-SXM2-16GB", "V100 SXM2"),
        ("Tesla T4", "T4"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada"),
        ("AMD Instinct MI300X", "MI300X"),
    ],
)
def test_gpu_names_match(name, key):
    assert flops.gpu_model(name) == key


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 4090 D", "NVIDIA GeForce GTX 1080 Ti", "Some Future GPU", "NVIDIA H100"])
def test_unknown_gpus_have_no_peak(name):
    assert flops.gpu_peak_flops(name, "bf16") is None


def test_peak_values_and_missing_dtype():
    assert flops.gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.5e12)
    assert flops.gpu_peak_flops("NVIDIA A100-SXM4-40GB", "bf16") == pytest.approx(312e12)
    assert flops.gpu_peak_flops("Tesla T4", "bf16") is None  # no native bf16: unknown, not a guess
    # dense, not sparse: every bf16 figure is below 2.3 PFLOP/s per GPU
    assert max(v.get("bf16", 0) for v in flops.PEAK_FLOPS.values()) <= 2.3e15


def test_unknown_device_gives_unknown_mfu():
    cfg = _tiny()
    assert flops.peak_flops(torch.device("meta"), torch.bfloat16) is None
    value = flops.mfu(1e6, cfg, 32, torch.device("meta"), torch.bfloat16)
    assert value is None
    assert flops.format_mfu(value) == "MFU: unknown peak"
    assert flops.format_mfu(0.4134) == "MFU: 41.3%"


def test_mfu_with_given_peak():
    cfg = _tiny()
    tps = 1000.0
    assert flops.mfu(tps, cfg, 32, "cpu", torch.float32, peak=1e9) == pytest.approx(tps * flops.flops_per_token(cfg, 32) / 1e9)


def test_cpu_peak_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(flops, "_cpu_peak_memory", {})
    calls = []

    def fake_measure(dtype, seconds_per_shape=0.0, shapes=()):
        calls.append(dtype)
        return 123e9

    monkeypatch.setattr(flops, "measure_cpu_peak", fake_measure)
    assert flops.peak_flops("cpu", torch.bfloat16) == 123e9
    assert flops.peak_flops("cpu", torch.bfloat16) == 123e9  # memory cache
    flops._cpu_peak_memory.clear()
    assert flops.peak_flops("cpu", torch.bfloat16) == 123e9  # disk cache
    assert calls == [torch.bfloat16]
    data = json.loads((tmp_path / "nanogpt" / "cpu_peak.json").read_text())
    (key,) = data
    assert "bf16" in key and f"{torch.get_num_threads()} threads" in key and torch.__version__ in key
    flops.peak_flops("cpu", torch.float32)  # another dtype is another probe
    assert calls == [torch.bfloat16, torch.float32]


def test_cpu_probe_keeps_the_best_timed_call(monkeypatch):
    # A clock that advances 0.5 s per reading makes every timed call take exactly 0.5 s, so
    # the probe's result and its number of calls are exact, whatever the machine's speed.
    clock = iter(0.5 * i for i in range(1000))
    monkeypatch.setattr(flops, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(flops, "_PROBE_SHAPES", [(4, 3, 5), (6, 2, 7)])
    calls = []
    real_linear = torch.nn.functional.linear

    def counting_linear(x, w):
        calls.append((tuple(x.shape), tuple(w.shape), x.dtype))
        return real_linear(x, w)

    monkeypatch.setattr(torch.nn.functional, "linear", counting_linear)
    peak = flops.measure_cpu_peak(torch.bfloat16, seconds_per_shape=0.0)
    # per shape: one untimed warm-up call, then the two timed calls a zero budget still makes
    assert calls == [((4, 3), (5, 3), torch.bfloat16)] * 3 + [((6, 2), (7, 2), torch.bfloat16)] * 3
    assert peak == max(2 * 4 * 3 * 5, 2 * 6 * 2 * 7) / 0.5  # the best call's 2*M*K*N FLOPs / s


@pytest.mark.perf
def test_real_cpu_probe_is_positive_and_quick():
    import time

    t0 = time.perf_counter()
    peak = flops.measure_cpu_peak(torch.float32, seconds_per_shape=0.02)
    assert peak > 1e9  # any CPU that runs these tests does > 1 GFLOP/s
    assert time.perf_counter() - t0 < 5


def test_remeasure_keeps_the_higher_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(flops, "_cpu_peak_memory", {})
    readings = iter([100e9, 50e9, 300e9])
    monkeypatch.setattr(flops, "measure_cpu_peak", lambda dtype, seconds_per_shape=0.0, shapes=(): next(readings))
    assert flops.cpu_peak_flops(torch.float32) == 100e9
    assert flops.cpu_peak_flops(torch.float32, remeasure=True) == 100e9  # a disturbed probe reads low
    assert flops.cpu_peak_flops(torch.float32, remeasure=True) == 300e9
    flops._cpu_peak_memory.clear()
    assert flops.cpu_peak_flops(torch.float32) == 300e9


def test_fp32_on_cuda_counts_as_tf32_only_when_allowed():
    cuda = torch.device("cuda")
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")  # TF32 off
        assert flops.dtype_key(torch.float32, cuda) == "fp32"
        torch.set_float32_matmul_precision("high")  # TF32 allowed
        assert flops.dtype_key(torch.float32, cuda) == "tf32"
        assert flops.dtype_key(torch.float32, torch.device("cpu")) == "fp32"
    finally:
        torch.set_float32_matmul_precision(before)
    assert flops.dtype_key(torch.bfloat16) == "bf16"


def test_cuda_peak_uses_the_device_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert flops.peak_flops(torch.device("cuda"), torch.bfloat16) == pytest.approx(989.5e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Mystery 9000")
    assert flops.peak_flops(torch.device("cuda"), torch.bfloat16) is None
    cfg = _tiny()
    assert flops.format_mfu(flops.mfu(1e6, cfg, 32, torch.device("cuda"), torch.bfloat16)) == "MFU: unknown peak"


def _fake_cpu(monkeypatch, name, flags):
    from nanogpt import cpu

    monkeypatch.setattr(cpu, "_cpuinfo", lambda: (name, frozenset(flags)))


def test_cpu_peak_cache_tells_cpus_with_the_same_name_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(flops, "_cpu_peak_memory", {})
    readings = iter([4e12, 1e12])
    monkeypatch.setattr(flops, "measure_cpu_peak", lambda dtype, seconds_per_shape=0.0, shapes=(): next(readings))
    _fake_cpu(monkeypatch, "Intel(R) Xeon(R) Processor", {"avx512f", "avx512_bf16", "amx_bf16"})
    assert flops.cpu_peak_flops(torch.bfloat16) == 4e12
    _fake_cpu(monkeypatch, "Intel(R) Xeon(R) Processor", {"avx512f", "avx512_bf16"})  # same name, no AMX
    assert flops.cpu_peak_flops(torch.bfloat16) == 1e12  # probed anew, not AMX's cached figure
    keys = json.loads((tmp_path / "nanogpt" / "cpu_peak.json").read_text())
    assert len(keys) == 2 and any("amx_bf16" in k for k in keys)


def test_step_shapes_are_the_forward_matmuls_capped_at_the_probe_rows():
    cfg = _tiny()
    C, V = cfg.n_embd, cfg.vocab_size
    assert flops.step_shapes(cfg, 12 * 16) == ((192, C, 3 * C), (192, C, C), (192, C, 4 * C), (192, 4 * C, C), (192, C, V))
    assert flops.step_shapes(cfg, 16 * 1024)[0][0] == 2048


def test_mfu_meter_never_reads_above_100_percent(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(flops, "_cpu_peak_memory", {})
    probes = []

    def probe(dtype, seconds_per_shape=0.0, shapes=()):
        probes.append(shapes)
        return 1e9  # a probe taken at a busy moment: lower than what the step then reaches

    monkeypatch.setattr(flops, "measure_cpu_peak", probe)
    cfg = _tiny()
    meter = flops.MFUMeter(cfg, 4 * cfg.block_size, "cpu", torch.float32)
    assert probes == [flops.step_shapes(cfg, 4 * cfg.block_size)]  # the step's own shapes are probed
    fpt = flops.flops_per_token(cfg, cfg.block_size)
    assert meter(0.5e9 / fpt) == pytest.approx(0.5)
    assert meter(3e9 / fpt) == pytest.approx(1.0)  # beat the peak: probed again once, then raised to the step's rate
    assert len(probes) == 2 and "raised to the step's own rate" in meter.note
    assert meter(1.5e9 / fpt) == pytest.approx(0.5)  # against the raised peak from then on


def test_dtype_reason_and_label_name_what_the_cpu_has(monkeypatch):
    from nanogpt import device

    _fake_cpu(monkeypatch, "Xeon", {"avx512f", "avx512_bf16"})
    assert device.resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16, "CPU has AVX-512 BF16")
    assert device.device_label(torch.device("cpu")) == "Xeon (AVX-512 BF16, AVX-512)"
    _fake_cpu(monkeypatch, "Xeon", {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert device.resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16, "CPU has AMX and AVX-512 BF16")
    _fake_cpu(monkeypatch, "Old", {"avx2", "fma"})
    assert device.resolve_dtype("auto", torch.device("cpu")) == (torch.float32, "CPU has no native bf16 matmul (AVX2, FMA)")
