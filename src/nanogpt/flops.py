"""FLOPs per token, peak FLOP/s per device and dtype, and model FLOPs utilization (MFU).

One place for the arithmetic that training logs, ``nanogpt bench`` and ``nanogpt inspect``
print, so the numbers agree everywhere.

What counts as a FLOP here (the PaLM / nanoGPT convention, made exact for our model):

* Only matrix multiplications, 2 FLOPs per multiply-add. LayerNorm, GELU, softmax, bias adds,
  residual adds, the embedding lookups and the optimizer are left out (they are a few percent
  and memory-bound, and no peak figure includes them).
* ``N`` = the weights that take part in a matmul: per block ``c_attn`` (3C x C), ``attn.c_proj``
  (C x C), ``mlp.c_fc`` (4C x C) and ``mlp.c_proj`` (C x 4C), i.e. 12 C^2, plus ``lm_head``
  (V x C, tied to ``wte``). Biases, LayerNorm weights and ``wpe`` are not in ``N``. The modern
  block has the same 4 C^2 of attention and a gated MLP of 3 C H (gate and up C -> H, down H -> C).
  A token's forward pass costs 2N for these, its backward pass 4N (gradients with respect to
  both the input and the weight), so 6N for a training step.
* Attention: ``q @ k^T`` and ``att @ v`` each cost 2 * T * C per token and layer in the forward
  pass, counted over the full T x T score matrix (not halved for the causal mask, as PaLM and
  nanoGPT count, and as the math SDPA kernel computes). Forward: 4 * n_layer * C * T per token;
  forward + backward: 12 * n_layer * C * T.

So a training step costs ``6N + 12 * n_layer * n_embd * T`` FLOPs per token, and the forward
alone a third of that. ``tests/test_flops.py`` checks this against the matmul shapes that
``torch.utils.flop_counter`` records for a real forward + backward.

Peak FLOP/s: dense (not 2:4 sparse) tensor-core figures from the vendors' data sheets, per GPU
model and dtype. On CPUs there is no data sheet to trust, so the peak is measured once with a
matmul probe per dtype and cached. An unknown GPU has no peak: MFU is then reported as unknown
rather than as a number against some other card's peak.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nanogpt import cpu
from nanogpt.config import GPTConfig
from nanogpt.fsutil import user_cache_dir

# --------------------------------------------------------------------------------------------
# FLOPs per token


def _mlp_in_out(config: GPTConfig) -> tuple[int, int]:
    """Output width of the MLP's first matmul and input width of its second: 4C, 4C (gpt2) or 2H, H (modern)."""
    H = config.mlp_width
    return (2 * H, H) if config.arch == "modern" else (H, H)


def matmul_params(config: GPTConfig) -> int:
    """N: weights used in a matmul (4 C^2 of attention + the MLP's two matrices per block, and the head V x C;
    12 C^2 per block for gpt2); no biases, norms or wpe."""
    C = config.n_embd
    fc_out, proj_in = _mlp_in_out(config)
    return config.n_layer * (4 * C * C + C * fc_out + proj_in * C) + config.vocab_size * C


def flops_breakdown(config: GPTConfig, seq_len: int | None = None) -> dict[str, float]:
    """Forward-pass matmul FLOPs per token, by component, summed over all layers.

    Keys: ``qkv``, ``attn_scores`` (q @ k^T), ``attn_values`` (att @ v), ``attn_proj``
    (attention c_proj), ``mlp_fc``, ``mlp_proj``, ``lm_head`` and ``total``. ``seq_len``
    (default ``config.block_size``) sets the attention terms, which grow with the context.
    A training step (forward + backward) costs three times each entry.
    """
    T = config.block_size if seq_len is None else int(seq_len)
    if T <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    L, C, V = config.n_layer, config.n_embd, config.vocab_size
    parts = {
        "qkv": 2.0 * L * C * 3 * C,  # x (C) @ c_attn (C -> 3C)
        "attn_scores": 2.0 * L * T * C,  # one query row against T keys, over all heads: nh * T * hs = T * C
        "attn_values": 2.0 * L * T * C,  # T attention weights times T values of width hs, per head
        "attn_proj": 2.0 * L * C * C,  # c_proj (C -> C)
        "mlp_fc": 2.0 * L * C * _mlp_in_out(config)[0],  # c_fc (C -> 4C; modern: C -> 2H, gate and up)
        "mlp_proj": 2.0 * L * _mlp_in_out(config)[1] * C,  # c_proj (4C -> C; modern: H -> C)
        "lm_head": 2.0 * C * V,  # final projection onto the vocabulary (tied to wte)
    }
    parts["total"] = sum(parts.values())
    return parts


