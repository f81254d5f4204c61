"""The JSON behind the playground's explainer views, computed from the running model.

Each function takes the model (and tokenizer) and returns plain data; ``nanogpt.serve.api``
serves them under ``/api/*``. The callers hold the engine's lock: these functions run forward
passes and :func:`nanogpt.attention_maps.attention_maps` swaps the attention kernel for one.

* :func:`tokens_view` -- ids and text pieces (BPE vs characters is visible);
* :func:`next_token_view` -- the next-token distribution under temperature / top-k / top-p,
  with the candidates the filters cut marked as cut;
* :func:`shapes_view` -- ``inspect``'s shape table with T = the text's length, parameters, FLOPs;
* :func:`attention_view` -- every head's attention probabilities of one layer;
* :func:`logit_lens_view` -- the top guesses after each block (ln_f and the head applied to
  the residual stream at that point);
* :func:`curves_view` -- a run folder's ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from nanogpt.errors import NanoGPTError

if TYPE_CHECKING:
    import torch

    from nanogpt.model import GPT

MAX_ATTENTION_TOKENS = 256  # 12 heads x 256 x 256 numbers is already ~3 MB of JSON


def piece(tokenizer: Any, token_id: int) -> str:
    """The text of one token (a BPE token may be part of a UTF-8 character: shown as U+FFFD)."""
    return tokenizer.decode([int(token_id)])


def encode_text(tokenizer: Any, text: str, block_size: int) -> list[int]:
    """Token ids of ``text`` for a view: its last ``block_size`` tokens (what the model sees when
    sampling); empty text starts from end-of-text (or a newline), as ``sample`` does."""
    from nanogpt.generate import encode_prompt

    ids, _ = encode_prompt(tokenizer, text)
    return ids[-block_size:]


def tokens_view(tokenizer: Any, ids: Sequence[int]) -> dict[str, Any]:
    """The tokens of the text: ids and pieces, and which tokenizer made them."""
    return {
        "tokenizer": getattr(tokenizer, "name", type(tokenizer).__name__),
        "vocab_size": int(tokenizer.vocab_size),
        "tokens": [{"id": int(t), "piece": piece(tokenizer, t)} for t in ids],
    }


def _logits(model: "GPT", ids: Sequence[int]) -> "torch.Tensor":
    import torch

    device = model.lm_head.weight.device
    with torch.inference_mode():
        logits, _ = model(torch.tensor([list(ids)], dtype=torch.long, device=device))
    return logits[0].float()  # (T, V)


def _position(position: int | None, n: int) -> int:
    if position is None:
        return n - 1
    if not -n <= position < n:
        raise NanoGPTError(f"position {position} is outside the text's {n} tokens")
    return position % n


def next_token_view(model: "GPT", tokenizer: Any, ids: Sequence[int], temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, position: int | None = None,
                    k: int = 20) -> dict[str, Any]:
    """The distribution of the token after ``position`` (default: the last), as sampling sees it.

    ``prob`` is the probability after the temperature, before the filters; ``sampled_prob``
    after top-k / top-p (0 for a cut candidate). Temperature 0 is greedy: the argmax gets 1.
    """
    import torch

    from nanogpt.generate import SamplingParams, filter_logits

    SamplingParams(temperature, top_k, top_p)
    pos = _position(position, len(ids))
    limit = min(int(tokenizer.vocab_size), model.config.vocab_size)
    logits = _logits(model, ids)[pos, :limit]  # (V,)
    scaled = logits / (temperature if temperature > 0 else 1.0)
    probs = torch.softmax(scaled, dim=-1)
    if temperature == 0:
        kept = torch.zeros_like(probs, dtype=torch.bool)
        kept[int(torch.argmax(logits))] = True
    else:
        kept = torch.isfinite(filter_logits(scaled[None], top_k, top_p)[0])
    sampled = torch.where(kept, probs, torch.zeros_like(probs))
    sampled = sampled / sampled.sum()
    top = torch.topk(probs, min(k, probs.numel())).indices.tolist()
    entropy = float(-(probs * torch.log(probs.clamp_min(1e-30))).sum())
    return {
        "position": pos,
        "after": piece(tokenizer, ids[pos]),
        "settings": {"temperature": temperature, "top_k": top_k, "top_p": top_p},
        "kept": int(kept.sum()),
        "cut_mass": float(probs[~kept].sum()),
        "entropy_bits": entropy / math.log(2),
        "candidates": [
            {"id": t, "piece": piece(tokenizer, t), "prob": float(probs[t]), "sampled_prob": float(sampled[t]),
             "cut": not bool(kept[t])}
            for t in top
        ],
    }


def shapes_view(model: "GPT", seq_len: int) -> dict[str, Any]:
    """``inspect``'s forward table for one sequence of ``seq_len`` tokens, with parameters and FLOPs."""
    from nanogpt.explain import dims, flops_summary, forward_table, parameter_table

    cfg = model.config
    rows = forward_table(cfg, 1, seq_len)
    return {
        "dims": dims(cfg, 1, seq_len),
        "config": cfg.to_dict(),
        "forward": [{**asdict(r), "per_block": r.per_block} for r in rows],
        "parameters": parameter_table(cfg),
        "flops": flops_summary(cfg, seq_len),
        "attention_matrix": f"{cfg.n_head} heads x {seq_len} x {seq_len}",
    }


