"""Attention maps: the attention probabilities of every head of a trained model, drawn as heatmaps.

``nanogpt inspect RUN --attention PROMPT`` lands here. The model normally computes attention
with a fused kernel that never materialises the probabilities, so :func:`visible_attention`
swaps in the spelled-out attention of ``nanogpt.ops`` (the same function) for one forward
pass, and forward hooks on each block's ``attn.attend.probs`` read the ``(nh, T, T)`` weights;
the model's kernels are restored afterwards. ``nanogpt.explain`` uses the same context to
check its shape table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from nanogpt.errors import NanoGPTError

if TYPE_CHECKING:  # torch is imported inside functions so that `--help` stays instant
    import torch

    from nanogpt.model import GPT


@contextlib.contextmanager
def visible_attention(model: "GPT") -> Iterator[None]:
    """Run ``model`` with attention spelled out (``ops.MatmulAttention``: the same function), so that
    hooks on each block's ``attn.attend.probs`` see the attention weights; the kernels are restored after."""
    from nanogpt.ops import apply_kernels, kernels_of

    before = kernels_of(model)
    apply_kernels(model, dataclasses.replace(before, attention="matmul"))
    try:
        yield
    finally:
        apply_kernels(model, before)


def attention_maps(model: "GPT", token_ids: Sequence[int], layers: Iterable[int] | None = None) -> dict[int, "torch.Tensor"]:
    """Attention probabilities of one sequence: {layer: (nh, T, T) float32 CPU tensor}.

    Row i of a head's map is the distribution over tokens 0..i that token i attends to
    (zeros above the diagonal). Read by forward hooks on each block's attention weights
    (see :func:`visible_attention`); ``layers`` defaults to all of them.
    """
    import torch

    n_layer = len(model.transformer.h)
    wanted = list(range(n_layer)) if layers is None else list(layers)
    for i in wanted:
        if not 0 <= i < n_layer:
            raise NanoGPTError(f"layer {i} does not exist; the model has layers 0..{n_layer - 1}")
    if len(token_ids) == 0:
        raise NanoGPTError("the prompt is empty; pass some text to --attention")
    if len(token_ids) > model.config.block_size:
        raise NanoGPTError(
            f"the prompt is {len(token_ids)} tokens, more than the model's block_size ({model.config.block_size}); shorten it"
        )
    maps: dict[int, torch.Tensor] = {}

    def hook_for(i: int):
        def hook(module, inputs, output):
            maps[i] = output[0].float().cpu()  # (nh, T, T)

        return hook

    device = next(model.parameters()).device
    idx = torch.tensor([list(token_ids)], dtype=torch.long, device=device)  # (1, T)
    was_training = model.training
    model.eval()
    try:
        with visible_attention(model):
            handles = [model.transformer.h[i].attn.attend.probs.register_forward_hook(hook_for(i)) for i in wanted]
            forward_with_hooks(model, idx, handles)
    finally:
        model.train(was_training)
    return {i: maps[i] for i in wanted}


def forward_with_hooks(model: Any, idx: "torch.Tensor", handles: list) -> None:
    """One no-grad forward pass of ``model`` on ``idx``; the hooks are removed afterwards."""
    import torch

    try:
        with torch.no_grad():
            model(idx)
    finally:
        for h in handles:
            h.remove()