def flops_per_token(config: GPTConfig, seq_len: int | None = None, backward: bool = True) -> float:
    """Matmul FLOPs per token: ``6N + 12 L C T`` for a training step, a third of it forward only.

    ``seq_len`` is the length T of the sequences (default ``config.block_size``); see the module
    docstring for exactly what is counted.
    """
    T = config.block_size if seq_len is None else int(seq_len)
    if T <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    forward = 2.0 * matmul_params(config) + 4.0 * config.n_layer * config.n_embd * T
    return 3.0 * forward if backward else forward


# --------------------------------------------------------------------------------------------
# Peak FLOP/s per GPU

TF = 1e12

# Dense peak FLOP/s (no 2:4 sparsity) of matmuls with fp32 accumulation, from the vendors' data
# sheets. "tf32" is the fp32 matmul rate when TF32 tensor cores are allowed; "fp32" the plain
# fp32 rate. A dtype a card cannot run natively (bf16 on V100/T4) is left out, so its MFU is
# unknown rather than flattering. GeForce cards run fp16/bf16 with fp32 accumulation (what
# PyTorch uses) at half the rate of fp16 accumulation; the table has the fp32-accumulate rate.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "B200": {"bf16": 2250 * TF, "fp16": 2250 * TF, "tf32": 1100 * TF, "fp32": 75 * TF},
    "H200": {"bf16": 989.5 * TF, "fp16": 989.5 * TF, "tf32": 494.7 * TF, "fp32": 66.9 * TF},
    "H200 NVL": {"bf16": 835.5 * TF, "fp16": 835.5 * TF, "tf32": 417.5 * TF, "fp32": 60.0 * TF},
    "GH200": {"bf16": 989.5 * TF, "fp16": 989.5 * TF, "tf32": 494.7 * TF, "fp32": 66.9 * TF},
    "H100 SXM": {"bf16": 989.5 * TF, "fp16": 989.5 * TF, "tf32": 494.7 * TF, "fp32": 66.9 * TF},
    "H100 NVL": {"bf16": 835.5 * TF, "fp16": 835.5 * TF, "tf32": 417.5 * TF, "fp32": 60.0 * TF},
    "H100 PCIe": {"bf16": 756.5 * TF, "fp16": 756.5 * TF, "tf32": 378.0 * TF, "fp32": 51.2 * TF},
    "H800": {"bf16": 989.5 * TF, "fp16": 989.5 * TF, "tf32": 494.7 * TF, "fp32": 66.9 * TF},
    "A100": {"bf16": 312 * TF, "fp16": 312 * TF, "tf32": 156 * TF, "fp32": 19.5 * TF},  # SXM and PCIe
    "A800": {"bf16": 312 * TF, "fp16": 312 * TF, "tf32": 156 * TF, "fp32": 19.5 * TF},
    "A40": {"bf16": 149.7 * TF, "fp16": 149.7 * TF, "tf32": 74.8 * TF, "fp32": 37.4 * TF},
    "A30": {"bf16": 165 * TF, "fp16": 165 * TF, "tf32": 82 * TF, "fp32": 10.3 * TF},
    "A10": {"bf16": 125 * TF, "fp16": 125 * TF, "tf32": 62.5 * TF, "fp32": 31.2 * TF},
    "A10G": {"bf16": 70 * TF, "fp16": 70 * TF, "tf32": 35 * TF, "fp32": 31.2 * TF},
    "L4": {"bf16": 121 * TF, "fp16": 121 * TF, "tf32": 60 * TF, "fp32": 30.3 * TF},
    "L40": {"bf16": 181 * TF, "fp16": 181 * TF, "tf32": 90.5 * TF, "fp32": 90.5 * TF},
    "L40S": {"bf16": 362 * TF, "fp16": 362 * TF, "tf32": 183 * TF, "fp32": 91.6 * TF},
    "RTX A6000": {"bf16": 154.8 * TF, "fp16": 154.8 * TF, "tf32": 77.4 * TF, "fp32": 38.7 * TF},
    "RTX 6000 Ada": {"bf16": 364.2 * TF, "fp16": 364.2 * TF, "tf32": 182.1 * TF, "fp32": 91.1 * TF},
    "RTX 3090": {"bf16": 71 * TF, "fp16": 71 * TF, "tf32": 35.6 * TF, "fp32": 35.6 * TF},
    "RTX 4090": {"bf16": 165.2 * TF, "fp16": 165.2 * TF, "tf32": 82.6 * TF, "fp32": 82.6 * TF},
    "V100 SXM2": {"fp16": 125 * TF, "fp32": 15.7 * TF},
    "V100 PCIe": {"fp16": 112 * TF, "fp32": 14.0 * TF},
    "V100S": {"fp16": 130 * TF, "fp32": 16.4 * TF},
    "T4": {"fp16": 65 * TF, "fp32": 8.1 * TF},
    "MI300X": {"bf16": 1307.4 * TF, "fp16": 1307.4 * TF, "tf32": 653.7 * TF, "fp32": 163.4 * TF},
    "MI250X": {"bf16": 383 * TF, "fp16": 383 * TF, "fp32": 95.7 * TF},
}

