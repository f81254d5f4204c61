"""Muon for the Transformer's hidden matrices, AdamW for everything else, in one optimizer.

Muon ("MomentUm Orthogonalized by Newton-schulz", K. Jordan et al., 2024) keeps SGD momentum
for each weight matrix and replaces the update by the nearest semi-orthogonal matrix: every
direction the momentum points in moves by the same amount, so rare directions are not drowned
by the dominant ones. A few Newton-Schulz iterations approximate that orthogonalisation with
matrix products only (no SVD), which is cheap next to a training step. Muon is defined for
hidden 2-D weights; the embeddings, the tied output head, biases and LayerNorm gains keep AdamW.

One ``torch.optim.Optimizer`` holds both kinds of parameter groups (``"muon": True`` marks
the Muon ones) so that checkpoints, exact resume, gradient scaling and the learning-rate
schedule treat it like AdamW. Each group may carry ``lr_scale``: the training loop sets
``group["lr"] = schedule_lr * lr_scale``, so Muon's larger learning rate follows the same
warmup and decay as AdamW's.

The optimizer and its schedule live together here: :func:`configure_optimizer` builds the one
a run uses (AdamW, or Muon with ``optim.name == "muon"``) and :func:`lr_at` gives the learning
rate of each iteration. Training, ``nanogpt bench`` and the benchmarks all take them from here.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch.optim.adamw import adamw

from nanogpt.config import OptimConfig

# Coefficients of the quintic iteration x <- a x + b (x x^T) x + c (x x^T)^2 x. They are
# chosen (Jordan et al.) to push every singular value in (0, 1] quickly into roughly
# [0.7, 1.2] rather than to converge to exactly 1: for an update direction that is close enough.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T (g: (m, n) or a stack (k, m, n)), by Newton-Schulz in bf16.

    bf16 is enough: the result only has to be near-orthogonal, not exact, and it halves the
    cost of the products. Works on a stack of same-shaped matrices at once (one batched product
    per term instead of one small product per matrix: small products are dispatch-bound on
    CPUs). Returns a tensor of g's shape in bf16.
    """
    a, b, c = NS_COEFFS
    x = g.to(torch.bfloat16)
    single = x.dim() == 2
    if single:
        x = x.unsqueeze(0)  # (1, m, n)
    # Iterate on the smaller Gram matrix: x x^T for a wide x, x^T x for a tall one (the products
    # take the transposed operand as it is: no transposed copy of x).
    tall = x.size(-2) > x.size(-1)
    # Scale so the largest singular value is at most 1 (the Frobenius norm bounds it).
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = torch.bmm(x.mT, x) if tall else torch.bmm(x, x.mT)  # (k, s, s), s = min(m, n)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b*gram + c*gram^2 (symmetric)
        poly.diagonal(dim1=-2, dim2=-1).add_(a)  # a*x + poly @ x = (a*I + poly) @ x: no pass over x
        x = torch.bmm(x, poly) if tall else torch.bmm(poly, x)
    return x[0] if single else x


def _has_fused_adamw(device: torch.device) -> bool:
    """Whether torch has a fused AdamW kernel here: one kernel for the whole update (CPU too, since
    torch 2.4), several times faster than foreach on CPUs (benchmarks/README.md, "Runtime choices")."""
    return device.type in ("cuda", "cpu")