def token_labels(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """One printable label per token: newlines and tabs escaped, spaces shown as '·'."""
    labels = []
    for t in token_ids:
        text = tokenizer.decode([t])
        text = text.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u00b7")
        labels.append(text if text else "\u2205")
    return labels


def plot_attention(maps: dict[int, "torch.Tensor"], labels: Sequence[str], out: str | Path, title: str = "") -> Path:
    """Draw attention maps as a PNG and return its path.

    One layer: a grid of its heads, tokens on both axes (rows = the attending token, columns =
    the token attended to). Several layers: one row per layer, one column per head, no labels.
    Masked (future) entries are drawn in grey, so the causal triangle is visible.
    """
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nanogpt.textfont import readable

    layers = sorted(maps)
    nh, T, _ = maps[layers[0]].shape
    overview = len(layers) > 1
    if overview:
        nrows, ncols = len(layers), nh
        cell = min(1.6, 40 / max(nrows, ncols))
    else:
        ncols = math.ceil(math.sqrt(nh))
        nrows = math.ceil(nh / ncols)
        cell = min(max(3.0, 0.15 * T), 40 / max(nrows, ncols))  # inches per heatmap
    fig = Figure(figsize=(ncols * cell + 1.2, nrows * cell + 0.8), layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg, without pyplot or changing the global backend
    axes = fig.subplots(nrows, ncols, squeeze=False)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")  # the masked future: grey
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    image = None
    label_size = max(3.0, min(9.0, 0.75 * 72 * cell / T))  # points: about one token's height
    (title, *labels), family = readable([title, *labels])  # any script: a font that has it, or \uXXXX
    for ax in axes.flat:
        ax.set_axis_off()
    for li, layer in enumerate(layers):
        probs = maps[layer].numpy()
        for h in range(nh):
            ax = axes[li, h] if overview else axes.flat[h]
            ax.set_axis_on()
            image = ax.imshow(np.ma.masked_array(probs[h], mask=future), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            if overview:
                ax.set_xticks([])
                ax.set_yticks([])
                if li == 0:
                    ax.set_title(f"head {h}", fontsize=8)
                if h == 0:
                    ax.set_ylabel(f"layer {layer}", fontsize=8)
            else:
                ax.set_title(f"layer {layer}, head {h}", fontsize=9)
                step = max(1, math.ceil(T / 48))  # at most ~48 labels per axis
                ticks = list(range(0, T, step))
                ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=label_size, fontfamily=family)
                ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=label_size, fontfamily=family)
    if not overview:
        fig.supxlabel("token attended to (key)")
        fig.supylabel("attending token (query)")
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    if title:
        fig.suptitle(title, fontfamily=family)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def parse_layers(text: str, n_layer: int) -> list[int]:
    """``--layer``: an index (negative from the end) or 'all' -> the layers to draw."""
    if text == "all":
        return list(range(n_layer))
    try:
        layer = int(text)
    except ValueError:
        raise NanoGPTError(f"--layer must be an integer or 'all', got {text!r}") from None
    if not -n_layer <= layer < n_layer:
        raise NanoGPTError(f"--layer {layer} does not exist; the model has layers 0..{n_layer - 1} (or -1 for the last)")
    return [layer % n_layer]


def run_attention(args: argparse.Namespace) -> int:
    """``--attention``: load a trained model, compute its attention on the prompt, draw it."""
    if args.preset or not args.source:
        raise NanoGPTError("--attention needs a trained model: pass a run folder or a Hugging Face GPT-2 folder")
    from nanogpt.budget import check_model_fits
    from nanogpt.checkpoint import load_model
    from nanogpt.device import resolve_device
    from nanogpt.resolve import LOADABLE, model_config, resolve_source

    device = resolve_device(args.device)
    src = resolve_source(args.source, LOADABLE)
    check_model_fits(model_config(src)[0], device)  # before any weight is read
    loaded = load_model(src, device)
    if loaded.tokenizer is None:
        raise NanoGPTError(f"{args.source} does not say which tokenizer it was trained with; cannot encode the prompt")
    ids = loaded.tokenizer.encode(args.attention)
    layers = parse_layers(str(args.layer), loaded.model.config.n_layer)
    maps = attention_maps(loaded.model, ids, layers)
    which = "all layers" if len(layers) > 1 else f"layer {layers[0]}"
    out = plot_attention(maps, token_labels(loaded.tokenizer, ids), args.out, title=f"{args.source}: attention, {which}")
    print(f"wrote {out} ({which}, {loaded.model.config.n_head} heads, {len(ids)} tokens)")
    return 0
