"""Size limits before allocation: what a model, a training step or a sampling run needs in bytes,
checked against what the device has before any tensor is made.

Every size that comes from a user or a file (a model's shape from a config, a checkpoint's
info.json or an HF config.json; batch, context, new tokens, samples) passes through here, so a
``n_layer: 100000`` or ``--num-samples 1000000000`` is one line that states the estimate, the
limit and what to lower, instead of a process that allocates until the kernel kills it.

The formulas are the ones ``nanogpt inspect`` prints (:mod:`nanogpt.explain` imports them from
here): parameters, the activations a training forward pass keeps for the backward pass (derived
in explain's module docstring), and the KV cache. Estimates are lower bounds on the real peak
(allocator slack, temporaries and the framework itself come on top), so a refusal is never a
false alarm; ``NANOGPT_MEMORY_CHECK=off`` turns the memory comparison off (the integer limits
stay). Nothing here imports torch unless a CUDA device's free memory is asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nanogpt.errors import NanoGPTError

if TYPE_CHECKING:
    from nanogpt.config import GPTConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Numbers a transformer block holds per token: x, ln_1, q, k, v, attention out, the residual,
# ln_2 (8C) and the MLP's c_fc and GELU outputs (8C). See explain's docstring.
BLOCK_NUMBERS_PER_TOKEN = 16
# No tensor may hold more numbers than this (torch's storage sizes are int64 bytes).
MAX_TENSOR_NUMBERS = 2**56
# Python ints of the generated ids (a list per sample) plus their int64 tensor, per token.
OUTPUT_BYTES_PER_TOKEN = 48


def dtype_bytes(dtype: Any) -> int:
    """Bytes per number of a dtype given by name ('bfloat16') or as a torch dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPE_BYTES:
            raise NanoGPTError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
        return DTYPE_BYTES[dtype]
    return int(dtype.itemsize)


# --------------------------------------------------------------------------------------------
# Formulas (shared with nanogpt inspect)


def block_parameter_counts(config: "GPTConfig") -> dict[str, int]:
    """Parameters of each part of one transformer block (norms, attention, MLP)."""
    C, bias, H = config.n_embd, config.bias, config.mlp_width

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out + (n_out if bias else 0)

    norm = 2 * C if bias else C  # gain (+ bias)
    parts = {"ln_1": norm, "attn.c_attn": linear(C, 3 * C), "attn.c_proj": linear(C, C), "ln_2": norm}
    if config.arch == "modern":  # gated MLP: [gate | up] C -> 2H, down H -> C; RMSNorm gains per head
        if config.qk_norm:
            parts["attn.q_norm"] = parts["attn.k_norm"] = config.head_dim
        return {**parts, "mlp.c_fc": linear(C, 2 * H), "mlp.c_proj": linear(H, C)}
    return {**parts, "mlp.c_fc": linear(C, H), "mlp.c_proj": linear(H, C)}


def parameter_count(config: "GPTConfig") -> int:
    """Parameters of ``GPT(config)``, the tied lm_head counted once (= ``num_params()``)."""
    C = config.n_embd
    blocks = config.n_layer * sum(block_parameter_counts(config).values())
    ln_f = 2 * C if config.bias else C
    wpe = config.block_size * C if config.arch == "gpt2" else 0  # modern: rotary positions, no table
    head = 0 if config.tie_embeddings else config.vocab_size * C
    return config.vocab_size * C + wpe + blocks + ln_f + head