def attention_view(model: "GPT", tokenizer: Any, ids: Sequence[int], layer: int) -> dict[str, Any]:
    """Attention probabilities of every head of ``layer``: maps[h][i][j] = how much token i looks at j."""
    from nanogpt.attention_maps import attention_maps

    if len(ids) > MAX_ATTENTION_TOKENS:
        raise NanoGPTError(f"the attention view shows at most {MAX_ATTENTION_TOKENS} tokens; the text has {len(ids)}")
    n_layer = model.config.n_layer
    if not 0 <= layer < n_layer:
        raise NanoGPTError(f"layer {layer} does not exist; the model has layers 0..{n_layer - 1}")
    maps = attention_maps(model, ids, [layer])[layer]  # (nh, T, T)
    return {
        "layer": layer,
        "n_layer": n_layer,
        "n_head": int(maps.size(0)),
        "tokens": [piece(tokenizer, t) for t in ids],
        "maps": [[[round(float(p), 4) for p in row[: i + 1]] for i, row in enumerate(head.tolist())] for head in maps],
    }


def logit_lens_view(model: "GPT", tokenizer: Any, ids: Sequence[int], position: int | None = None,
                    k: int = 5) -> dict[str, Any]:
    """The top-``k`` next-token guesses at ``position`` after the embeddings and after each block.

    The residual stream at each point goes through the final LayerNorm and the head, as if the
    model ended there; the last row equals the model's own prediction.
    """
    import torch

    from nanogpt.attention_maps import forward_with_hooks

    pos = _position(position, len(ids))
    streams: list[torch.Tensor] = []
    tr = model.transformer

    def keep(module: Any, inputs: Any, output: torch.Tensor) -> None:
        streams.append(output[0, pos].detach())  # (C,)

    handles = [tr.drop.register_forward_hook(keep)] + [b.register_forward_hook(keep) for b in tr.h]
    device = model.lm_head.weight.device
    forward_with_hooks(model, torch.tensor([list(ids)], dtype=torch.long, device=device), handles)
    limit = min(int(tokenizer.vocab_size), model.config.vocab_size)
    layers = []
    with torch.inference_mode():
        for i, x in enumerate(streams):
            probs = torch.softmax(model.lm_head(tr.ln_f(x)).float()[:limit], dim=-1)
            vals, top = torch.topk(probs, min(k, limit))
            layers.append({
                "after": "embeddings" if i == 0 else f"block {i - 1}",
                "top": [{"id": t, "piece": piece(tokenizer, t), "prob": float(p)} for t, p in zip(top.tolist(), vals.tolist())],
            })
    return {"position": pos, "token": piece(tokenizer, ids[pos]), "layers": layers}


def curves_view(run_dir: str | Path | None) -> dict[str, Any]:
    """The rows of a run's ``metrics.jsonl`` (iteration, losses, ...); an error if there is no run."""
    if run_dir is None:
        raise NanoGPTError("training curves exist only for a run folder; this model came from elsewhere")
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise NanoGPTError(f"{path} not found: the run has no metrics")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if isinstance(row, dict):
            rows.append({k: v for k, v in row.items() if isinstance(v, (int, float, str)) or v is None})
    return {"run": str(run_dir), "rows": rows}