# (pattern on the upper-cased device name, table key), first match wins. The patterns are
# anchored on word boundaries so that "A10" does not match "A100", "L40" not "L40S", and variants
# we have no figures for ("RTX 4090 D", "RTX 3090 Ti") stay unknown.
_GPU_PATTERNS: list[tuple[str, str]] = [
    (r"\bB200\b", "B200"),
    (r"\bGH200\b", "GH200"),
    (r"\bH200\b.*\bNVL\b", "H200 NVL"),
    (r"\bH200\b", "H200"),
    (r"\bH100\b.*\bNVL\b", "H100 NVL"),
    (r"\bH100\b.*\bPCIE\b", "H100 PCIe"),
    # "NVIDIA H100 80GB HBM3" and "NVIDIA H100 SXM5 80GB" are the SXM part (the PCIe card has
    # HBM2e and says PCIe in its name).
    (r"\bH100\b.*(\bSXM|\bHBM3\b)", "H100 SXM"),
    (r"\bH800\b", "H800"),
    (r"\bA100\b", "A100"),
    (r"\bA800\b", "A800"),
    (r"\bA40\b", "A40"),
    (r"\bA30\b", "A30"),
    (r"\bA10G\b", "A10G"),
    (r"\bA10\b", "A10"),
    (r"\bL40S\b", "L40S"),
    (r"\bL40\b", "L40"),
    (r"\bL4\b", "L4"),
    (r"\bRTX A6000\b", "RTX A6000"),
    (r"\bRTX 6000 ADA\b", "RTX 6000 Ada"),
    (r"\bRTX 3090$", "RTX 3090"),
    (r"\bRTX 4090$", "RTX 4090"),
    (r"\bV100S\b", "V100S"),
    (r"\bV100\b.*\bSXM2\b", "V100 SXM2"),
    (r"\bV100\b.*\bPCIE\b", "V100 PCIe"),
    (r"\bT4\b", "T4"),
    (r"\bMI300X\b", "MI300X"),
    (r"\bMI250X\b", "MI250X"),
]


def gpu_model(name: str) -> str | None:
    """The ``PEAK_FLOPS`` key for a device name such as 'NVIDIA H100 80GB HBM3', or None."""
    upper = " ".join(name.upper().replace("-", " ").split())
    for pattern, key in _GPU_PATTERNS:
        if re.search(pattern, upper):
            return key
    return None


def dtype_key(dtype: torch.dtype, device: torch.device | None = None) -> str:
    """'bf16', 'fp16', 'tf32' or 'fp32': which peak applies to matmuls run in ``dtype``.

    float32 on CUDA counts as tf32 when PyTorch is allowed to use TF32 tensor cores
    (``torch.backends.cuda.matmul.allow_tf32``, which ``nanogpt.device.setup_runtime`` turns on).
    """
    if dtype is torch.bfloat16:
        return "bf16"
    if dtype is torch.float16:
        return "fp16"
    if dtype is torch.float32:
        if device is not None and device.type == "cuda" and (
            torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
        ):
            return "tf32"
        return "fp32"
    raise ValueError(f"no peak FLOP/s for dtype {dtype}; use bfloat16, float16 or float32")


