"""The GPT-2 model: what happens to a [B, T] batch of token ids on its way to [B, T, V] logits.

Read this file first. It is the whole Transformer, top to bottom, and nothing else:

1. token ids -> token embeddings (``wte``) + position embeddings (``wpe``): the residual
   stream ``x`` of C numbers per token;
2. ``n_layer`` pre-LayerNorm blocks, each ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``,
   where attention is ``softmax(q k^T / sqrt(hs)) v`` over a causally masked (T x T) matrix,
   in ``n_head`` heads of ``hs = C // n_head`` channels;
3. a final LayerNorm and the head, tied to ``wte``, give a score for each of V token ids.

``arch="modern"`` swaps in the block today's open models use (Llama, Qwen3), a few lines each
below, marked "modern": positions as rotations of q and k (no ``wpe``), RMSNorm, RMSNorm on
each head's q and k, a gated SiLU MLP, no biases, and optionally an untied head.

Parameter names follow OpenAI's GPT-2 checkpoints (``transformer.wte``, ``h.{i}.attn.c_attn``,
...), so converting to and from Hugging Face is a transpose of four weights per block
(``nanogpt.hf``). Shapes use B = batch, T = sequence length, C = n_embd, nh = n_head,
hs = C // nh, V = vocab_size. The configuration (:class:`GPTConfig`) lives in ``nanogpt.config``.

Nothing here chooses a device, a dtype or a kernel. Two pieces are small modules of their own
so that the runtime can swap in a faster kernel computing the same function
(``nanogpt.ops``, applied by ``nanogpt.device``): :class:`ScaledDotProductAttention` and
:class:`LinearCrossEntropy`. The optional ``kv_cache`` of :meth:`GPT.forward` lets an inference
engine (``nanogpt.generate``) keep keys and values between calls; without it the model runs
the plain full-sequence path that the cached one is tested against.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanogpt.config import GPTConfig


class KeyValueStore(Protocol):
    """What attention needs from an inference cache (``nanogpt.generate.KVCache`` is one)."""

    pos: int  # positions already stored; new tokens start at this position

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T_new, hs) for ``layer``; return all keys/values so far (B, nh, pos + T_new, hs)."""
        ...


def causal_mask(t_query: int, t_key: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(t_query, t_key) bool, True where query i may see key j. The queries are the last t_query of
    t_key positions (all of them in training, the new ones when decoding), so i sees keys 0..t_key-t_query+i."""
    return torch.ones(t_query, t_key, dtype=torch.bool, device=device).tril(diagonal=t_key - t_query)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (..., V) against targets (...), -1 ignored; in float32 whatever the
    logits' precision, since a log-sum-exp over 50k logits loses too much in 16-bit floats."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def rotary_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """modern: cos and sin (T, hs) of each position's angles; channel pair (i, i + hs/2) turns at theta^(-2i/hs)."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float().unsqueeze(1) * inv_freq  # (T, hs/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """modern: rotate x (..., T, nh, hs) by its positions' angles, so q . k depends on their distance only."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


class RMSNorm(nn.RMSNorm):
    """modern: x / rms(x) * gain (no mean subtracted, no bias), in float32 as Llama and Qwen3 compute it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.normalized_shape, self.weight.float(), self.eps).to(x.dtype)


def norm(config: GPTConfig, ndim: int) -> nn.Module:
    """GPT-2: LayerNorm; modern: RMSNorm."""
    return nn.LayerNorm(ndim, eps=1e-5, bias=config.bias) if config.arch == "gpt2" else RMSNorm(ndim, eps=1e-6)


class ScaledDotProductAttention(nn.Module):
    """softmax(q k^T / sqrt(hs)) v with the causal mask, for every head at once: q (B, nh, Tq, hs) and
    k, v (B, nh, Tk, hs), Tq <= Tk (see :func:`causal_mask`) -> (B, nh, Tq, hs). Dropout in training."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t_query, t_key = q.size(-2), k.size(-2)
        dropout_p = self.dropout if self.training else 0.0
        if t_query == t_key:  # the usual case: a whole sequence, the lower triangle
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        # decoding: the new queries see the cached keys too; one new query sees every key
        mask = None if t_query == 1 else causal_mask(t_query, t_key, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention: every token looks at itself and the tokens before it."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which layer's keys and values a KV cache holds
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        bias = config.bias and config.arch == "gpt2"
        # q, k and v for all heads in one matmul: C -> 3C
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=bias)
        if config.arch == "modern" and config.qk_norm:  # modern: keeps q . k in range however the weights grow
            self.q_norm, self.k_norm = RMSNorm(config.head_dim, eps=1e-6), RMSNorm(config.head_dim, eps=1e-6)
        self.attend = ScaledDotProductAttention(config.dropout)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=bias)  # mixes the heads
        self.resid_dropout = nn.Dropout(config.dropout)

    def heads(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
        """q, k, v (B, nh, T, hs) of x (B, T, C): one projection, split into heads."""
        B, T, C = x.shape  # hs = C // nh channels per head
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head) for t in self.c_attn(x).split(C, dim=2))  # (B, T, nh, hs)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)  # modern: each head's vectors to unit RMS (times a gain)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)  # modern: positions enter here, not in x
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # heads as a batch dim: (B, nh, T, hs)

    def forward(self, x: torch.Tensor, kv_cache: KeyValueStore | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.heads(x, rope)  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, past + T, hs)
        y = self.attend(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # merge heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Two matmuls with a GELU between: C -> 4C -> C, for each token on its own."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)  # C -> 4C
        # GPT-2's "gelu_new" is the tanh approximation; "gelu" is the exact erf form
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)  # 4C -> C
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class SwiGLU(nn.Module):
    """modern: a gated MLP, c_proj(silu(gate) * up), gate and up from one matmul: C -> 2H, then H -> C."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 2 * config.mlp_width, bias=False)  # [gate | up]
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # 2 x (B, T, H)
        return self.dropout(self.c_proj(F.silu(gate) * up))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = norm(config, config.n_embd)
        self.mlp = MLP(config) if config.arch == "gpt2" else SwiGLU(config)

    def forward(self, x: torch.Tensor, kv_cache: KeyValueStore | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache, rope)
        return x + self.mlp(self.ln_2(x))


class LinearCrossEntropy(nn.Module):
    """The head and the loss in one step, cross_entropy(x @ weight^T, targets): x (..., C), weight (V, C).
    Training needs only the loss, so a faster kernel for both together can take this place (``nanogpt.ops``)."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy(F.linear(x, weight), targets)


