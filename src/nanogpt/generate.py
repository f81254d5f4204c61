"""Text generation: the KV cache, sampling (temperature / top-k / top-p), ``generate()``, and
text streams with stop strings. The ``nanogpt sample`` command is in ``nanogpt.sample``.

The cache lives here, outside the model math: :class:`KVCache` is the ``KeyValueStore`` that
:meth:`nanogpt.model.GPT.forward` accepts. Generation with the cache prefills the prompt in one
forward pass and then feeds one token per step; without it (``use_cache=False``) every step
re-runs the whole context window, which is the reference the cached path is tested against.

The context window, the same for both paths (so that they give the same tokens):

* the prompt is cut to its last ``block_size`` tokens;
* the window grows with each new token until it holds ``block_size`` tokens;
* when one more token would not fit, the window restarts from the last ``context_keep`` tokens
  (default ``block_size // 2``) and grows again. The cached path re-fills the cache from those
  tokens in one forward pass; the reference path simply feeds the same window.

``context_keep = block_size`` gives nanoGPT's "crop to the last block_size tokens" at every step
past the boundary (a pure sliding window, but each step is then a full re-fill, as slow as no
cache). Half a block re-fills once every ``block_size // 2`` tokens, at the price of a shorter
context right after each re-fill (llama.cpp's context shift makes the same trade).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator, Sequence

import torch
from torch.nn import functional as F

from nanogpt.errors import NanoGPTError
from nanogpt.model import GPT

if TYPE_CHECKING:
    from nanogpt.threads import ThreadTuner

# --------------------------------------------------------------------------------------------
# Sampling: the one place temperature, top-k and top-p are applied.


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen from the logits.

    temperature 0 means greedy (argmax); top_k keeps the k most likely tokens; top_p keeps the
    smallest set of most likely tokens whose probability mass reaches p. Both filters apply
    after the temperature, top-k first (the order Hugging Face uses).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0) or self.temperature == float("inf"):
            raise NanoGPTError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 1):
            raise NanoGPTError(f"top-k must be an integer >= 1 (or left out), got {self.top_k}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise NanoGPTError(f"top-p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits (B, V) with everything outside top-k / top-p set to -inf (a new tensor)."""
    logits = logits.clone()
    if top_k is not None and top_k < logits.size(-1):
        # keep exactly k entries (ties at the k-th value are broken by topk's order)
        vals, idx = torch.topk(logits, top_k, dim=-1)  # (B, k)
        logits = torch.full_like(logits, float("-inf")).scatter_(-1, idx, vals)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly more likely tokens
        # a token stays if the more likely ones have not yet reached p: the smallest set whose
        # mass reaches p (the most likely token always stays, mass_before = 0 < p)
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