def gpu_peak_flops(name: str, dtype_key_: str) -> float | None:
    """Table peak for a GPU name and dtype key, or None when the card or dtype is not known."""
    key = gpu_model(name)
    if key is None:
        return None
    return PEAK_FLOPS[key].get(dtype_key_)


# --------------------------------------------------------------------------------------------
# Peak FLOP/s on CPU: measured once per CPU / thread count / torch version / dtype

# (M, K, N) of the probe's F.linear calls: (M, K) @ (K, N). Shapes of a Transformer MLP and a
# square one; oneDNN's speed on CPUs depends a lot on the shape, and the peak is the best of them.
_PROBE_SHAPES = [(2048, 768, 3072), (2048, 2048, 2048), (2048, 1024, 4096)]
_PROBE_SECONDS = 0.25  # per shape, after one warm-up call
_cpu_peak_memory: dict[str, float] = {}


def cache_path() -> Path:
    """Where measured CPU peaks are kept: $XDG_CACHE_HOME/nanogpt/cpu_peak.json (~/.cache/...)."""
    return user_cache_dir() / "cpu_peak.json"


Shape = tuple[int, int, int]  # (M, K, N) of (M, K) @ (K, N)


def _cpu_cache_key(dtype_key_: str, shapes: tuple[Shape, ...] = ()) -> str:
    # The CPU's features are in the key: VMs name CPUs with and without AMX alike.
    key = f"{cpu.signature()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {dtype_key_}"
    return key + (f" | + {' '.join('x'.join(map(str, s)) for s in shapes)}" if shapes else "")


def step_shapes(config: GPTConfig, rows: int) -> tuple[Shape, ...]:
    """The forward matmuls of a training step of ``config`` on ``rows`` tokens (capped at the probe's 2048 rows)."""
    m, C = min(rows, _PROBE_SHAPES[0][0]), config.n_embd
    return ((m, C, 3 * C), (m, C, C), (m, C, 4 * C), (m, 4 * C, C), (m, C, config.vocab_size))


def measure_cpu_peak(dtype: torch.dtype, seconds_per_shape: float = _PROBE_SECONDS, shapes: tuple[Shape, ...] = ()) -> float:
    """Best matmul FLOP/s this CPU reaches in ``dtype`` over a few Transformer-like shapes and ``shapes``.

    The best single call is kept (not the mean), so other load on the machine lowers the figure
    less; a peak measured low would flatter MFU, one measured high only makes it conservative.
    """
    best = 0.0
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for m, k, n in [*_PROBE_SHAPES, *shapes]:
            x = torch.randn(m, k, generator=gen).to(dtype)  # (M, K)
            w = torch.randn(n, k, generator=gen).to(dtype)  # (N, K), like nn.Linear.weight
            torch.nn.functional.linear(x, w)  # warm-up: oneDNN picks and packs its kernel
            flops = 2.0 * m * k * n
            deadline = time.perf_counter() + seconds_per_shape
            reps = 0
            while reps < 2 or time.perf_counter() < deadline:
                t0 = time.perf_counter()
                torch.nn.functional.linear(x, w)
                best = max(best, flops / (time.perf_counter() - t0))
                reps += 1
    return best


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    # Write to a temporary file and rename, so a concurrent reader never sees half a file; a
    # cache we cannot write (read-only home) only costs a re-measurement next time.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cpu_peak.", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def cpu_peak_flops(dtype: torch.dtype, remeasure: bool = False, shapes: tuple[Shape, ...] = ()) -> float:
    """Measured peak matmul FLOP/s of this CPU in ``dtype``, cached in memory and on disk.

    ``shapes`` adds a step's own matmuls to the probe (see :func:`step_shapes`), so the peak
    bounds what that step can reach. Cached per CPU model and features, thread count, torch
    version, dtype and shapes. ``remeasure=True`` probes again and keeps the higher of the new
    and the cached figure: a probe disturbed by other processes reads low, and a low peak
    would overstate MFU.
    """
    key = _cpu_cache_key(dtype_key(dtype), tuple(shapes))
    cached = _cpu_peak_memory.get(key)
    if cached is None:
        stored = _read_cache(cache_path()).get(key)
        if isinstance(stored, (int, float)) and stored > 0:
            cached = float(stored)
    if cached is not None and not remeasure:
        _cpu_peak_memory[key] = cached
        return cached
    peak = max(measure_cpu_peak(dtype, shapes=tuple(shapes)), cached or 0.0)
    _cpu_peak_memory[key] = peak
    data = _read_cache(cache_path())
    data[key] = peak
    _write_cache(cache_path(), data)
    return peak