class GPT(nn.Module):
    """Decoder-only Transformer with GPT-2's layout and parameter names."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(config.vocab_size, config.n_embd)))  # (V, C)
        if config.arch == "gpt2":  # modern: no position table, q and k are rotated instead
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)  # position embeddings (block, C)
        self.transformer.drop = nn.Dropout(config.dropout)
        self.transformer.h = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.transformer.ln_f = norm(config, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head_loss = LinearCrossEntropy()
        if config.tie_embeddings:  # the head is wte's matrix (GPT-2 does this): V*C fewer parameters
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

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, the tied wte/lm_head matrix once; ``non_embedding`` leaves out wpe, which does no
        matmul work (as Kaplan et al. count); wte stays in: tied to lm_head, it is the last layer's weight."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context (e.g. load GPT-2's 1024 and train at 256) by cutting wpe."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"block_size must be in 1..{self.config.block_size} (the model's context), got {block_size}")
        self.config = GPTConfig(**{**self.config.to_dict(), "block_size": block_size})
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KeyValueStore | None = None,
        last_logits_only: bool = False,
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits, loss) for idx, targets (B, T) int64 (targets of -1 ignored): logits (B, T, V), or (B, 1, V)
        with ``last_logits_only``; loss a 0-d float32 tensor, None without targets. Training passes
        ``return_logits=False`` and gets (None, loss): head and loss in one step (:class:`LinearCrossEntropy`).
        """
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than the model's block_size "
                             f"({self.config.block_size}); pass at most {self.config.block_size} tokens")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # token embeddings (B, T, C)
        rope = None
        if self.config.arch == "gpt2":
            x = x + self.transformer.wpe(pos)  # + position embeddings (T, C), broadcast over the batch
        else:
            angles = rotary_angles(pos, self.config.head_dim, self.config.rope_theta)  # modern: 2 x (T, hs)
            rope = (angles[0].unsqueeze(1), angles[1].unsqueeze(1))  # 2 x (T, 1, hs): the same for every head
        x = self.transformer.drop(x)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, kv_cache, rope)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.pos = start + T
        x = self.transformer.ln_f(x)  # (B, T, C)
        if targets is not None and not return_logits:
            return None, self.head_loss(x, self.lm_head.weight, targets)
        if last_logits_only:
            x = x[:, -1:, :]  # (B, 1, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = cross_entropy(logits, targets) if targets is not None else None
        return logits, loss

    # Hugging Face interop: the weight mapping is in nanogpt.hf, which never imports this module.
    @classmethod
    def from_pretrained(cls, name_or_dir: str, **overrides: Any) -> "GPT":
        """A Hugging Face folder (GPT-2, Llama, Qwen3) or, online, a hub name; ``overrides``: dropout, a smaller block_size."""
        from nanogpt import hf

        config, state = hf.read_pretrained(name_or_dir, **overrides)
        model = cls(config)
        model.load_state_dict({"lm_head.weight": state["transformer.wte.weight"], **state}, strict=True)
        return model

    def save_pretrained(self, out_dir: str) -> None:
        """Write a Hugging Face folder (config.json + model.safetensors): GPT-2, or Llama/Qwen3 for ``arch="modern"``."""
        from nanogpt import hf

        hf.write_pretrained(self.config, self.state_dict(), out_dir)
