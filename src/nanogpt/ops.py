"""Faster kernels for pieces of the model's math, each computing what its reference in ``model.py`` computes.

``model.py`` stays the plain reference. The runtime (``nanogpt.device``) decides once which of
these pay on the device at hand and installs them on a built model from outside with
:func:`apply_kernels`; the parameters and the state dict do not change, and each kernel has
a test against its reference.

* :class:`MatmulAttention` for :class:`~nanogpt.model.ScaledDotProductAttention`: the scores,
  mask and softmax spelled out as matmuls. On CPUs torch's fused attention is slow for short
  sequences in bf16. It also exposes the attention probabilities to hooks (``probs``), which
  ``nanogpt inspect`` uses to draw attention maps.
* :class:`ChunkedLinearCrossEntropy` for :class:`~nanogpt.model.LinearCrossEntropy`: the head
  and the loss a block of rows at a time, never holding the float32 (B*T, V) logits.
* :class:`RowLinear` for ``nn.Linear`` while decoding: one input row as a matrix-vector product.
* :class:`FusedRMSNorm` for :class:`~nanogpt.model.RMSNorm` (the modern block): a hand-written
  backward in fewer passes over the activations than autograd's chain of small ops.
* :class:`LowPrecisionStream` for the embeddings' ``nn.Dropout``: under autocast, the residual
  stream from there on is kept in the autocast dtype (the same function, rounded to bf16 between
  sublayers) instead of float32, which saves two casts of the stream per sublayer each way.
* :class:`NativeMatmulAttention`, :class:`NativeGELU` and :class:`NativeLayerNorm` (bf16 on
  AVX-512 BF16 CPUs): the causal softmax, the exact GELU and LayerNorm as hand-written C kernels
  (``nanogpt.native``); the softmax visits only the allowed scores and takes the scale, so no
  mask pass is needed; the GELU and its derivative are lookups in tables of every bf16 value.
* :class:`NativeCausalSelfAttention` for :class:`~nanogpt.model.CausalSelfAttention` (with the C
  kernels): from the q|k|v projection to the merged heads in one autograd function,
  which lays out the heads in one copy each way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nanogpt.model import (
    GPT,
    CausalSelfAttention,
    KeyValueStore,
    LinearCrossEntropy,
    RMSNorm,
    ScaledDotProductAttention,
    causal_mask,
)

ATTENTION_KERNELS = ("sdpa", "matmul")


class MatmulAttention(ScaledDotProductAttention):
    """The same attention as torch's fused kernel, as two matmuls around a masked softmax.

    The mask enters as an additive bias (0 where allowed, -inf elsewhere) and 1/sqrt(hs) as
    the product's alpha, so one ``baddbmm`` makes the masked, scaled scores.
    """

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__(dropout)
        self.probs = nn.Identity()  # a hook point: its input is the attention weights (B, nh, Tq, Tk)

    def weights(self, q3: torch.Tensor, k3: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(hs)) under the causal mask: (B*nh, Tq, hs), (B*nh, Tk, hs) -> (B*nh, Tq, Tk)."""
        t_query, t_key, hs = q3.size(1), k3.size(1), q3.size(2)
        allowed = causal_mask(t_query, t_key, q3.device)  # (Tq, Tk)
        bias = torch.zeros(t_query, t_key, dtype=q3.dtype, device=q3.device).masked_fill_(~allowed, float("-inf"))
        return F.softmax(torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=1.0 / math.sqrt(hs)), dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, nh, t_query, hs = q.shape
        t_key = k.size(-2)
        q3, k3, v3 = (t.reshape(B * nh, -1, hs) for t in (q, k, v))  # (B*nh, T, hs)
        att = self.probs(self.weights(q3, k3).view(B, nh, t_query, t_key)).view(B * nh, t_query, t_key)
        if self.training and self.dropout > 0:
            att = F.dropout(att, p=self.dropout)
        return (att @ v3).view(B, nh, t_query, hs)  # (B, nh, Tq, hs)