# Below float32's smallest normal number a temperature cannot divide the logits; it means greedy.
_SMALLEST_TEMPERATURE = 1.1754943508222875e-38


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token id (B,) from next-token logits (B, V); temperature 0 = greedy.

    Randomness comes only from ``generator`` (the global RNG when None), so a seeded generator
    gives the same tokens every run.
    """
    if temperature < _SMALLEST_TEMPERATURE:  # 0, or too small for float32: greedy, its limit
        return torch.argmax(logits, dim=-1)
    # shifted so the largest logit is 0 first: a tiny temperature then gives 0 and -inf, never inf - inf
    logits = logits.float()
    logits = filter_logits((logits - logits.amax(dim=-1, keepdim=True)) / temperature, top_k, top_p)
    probs = F.softmax(logits, dim=-1)  # (B, V)
    # Inverse-CDF sampling: one uniform number per row against the cumulative probabilities, ~30x
    # faster than torch.multinomial on a 50k vocabulary on CPUs. u is in (0, total], so the first
    # index whose cumulative sum reaches it always has a nonzero probability (filtered tokens never win).
    cdf = probs.cumsum(dim=-1)  # (B, V)
    u = (1.0 - torch.rand(probs.size(0), 1, generator=generator, device=probs.device)) * cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, u).squeeze(-1).clamp_(max=probs.size(-1) - 1)


# --------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Pre-allocated keys and values for every layer: (n_layer, B, nh, max_len, hs) each.

    ``pos`` is the number of positions stored. The model calls :meth:`update` once per layer
    with the new keys/values and sets ``pos`` after the last layer. Nothing is allocated per
    step: new entries are copied into the buffers and views of the filled part are returned.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        # empty, not zeros: positions >= pos are never read, and zeroing 2 x 38 MB (GPT-2 small)
        # would cost more than a few decode steps
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    @classmethod
    def for_model(cls, model: GPT, batch_size: int) -> "KVCache":
        """A cache sized for ``model``'s context, on its device and in its weights' dtype."""
        cfg = model.config
        p = model.lm_head.weight
        return cls(cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, cfg.head_dim, p.device, p.dtype)

    def reset(self) -> None:
        """Forget everything stored (the buffers are reused, not cleared)."""
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at positions pos..pos+T-1; return (B, nh, pos+T, hs) views."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot store up to position {end}")
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# --------------------------------------------------------------------------------------------
# Generation


def window_start(start: int, length: int, block_size: int, context_keep: int) -> int:
    """Where the context window for predicting token ``length`` begins (see the module doc).

    ``start`` is the current window start; the window is tokens start..length-1. When it would
    hold more than ``block_size`` tokens it restarts from the last ``context_keep`` of them.
    """
    if length - start > block_size:
        return length - context_keep
    return start


def check_context_keep(context_keep: int | None, block_size: int) -> int:
    if context_keep is None:
        return max(block_size // 2, 1)
    keep = context_keep
    if isinstance(keep, bool) or int(keep) != keep or not 1 <= keep <= block_size:
        raise NanoGPTError(f"context_keep must be an integer in 1..{block_size} (the model's block_size), got {context_keep}")
    return int(keep)


@torch.inference_mode()
def generate_stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    context_keep: int | None = None,
    vocab_limit: int | None = None,
    logits_out: list[torch.Tensor] | None = None,
    threads: ThreadTuner | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) of each row of ``idx`` (B, T), one step at a time.

    The model runs in eval mode (restored afterwards), on its device and in its weights' dtype.
    ``vocab_limit`` restricts sampling to ids below it (a model whose vocabulary was padded,
    e.g. 50304 rows for GPT-2's 50257 tokens, must not emit ids its tokenizer lacks).
    ``logits_out``, if given, receives each step's next-token logits (B, V) in float32 (for
    tests and debugging). ``threads`` (a ``nanogpt.threads.ThreadTuner``) chooses the CPU
    threads of each token's work: the forward pass that gives its logits (the prefill for the
    first) and its sampling, one unit per token; None leaves the thread count alone.
    """
    params = SamplingParams(temperature, top_k, top_p)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise NanoGPTError(f"idx must be a (batch, time) tensor with at least one token, got shape {tuple(idx.shape)}")
    if max_new_tokens <= 0:
        raise NanoGPTError(f"max_new_tokens must be positive, got {max_new_tokens}")
    block_size = model.config.block_size
    keep = check_context_keep(context_keep, block_size)
    B, T0 = idx.shape
    # all tokens so far, written in place: (B, T0 + max_new_tokens)
    seq = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=idx.device)
    seq[:, :T0] = idx
    n = T0  # tokens in seq
    start = max(0, T0 - block_size)  # the prompt's tail when it is longer than the context
    cache = KVCache.for_model(model, B) if use_cache else None

    def forward(chunk: torch.Tensor) -> torch.Tensor:
        logits, _ = model(chunk, kv_cache=cache, last_logits_only=True)  # (B, 1, V)
        return logits[:, -1, :vocab_limit].float()  # (B, V)

    def next_logits() -> torch.Tensor:
        nonlocal start
        new_start = window_start(start, n, block_size, keep)
        if cache is None:
            start = new_start
            return forward(seq[:, start:n])
        if new_start != start:
            # the cache is full: re-fill it from the last context_keep tokens in one pass
            start = new_start
            cache.reset()
            return forward(seq[:, start:n])
        return forward(seq[:, n - 1 : n])

    was_training = model.training
    model.eval()  # no dropout while sampling; the caller's mode comes back at the end
    try:
        for step in range(max_new_tokens):
            # one unit per token, ended before the yield: the consumer's time is not the model's
            with threads.unit() if threads is not None else contextlib.nullcontext():
                # the prefill (the whole window when there is no cache) gives the first token's logits
                logits = forward(seq[:, start:n]) if step == 0 else next_logits()
                if logits_out is not None:
                    logits_out.append(logits)
                tok = sample_next_token(logits, params.temperature, params.top_k, params.top_p, generator)  # (B,)
                seq[:, n] = tok
            n += 1
            yield tok
    finally:
        model.train(was_training)


