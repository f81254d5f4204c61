"""Every target of a token stream scored once: the loss of a model over a whole split or text.

How tokens are scored (strided windows). A stream of N tokens has N - 1 targets: token j is
predicted from the tokens before it (token 0 has nothing before it and is not scored). With a
context of ``ctx`` tokens and a stride ``s`` (1 <= s <= ctx):

* the first window holds tokens 0..ctx-1 and scores targets 1..ctx;
* each further window ends ``s`` targets later, holds the ``ctx`` tokens before its end, and
  scores only its last ``s`` targets (the ones no earlier window scored).

So every target is scored exactly once. Past the first window a target sees between ``ctx - s
+ 1`` and ``ctx`` tokens of context: ``s = ctx`` (the default) is fastest and matches how
training measures val loss on random windows; a smaller stride gives every token more context
and a lower loss (``s = 1`` is a full sliding window, one forward pass per token).

Used by ``nanogpt eval`` and by training's evaluation of small splits (:func:`nanogpt.step.estimate_loss`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from torch.nn import functional as F

from nanogpt.errors import NanoGPTError
from nanogpt.model import GPT

if TYPE_CHECKING:
    from nanogpt.threads import ThreadTuner

# Cap on logits elements per forward pass (B x T x V, float32): about 256 MB.
MAX_LOGITS = 1 << 26


def windows_per_batch(batch_size: int, context: int, vocab_size: int) -> int:
    """Windows per forward pass: ``batch_size``, fewer when their logits would pass MAX_LOGITS."""
    return max(1, min(batch_size, MAX_LOGITS // (context * vocab_size)))


def windows(n_tokens: int, context: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """The evaluation windows of a stream of ``n_tokens``: (start, end, scored) triples.

    The window's input is tokens[start:end], its targets tokens[start+1:end+1], and only its
    last ``scored`` targets count. Together the windows score targets 1..n_tokens-1 once each.
    """
    if not 1 <= stride <= context:
        raise NanoGPTError(f"--stride must be in 1..{context} (the context), got {stride}")
    last = n_tokens - 1  # index of the last target
    if last < 1:
        return
    end = min(context, last)
    yield 0, end, end
    while end < last:
        new_end = min(end + stride, last)
        yield max(0, new_end - context), new_end, new_end - end
        end = new_end


@torch.inference_mode()
def score_tokens(
    model: GPT,
    tokens: np.ndarray | torch.Tensor,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    autocast: Any = None,
    progress: bool = False,
    threads: ThreadTuner | None = None,
) -> tuple[float, int]:
    """Total cross-entropy (nats, float64 sum) and number of targets scored over ``tokens`` (N,).

    See the module doc for the windows. ``autocast`` is a context manager factory (e.g.
    ``Runtime.autocast``) or None for the model's own dtype. The model runs in eval mode.
    ``progress``: a bar of scored tokens on stderr (drawn only on a terminal). ``threads`` (a
    ``nanogpt.threads.ThreadTuner``) chooses the CPU threads of each batch, one unit each; None
    leaves the thread count alone.
    """
    ctx = model.config.block_size if context is None else context
    if not 1 <= ctx <= model.config.block_size:
        raise NanoGPTError(f"--context must be in 1..{model.config.block_size} (the model's block_size), got {ctx}")
    stride = ctx if stride is None else stride
    if batch_size <= 0:
        raise NanoGPTError(f"--batch-size must be positive, got {batch_size}")
    device = model.lm_head.weight.device
    V = model.config.vocab_size

    def chunk(a: int, b: int) -> torch.Tensor:
        # slices are converted one window at a time: a memory-mapped split is never copied whole
        piece = tokens[a:b]
        return piece.long() if isinstance(piece, torch.Tensor) else torch.from_numpy(np.asarray(piece, dtype=np.int64))

    per_batch = windows_per_batch(batch_size, ctx, V)
    total = 0.0
    count = 0
    batch: list[tuple[int, int, int]] = []

    def run(batch: list[tuple[int, int, int]]) -> float:
        L = max(e - s for s, e, _ in batch)
        x = torch.zeros(len(batch), L, dtype=torch.long)  # (B, L), right-padded
        y = torch.full((len(batch), L), -1, dtype=torch.long)  # -1 = not scored
        for i, (s, e, k) in enumerate(batch):
            x[i, : e - s] = chunk(s, e)
            y[i, e - s - k : e - s] = chunk(e - k + 1, e + 1)  # the last k targets only
        if int(x.max()) >= V or int(y.max()) >= V:
            raise NanoGPTError(f"the data has token id {max(int(x.max()), int(y.max()))}, outside the model's vocabulary of {V}")
        x, y = x.to(device), y.to(device)
        with threads.unit() if threads is not None else contextlib.nullcontext():
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits, _ = model(x)  # (B, L, V)
            nll = F.cross_entropy(logits.float().view(-1, V), y.view(-1), ignore_index=-1, reduction="sum")
            return float(nll.double())  # a sync on an accelerator: the unit's time is real

    from tqdm.auto import tqdm

    bar = tqdm(total=max(len(tokens) - 1, 0), unit="tok", unit_scale=True, desc="eval", leave=False,
               disable=None if progress else True)  # None: only on a terminal
    was_training = model.training
    model.eval()  # no dropout while scoring; the caller's mode comes back at the end
    try:
        for w in windows(len(tokens), ctx, stride):
            batch.append(w)
            count += w[2]
            if len(batch) == per_batch:
                total += run(batch)
                bar.update(sum(k for _, _, k in batch))
                batch = []
        if batch:
            total += run(batch)
    finally:
        bar.close()
        model.train(was_training)
    return total, count