# --------------------------------------------------------------------------------------------
# Peak and MFU for a device


def peak_flops(device: torch.device | str, dtype: torch.dtype, shapes: tuple[Shape, ...] = ()) -> float | None:
    """Peak dense matmul FLOP/s of ``device`` in ``dtype``; None when it is not known.

    CUDA/ROCm: from ``PEAK_FLOPS`` by ``torch.cuda.get_device_name``. CPU: measured once by
    :func:`cpu_peak_flops` (about a second per dtype) and cached. Anything else (MPS, ...): None.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), dtype_key(dtype, device))
    if device.type == "cpu":
        return cpu_peak_flops(dtype, shapes=shapes)
    return None


def mfu(
    tokens_per_second: float,
    config: GPTConfig,
    seq_len: int | None,
    device: torch.device | str,
    dtype: torch.dtype,
    peak: float | None = None,
) -> float | None:
    """Model FLOPs utilization of training: achieved matmul FLOP/s over the device's peak.

    ``tokens_per_second`` counts training tokens (forward + backward). Pass ``peak`` to skip the
    look-up (e.g. one taken once at start-up). Returns a fraction (0.45 = 45%), or None when the
    device's peak is unknown.
    """
    if peak is None:
        peak = peak_flops(device, dtype)
    if not peak:
        return None
    return tokens_per_second * flops_per_token(config, seq_len) / peak


class MFUMeter:
    """MFU of a training run, against a peak that the run's own step cannot exceed.

    The peak is the data sheet's on GPUs and, on CPUs, the probe with the step's own matmul
    shapes added. If the step still beats it (the probe ran at a busy moment), the probe runs
    again once and then the step's own rate counts as the peak, so MFU never reads above 100%;
    :attr:`note` says which peak is in use.
    """

    def __init__(self, config: GPTConfig, tokens_per_step: int, device: torch.device | str, dtype: torch.dtype) -> None:
        self.config, self.device, self.dtype = config, torch.device(device), dtype
        self.shapes = step_shapes(config, tokens_per_step) if self.device.type == "cpu" else ()
        self.peak = peak_flops(self.device, dtype, self.shapes)
        self.remeasured = False
        self.note = self._describe("")

    def _describe(self, why: str) -> str:
        if not self.peak:
            return "MFU: no known peak for this device"
        source = "data sheet" if self.device.type == "cuda" else "measured, with this model's matmul shapes"
        return f"MFU against a {dtype_key(self.dtype, self.device)} peak of {self.peak / 1e12:.3g} TFLOP/s ({source}{why})"

    def __call__(self, tokens_per_second: float) -> float | None:
        """MFU (a fraction) at ``tokens_per_second`` training tokens; None without a peak."""
        if not self.peak:
            return None
        achieved = tokens_per_second * flops_per_token(self.config, self.config.block_size)
        if achieved > self.peak and self.device.type == "cpu" and not self.remeasured:
            self.remeasured = True
            self.peak = cpu_peak_flops(self.dtype, remeasure=True, shapes=self.shapes)
            self.note = self._describe("; probed again: the step beat the cached peak")
        if achieved > self.peak:
            self.peak = achieved
            self.note = self._describe("; raised to the step's own rate, which beat the probe")
        return achieved / self.peak


def format_mfu(value: float | None) -> str:
    """'MFU: 41.3%', or 'MFU: unknown peak' when the device's peak FLOP/s is not known."""
    if value is None:
        return "MFU: unknown peak"
    return f"MFU: {100.0 * value:.1f}%"