def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    stop_ids: Collection[int] | None = None,
    callback: Callable[[torch.Tensor], None] | None = None,
    context_keep: int | None = None,
    vocab_limit: int | None = None,
    threads: ThreadTuner | None = None,
) -> torch.Tensor:
    """Continue each row of ``idx`` (B, T) by up to ``max_new_tokens`` tokens; return (B, T + n).

    ``temperature`` 0 is greedy; ``top_k`` / ``top_p`` filter the distribution (see
    :class:`SamplingParams`); ``generator`` makes sampling reproducible. With ``stop_ids``,
    generation ends once every row has produced one of them; a row that stopped early repeats
    its stop id until the others finish. ``callback(tokens)`` sees each step's tokens (B,) for
    streaming. ``use_cache=False`` runs the reference path (whole window every step).
    ``context_keep``, ``vocab_limit`` and ``threads``: see the module doc and :func:`generate_stream`.
    """
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=idx.device) if stop_ids else None
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    stopped_with = torch.zeros(idx.size(0), dtype=torch.long, device=idx.device)
    out = [idx]
    stream = generate_stream(
        model, idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator, context_keep, vocab_limit,
        threads=threads,
    )
    for tok in stream:
        if stops is not None:
            tok = torch.where(done, stopped_with, tok)
            hit = torch.isin(tok, stops) & ~done
            stopped_with = torch.where(hit, tok, stopped_with)
            done |= hit
        out.append(tok.unsqueeze(1))
        if callback is not None:
            callback(tok)
        if stops is not None and bool(done.all()):
            break
    return torch.cat(out, dim=1)


def prepare_for_sampling(model: GPT, dtype: torch.dtype) -> GPT:
    """Put ``model`` in eval mode with its weights in ``dtype`` and decode kernels installed (in place; returns it).

    Sampling casts the weights rather than using autocast: one token per step reads every
    weight once, so bf16 weights halve the bytes read, while autocast would re-cast the fp32
    weights at every step. The runtime then picks the decode kernels for this device and
    dtype (``nanogpt.device.choose_kernels``); fp32 models keep the plain ones.
    """
    from nanogpt.device import choose_kernels
    from nanogpt.ops import apply_kernels

    model.eval()
    if model.lm_head.weight.dtype != dtype:
        model.to(dtype)
    device = model.lm_head.weight.device
    cfg = model.config
    return apply_kernels(model, choose_kernels(device, dtype, cfg.block_size, cfg.vocab_size, False, decode=True))


# --------------------------------------------------------------------------------------------
# Text: prompts, incremental decoding, stop strings


def check_tokenizer_fits(tokenizer: Any, vocab_size: int, source: str) -> None:
    """Refuse a tokenizer with more ids than the model has rows in its embedding (they could not be looked up)."""
    n = int(getattr(tokenizer, "vocab_size", 0))
    if n > vocab_size:
        name = getattr(tokenizer, "name", "its")
        raise NanoGPTError(
            f"{source} pairs a {name} tokenizer of {n:,} ids with a model vocabulary of {vocab_size:,}; "
            "the tokenizer and the weights do not belong together: use the model with the tokenizer it was trained with"
        )


def unescape_stop(text: str) -> str:
    """``\\n``, ``\\t``, ``\\r`` and ``\\\\`` typed in a shell (a backslash and a letter) as the characters they name."""
    out, i = [], 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in _ESCAPES:
            out.append(_ESCAPES[pair])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def encode_prompt(tokenizer: Any, prompt: str) -> tuple[list[int], str | None]:
    """Token ids of ``prompt`` and, for an empty prompt, a note saying where generation starts.

    An empty prompt starts from the end-of-text token, or from a newline when the vocabulary
    has no end-of-text token (character models). Characters the vocabulary lacks are named in
    the error.
    """
    if prompt == "":
        eot = getattr(tokenizer, "eot_id", None)
        if eot is not None:
            return [int(eot)], "empty prompt: starting from the end-of-text token"
        try:
            ids = tokenizer.encode("\n")
        except Exception:  # noqa: BLE001 - any failure means the vocabulary has no newline
            ids = []
        if not ids:
            raise NanoGPTError("the prompt is empty and the vocabulary has neither an end-of-text token nor a newline; give --prompt")
        return list(ids), "empty prompt: starting from a newline"
    try:
        ids = list(tokenizer.encode(prompt))
    except Exception as e:  # noqa: BLE001 - tokenizers signal unknown characters differently
        unknown = []
        for ch in dict.fromkeys(prompt):
            try:
                tokenizer.encode(ch)
            except Exception:  # noqa: BLE001
                unknown.append(ch)
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            name = getattr(tokenizer, "name", "the model's")
            raise NanoGPTError(
                f"the prompt has {len(unknown)} character(s) not in the {name} vocabulary of this model: {shown}; "
                "remove or replace them"
            ) from None
        raise NanoGPTError(f"cannot encode the prompt: {e}") from None
    if not ids:
        raise NanoGPTError("the prompt encodes to no tokens; give a different --prompt")
    return ids, None


