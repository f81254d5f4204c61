"""`nanogpt bench`: every field of --json on a tiny model, the table, presets and bad input."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from nanogpt import bench, flops
from nanogpt.cli import main
from nanogpt.errors import NanoGPTError

TINY = ["--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "32", "--model.vocab_size", "97",
        "--block-size", "32", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--device", "cpu"]

FIELDS = {
    "device", "device_name", "dtype", "compile", "model", "params", "matmul_params", "batch_size", "seq_len",
    "grad_accum", "optimizer", "tokens_per_step", "warmup_steps", "warmup_seconds", "steps", "ms_per_step",
    "ms_per_step_median", "ms_per_step_min", "tokens_per_second", "flops_per_token", "achieved_tflops",
    "peak_tflops", "mfu", "peak_memory_bytes", "memory_kind", "loss_first", "loss_last", "sampling", "torch",
    "threads", "threads_choice", "python", "date", "preset",
}


@pytest.fixture(autouse=True)
def _known_cpu_peak(tmp_path, monkeypatch):
    # A fixed CPU peak (no probe, no writes to the real ~/.cache) keeps the test fast and exact.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(flops, "_cpu_peak_memory", {})
    monkeypatch.setattr(flops, "measure_cpu_peak", lambda dtype, seconds_per_shape=0.0, shapes=(): 1e11)


def test_json_has_every_field(capsys):
    assert main(["bench", *TINY, "--dtype", "float32", "--sample-tokens", "8", "--prompt-tokens", "4", "--json"]) == 0
    captured = capsys.readouterr()
    r = json.loads(captured.out)  # stdout is pure JSON; progress went to stderr
    assert "training:" in captured.err
    assert set(r) == FIELDS
    assert r["model"]["n_layer"] == 2 and r["model"]["vocab_size"] == 97 and r["seq_len"] == 32
    assert r["tokens_per_step"] == 2 * 32 and r["steps"] == 2 and r["dtype"] == "float32"
    assert r["ms_per_step_min"] <= r["ms_per_step_median"] and r["ms_per_step"] > 0
    assert r["tokens_per_second"] == pytest.approx(r["tokens_per_step"] / (r["ms_per_step"] / 1000))
    assert r["flops_per_token"] == 6 * r["matmul_params"] + 12 * 2 * 32 * 32
    assert r["achieved_tflops"] == pytest.approx(r["tokens_per_second"] * r["flops_per_token"] / 1e12)
    assert r["peak_tflops"] == pytest.approx(0.1)
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / 0.1)
    assert r["peak_memory_bytes"] is None or r["peak_memory_bytes"] >= 0
    # it really trained: two steps on one batch lower the loss, which starts near ln(vocab)
    assert abs(r["loss_first"] - math.log(97)) < 0.5 and r["loss_last"] < r["loss_first"]
    s = r["sampling"]
    assert s["new_tokens"] == 8 and s["prompt_tokens"] == 4
    assert s["cached_tokens_per_second"] > 0 and s["uncached_tokens_per_second"] > 0
    assert s["cache_speedup"] == pytest.approx(s["cached_tokens_per_second"] / s["uncached_tokens_per_second"])


def test_table_output_and_skipped_sampling(capsys):
    assert main(["bench", *TINY, "--sample-tokens", "0"]) == 0
    out = capsys.readouterr().out
    for label in ("ms/step", "tokens/s", "achieved", "MFU", "peak memory"):
        assert label in out
    assert "sampling, KV cache" not in out


def test_unknown_peak_prints_unknown(monkeypatch):
    r = bench.run_bench(
        bench.resolve_model(None, {"model.n_layer": "1", "model.n_embd": "16", "model.n_head": "2",
                                   "model.block_size": "8"}, torch.device("cpu"))[0],
        bench.BenchConfig(steps=1, warmup=0, device="cpu", dtype="float32", sample_tokens=0),
        batch_size=1,
    )
    r["mfu"], r["peak_tflops"] = None, None  # as on a GPU missing from the table
    table = bench.format_table(r)
    assert "MFU" in table and "unknown peak" in table


def test_presets_set_the_model_and_batch():
    cfg, batch, name = bench.resolve_model("shakespeare-char", {}, torch.device("cpu"))
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size, batch) == (6, 6, 384, 256, 76, 64)
    cfg, batch, name = bench.resolve_model(None, {}, torch.device("cpu"))
    assert name == "shakespeare-char-cpu"
    cfg, batch, name = bench.resolve_model("gpt2-124m", {"model.n_layer": "2"}, torch.device("cpu"))
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size, batch) == (2, 768, 50304, 16)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be positive"),
        (["--preset", "nope"], "unknown preset"),
        (["--model.n_embd", "33"], "divisible"),
    ],
)
def test_bad_options_are_one_line_errors(argv, message, capsys):
    assert main(["bench", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bench_config_validates():
    with pytest.raises(NanoGPTError):
        bench.BenchConfig(grad_accum=0)


def _load_script(name: str):
    """Import a benchmarks/ script as a module (they are scripts, not package modules)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_train_step_script_writes_json_and_markdown(tmp_path, capsys):
    script = _load_script("train_step")
    out = tmp_path / "ts"
    assert script.main(["--cases", "smoke", "--rounds", "2", "--warmup", "0", "--probe-seconds", "0.01", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    (case,) = report["cases"]
    ours, plain = case["results"]["ours"], case["results"]["plain fp32"]
    assert ours["steps_timed"] == plain["steps_timed"] == 2
    assert case["speedup_ours_vs_plain"] == pytest.approx(plain["ms_per_step_median"] / ours["ms_per_step_median"])
    assert plain["dtype"] == "float32"
    peaks = case["round_peak_tflops"]  # one probe per round
    assert len(peaks) == 2 and all(pk["bf16"] > 0 and pk["fp32"] > 0 for pk in peaks)
    # MFU is each round's achieved FLOP/s over the peak probed after it, median over rounds
    work = case["tokens_per_step"] * case["flops_per_token"]
    per_round = [work / (ms / 1000) / (pk["fp32"] * 1e12) for ms, pk in zip(plain["round_ms_per_step"], peaks)]
    assert plain["mfu_vs_own_dtype_peak"] == pytest.approx(sum(per_round) / 2)
    # same init, same batch: the two contenders start from the same loss (bf16 vs fp32 rounding)
    assert ours["loss_first"] == pytest.approx(plain["loss_first"], abs=0.05)
    # the recorded matrix products of one step are exactly the FLOPs the formula counts
    mo = case["matmuls_only"]
    assert mo["flops_per_step"] == work and mo["share_of_step_flops"] == 1.0
    low, f32 = mo["results"]["matmuls only, ours' dtype"], mo["results"]["matmuls only, fp32"]
    assert mo["speedup_vs_fp32"] == pytest.approx(f32["ms_median"] / low["ms_median"])
    assert f32["dtype"] == "float32" and len(low["round_ms"]) == 2
    md = out.with_suffix(".md").read_text()
    assert "| smoke 2L/2H/32, block 16 | 2 x 16 | ours | bfloat16 |" in md or "| ours | float32 |" in md
    assert "| plain fp32 | float32 |" in md
    # the step against its ceiling, and which target applies where
    ce = case["ceiling"]
    ratios = sorted(o / p for o, p in zip(ours["round_ms_per_step"], low["round_ms"]))
    assert ce["step_over_products"] == pytest.approx(sum(ratios) / 2)  # the median of two rounds
    assert ce["step_over_products_met"] == (ce["step_over_products"] <= 1.3)
    speedups = sorted(f / p for f, p in zip(f32["round_ms"], low["round_ms"]))
    assert ce["products_speedup_bf16_vs_fp32"] == pytest.approx(sum(speedups) / 2)
    assert ce["speedup_target_applies"] == (ce["products_speedup_bf16_vs_fp32"] >= 4.0)
    assert ce["speedup_met"] is (None if not ce["speedup_target_applies"] else case["speedup_ours_vs_plain"] >= 3.0)
    assert f"| smoke 2L/2H/32, block 16 | {ce['step_over_products']:.2f}x |" in md
    for i, (st, pr) in enumerate(zip(ours["round_ms_per_step"], low["round_ms"]), 1):  # and each round's ratio
        assert f"| smoke 2L/2H/32, block 16 | {i} | {st:.0f} | {pr:.0f} | {st / pr:.2f}x |" in md


def test_ceiling_cases():
    script = _load_script("train_step")
    # three rounds; the machine halves its speed in the second: the ratios stay the same
    mo = {"matmuls only, ours' dtype": {"round_ms": [100.0, 200.0, 100.0]},
          "matmuls only, fp32": {"round_ms": [450.0, 900.0, 450.0]}}
    assert script.ceiling([125.0, 250.0, 125.0], mo, 3.2) == {
        "step_over_products": 1.25, "step_over_products_max": 1.3, "step_over_products_met": True,
        "products_speedup_bf16_vs_fp32": 4.5, "speedup_target_applies": True, "speedup_vs_plain": 3.2,
        "speedup_met": True}
    mo["matmuls only, fp32"]["round_ms"] = [200.0, 400.0, 200.0]  # no matrix units: only the ceiling target applies
    got = script.ceiling([140.0, 280.0, 140.0], mo, 1.9)
    assert got["step_over_products_met"] is False and got["speedup_target_applies"] is False and got["speedup_met"] is None


def test_gpu_script_without_cuda_exits_with_a_message(tmp_path, capsys, monkeypatch):
    script = _load_script("gpu_train")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert script.main(["--out", str(tmp_path / "g")]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "g.json").exists()


def test_gpu_script_smoke_runs_end_to_end(tmp_path, monkeypatch):
    script = _load_script("gpu_train")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert script.main(["--smoke", "--out", str(tmp_path / "g")]) == 0
    report = json.loads((tmp_path / "g.json").read_text())
    assert report["smoke"] is True and report["windows"]["eager"]["ms_per_step"] > 0
    assert report["flops_per_token"] == flops.flops_per_token(flops.GPTConfig(**report["model"]))


def test_bench_times_the_step_with_the_presets_optimizer(monkeypatch):
    from nanogpt import optim

    steps = []
    real = optim.Muon.step
    monkeypatch.setattr(optim.Muon, "step", lambda self, *a, **k: (steps.append(1), real(self, *a, **k))[1])
    config = bench.resolve_model(None, {"model.n_layer": "1", "model.n_embd": "16", "model.n_head": "2",
                                        "model.block_size": "8"}, torch.device("cpu"))[0]
    opts = bench.BenchConfig(steps=2, warmup=1, device="cpu", dtype="float32", sample_tokens=0)
    muon = bench.preset_optim("shakespeare-char-cpu")
    assert muon.name == "muon" and muon.muon_lr == 0.065
    r = bench.run_bench(config, opts, batch_size=2, optim=muon)
    assert r["optimizer"] == "muon" and len(steps) == 3  # every warm-up and measured step
    assert "Muon for the blocks' matrices, AdamW for the rest" in bench.format_table(r)
    r = bench.run_bench(config, opts, batch_size=2)  # no preset's settings: AdamW
    assert r["optimizer"] == "adamw" and len(steps) == 3
    assert bench.preset_optim("shakespeare-char").name == "adamw"


def test_cpu_kernels_script_reports_round_wise_ratios(tmp_path):
    from nanogpt import native

    if not native.available():
        pytest.skip(f"C kernels unavailable: {native.load()[1]}")
    script = _load_script("cpu_kernels")
    out = tmp_path / "ck"
    assert script.main(["--cases", "smoke", "--rounds", "2", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    smoke = report["cases"]["smoke"]
    assert set(smoke["kernels"]) == {"causal softmax forward (scores from q k^T)", "causal softmax backward",
                                     "GELU forward", "GELU backward", "LayerNorm forward", "LayerNorm backward"}
    steps = smoke["steps"]
    assert all(steps[k] > 0 for k in ("torch_ms", "c_ms", "products_ms"))
    rounds = steps["round_ms"]  # each ratio taken within a round, then the median (of two: the mean)
    ratios = [t / c for t, c in zip(rounds["PyTorch's kernels"], rounds["C kernels"])]
    assert len(ratios) == 2 and steps["speedup"] == pytest.approx(sum(ratios) / 2)
    over = [c / m for c, m in zip(rounds["C kernels"], rounds["products alone"])]
    assert steps["c_over_products"] == pytest.approx(sum(over) / 2)
    gelu = smoke["kernels"]["GELU backward"]
    assert gelu["speedup"] == pytest.approx(sum(t / c for t, c in zip(gelu["round_ms"]["torch"], gelu["round_ms"]["c"])) / 2)
    md = out.with_suffix(".md").read_text()
    assert f"| smoke | {steps['torch_ms']:.1f} | {steps['c_ms']:.1f} | {steps['speedup']:.3f}x |" in md
    assert "LayerNorm backward" in md and report["threads"] == 2
