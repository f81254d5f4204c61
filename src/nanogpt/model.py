"""The GPT-2 model: configuration and the Transformer itself (math only).

Parameter names follow OpenAI's GPT-2 checkpoints (``transformer.wte``, ``h.{i}.attn.c_attn``,
...), so converting to and from Hugging Face is a rename-free transpose of four weights per
block. Shapes use B = batch, T = sequence length, C = n_embd, nh = n_head, hs = C // nh.

Nothing here knows about tokenizers, sampling or training. The optional ``kv_cache`` argument
of :meth:`GPT.forward` lets an inference engine (``nanogpt.generate``) keep keys and values
between calls; without it the model runs the plain full-sequence path that serves as the
reference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    """Shape of a GPT-2-style model. Defaults are GPT-2 small (124M)."""

    block_size: int = field(default=1024, metadata={"help": "context length in tokens (positions in wpe)"})
    vocab_size: int = field(default=50257, metadata={"help": "number of token ids (rows of wte)"})
    n_layer: int = field(default=12, metadata={"help": "number of Transformer blocks"})
    n_head: int = field(default=12, metadata={"help": "attention heads per block; n_embd must divide by it"})
    n_embd: int = field(default=768, metadata={"help": "channels of the residual stream (C)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability in [0, 1); 0 for pretraining"})
    bias: bool = field(default=True, metadata={"help": "biases in Linear and LayerNorm layers (GPT-2: true)"})
    activation: str = field(
        default="gelu_tanh",
        metadata={"help": "MLP activation: gelu_tanh (GPT-2's tanh approximation) or gelu (exact erf form; "
                  "2.7x faster on CPUs, where torch's tanh-GELU kernel is slow)"},
    )

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            lo = self.n_embd // self.n_head * self.n_head
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}); "
                f"try n_embd={lo or self.n_head} or n_embd={lo + self.n_head}, or change n_head"
            )
        if not (0.0 <= float(self.dropout) < 1.0):
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ("gelu_tanh", "gelu"):
            raise ValueError(f"model.activation must be gelu_tanh or gelu, got {self.activation!r}")

    @property
    def head_dim(self) -> int:
        """Channels per attention head (hs)."""
        return self.n_embd // self.n_head

    # Published GPT-2 sizes; every other field keeps its default (vocab 50257, block 1024, bias).
    PRESETS = {
        "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
        "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
        "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
        "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    }

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A published GPT-2 configuration by name, with any field overridden."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown model name {name!r}; choose one of {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class KVCache(Protocol):
    """What the model needs from an inference cache (implemented in ``nanogpt.generate``)."""

    pos: int  # number of positions already stored; new tokens start at this position

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T_new, hs) for ``layer``; return all keys/values so far."""
        ...


