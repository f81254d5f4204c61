"""The text form of ``nanogpt inspect``'s report (``nanogpt.explain.explain`` makes the numbers)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from nanogpt.budget import human_bytes

FLOPS_LABELS = {
    "qkv": "attn.c_attn (q, k, v)",
    "attn_scores": "q @ k^T (scores)",
    "attn_values": "att @ v",
    "attn_proj": "attn.c_proj",
    "mlp_fc": "mlp.c_fc",
    "mlp_proj": "mlp.c_proj",
    "lm_head": "lm_head (logits)",
}


def human_flops(n: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} FLOP"


def _shape(t: Sequence[Any]) -> str:
    return "[" + ", ".join(str(x) for x in t) + "]"


def _table(rows: list[list[str] | str], right: Iterable[int] = ()) -> list[str]:
    """Align the columns of ``rows``; a plain string is a full-width line between rows."""
    right = set(right)
    cells_rows = [r for r in rows if not isinstance(r, str)]
    widths = [max(len(r[i]) for r in cells_rows) for i in range(len(cells_rows[0]))]
    out = []
    for r in rows:
        if isinstance(r, str):
            out.append("  " + r)
            continue
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def format_report(report: dict[str, Any]) -> str:
    """The human-readable text of ``nanogpt inspect``."""
    cfg, d, p, f, m = report["config"], report["dims"], report["parameters"], report["flops"], report["memory"]
    B, T, C, nh, hs, V, L = (d[k] for k in ("B", "T", "C", "nh", "hs", "V", "L"))
    lines = [
        f"Model: {L} layers, {nh} heads, n_embd {C}, block_size {cfg['block_size']}, vocab {V}, "
        f"bias {cfg['bias']}, dropout {cfg['dropout']}" + (f"  ({report['source']})" if report["source"] else ""),
        f"Letters: B = {B} sequence{'s' if B != 1 else ''}, T = {T} tokens, C = {C} channels, V = {V} token ids, "
        f"L = {L} blocks,",
        f"         nh = {nh} heads x hs = {hs} channels per head ({nh} x {hs} = {C} = C)",
        "",
        f"Forward pass: one call of the model processes all {B} x {T} tokens at once (every position in",
        "parallel, no loop over tokens). Shapes checked against hooks on the real module (meta device).",
    ]
    table: list[list[str] | str] = [["tensor", "shape", "numbers", "what happens"]]
    in_block = False
    for r in report["forward"]:
        if r["per_block"] and not in_block:
            table.append(f"-- in each of the {L} blocks h.0 .. h.{L - 1} (the same shapes in every block) --")
            in_block = True
        elif not r["per_block"] and in_block:
            table.append(f"-- end of block (x {L}) --")
            in_block = False
        sym = "[" + ", ".join(r["symbols"]) + "]"
        table.append([("  " if r["per_block"] else "") + r["tensor"], sym, _shape(r["shape"]), r["note"]])
    lines += _table(table)
    lines += [
        "",
        f"  The attention matrix is T x T = {T} x {T} per head: row i holds how much token i takes from",
        f"  tokens 0..i ({T * T:,} scores per head, {nh * T * T * B:,} per layer). The logits hold {V} scores",
        f"  at every position; position t predicts token t+1, so one forward pass trains on {B * T:,} predictions.",
        "",
        "Parameters",
    ]
    table = [["component", "shape", "count", ""]]
    for c in p["components"]:
        table.append([c["name"], c["shape"], f"{c['count']:,}", c["note"]])
    table.append(["total", "", f"{p['total']:,}", ""])
    table.append(["total without wpe", "", f"{p['total_without_wpe']:,}", "position embeddings do no matmul work"])
    lines += _table(table, right=[2])
    lines += [
        f"  Weight tying: lm_head.weight is wte.weight, one [V, C] = [{V}, {C}] matrix used to embed tokens",
        f"  and to score them at the output; untied, the model would have {p['tied_matrix']:,} more parameters",
        f"  ({p['total_if_untied']:,}).",
        "",
        f"FLOPs per token (sequences of T = {f['seq_len']} tokens; matmuls only, a multiply-add counts as 2;",
        "backward = 2 x forward, so training = 3 x forward)",
    ]
    table = [["", "forward", "forward + backward"]]
    for key, value in f["forward_breakdown_per_token"].items():
        table.append(["  " + FLOPS_LABELS.get(key, key), f"{value:,}", f"{3 * value:,}"])
    table += [
        ["weight matmuls", f"{f['forward_matmuls_per_token']:,}", f"{f['forward_backward_matmuls_per_token']:,}"],
        ["attention (q k^T, att @ v)", f"{f['forward_attention_per_token']:,}", f"{f['forward_backward_attention_per_token']:,}"],
        ["total", f"{f['forward_per_token']:,}", f"{f['forward_backward_per_token']:,}"],
        ["", human_flops(f["forward_per_token"]), human_flops(f["forward_backward_per_token"])],
    ]
    lines += _table(table, right=[1, 2])
    lines += ["", f"Memory in {m['dtype']} ({m['bytes_per_number']} bytes per number)"]
    table = [
        ["weights", human_bytes(m["weights"]), f"{p['total']:,} x {m['bytes_per_number']}"],
        ["gradients", human_bytes(m["gradients"]), "one per weight"],
        ["AdamW state", human_bytes(m["adamw_state"]), "2 moments per weight, fp32"],
        [f"activations (training, B={B}, T={T})", human_bytes(m["activations"]), "saved for the backward pass; formula in nanogpt/explain.py"],
        ["training step total", human_bytes(m["training_total"]), "weights + gradients + AdamW + activations"],
        ["KV cache per token", human_bytes(m["kv_cache_per_token"]), f"k and v: 2 x {L} layers x {C}"],
        [f"KV cache, full context ({B} x {cfg['block_size']})", human_bytes(m["kv_cache_full_context"]), ""],
        ["inference total", human_bytes(m["inference_total"]), "weights + full KV cache"],
    ]
    lines += _table(table, right=[1])
    if m["dtype"] != "float32":
        lines += [
            f"  Counted in {m['dtype']} (AdamW moments and the loss's log-probabilities in fp32). Training under",
            "  autocast, as 'nanogpt train' does, keeps fp32 weights and gradients and an fp32 residual stream.",
        ]
    return "\n".join(lines)