class _CausalSoftmaxFn(torch.autograd.Function):
    """softmax(scale * scores) under the causal mask, forward and backward in C (bf16)."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, scale: float) -> torch.Tensor:
        from nanogpt import native

        probs = native.causal_softmax(scores.contiguous(), scale)
        ctx.save_for_backward(probs)
        ctx.scale = scale
        return probs

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        from nanogpt import native

        (probs,) = ctx.saved_tensors
        return native.causal_softmax_backward(probs, grad.contiguous(), ctx.scale), None


class NativeMatmulAttention(MatmulAttention):
    """:class:`MatmulAttention` with the scale, mask and softmax in one C kernel each way, for bf16 on CPUs.

    The scores come from a plain ``bmm`` (no bias to broadcast first); other dtypes and devices
    take :class:`MatmulAttention`'s weights.
    """

    def runs_native(self, x: torch.Tensor) -> bool:
        """Whether attention over tensors like ``x`` (under the current autocast) runs the C softmax."""
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype  # the dtype bmm will produce
        return x.device.type == "cpu" and dtype is torch.bfloat16

    def fusable(self, x: torch.Tensor) -> bool:
        """Whether :class:`NativeCausalSelfAttention` may run this attention as one function:
        the C softmax, no dropout on the weights, and no hook on this module or its weights
        (the function calls neither)."""
        watched = any(m._forward_hooks or m._forward_pre_hooks for m in (self, self.probs))
        return self.runs_native(x) and not (self.training and self.dropout > 0) and not watched

    def weights(self, q3: torch.Tensor, k3: torch.Tensor) -> torch.Tensor:
        if not self.runs_native(q3):
            return super().weights(q3, k3)
        return _CausalSoftmaxFn.apply(torch.bmm(q3, k3.transpose(1, 2)), 1.0 / math.sqrt(q3.size(2)))


class _CausalAttentionFn(torch.autograd.Function):
    """Causal self-attention from the q|k|v projection (B, T, 3C) to the merged heads (B, T, C), bf16 on CPUs.

    The same products and C softmax as :class:`NativeMatmulAttention`, but the three head layouts
    (B*nh, T, hs) are made in one copy and their gradients written by the products straight into
    one buffer, turned back into the projection's layout by one more copy. Autograd through
    model.py's split, transposes and merge copies each tensor on its own and then concatenates
    the three gradients.
    """

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, n_head: int) -> torch.Tensor:
        from nanogpt import native

        B, T, C3 = qkv.shape
        hs = C3 // 3 // n_head
        heads = qkv.view(B, T, 3, n_head, hs).permute(2, 0, 3, 1, 4).contiguous()  # (3, B, nh, T, hs)
        q, k, v = heads.view(3, B * n_head, T, hs).unbind(0)
        ctx.scale = 1.0 / math.sqrt(hs)
        probs = native.causal_softmax(torch.bmm(q, k.transpose(1, 2)), ctx.scale)  # (B*nh, T, T)
        ctx.save_for_backward(heads, probs)
        y = torch.bmm(probs, v)  # (B*nh, T, hs)
        return y.view(B, n_head, T, hs).transpose(1, 2).reshape(B, T, C3 // 3)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        from nanogpt import native

        heads, probs = ctx.saved_tensors
        _, B, nh, T, hs = heads.shape
        q, k, v = heads.view(3, B * nh, T, hs).unbind(0)
        dy = grad.reshape(B, T, nh, hs).transpose(1, 2).reshape(B * nh, T, hs)
        dheads = torch.empty_like(heads)
        dq, dk, dv = dheads.view(3, B * nh, T, hs).unbind(0)
        torch.bmm(probs.transpose(1, 2), dy, out=dv)
        dscores = native.causal_softmax_backward(probs, torch.bmm(dy, v.transpose(1, 2)), ctx.scale)
        torch.bmm(dscores, k, out=dq)
        torch.bmm(dscores.transpose(1, 2), q, out=dk)
        return dheads.permute(1, 3, 0, 2, 4).reshape(B, T, 3 * nh * hs), None


class NativeCausalSelfAttention(CausalSelfAttention):
    """:class:`~nanogpt.model.CausalSelfAttention` that trains through :class:`_CausalAttentionFn`.

    Taken when its attention is :class:`NativeMatmulAttention` and may be fused (bf16 on a CPU,
    no attention dropout, no hooks on the attention or its weights), without a KV cache, rotary
    positions or q/k norms; otherwise model.py's forward.
    """

    def forward(self, x: torch.Tensor, kv_cache: KeyValueStore | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        attend = self.attend
        if (kv_cache is None and rope is None and not hasattr(self, "q_norm")
                and isinstance(attend, NativeMatmulAttention) and attend.fusable(x)):
            return self.resid_dropout(self.c_proj(_CausalAttentionFn.apply(self.c_attn(x), self.n_head)))
        return super().forward(x, kv_cache, rope)


class _GELUFn(torch.autograd.Function):
    """The exact GELU and its backward as table lookups in C (bf16): PyTorch's numbers, bit for bit."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        from nanogpt import native

        ctx.save_for_backward(x)
        return native.gelu(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        from nanogpt import native

        (x,) = ctx.saved_tensors
        return native.gelu_backward(grad.contiguous(), x)


class _LayerNormFn(torch.autograd.Function):
    """LayerNorm of a bf16 stream with float32 gains, forward and backward in C."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
        from nanogpt import native

        y, mean, rstd = native.layer_norm(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.with_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        from nanogpt import native

        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = native.layer_norm_backward(grad.contiguous(), x, weight, mean, rstd, ctx.with_bias)
        return dx, dw, db, None


class NativeLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` in C for a contiguous bf16 CPU input with float32 gains (the bf16 residual stream)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.dtype is torch.bfloat16 and x.device.type == "cpu" and x.is_contiguous() and w is not None
                and w.dtype is torch.float32 and len(self.normalized_shape) == 1):
            return _LayerNormFn.apply(x, w, self.bias, self.eps)
        return super().forward(x)


class NativeGELU(nn.GELU):
    """``nn.GELU`` by table lookups in C for contiguous bf16 CPU inputs (the exact GELU only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.approximate == "none" and x.dtype is torch.bfloat16 and x.device.type == "cpu" and x.is_contiguous():
            return _GELUFn.apply(x)
        return super().forward(x)


class _ChunkedLinearCrossEntropyFn(torch.autograd.Function):
    """Mean cross-entropy of x @ weight^T against targets, a block of rows at a time.

    Each block's float32 log-softmax gives its loss and is turned in place into the gradient
    (softmax - onehot) / n, kept in the matmul dtype: one (N, V) tensor in all, none without
    gradients. Backward multiplies it into the gradients of x and of the weight.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        # x: (N, C), weight: (V, C) in the matmul dtype; targets: (N,) int64, -1 = ignored
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid = targets != -1  # (N,)
        n_valid = valid.sum().clamp(min=1)
        safe = targets.clamp(min=0).unsqueeze(1)  # (N, 1): ignored rows point at id 0, masked below
        grad = torch.empty(x.size(0), weight.size(0), dtype=x.dtype, device=x.device) if need_grad else None  # (N, V)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for s in range(0, x.size(0), rows):
            e = min(s + rows, x.size(0))
            # torch's fused log_softmax, not logsumexp, which is much slower on CPUs
            logp = torch.log_softmax(x[s:e] @ weight.t(), dim=-1, dtype=torch.float32)  # (n, V)
            total -= (logp.gather(1, safe[s:e]).squeeze(1) * valid[s:e]).sum()
            if grad is not None:
                p = logp.exp_()  # softmax, in place
                p.scatter_add_(1, safe[s:e], -valid[s:e].unsqueeze(1).to(p.dtype))  # - onehot
                p.mul_((valid[s:e].to(p.dtype) / n_valid).unsqueeze(1))  # mean over valid rows
                grad[s:e] = p
        if grad is not None:
            ctx.save_for_backward(x, weight, grad)
        return total / n_valid

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        x, weight, grad = ctx.saved_tensors
        scale = grad_out.to(grad.dtype)
        grad_x = (grad @ weight) * scale if ctx.needs_input_grad[0] else None  # (N, C)
        grad_w = (grad.t() @ x) * scale if ctx.needs_input_grad[1] else None  # (V, C)
        return grad_x, grad_w, None, None


class ChunkedLinearCrossEntropy(LinearCrossEntropy):
    """:class:`~nanogpt.model.LinearCrossEntropy` computed ``rows`` positions at a time.

    The plain path holds the logits in the matmul dtype, again in float32, their log-softmax
    and its gradient: four (N, V) tensors, whose memory-bound passes cost more than the head's
    matmul on a CPU with a 50k vocabulary. Same loss (float32) and gradients.
    """

    def __init__(self, rows: int) -> None:
        super().__init__()
        if isinstance(rows, bool) or not isinstance(rows, int) or rows <= 0:
            raise ValueError(f"rows must be a positive integer, got {rows!r}")
        self.rows = rows

    def forward(self, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Under autocast the head's matmul runs in the autocast dtype, as F.linear would.
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        with torch.autocast(kind, enabled=False):
            return _ChunkedLinearCrossEntropyFn.apply(
                x.reshape(-1, x.size(-1)).to(dtype), weight.to(dtype), targets.reshape(-1), self.rows
            )


class RowLinear(nn.Linear):
    """``nn.Linear`` that computes a single input row as a matrix-vector product.

    A decode step with batch 1 multiplies one row by each weight matrix; on CPUs torch's bf16
    ``mv``/``addmv`` streams the weights faster than its bf16 ``linear``. Inputs of more than one
    row (prefill, batches) take the ordinary path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.size(-1):
            return F.linear(x, self.weight, self.bias)
        row = x.reshape(-1)  # (C_in,)
        y = torch.mv(self.weight, row) if self.bias is None else torch.addmv(self.bias, self.weight, row)
        return y.view(*x.shape[:-1], -1)  # (..., C_out)


class _RMSNormFn(torch.autograd.Function):
    """y = x * r * w with r = 1 / sqrt(mean(x^2) + eps) over the last dimension, in float32.

    Saves x and r (one number per row) and recomputes x * r in backward, where
    dx = r * (g*w - x*r * mean(g*w * x*r)) and dw = sum over rows of g * x*r.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        r = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))  # (..., 1)
        ctx.save_for_backward(x, weight, r)
        return (xf * r).mul_(weight.float()).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        x, weight, r = ctx.saved_tensors
        x_hat = x.float() * r  # (..., C)
        g = grad_out.float()
        grad_w = (g * x_hat).reshape(-1, x.size(-1)).sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        g_hat = g.mul_(weight.float()) if g is not grad_out else g * weight.float()  # dL/dx_hat
        dot = (g_hat * x_hat).mean(-1, keepdim=True)  # (..., 1)
        grad_x = g_hat.sub_(x_hat.mul_(dot)).mul_(r).to(x.dtype)
        return grad_x, grad_w, None


class FusedRMSNorm(RMSNorm):
    """:class:`~nanogpt.model.RMSNorm` with :class:`_RMSNormFn`'s backward; the same numbers in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return _RMSNormFn.apply(x, self.weight, self.eps if self.eps is not None else torch.finfo(torch.float32).eps)


class LowPrecisionStream(nn.Dropout):
    """The embeddings' dropout, then the residual stream cast to the autocast dtype (bf16).

    With a float32 stream, autocast casts each norm's output to bf16 for the next matmul and
    each sublayer's bf16 output is added back in float32; backward mirrors both: four passes
    over the stream per sublayer that do no arithmetic. With a bf16 stream the norms still
    compute their statistics in float32 inside the kernel. Outside autocast: plain dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        if torch.is_autocast_enabled(kind):
            x = x.to(torch.get_autocast_dtype(kind))
        return super().forward(x)


@dataclass(frozen=True)
class Kernels:
    """Which kernels a model runs with; the defaults are model.py's plain references."""

    attention: str = "sdpa"  # "sdpa" (model.py) or "matmul" (MatmulAttention)
    loss_rows: int = 0  # 0: LinearCrossEntropy; > 0: ChunkedLinearCrossEntropy(loss_rows)
    row_linear: bool = False  # decode: nn.Linear -> RowLinear
    rms_norm: bool = False  # RMSNorm -> FusedRMSNorm (the modern block)
    low_precision_stream: bool = False  # transformer.drop -> LowPrecisionStream
    native: bool = False  # C kernels: NativeMatmulAttention, NativeGELU, NativeLayerNorm

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention kernel must be one of {', '.join(ATTENTION_KERNELS)}, got {self.attention!r}")
        if isinstance(self.loss_rows, bool) or not isinstance(self.loss_rows, int) or self.loss_rows < 0:
            raise ValueError(f"loss rows must be a non-negative integer, got {self.loss_rows!r}")


def apply_kernels(model: GPT, kernels: Kernels) -> GPT:
    """Install ``kernels`` on ``model`` in place (and return it). Applying the defaults undoes the others.

    Attention and the loss (parameter-free) are replaced; Linear, the norms and GELU have their
    class switched in place, so parameters, weight tying and the state dict are untouched.
    """
    attention = ScaledDotProductAttention
    if kernels.attention == "matmul":
        attention = NativeMatmulAttention if kernels.native else MatmulAttention
    for block in model.transformer.h:
        old = block.attn.attend
        if type(old) is not attention:
            block.attn.attend = attention(old.dropout)
            block.attn.attend.train(old.training)
    model.head_loss = ChunkedLinearCrossEntropy(kernels.loss_rows) if kernels.loss_rows else LinearCrossEntropy()
    model.transformer.drop.__class__ = LowPrecisionStream if kernels.low_precision_stream else nn.Dropout
    # (model.py's class, the kernel's subclass, whether the kernel is on)
    families = [(nn.Linear, RowLinear, kernels.row_linear), (RMSNorm, FusedRMSNorm, kernels.rms_norm),
                (nn.GELU, NativeGELU, kernels.native), (nn.LayerNorm, NativeLayerNorm, kernels.native),
                (CausalSelfAttention, NativeCausalSelfAttention, kernels.native)]
    for module in model.modules():
        for plain, kernel, on in families:
            if type(module) in (plain, kernel):
                module.__class__ = kernel if on else plain
                break
    return model


def kernels_of(model: GPT) -> Kernels:
    """The kernels ``model`` runs with now."""
    attend = model.transformer.h[0].attn.attend if len(model.transformer.h) else None
    head = model.head_loss
    return Kernels(
        attention="matmul" if isinstance(attend, MatmulAttention) else "sdpa",
        loss_rows=head.rows if isinstance(head, ChunkedLinearCrossEntropy) else 0,
        row_linear=any(type(m) is RowLinear for m in model.modules()),
        rms_norm=any(type(m) is FusedRMSNorm for m in model.modules()),
        low_precision_stream=type(model.transformer.drop) is LowPrecisionStream,
        native=any(type(m) in (NativeGELU, NativeLayerNorm, NativeMatmulAttention, NativeCausalSelfAttention)
                   for m in model.modules()),
    )
