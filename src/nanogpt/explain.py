"""``nanogpt inspect``: what a GPT-2-style model does with its input, for any configuration.

For a configuration (a GPT-2 name, a training preset, a run folder or a Hugging Face folder)
this prints, with that configuration's real numbers:

* the forward pass as a table of tensors and shapes, from the token ids ``[B, T]`` to the
  logits ``[B, T, V]``; the table is built from formulas and, every time, checked against
  shapes captured by forward hooks on the real module, run on the meta device (no memory, no
  compute, so GPT-2 xl costs nothing);
* parameters per component and in total, with and without position embeddings, and the
  weight tying of ``lm_head`` to ``wte``;
* FLOPs per token (from :mod:`nanogpt.flops`), forward and forward+backward, split into
  the weight matmuls and the attention (``q k^T`` and ``att @ v``);
* memory: weights, gradients, AdamW state, activations of a training step for the batch,
  KV cache per token and for a full context.

And, for a trained model, ``--attention PROMPT`` draws the attention probabilities of every
head as heatmaps (:mod:`nanogpt.attention_maps`).

Activation memory estimate (bytes of the tensors a training forward pass keeps for the
backward pass, with fused attention and no dropout), b = bytes per element of the dtype,
per token of the batch:

* each of the L blocks: 16 C b -- the block input x (saved by ln_1), ln_1's output (saved by
  c_attn), q, k, v (3C, saved by attention), the attention output (C, saved by c_proj), the
  residual after attention (saved by ln_2), ln_2's output (saved by c_fc), c_fc's output
  (4C, saved by GELU) and GELU's output (4C, saved by the MLP's c_proj); plus fp32 statistics:
  mean and 1/std of both LayerNorms (4 numbers) and the softmax log-sum-exp of each head (nh);
* after the blocks: ln_f's input and output (2C b, + 2 fp32 statistics), the fp32
  log-probabilities of the loss (V x 4 bytes: the model casts the logits to fp32 for the
  cross-entropy) and the int64 input and target ids (16 bytes);
* with dropout > 0, one mask of C elements per dropout layer (1 + 2L), at 1 byte (CUDA keeps
  bool masks; the CPU keeps them in the dtype and runs attention dropout unfused, keeping
  T x T matrices, so there the estimate is low: 0.70 of the measured bytes for a tiny model).

Fused (flash / memory-efficient) attention saves q, k, v, the output and the log-sum-exp,
never the T x T matrix; an unfused attention would add about 2 x nh x T numbers per token and
layer. ``tests/test_explain.py`` checks the estimate against the bytes of the tensors that
autograd really saves (deduplicated by storage) in a forward pass of a small model.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

# Attention maps live in their own module; these names stay importable from here.
from nanogpt.attention_maps import (  # noqa: F401
    attention_maps,
    forward_with_hooks,
    plot_attention,
    run_attention,
    token_labels,
    visible_attention,
)
from nanogpt.budget import DTYPE_BYTES, activation_bytes, block_parameter_counts, human_bytes, kv_cache_bytes  # noqa: F401
from nanogpt.budget import check_shape
from nanogpt.report import FLOPS_LABELS, format_report, human_flops  # noqa: F401 - the text form; importable from here
from nanogpt.errors import NanoGPTError
from nanogpt.resolve import GPT2_VOCAB, SHAKESPEARE_CHARS  # noqa: F401 - re-exported
from nanogpt.resolve import model_config, resolve_source

if TYPE_CHECKING:  # torch is imported inside functions so that `--help` stays instant
    import torch

    from nanogpt.config import GPTConfig
    from nanogpt.model import GPT


# --------------------------------------------------------------------------------------------
# Forward pass: the table of tensors and shapes


@dataclass(frozen=True)
class ShapeRow:
    """One tensor of the forward pass. ``key`` names it for the hook check ('h.' = every block)."""

    key: str
    tensor: str  # what it is called, as in model.py
    symbols: tuple[str, ...]  # the shape in letters: ("B", "nh", "T", "hs")
    shape: tuple[int, ...]  # the shape in numbers
    note: str

    @property
    def per_block(self) -> bool:
        return self.key.startswith("h.")


# What the MLP's activation is called in the forward table, by GPTConfig.activation.
GELU_NOTES = {"gelu_tanh": "GELU (tanh approximation)", "gelu": "GELU (exact, erf form)"}


def dims(config: "GPTConfig", batch_size: int, seq_len: int) -> dict[str, int]:
    """The letters used in shapes, with their values."""
    return {
        "B": batch_size,
        "T": seq_len,
        "C": config.n_embd,
        "nh": config.n_head,
        "hs": config.head_dim,
        "V": config.vocab_size,
        "L": config.n_layer,
        "H": config.mlp_width,
    }


def _norm_name(config: "GPTConfig") -> str:
    return "LayerNorm" if config.arch == "gpt2" else "RMSNorm"


def _position_rows(config: "GPTConfig") -> list[tuple[str, str, str, str]]:
    if config.arch == "gpt2":
        return [("pos_emb", "wpe(pos)", "T C", "embeddings of positions 0..T-1, the same for every sequence"),
                ("x", "x = tok_emb + pos_emb", "B T C", "the residual stream: C numbers per token")]
    return [("x", "x = tok_emb", "B T C", "the residual stream; positions enter as rotations of q and k")]


def _mlp_rows(config: "GPTConfig") -> list[tuple[str, str, str, str]]:
    if config.arch == "gpt2":
        return [("h.c_fc", "mlp.c_fc", "B T 4C", "MLP up-projection: C -> 4C"),
                ("h.gelu", "mlp.gelu", "B T 4C", GELU_NOTES.get(config.activation, config.activation) + ", elementwise"),
                ("h.mlp_proj", "mlp.c_proj", "B T C", "MLP down-projection: 4C -> C")]
    return [("h.c_fc", "mlp.c_fc", "B T 2H", "gate and up in one matmul: C -> 2H"),
            ("h.gated", "silu(gate) * up", "B T H", "SiLU of the gate times the up-projection, elementwise"),
            ("h.mlp_proj", "mlp.c_proj", "B T C", "MLP down-projection: H -> C")]


def forward_table(config: "GPTConfig", batch_size: int = 1, seq_len: int | None = None) -> list[ShapeRow]:
    """The tensors of one forward pass of ``GPT(config)`` on ``[batch_size, seq_len]`` token ids.

    Rows whose key starts with ``h.`` happen in every one of the ``n_layer`` blocks.
    """
    T = config.block_size if seq_len is None else seq_len
    d = dims(config, batch_size, T)

    def value(sym: str) -> int:
        # "3C" -> 3 * C
        num = sym.rstrip("BTCVnhsH")
        return (int(num) if num else 1) * d[sym[len(num):]]

    spec = [
        ("idx", "idx", "B T", "token ids (int64): B sequences of T tokens"),
        ("tok_emb", "wte(idx)", "B T C", "token embedding: each id picks a row of wte [V, C]"),
        *_position_rows(config),
        ("h.ln_1", "ln_1(x)", "B T C", f"{_norm_name(config)} over the C channels of each token"),
        ("h.c_attn", "attn.c_attn", "B T 3C", "q, k and v of all heads in one matmul: C -> 3C"),
        ("h.q", "q", "B nh T hs", "split 3C into q, k, v; split C into nh heads of hs"),
        ("h.k", "k", "B nh T hs", "keys, one per token and head"),
        ("h.v", "v", "B nh T hs", "values, one per token and head"),
        ("h.scores", "q @ k^T / sqrt(hs)", "B nh T T", "each token's query against every key, per head"),
        ("h.probs", "causal softmax", "B nh T T", "future (above the diagonal) masked; rows sum to 1"),
        ("h.att_v", "att @ v", "B nh T hs", "each token's weighted mix of the values it may see"),
        ("h.merge", "merge heads", "B T C", "heads side by side again: nh x hs = C"),
        ("h.attn_proj", "attn.c_proj", "B T C", "mix the heads: C -> C"),
        ("h.resid_1", "x + attn", "B T C", "residual connection"),
        ("h.ln_2", "ln_2(x)", "B T C", _norm_name(config)),
        *_mlp_rows(config),
        ("h.resid_2", "x + mlp", "B T C", "residual connection: the block's output"),
        ("ln_f", "ln_f(x)", "B T C", f"final {_norm_name(config)}"),
        ("logits", "lm_head -> logits", "B T V", "a score for each of the V token ids, per position"),
    ]
    rows = []
    for key, tensor, syms, note in spec:
        symbols = tuple(syms.split())
        rows.append(ShapeRow(key, tensor, symbols, tuple(value(s) for s in symbols), note))
    return rows


def capture_shapes(model: "GPT", idx: "torch.Tensor") -> dict[str, tuple[int, ...]]:
    """Shapes of the forward pass of ``model`` on ``idx``, captured by forward hooks.

    Keys are those of :func:`forward_table`, with ``h.{i}.`` for block i (``h.0.q``, ...).
    Works on the meta device (shapes only, nothing computed) and on real devices.
    """

    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def on_output(key: str):
        def hook(module, inputs, output):
            shapes[key] = tuple(output.shape)

        return hook

    def on_input(key: str):
        def hook(module, inputs):
            shapes[key] = tuple(inputs[0].shape)

        return hook

    def on_attend(i: int):
        def hook(module, inputs, output):
            for name, t in zip(("q", "k", "v"), inputs):
                shapes[f"h.{i}.{name}"] = tuple(t.shape)
            shapes[f"h.{i}.att_v"] = tuple(output.shape)

        return hook

    def on_probs(i: int):
        def hook(module, inputs, output):
            # the scores are the softmax's input: the same (B, nh, T, T) shape
            shapes[f"h.{i}.scores"] = shapes[f"h.{i}.probs"] = tuple(output.shape)

        return hook

    with visible_attention(model):
        tr = model.transformer
        handles.append(model.register_forward_pre_hook(on_input("idx")))
        handles.append(tr.wte.register_forward_hook(on_output("tok_emb")))
        if "wpe" in tr:
            handles.append(tr.wpe.register_forward_hook(on_output("pos_emb")))
        handles.append(tr.drop.register_forward_hook(on_output("x")))
        for i, block in enumerate(tr.h):
            p = f"h.{i}."
            handles += [
                block.ln_1.register_forward_hook(on_output(p + "ln_1")),
                block.attn.c_attn.register_forward_hook(on_output(p + "c_attn")),
                block.attn.attend.register_forward_hook(on_attend(i)),
                block.attn.attend.probs.register_forward_hook(on_probs(i)),
                block.attn.c_proj.register_forward_pre_hook(on_input(p + "merge")),
                block.attn.c_proj.register_forward_hook(on_output(p + "attn_proj")),
                block.ln_2.register_forward_pre_hook(on_input(p + "resid_1")),
                block.ln_2.register_forward_hook(on_output(p + "ln_2")),
                block.mlp.c_fc.register_forward_hook(on_output(p + "c_fc")),
                block.mlp.gelu.register_forward_hook(on_output(p + "gelu")) if hasattr(block.mlp, "gelu")
                else block.mlp.c_proj.register_forward_pre_hook(on_input(p + "gated")),
                block.mlp.c_proj.register_forward_hook(on_output(p + "mlp_proj")),
                block.register_forward_hook(on_output(p + "resid_2")),
            ]
        handles.append(tr.ln_f.register_forward_hook(on_output("ln_f")))
        handles.append(model.lm_head.register_forward_hook(on_output("logits")))
        forward_with_hooks(model, idx, handles)
    return shapes


def check_table(rows: Sequence[ShapeRow], captured: dict[str, tuple[int, ...]], n_layer: int) -> list[str]:
    """Differences between the table and captured shapes (empty when every shape agrees)."""
    problems = []
    for row in rows:
        keys = [f"h.{i}.{row.key[2:]}" for i in range(n_layer)] if row.per_block else [row.key]
        for key in keys:
            got = captured.get(key)
            if got != row.shape:
                problems.append(f"{key}: table {list(row.shape)}, module {list(got) if got else 'not captured'}")
    return problems


def check_on_meta(config: "GPTConfig", batch_size: int, seq_len: int, rows: Sequence[ShapeRow]) -> None:
    """Run the real module on the meta device and make sure the table says what it does."""
    import torch

    from nanogpt.model import GPT

    with torch.device("meta"):
        model = GPT(config)
        idx = torch.zeros(batch_size, seq_len, dtype=torch.long)
    problems = check_table(rows, capture_shapes(model, idx), config.n_layer)
    if problems:  # a bug in this module, not a user error: keep the traceback
        raise RuntimeError("the shape table disagrees with the model: " + "; ".join(problems[:5]))


# --------------------------------------------------------------------------------------------
# Parameters


def parameter_table(config: "GPTConfig") -> dict[str, Any]:
    """Parameters per component (shapes and counts) and totals, the tied lm_head counted once.

    ``total`` equals ``GPT(config).num_params()``; ``total_without_wpe`` equals
    ``num_params(non_embedding=True)``.
    """
    V, L, bias = config.vocab_size, config.n_layer, config.bias
    C = config.n_embd
    counts = block_parameter_counts(config)  # the formulas, shared with the size limits

    def linear(name: str, s_in: str, s_out: str) -> tuple[str, int]:
        return f"[{s_out}, {s_in}]" + (f" + [{s_out}]" if bias else ""), counts[name]

    def norm() -> tuple[str, int]:
        return ("[C] + [C]" if bias else "[C]"), counts["ln_1"]

    gains = "LayerNorm gain and bias" if config.arch == "gpt2" else "RMSNorm gain"
    per_block = [
        ("ln_1", *norm(), gains),
        ("attn.c_attn", *linear("attn.c_attn", "C", "3C"), "q, k, v projections of all heads"),
        ("attn.c_proj", *linear("attn.c_proj", "C", "C"), "attention output projection"),
        *([("attn.q_norm", "[hs]", counts["attn.q_norm"], "RMSNorm gain of each head's queries"),
           ("attn.k_norm", "[hs]", counts["attn.k_norm"], "RMSNorm gain of each head's keys")] if "attn.q_norm" in counts else []),
        ("ln_2", *norm(), gains),
        *([("mlp.c_fc", *linear("mlp.c_fc", "C", "4C"), "MLP up-projection"),
           ("mlp.c_proj", *linear("mlp.c_proj", "4C", "C"), "MLP down-projection")] if config.arch == "gpt2" else
          [("mlp.c_fc", *linear("mlp.c_fc", "C", "2H"), "gate and up projections"),
           ("mlp.c_proj", *linear("mlp.c_proj", "H", "C"), "MLP down-projection")]),
    ]
    block = sum(n for _, _, n, _ in per_block)
    wte, wpe = V * C, (config.block_size * C if config.arch == "gpt2" else 0)
    head = 0 if config.tie_embeddings else V * C
    ln_f = norm()[1]
    total = wte + wpe + L * block + ln_f + head
    return {
        "components": [
            {"name": "wte", "shape": "[V, C]", "count": wte,
             "note": "token embedding" + ("; also the output layer (tied)" if config.tie_embeddings else "")},
            *([{"name": "wpe", "shape": "[block_size, C]", "count": wpe, "note": "position embedding"}] if wpe else []),
            *({"name": f"h.*.{n}", "shape": s, "count": c, "note": note} for n, s, c, note in per_block),
            {"name": "one block", "shape": "", "count": block, "note": ""},
            {"name": f"{L} blocks", "shape": "", "count": L * block, "note": f"{L} x {block:,}"},
            {"name": "ln_f", "shape": norm()[0], "count": ln_f, "note": f"final {_norm_name(config)}"},
            {"name": "lm_head", "shape": "[V, C]", "count": head,
             "note": "its own matrix (untied)" if head else "tied: the same matrix as wte, not counted again"},
        ],
        "per_block": block,
        "total": total,
        "total_without_wpe": total - wpe,
        "tied_matrix": wte if config.tie_embeddings else 0,
        "total_if_untied": total + (wte if config.tie_embeddings else 0),
    }


# --------------------------------------------------------------------------------------------
# FLOPs


def flops_summary(config: "GPTConfig", seq_len: int) -> dict[str, Any]:
    """FLOPs per token from :mod:`nanogpt.flops`, split into weight matmuls and attention.

    ``attention`` is ``q @ k^T`` plus ``att @ v`` (they grow with ``seq_len``); ``matmuls`` is
    every product with a weight matrix (c_attn, c_proj, c_fc, mlp c_proj, lm_head). A training
    step (forward + backward) costs three times the forward pass, term by term.
    """
    from nanogpt import flops

    parts = {k: int(v) for k, v in flops.flops_breakdown(config, seq_len).items() if k != "total"}
    forward = int(flops.flops_per_token(config, seq_len, backward=False))
    both = int(flops.flops_per_token(config, seq_len, backward=True))
    attention = sum(v for k, v in parts.items() if k in ATTENTION_TERMS)
    return {
        "seq_len": seq_len,
        "forward_per_token": forward,
        "forward_backward_per_token": both,
        "forward_matmuls_per_token": forward - attention,
        "forward_attention_per_token": attention,
        "forward_backward_matmuls_per_token": both - 3 * attention,
        "forward_backward_attention_per_token": 3 * attention,
        "forward_breakdown_per_token": parts,
    }


# The two products of flops_breakdown that are attention proper rather than weight matmuls.
ATTENTION_TERMS = ("attn_scores", "attn_values")


# --------------------------------------------------------------------------------------------
# Memory


def saved_activation_bytes(model: "GPT", idx: "torch.Tensor", targets: "torch.Tensor") -> int:
    """Measured activation memory: bytes of the tensors autograd saves in a training forward pass.

    These are exactly what a training step holds between forward and backward besides the
    weights, gradients and optimizer state, so they set the activation part of the peak. Saved
    tensors are often views of one another (q, k, v of one c_attn output; a Linear's input and
    the previous op's output), so they are counted once per storage; storages of parameters
    (weights saved by matmuls) are left out.
    """
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(idx, targets)
    del loss  # frees the graph and the saved tensors
    return sum(storages.values())


def memory_table(config: "GPTConfig", batch_size: int, seq_len: int, dtype: str, n_params: int) -> dict[str, Any]:
    """Bytes of weights, gradients, AdamW state, activations and KV cache in ``dtype``."""
    b = DTYPE_BYTES[dtype]
    weights = n_params * b
    grads = n_params * b
    adamw = n_params * 2 * 4  # exp_avg and exp_avg_sq, fp32
    acts = activation_bytes(config, batch_size, seq_len, dtype)
    kv_token = kv_cache_bytes(config, 1, 1, dtype)  # k and v: C numbers per layer
    kv_full = kv_cache_bytes(config, batch_size, config.block_size, dtype)
    return {
        "dtype": dtype,
        "bytes_per_number": b,
        "weights": weights,
        "gradients": grads,
        "adamw_state": adamw,
        "activations": acts,
        "training_total": weights + grads + adamw + acts,
        "kv_cache_per_token": kv_token,
        "kv_cache_full_context": kv_full,
        "inference_total": weights + kv_full,
    }


# --------------------------------------------------------------------------------------------
# The whole report


def explain(config: "GPTConfig", batch_size: int = 1, dtype: str = "float32", source: str = "") -> dict[str, Any]:
    """Everything ``nanogpt inspect`` prints, as plain data (what ``--json`` writes).

    The sequence length T is the configuration's ``block_size`` (a full context).
    """
    if batch_size <= 0:
        raise NanoGPTError(f"--batch-size must be positive, got {batch_size}")
    if dtype not in DTYPE_BYTES:
        raise NanoGPTError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    T = config.block_size
    check_shape(config, batch_size, T, lower="--block-size or --batch-size (or pick a smaller model)")
    rows = forward_table(config, batch_size, T)
    check_on_meta(config, batch_size, T, rows)
    params = parameter_table(config)
    return {
        "source": source,
        "config": config.to_dict(),
        "dims": dims(config, batch_size, T),
        "forward": [{**asdict(r), "per_block": r.per_block} for r in rows],
        "parameters": params,
        "flops": flops_summary(config, T),
        "memory": memory_table(config, batch_size, T, dtype, params["total"]),
    }


# --------------------------------------------------------------------------------------------
# Where the configuration comes from

# What `nanogpt inspect SOURCE` takes (hub names are GPT-2 presets here: no download needed).
INSPECT_KINDS = frozenset({"run", "hf", "nanogpt", "preset"})


def resolve_config(
    source: str | None, preset: str | None, block_size: int | None = None, vocab_size: int | None = None
) -> tuple["GPTConfig", str]:
    """The configuration to explain and a description of where it came from.

    ``source`` is a run folder, a Hugging Face folder or a preset name (see
    :func:`nanogpt.resolve.resolve_source`); ``preset`` a preset name; without either, GPT-2
    small. ``block_size`` replaces the context length (for a trained model only downwards: its
    position table cannot grow); ``vocab_size`` is for presets only.
    """
    if source and preset:
        raise NanoGPTError("pass either a folder or --preset, not both")
    if block_size is not None and block_size <= 0:
        raise NanoGPTError(f"--block-size must be positive, got {block_size}")
    if vocab_size is not None and vocab_size <= 0:
        raise NanoGPTError(f"--vocab-size must be positive, got {vocab_size}")
    if preset or not source:
        src = resolve_source(preset or "gpt2", {"preset"})
    else:
        src = resolve_source(source, INSPECT_KINDS, need_weights=False)
    if vocab_size is not None and src.kind != "preset":
        raise NanoGPTError("--vocab-size only applies to presets; a trained model's vocabulary is fixed")
    config, where = model_config(src, vocab_size)
    if block_size is not None and src.kind != "preset" and block_size > config.block_size:
        raise NanoGPTError(
            f"{source} has block_size {config.block_size}; --block-size can only shrink it "
            f"(1..{config.block_size}), got {block_size}"
        )
    if block_size is not None:
        config.block_size = block_size
    return config, where


# --------------------------------------------------------------------------------------------
# CLI


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``nanogpt inspect``."""
    parser.add_argument(
        "source", nargs="?", default=None,
        help="a run folder, a Hugging Face folder, a nanoGPT ckpt.pt, or a preset name (default: --preset gpt2)",
    )
    parser.add_argument(
        "--preset", default=None,
        help="gpt2 | gpt2-medium | gpt2-large | gpt2-xl, or a training preset (shakespeare-char, gpt2-124m, ...)",
    )
    parser.add_argument("--block-size", type=int, default=None, help="context length T to explain (default: the model's)")
    parser.add_argument("--vocab-size", type=int, default=None, help="vocabulary size V for a preset (default: the preset's)")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences per batch B (default: 1)")
    parser.add_argument("--dtype", choices=list(DTYPE_BYTES), default="float32", help="number format for memory sizes (default: float32)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    group = parser.add_argument_group("attention maps (a trained model)")
    group.add_argument("--attention", metavar="PROMPT", default=None, help="draw every head's attention on this prompt")
    group.add_argument("--layer", default="-1", help="layer to draw (0-based, negative from the end; default: the last) or 'all'")
    group.add_argument("--out", default="attention.png", help="PNG file to write (default: attention.png)")
    group.add_argument("--device", default="cpu", help="device to run the model on for --attention (default: cpu)")


def cli_main(args: argparse.Namespace) -> int:
    """Entry point of ``nanogpt inspect``."""
    if args.attention is not None:
        return run_attention(args)
    config, where = resolve_config(args.source, args.preset, args.block_size, args.vocab_size)
    report = explain(config, batch_size=args.batch_size, dtype=args.dtype, source=where)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