class TextStream:
    """Turns one row's generated token ids into text, piece by piece, honouring stop strings.

    :meth:`push` returns the text that is safe to show now: it holds back a trailing partial
    UTF-8 character (a BPE token can end mid-character) and any tail that could be the start of
    a stop string. When a stop string appears, the text is cut just before it and ``done`` is
    set. :meth:`finish` returns whatever was held back.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # decoded text so far (cut at a stop string once done)
        self.shown = 0  # characters of self.text already returned
        self.done = False

    def push(self, token_id: int) -> str:
        if self.done:
            return ""
        self.ids.append(int(token_id))
        # decoding everything again is simple and exact at byte boundaries; it costs
        # microseconds for the few thousand tokens a sample has
        self.text = self.tokenizer.decode(self.ids)
        cut = self._first_stop()
        if cut is not None:
            self.text = self.text[:cut]
            self.done = True
            return self._take(len(self.text))
        safe = len(self.text.rstrip("\ufffd"))  # U+FFFD at the end: a character still incomplete
        hold = 0
        for s in self.stop:  # hold back the longest tail that may grow into a stop string
            for k in range(min(len(s) - 1, safe), hold, -1):
                if self.text[safe - k : safe] == s[:k]:
                    hold = k
                    break
        return self._take(safe - hold)

    def finish(self) -> str:
        return self._take(len(self.text))

    def _first_stop(self) -> int | None:
        # a stop string can only newly appear in the tail that was not yet shown (plus overlap)
        lo = max(0, self.shown - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, lo) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _take(self, end: int) -> str:
        out = self.text[self.shown : end] if end > self.shown else ""
        self.shown = max(self.shown, end)
        return out


def sample_text(
    model: GPT,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    num_samples: int = 1,
    max_new_tokens: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    stop: Sequence[str] = (),
    on_text: Callable[[str], None] | None = None,
    use_cache: bool = True,
    context_keep: int | None = None,
    threads: ThreadTuner | None = None,
) -> list[str]:
    """Generate ``num_samples`` continuations of ``prompt_ids`` together; return their texts.

    Each text is the generated part only, cut before the first stop string. Generation ends
    early once every sample has hit a stop string. ``on_text`` (one sample only) receives the
    text of sample 0 as it becomes safe to show. ``threads``: one unit per token, see :func:`generate_stream`.
    """
    if num_samples <= 0:
        raise NanoGPTError(f"num-samples must be positive, got {num_samples}")
    if on_text is not None and num_samples != 1:
        raise NanoGPTError("streaming shows one sample; use --num-samples 1 with --stream")
    device = model.lm_head.weight.device
    idx = torch.tensor([list(prompt_ids)] * num_samples, dtype=torch.long, device=device)  # (B, T)
    streams = [TextStream(tokenizer, stop) for _ in range(num_samples)]
    # ids the tokenizer cannot decode (padding rows of a padded vocabulary) are never sampled
    limit = min(int(tokenizer.vocab_size), model.config.vocab_size)
    stream = generate_stream(
        model, idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator, context_keep, limit,
        threads=threads,
    )
    if not stop and on_text is None:
        # nothing to watch while generating: decode each sample once at the end
        rows = torch.stack(list(stream), dim=1).tolist()  # (B, n)
        return [tokenizer.decode(r) for r in rows]
    for tok in stream:
        for s, t in zip(streams, tok.tolist()):
            piece = s.push(t)
            if piece and on_text is not None:
                on_text(piece)
        if stop and all(s.done for s in streams):
            break
    for s in streams:
        piece = s.finish()
        if piece and on_text is not None:
            on_text(piece)
    return [s.text for s in streams]