def activation_bytes(config: "GPTConfig", batch_size: int, seq_len: int, dtype: Any = "float32") -> int:
    """Estimated bytes autograd keeps for the backward pass after a training forward pass.

    The formula is derived in :mod:`nanogpt.explain`'s docstring; it assumes fused attention
    (no T x T matrix kept).
    """
    b = dtype_bytes(dtype)
    C, nh, L, V = config.n_embd, config.n_head, config.n_layer, config.vocab_size
    per_block = BLOCK_NUMBERS_PER_TOKEN * C * b + 4 * (nh + 4)  # + fp32 LayerNorm stats and log-sum-exp
    top = 2 * C * b + 4 * 2 + 4 * V + 8 + 8  # ln_f in/out + stats, fp32 log-probs, input/target ids
    per_token = L * per_block + top
    if config.dropout > 0:
        per_token += (1 + 2 * L) * C  # bool dropout masks
    return batch_size * seq_len * per_token + seq_len * 8  # + the int64 positions


def kv_cache_bytes(config: "GPTConfig", batch_size: int, length: int, dtype: Any = "float32") -> int:
    """Bytes of the keys and values of ``length`` positions for ``batch_size`` sequences."""
    return 2 * config.n_layer * config.n_embd * dtype_bytes(dtype) * length * batch_size


def forward_bytes(config: "GPTConfig", batch_size: int, seq_len: int, dtype: Any, logits_positions: int) -> int:
    """Peak bytes of the tensors one no-grad forward pass makes (one block's at a time) and its logits.

    ``logits_positions`` is how many positions per sequence get logits (1 when sampling); the
    logits are counted in the dtype plus two fp32 copies (the cast and the softmax or loss).
    """
    b = dtype_bytes(dtype)
    block = batch_size * seq_len * BLOCK_NUMBERS_PER_TOKEN * config.n_embd * b
    logits = batch_size * logits_positions * config.vocab_size * (b + 8)
    return block + logits


# --------------------------------------------------------------------------------------------
# Estimates


@dataclass(frozen=True)
class Estimate:
    """Bytes a task needs, by part (names as printed), and what to lower if it does not fit."""

    task: str
    parts: dict[str, int]
    lower: str

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def model_estimate(config: "GPTConfig", dtype: Any = "float32") -> Estimate:
    """The weights of ``GPT(config)`` in ``dtype``."""
    return Estimate("the model", {"weights": parameter_count(config) * dtype_bytes(dtype)},
                    "model.n_layer, model.n_embd, model.vocab_size or model.block_size")


def training_estimate(config: "GPTConfig", batch_size: int, dtype: Any = "float32") -> Estimate:
    """A training step: fp32 weights and gradients, AdamW's two fp32 moments, activations in ``dtype``.

    Gradient accumulation adds nothing: its micro-steps run one after the other.
    """
    n = parameter_count(config)
    parts = {
        "weights": 4 * n, "gradients": 4 * n, "AdamW state": 8 * n,
        "activations": activation_bytes(config, batch_size, config.block_size, dtype),
    }
    return Estimate("training", parts, "data.batch_size, model.block_size, model.n_layer or model.n_embd")


def inference_estimate(config: "GPTConfig", batch_size: int, new_tokens: int, dtype: Any = "float32",
                       *, seq_len: int | None = None, all_logits: bool = False) -> Estimate:
    """Sampling ``new_tokens`` for ``batch_size`` sequences (KV cache of a full context), or scoring
    (``new_tokens`` 0, ``all_logits``) windows of ``seq_len`` tokens."""
    T = config.block_size if seq_len is None else seq_len
    parts = {
        "weights": parameter_count(config) * dtype_bytes(dtype),
        "forward pass": forward_bytes(config, batch_size, T, dtype, T if all_logits else 1),
    }
    if new_tokens:
        parts["KV cache"] = kv_cache_bytes(config, batch_size, config.block_size, dtype)
        parts["generated ids"] = batch_size * new_tokens * OUTPUT_BYTES_PER_TOKEN
        lower = "--num-samples or --max-new-tokens"
    else:
        lower = "--batch-size or --context"
    return Estimate("sampling" if new_tokens else "evaluation", parts, lower)