class Muon(torch.optim.Optimizer):
    """Muon on groups marked ``muon=True``; AdamW (decoupled weight decay) on the others.

    Muon groups: ``lr``, ``momentum`` (0.95), ``nesterov`` (True), ``weight_decay``
    (decoupled: ``p *= 1 - lr * wd``), ``ns_steps`` (5). The orthogonalised update is scaled
    by ``sqrt(max(1, rows / cols))`` so that tall and wide matrices change their outputs by
    comparable amounts. AdamW groups: ``lr``, ``betas``, ``eps``, ``weight_decay``, with the
    same arithmetic as ``torch.optim.AdamW``.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, betas=betas, eps=eps,
                        weight_decay=weight_decay, muon=False, lr_scale=1.0)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups take 2-D weight matrices only; put other parameters in an AdamW group")

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict[str, Any]) -> None:
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["momentum_buffer"].mul_(mom).add_(p.grad)  # (rows, cols)
            by_shape.setdefault(tuple(p.shape), []).append(p)
        for (rows, cols), params in by_shape.items():
            # the same matrix of every layer, as one bf16 stack filled in one pass per matrix
            stack = torch.empty(len(params), rows, cols, dtype=torch.bfloat16, device=params[0].device)
            for p, direction in zip(params, stack):
                buf = self.state[p]["momentum_buffer"]
                if group["nesterov"]:
                    torch.add(p.grad, buf, alpha=mom, out=direction)
                else:
                    direction.copy_(buf)
            updates = orthogonalize(stack, group["ns_steps"])
            scale = max(1.0, rows / cols) ** 0.5
            for p, update in zip(params, updates):
                if wd:
                    p.mul_(1.0 - lr * wd)
                p.add_(update, alpha=-lr * scale)

    def _adamw_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif state["step"].device != p.device:  # a checkpoint's steps load onto the CPU
                state["step"] = state["step"].to(p.device)
        if not params:
            return
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        # torch's own AdamW arithmetic, all the group's tensors in one fused kernel where torch has one
        fused = all(_has_fused_adamw(p.device) for p in params)
        adamw(
            params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
            [s["step"] for s in states], fused=fused, foreach=None if fused else True, amsgrad=False, beta1=beta1,
            beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
        )


def muon_param_groups(
    model: torch.nn.Module, lr: float, muon_lr: float, weight_decay: float, muon_weight_decay: float
) -> list[dict[str, Any]]:
    """Muon for the 2-D weights inside the Transformer blocks; AdamW for the rest.

    The token embedding (tied to the output head) and the position embedding are lookups, not
    hidden linear maps, so they stay on AdamW with weight decay; biases and LayerNorm gains on
    AdamW without it, as in ``configure_optimizer``.
    """
    hidden, embed, other = [], [], []
    for name, p in model.named_parameters():  # the tied wte/lm_head matrix is listed once
        if not p.requires_grad:
            continue
        if p.dim() == 2 and name.startswith("transformer.h."):
            hidden.append(p)
        elif p.dim() >= 2:
            embed.append(p)
        else:
            other.append(p)
    groups: list[dict[str, Any]] = [
        {"params": hidden, "muon": True, "lr": muon_lr, "lr_scale": muon_lr / lr, "weight_decay": muon_weight_decay},
        {"params": embed, "muon": False, "lr": lr, "weight_decay": weight_decay},
        {"params": other, "muon": False, "lr": lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


# --------------------------------------------------------------------------------------------
# The optimizer a run uses, and its learning-rate schedule


def configure_optimizer(model: torch.nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (dim >= 2) only; the fused kernel where torch has one.

    Biases and LayerNorm gains are not decayed: shrinking them toward zero has no
    regularising meaning. The tied wte/lm_head matrix appears once. With ``optim.name ==
    "muon"``, the blocks' weight matrices get :class:`Muon` instead.
    """
    if optim.name == "muon":
        groups = muon_param_groups(model, optim.lr, optim.muon_lr, optim.weight_decay, optim.muon_weight_decay)
        return Muon(groups, momentum=optim.muon_momentum, ns_steps=optim.muon_ns_steps, betas=(optim.beta1, optim.beta2),
                    eps=optim.eps)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = dict(lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)
    if _has_fused_adamw(device):
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True  # multi-tensor kernels instead of a Python loop over parameters
    return torch.optim.AdamW(groups, **kwargs)


def lr_at(it: int, optim: OptimConfig, max_iters: int, time_frac: float | None = None) -> float:
    """Learning rate at iteration ``it`` (0-based): linear warmup, then the chosen decay.

    The decay runs from the end of warmup to ``optim.lr_decay_iters`` (default ``max_iters``).
    With a time budget, ``time_frac`` (training time / budget) can end it sooner: progress is
    whichever of the two is further along, so a run stopped by its budget has finished its
    schedule on any machine.
    """
    if optim.warmup_iters > 0 and it < optim.warmup_iters:
        return optim.lr * (it + 1) / optim.warmup_iters
    if optim.schedule == "constant":
        return optim.lr
    decay_end = optim.lr_decay_iters or max_iters
    frac = (it - optim.warmup_iters) / max(1, decay_end - optim.warmup_iters)
    if time_frac is not None:
        frac = max(frac, time_frac)
    frac = min(max(frac, 0.0), 1.0)
    if optim.schedule == "wsd":
        # warmup, stable at lr, then linear to min_lr over the last decay_frac of the run
        start = 1.0 - optim.decay_frac
        if frac <= start:
            return optim.lr
        return optim.lr + (frac - start) / optim.decay_frac * (optim.min_lr - optim.lr)
    if optim.schedule == "linear":
        return optim.lr + frac * (optim.min_lr - optim.lr)
    coeff = 0.5 * (1.0 + math.cos(math.pi * frac))  # 1 -> 0
    return optim.min_lr + coeff * (optim.lr - optim.min_lr)
