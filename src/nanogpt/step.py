"""One training step, one evaluation, and what makes a run exactly resumable.

Shared by the training loop (``nanogpt.trainer``), ``nanogpt bench`` and the benchmarks, so
that they all measure and run the same step. Under ``torchrun`` every process calls these
together; with one process the collectives are skipped.
"""

from __future__ import annotations

import signal
from contextlib import nullcontext
from typing import Any

import torch

from nanogpt.config import TrainConfig
from nanogpt.device import Dist, Runtime


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    grad_clip: float,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One optimizer step over the micro-batches; returns the mean loss (a 0-d tensor).

    Under DDP, gradients are all-reduced only on the last micro-step (``no_sync`` before).
    The caller sets the learning rate beforehand.
    """
    n = len(batches)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    total = torch.zeros((), device=runtime.device)
    for i, (x, y) in enumerate(batches):
        sync = nullcontext() if (not ddp or i == n - 1) else model.no_sync()
        with sync:
            with runtime.autocast():
                _, loss = model(x, y, return_logits=False)
            loss = loss / n  # gradients of the mean over all micro-batches
            total += loss.detach()
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    fold = grad_clip > 0 and scaler is None and _fused_adam(optimizer)
    if fold:
        fold_clip_into_step(model, optimizer, grad_clip)
    elif grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if fold:
        optimizer.grad_scale = None  # type: ignore[attr-defined]
    optimizer.zero_grad(set_to_none=True)
    return total


def _fused_adam(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and bool(optimizer.defaults.get("fused"))


def fold_clip_into_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
    """Clip the gradients' global norm to ``grad_clip`` inside the fused AdamW step.

    ``clip_grad_norm_`` multiplies every gradient by the clip factor: a pass over all of them.
    The fused step divides each gradient by ``optimizer.grad_scale`` anyway (the hook that
    ``GradScaler`` uses to unscale), so the inverse factor goes there, for no extra pass.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    # clip_grad_norm_ scales by min(1, clip / (norm + 1e-6)); the step divides by its inverse
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / grad_clip, min=1.0)  # type: ignore[attr-defined]


# A split of at most this many times the tokens of the sampled estimate is scored whole instead.
WHOLE_SPLIT_FACTOR = 4


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module, splits: dict[str, Any], cfg: TrainConfig, runtime: Runtime, seed: int
) -> dict[str, float]:
    """Mean loss per split: exact on a small split, estimated from random batches on a large one.

    A split of at most ``WHOLE_SPLIT_FACTOR`` times the tokens of ``run.eval_iters`` batches is
    scored whole (every target once, in windows of ``block_size``: the loss that random windows
    estimate, with no sampling error, for at most that factor more work). Tiny Shakespeare's
    validation split is about the size of the CPU preset's 50-batch sample, whose loss moves by
    0.01 from one sampling seed to another: as much as the settings being compared. A larger
    split gets ``run.eval_iters`` random batches, averaged over all processes; they are the same
    at each evaluation (their own loader with a fixed seed), so successive evaluations compare
    like with like and training's random streams are untouched.
    """
    from nanogpt.data.loader import BatchLoader
    from nanogpt.scoring import score_tokens

    sampled = cfg.run.eval_iters * cfg.data.batch_size * cfg.model.block_size
    was_training = model.training
    model.eval()
    out = {}
    for name, tokens in splits.items():
        if len(tokens) <= WHOLE_SPLIT_FACTOR * sampled:  # every process scores the same whole split
            total, count = score_tokens(model, tokens, batch_size=cfg.data.batch_size, autocast=runtime.autocast)
            out[name] = total / count
            continue
        loader = BatchLoader(
            tokens, cfg.model.block_size, cfg.data.batch_size, seed=seed, rank=runtime.dist.rank,
            world_size=runtime.dist.world_size, device=runtime.device,
        )
        losses = torch.zeros(cfg.run.eval_iters, device=runtime.device)
        for k in range(cfg.run.eval_iters):
            x, y = loader.next_batch()
            with runtime.autocast():
                _, loss = model(x, y, return_logits=False)
            losses[k] = loss.float()
        mean = losses.mean()
        if runtime.dist.enabled:
            mean = all_reduce_mean(mean, runtime)
        out[name] = mean.item()
    model.train(was_training)
    return out


def all_reduce_mean(t: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    import torch.distributed as tdist

    t = t.detach().clone()
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)  # gloo has no AVG
    return t / runtime.dist.world_size


def all_reduce_any(flags: list[bool], runtime: Runtime) -> list[bool]:
    import torch.distributed as tdist

    t = torch.tensor([float(f) for f in flags], device=runtime.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def gather_loader_states(loader: Any, dist: Dist) -> dict[str, Any]:
    """Every rank's loader state, keyed by rank (all ranks must call this together)."""
    state = loader.state_dict()
    if not dist.enabled:
        return {"0": state}
    import torch.distributed as tdist

    states: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(states, state)
    return {str(r): s for r, s in enumerate(states)}


# --------------------------------------------------------------------------------------------
# Random streams and signals


def rng_state() -> dict[str, Any]:
    """The process's random streams (CPU, and every CUDA device's when there is CUDA)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore streams saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopRequested:
    """Turns the first SIGINT/SIGTERM into a flag so the loop can save and exit cleanly.

    A second signal restores the default behaviour (Ctrl-C twice kills at once).
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequested":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