# --------------------------------------------------------------------------------------------
# What the device has, and the checks


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit (containers), None without one."""
    try:
        limit = open("/sys/fs/cgroup/memory.max", encoding="ascii").read().strip()
        used = open("/sys/fs/cgroup/memory.current", encoding="ascii").read().strip()
        return None if limit == "max" else max(int(limit) - int(used), 0)
    except (OSError, ValueError):
        return None


def available_bytes(device: Any = "cpu") -> int | None:
    """Free memory of ``device`` now (CUDA: free device memory; otherwise host RAM), None if unknown."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(device)[0])
    known = [n for n in (_meminfo_available(), _cgroup_available()) if n is not None]
    return min(known) if known else None


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits(estimate: Estimate, device: Any = "cpu", lower: str | None = None) -> None:
    """Raise one line (estimate, limit, what to lower) if ``estimate`` exceeds ``device``'s free memory.

    ``lower`` replaces the estimate's own list of what to lower (a command names its own flags).
    """
    if os.environ.get("NANOGPT_MEMORY_CHECK", "").lower() in ("off", "0", "false", "no"):
        return
    free = available_bytes(device)
    if free is None or estimate.total <= free:
        return
    parts = ", ".join(f"{name} {human_bytes(n)}" for name, n in estimate.parts.items())
    kind = getattr(device, "type", str(device).split(":")[0])
    raise NanoGPTError(
        f"{estimate.task} needs at least {human_bytes(estimate.total)} ({parts}) but {kind} has "
        f"{human_bytes(free)} free; lower {lower or estimate.lower}"
    )


def check_shape(config: "GPTConfig", batch_size: int = 1, seq_len: int | None = None,
                lower: str = "the block size, batch size or model size") -> None:
    """Integer limits every command applies, even where nothing is allocated (inspect's meta device):
    no tensor of the forward pass may hold more than :data:`MAX_TENSOR_NUMBERS` numbers."""
    T = config.block_size if seq_len is None else seq_len
    if batch_size <= 0 or T <= 0:
        raise NanoGPTError(f"batch size and context must be positive, got {batch_size} and {T}")
    biggest = {
        "attention scores [B, nh, T, T]": batch_size * config.n_head * T * T,
        "logits [B, T, V]": batch_size * T * config.vocab_size,
        "MLP [B, T, 4C]": batch_size * T * 4 * config.n_embd,
        "weights of all blocks": config.n_layer * 12 * config.n_embd**2,
    }
    name, n = max(biggest.items(), key=lambda kv: kv[1])
    if n > MAX_TENSOR_NUMBERS:
        raise NanoGPTError(
            f"the {name} would hold {n:.3g} numbers, more than the limit of {MAX_TENSOR_NUMBERS:.3g}; "
            f"lower {lower}"
        )


def check_model_fits(config: "GPTConfig", device: Any = "cpu", dtype: Any = "float32") -> None:
    """Refuse a model whose weights cannot fit, before ``GPT(config)`` allocates them."""
    check_shape(config)
    check_fits(model_estimate(config, dtype), device)


def check_training_fits(config: "GPTConfig", batch_size: int, accum: int, dtype: Any, device: Any,
                        lower: str | None = None) -> None:
    """Refuse a training run whose step cannot fit (see :func:`training_estimate`), before the model is made."""
    if accum <= 0:
        raise NanoGPTError(f"gradient accumulation steps must be positive, got {accum}")
    check_shape(config, batch_size)
    check_fits(training_estimate(config, batch_size, dtype), device, lower)


def check_inference_fits(config: "GPTConfig", batch_size: int, new_tokens: int, dtype: Any, device: Any,
                         *, seq_len: int | None = None, all_logits: bool = False) -> None:
    """Refuse sampling or scoring that cannot fit (see :func:`inference_estimate`), before any tensor is made."""
    check_shape(config, batch_size, seq_len)
    check_fits(inference_estimate(config, batch_size, new_tokens, dtype, seq_len=seq_len, all_logits=all_logits),
               device)