class LayerNorm(nn.LayerNorm):
    """LayerNorm with an optional bias (GPT-2 has one; ``bias=False`` models drop it)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__(ndim, eps=1e-5, bias=bias)


class CausalSelfAttention(nn.Module):
    # How softmax(q k^T / sqrt(hs)) v is computed; both give the same function.
    # "sdpa": torch's fused kernels (flash / memory-efficient): the default, and the right choice
    #   on GPUs and for long sequences.
    # "matmul": the explicit two matmuls and a masked softmax. On CPUs in bf16 torch's flash
    #   kernel is slow for short sequences: fwd+bwd measured 4.4x slower at T=64 and 1.4x at
    #   T=256 (at T=512 it wins). nanogpt.device.attention_impl picks per device and length.
    impl: str = "sdpa"

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # q, k and v for all heads in one matmul: C -> 3C
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        mask = None
        is_causal = True
        if kv_cache is not None:
            past = kv_cache.pos
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, past + T, hs)
            if past > 0:
                is_causal = False
                if T > 1:
                    # query i sits at absolute position past + i and may see keys 0..past + i
                    rows = torch.arange(T, device=x.device).unsqueeze(1) + past
                    mask = torch.arange(past + T, device=x.device).unsqueeze(0) <= rows  # (T, past+T)
        dropout_p = self.dropout if self.training else 0.0
        if self.impl == "matmul":
            y = self._attention_matmul(q, k, v, mask, is_causal, dropout_p)
        else:
            # softmax(q k^T / sqrt(hs)) v over the causally masked (T x T) score matrix; fused
            # (flash / memory-efficient) kernels where the device has them.
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal and mask is None
            )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # merge heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _attention_matmul(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool, dropout_p: float
    ) -> torch.Tensor:
        """The same attention as SDPA, spelled out: scores, causal mask, softmax, weighted sum."""
        B, nh, Tq, hs = q.shape
        Tk = k.size(-2)
        if mask is None and is_causal:
            mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()  # (Tq, Tk)
        # The mask enters as an additive bias (0 where allowed, -inf elsewhere) and the 1/sqrt(hs)
        # scale as the product's alpha, so one baddbmm computes the masked, scaled scores: on CPUs
        # that was 1.5x faster (forward + backward) than a product, a multiply and a masked_fill.
        if mask is not None:
            bias = torch.zeros(Tq, Tk, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        else:  # one new token against the cache: it may see every key
            bias = torch.zeros((), dtype=q.dtype, device=q.device).expand(Tq, Tk)
        q3, k3, v3 = (t.reshape(B * nh, -1, hs) for t in (q, k, v))  # (B*nh, T, hs)
        att = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=1.0 / math.sqrt(hs))  # (B*nh, Tq, Tk)
        att = F.softmax(att, dim=-1)
        if dropout_p > 0:
            att = F.dropout(att, p=dropout_p)
        return (att @ v3).view(B, nh, Tq, hs)  # (B, nh, Tq, hs)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)  # C -> 4C
        # GPT-2's "gelu_new" is the tanh approximation; "gelu" is the exact erf form
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)  # 4C -> C
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the logits x @ weight^T against targets, a block of rows at a time.

    The plain path materialises the logits in the matmul dtype, again in float32, their
    log-softmax and its gradient: four (N, V) tensors (N = B*T; V = 50304 for GPT-2), and on a
    CPU the memory-bound passes over them cost more than the head's matmul. Here each block of
    rows makes its float32 log-softmax, reads the loss off it and turns it in place into the
    gradient (softmax - onehot) / n, kept in the matmul dtype: one (N, V) tensor in all, and
    none when no gradient is needed. Backward multiplies it into the gradients of x and of
    the weight. The loss is float32 as on the plain path; targets of -1 are ignored.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        # x: (N, C) and weight: (V, C) in the matmul dtype; targets: (N,) int64
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid = targets != -1  # (N,)
        n_valid = valid.sum().clamp(min=1)
        safe = targets.clamp(min=0).unsqueeze(1)  # (N, 1): ignored rows point at id 0, masked below
        grad = torch.empty(x.size(0), weight.size(0), dtype=x.dtype, device=x.device) if need_grad else None  # (N, V)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for s in range(0, x.size(0), rows):
            e = min(s + rows, x.size(0))
            # log-softmax in float32 (torch's fused kernel; its logsumexp was 5x slower on CPU)
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


class GPT(nn.Module):
    """Decoder-only Transformer with GPT-2's layout and parameter names."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings (V, C)
                wpe=nn.Embedding(config.block_size, config.n_embd),  # position embeddings (block, C)
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.loss_rows = 0  # 0: loss from the full logits; > 0: ChunkedLinearCrossEntropy
        # Weight tying: the output projection is the token embedding matrix (GPT-2 does this;
        # it saves V*C parameters and helps small models).
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 scales the init of projections into the residual stream by 1/sqrt(2 * n_layer):
        # each block adds two such terms, so the stream's variance stays ~constant with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def set_attention_impl(self, impl: str) -> None:
        """Choose how attention is computed ("sdpa" or "matmul"); the function is the same."""
        if impl not in ("sdpa", "matmul"):
            raise ValueError(f"attention impl must be 'sdpa' or 'matmul', got {impl!r}")
        for block in self.transformer.h:
            block.attn.impl = impl

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters, counting the tied wte/lm_head matrix once.

        ``non_embedding=True`` leaves out the position embeddings (wpe), which do no matmul
        work, as GPT-2/Kaplan et al. count model size. The token embedding stays in because,
        tied to lm_head, it is the final layer's weight.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context (e.g. load GPT-2's 1024 and train at 256) by cutting wpe."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(
                f"block_size must be in 1..{self.config.block_size} (the model's context), got {block_size}"
            )
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        last_logits_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position and, given targets, the mean cross-entropy loss.

        idx, targets: (B, T) int64; targets of -1 are ignored. Returns (logits, loss) with
        logits (B, T, vocab_size) — (B, 1, vocab_size) when ``last_logits_only``; None when
        targets are given and ``set_loss_rows`` chose the chunked loss — and loss a scalar, or
        None without targets.
        """
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the model's block_size "
                f"({self.config.block_size}); pass at most {self.config.block_size} tokens"
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C), broadcast over the batch
        x = self.transformer.drop(tok_emb + pos_emb)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, kv_cache)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.pos = start + T
        x = self.transformer.ln_f(x)  # (B, T, C)
        if last_logits_only and targets is None:
            x = x[:, -1:, :]  # (B, 1, C): generation needs only the next-token distribution
        if targets is not None and self.loss_rows:
            return None, self._chunked_loss(x, targets)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            # float32 cross-entropy even under bf16 autocast: the log-sum-exp over 50k logits
            # loses too much precision in bf16.
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def set_loss_rows(self, rows: int) -> None:
        """Compute the training loss ``rows`` positions at a time (0: the plain full-logits path).

        With rows > 0, ``forward(idx, targets)`` returns ``(None, loss)``: the full logits are
        never made (see :class:`ChunkedLinearCrossEntropy`). Same loss and gradients.
        """
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"loss rows must be a non-negative integer, got {rows!r}")
        self.loss_rows = rows

    def _chunked_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Under autocast the head's matmul runs in the autocast dtype, as self.lm_head(x) would.
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        with torch.autocast(kind, enabled=False):
            return ChunkedLinearCrossEntropy.apply(
                x.reshape(-1, x.size(-1)).to(dtype), self.lm_head.weight.to(dtype), targets.reshape(-1), self.loss_rows
            )

    # Hugging Face interop lives in nanogpt.hf (imported lazily: reading a checkpoint needs
    # safetensors/json, not the model math).
    @classmethod
    def from_pretrained(cls, name_or_dir: str, **overrides: Any) -> "GPT":
        """Load GPT-2 weights from a local Hugging Face folder or, online, a hub name."""
        from nanogpt.hf import load_hf_gpt2

        return load_hf_gpt2(name_or_dir, **overrides)

    def save_pretrained(self, out_dir: str) -> None:
        """Write a Hugging Face GPT-2 folder (config.json + model.safetensors)."""
        from nanogpt.hf import save_hf_gpt2

        save_hf_gpt2(self, out_dir)
