"""The batched decoding engine: many completions, one model, one token per request per step.

One thread owns the model. Requests wait in a bounded queue; at each step boundary the engine
admits waiting requests into free rows of a :class:`SlotCache` (prefilling each one alone, with
the model's own forward pass), samples one token for every active row from that row's own
logits with that row's own generator and settings, lets finished and cancelled rows leave, and
then runs one decode step for all the remaining rows together.

Rows sit at different positions, which ``nanogpt.generate.KVCache`` cannot express (it has one
``pos`` for the whole batch) and ``GPT.forward`` neither (one position range for all rows). So
the batched decode step is written here, over the model's own modules: each row's token gets
its own position embedding, its keys and values go to its own position, and a per-row mask
hides the cache entries past it. Everything else (sampling, filters, stop strings, the context
window) is ``nanogpt.generate``'s, so a request's tokens are the ones it gets served alone.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch.nn import functional as F

from nanogpt.errors import NanoGPTError
from nanogpt.generate import SamplingParams, TextStream, check_context_keep, sample_next_token, window_start
from nanogpt.model import GPT, rotary_angles

if TYPE_CHECKING:
    from nanogpt.threads import ThreadTuner


class QueueFull(NanoGPTError):
    """The engine's queue holds as many requests as it may; the client should retry later."""


@dataclass(frozen=True)
class CompletionSpec:
    """One completion to generate (one choice of an API request)."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    seed: int | None = None  # None: a fresh random seed
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # how many top alternatives to report per token (None: no logprobs)
    prompt_logprobs: bool = False  # also report the logprob of each prompt token (echo + logprobs)

    def __post_init__(self) -> None:
        if len(self.prompt_ids) == 0:
            raise NanoGPTError("the prompt has no tokens")
        if self.max_tokens < 1:
            raise NanoGPTError(f"max_tokens must be at least 1, got {self.max_tokens}")


@dataclass
class Token:
    """One generated token: its id, the text now safe to show, and (if asked) its logprobs."""

    id: int
    text: str
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


@dataclass
class Finish:
    """The end of a completion: why (``stop``, ``length``, ``cancelled``, ``error``) and the held-back text."""

    reason: str
    text: str = ""
    completion_tokens: int = 0
    prompt_logprobs: list[float | None] | None = None
    error: str | None = None


Event = Any  # Token | Finish


class Handle:
    """What :meth:`Engine.submit` returns: cancel it to free the request's row at the next step."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


# --------------------------------------------------------------------------------------------
# The cache: one row per active request, each row filled up to its own length


class SlotCache:
    """Keys and values (n_layer, rows, nh, block_size, hs); row r holds ``length[r]`` positions."""

    def __init__(self, model: GPT, rows: int) -> None:
        cfg, p = model.config, model.lm_head.weight
        shape = (cfg.n_layer, rows, cfg.n_head, cfg.block_size, cfg.head_dim)
        # zeros, not empty: a masked entry still enters softmax(..) @ v as 0 * value, and
        # garbage memory may hold NaN (0 * NaN = NaN); stale finite values are harmless
        self.k = torch.zeros(shape, device=p.device, dtype=p.dtype)
        self.v = torch.zeros(shape, device=p.device, dtype=p.dtype)

    def row_view(self, row: int) -> "_RowView":
        """A ``KeyValueStore`` for ``GPT.forward`` that fills row ``row`` from position 0."""
        return _RowView(self, row)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy row ``src``'s first ``length`` positions to row ``dst`` (keeps the active rows contiguous)."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]


class _RowView:
    def __init__(self, cache: SlotCache, row: int) -> None:
        self.cache, self.row, self.pos = cache, row, 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.size(2)
        r = slice(self.row, self.row + 1)
        self.cache.k[layer, r, :, self.pos : end] = k
        self.cache.v[layer, r, :, self.pos : end] = v
        return self.cache.k[layer, r, :, :end], self.cache.v[layer, r, :, :end]  # (1, nh, end, hs)


def decode_step(model: GPT, cache: SlotCache, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Next-token logits (B, V) for rows 0..B-1, row b adding ``tokens[b]`` at position ``pos[b]``.

    The same function as ``GPT.forward`` with a cache, but every row at its own position:
    row b's query sees its cache positions 0..pos[b] and nothing beyond (other rows may be longer).
    """
    B = tokens.size(0)
    cfg = model.config
    C = cfg.n_embd
    tr = model.transformer
    x = tr.wte(tokens[:, None])  # (B, 1, C)
    rope = None
    if cfg.arch == "gpt2":
        x = x + tr.wpe(pos)[:, None, :]
    else:  # the modern block: each row's q and k turn by its own position
        cos, sin = rotary_angles(pos, cfg.head_dim, cfg.rope_theta)  # 2 x (B, hs)
        rope = (cos[:, None, None, :], sin[:, None, None, :])  # broadcast over (B, 1, nh, hs)
    L = int(pos.max()) + 1
    visible = (torch.arange(L, device=pos.device)[None, :] <= pos[:, None])[:, None, None, :]  # (B, 1, 1, L)
    rows = torch.arange(B, device=pos.device)
    for i, block in enumerate(tr.h):
        attn = block.attn
        q, k, v = attn.heads(block.ln_1(x), rope)  # 3 x (B, nh, 1, hs)
        cache.k[i, rows, :, pos] = k[:, :, 0]  # each row's key at its own position
        cache.v[i, rows, :, pos] = v[:, :, 0]
        keys, values = cache.k[i, :B, :, :L], cache.v[i, :B, :, :L]  # (B, nh, L, hs)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)  # (B, nh, 1, hs)
        x = x + attn.c_proj(y.transpose(1, 2).reshape(B, 1, C))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(tr.ln_f(x))[:, 0, :]  # (B, V)


# --------------------------------------------------------------------------------------------
# The engine


@dataclass
class _Slot:
    spec: CompletionSpec
    emit: Callable[[Event], None]
    handle: Handle
    generator: torch.Generator
    stream: TextStream
    ids: list[int]  # prompt (its last block_size tokens) + generated tokens
    start: int = 0  # the context window's first token (see nanogpt.generate)
    cached: int = 0  # positions of this row in the cache
    generated: int = 0
    logits: torch.Tensor | None = None  # next-token logits (V,), float32
    prompt_logprobs: list[float | None] | None = None
    finish: Finish | None = field(default=None)


class Engine:
    """Serves completions from ``model`` in batches of up to ``max_batch`` rows (see the module doc).

    ``submit`` may be called from any thread; events go to each request's ``emit`` from the
    engine's thread. ``lock`` guards the model: other users of it (the explainer views) hold it.
    ``threads`` (a ``nanogpt.threads.ThreadTuner``, or None to leave the count alone) chooses the
    CPU threads of each step's tokens: their sampling and the decode pass, one unit per step.
    """

    def __init__(self, model: GPT, tokenizer: Any, max_batch: int = 8, max_queue: int = 64,
                 context_keep: int | None = None, threads: ThreadTuner | None = None) -> None:
        if max_batch < 1 or max_queue < 0:
            raise NanoGPTError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.block_size = model.config.block_size
        self.keep = check_context_keep(context_keep, self.block_size)
        self.vocab_limit = min(int(tokenizer.vocab_size), model.config.vocab_size) if tokenizer else model.config.vocab_size
        self.eot = getattr(tokenizer, "eot_id", None)
        self.cache = SlotCache(model, max_batch)
        self.lock = threading.RLock()
        self._waiting: collections.deque[_Slot] = collections.deque()
        self._active: list[_Slot] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0  # decode steps run (for tests and /health)
        self.threads = threads

    # -- the public side -----------------------------------------------------------------

    def submit(self, spec: CompletionSpec, emit: Callable[[Event], None]) -> Handle:
        """Queue one completion; raise :class:`QueueFull` when the queue is full."""
        seed = secrets.randbits(62) if spec.seed is None else spec.seed
        gen = torch.Generator(device=self.model.lm_head.weight.device)
        gen.manual_seed(seed)
        ids = list(spec.prompt_ids)
        if len(ids) > self.block_size:
            raise NanoGPTError(f"the prompt is {len(ids)} tokens; the model's context is {self.block_size}")
        slot = _Slot(spec, emit, Handle(), gen, TextStream(self.tokenizer, spec.stop), ids)
        with self._wake:
            if len(self._waiting) >= self.max_queue + max(0, self.max_batch - len(self._active)):
                raise QueueFull(f"the server is busy: {len(self._waiting)} requests are waiting; retry later")
            self._waiting.append(slot)
            self._wake.notify()
        return slot.handle

    def load(self) -> dict[str, int]:
        """How busy the engine is: active rows, waiting requests, steps run."""
        return {"active": len(self._active), "waiting": len(self._waiting), "max_batch": self.max_batch, "steps": self.steps}

    @property
    def running(self) -> bool:
        """Whether the engine's thread is running."""
        return self._thread is not None

    def start(self) -> "Engine":
        """Run the engine loop in a daemon thread (returns self)."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="nanogpt-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """End the loop; requests still running finish with reason ``cancelled``."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for slot in list(self._active) + list(self._waiting):
            slot.emit(Finish("cancelled", completion_tokens=slot.generated))
        self._active.clear()
        self._waiting.clear()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._active:
                    self._wake.wait()
                if self._stopping:
                    return
            self.step()

    # -- one step ------------------------------------------------------------------------

    def step(self) -> None:
        """Admit waiting requests, sample one token for each active one, decode the next step."""
        try:
            with self.lock, torch.inference_mode():
                self._admit()
                # a unit of the thread tuner: one token for every active row. The prefills of
                # the requests just admitted stay out of it: their length varies too much to time.
                with self._unit():
                    for slot in self._active:
                        self._sample(slot)
                    self._leave()
                    self._forward()
                self.steps += 1
        except Exception as e:  # noqa: BLE001 - a failed step ends its requests, never the server
            message = f"{type(e).__name__}: {e}"
            for slot in self._active:
                slot.emit(Finish("error", completion_tokens=slot.generated, error=message))
            self._active.clear()

    def _unit(self) -> contextlib.AbstractContextManager:
        if self.threads is None or not self._active:  # no tuner, or nothing to time
            return contextlib.nullcontext()
        return self.threads.unit()

    def _admit(self) -> None:
        self._drop_cancelled()
        while len(self._active) < self.max_batch:
            with self._wake:
                if not self._waiting:
                    return
                slot = self._waiting.popleft()
            if slot.handle.cancelled.is_set():
                slot.emit(Finish("cancelled"))
                continue
            self._active.append(slot)
            self._prefill(len(self._active) - 1, slot, want_all=slot.spec.prompt_logprobs)

    def _drop_cancelled(self) -> None:
        for slot in self._active:
            if slot.handle.cancelled.is_set() and slot.finish is None:
                slot.finish = Finish("cancelled", completion_tokens=slot.generated)
        self._leave()

    def _prefill(self, row: int, slot: _Slot, want_all: bool = False) -> None:
        """Fill row ``row`` from the slot's context window with the model's own forward pass."""
        window = slot.ids[slot.start :]
        idx = torch.tensor([window], dtype=torch.long, device=self.cache.k.device)  # (1, T)
        logits, _ = self.model(idx, kv_cache=self.cache.row_view(row), last_logits_only=not want_all)
        logits = logits[0, :, : self.vocab_limit].float()  # (T or 1, V)
        if want_all:
            lp = torch.log_softmax(logits[:-1], dim=-1)
            slot.prompt_logprobs = [None] + lp.gather(1, idx[0, 1:, None].cpu()).squeeze(1).tolist()
        slot.logits = logits[-1]
        slot.cached = len(window)

    def _sample(self, slot: _Slot) -> None:
        spec, logits = slot.spec, slot.logits
        s = spec.sampling
        tok = int(sample_next_token(logits[None], s.temperature, s.top_k, s.top_p, slot.generator)[0])
        slot.generated += 1
        logprob = top = None
        if spec.logprobs is not None:
            lp = torch.log_softmax(logits, dim=-1)
            logprob = float(lp[tok])
            if spec.logprobs > 0:
                vals, ids = torch.topk(lp, min(spec.logprobs, lp.numel()))
                top = list(zip(ids.tolist(), vals.tolist()))
        if self.eot is not None and tok == self.eot:
            slot.emit(Token(tok, "", logprob, top))
            slot.finish = Finish("stop", slot.stream.finish(), slot.generated)
            return
        slot.ids.append(tok)
        slot.emit(Token(tok, slot.stream.push(tok), logprob, top))
        if slot.stream.done:
            slot.finish = Finish("stop", slot.stream.finish(), slot.generated)
        elif slot.generated >= spec.max_tokens:
            slot.finish = Finish("length", slot.stream.finish(), slot.generated)

    def _leave(self) -> None:
        """Rows whose request finished leave; the last row moves into each gap (rows stay 0..B-1)."""
        row = 0
        while row < len(self._active):
            slot = self._active[row]
            if slot.finish is None:
                row += 1
                continue
            slot.finish.prompt_logprobs = slot.prompt_logprobs
            slot.emit(slot.finish)
            last = self._active.pop()
            if last is not slot:
                self.cache.move(len(self._active), row, last.cached)
                self._active[row] = last

    def _forward(self) -> None:
        """Next-token logits for every active row: re-fill rows whose window moved, decode the rest."""
        decode = []
        for row, slot in enumerate(self._active):
            new_start = window_start(slot.start, len(slot.ids), self.block_size, self.keep)
            if new_start != slot.start:
                slot.start = new_start
                self._prefill(row, slot)
            else:
                decode.append(row)
        if not decode:
            return
        device = self.cache.k.device
        if len(decode) != len(self._active):  # a re-filled row is in the way: move it to the end
            self._decode_rows(decode, device)
            return
        tokens = torch.tensor([s.ids[-1] for s in self._active], dtype=torch.long, device=device)
        pos = torch.tensor([s.cached for s in self._active], dtype=torch.long, device=device)
        logits = decode_step(self.model, self.cache, tokens, pos)[:, : self.vocab_limit].float()
        for row, slot in enumerate(self._active):
            slot.logits = logits[row]
            slot.cached += 1

    def _decode_rows(self, rows: Sequence[int], device: torch.device) -> None:
        # rare (a row re-filled its window this step): decode the others one at a time
        for row in rows:
            slot = self._active[row]
            view = self.cache.row_view(row)
            view.pos = slot.cached
            idx = torch.tensor([[slot.ids[-1]]], dtype=torch.long, device=device)
            logits, _ = self.model(idx, kv_cache=view, last_logits_only=True)
            slot.logits = logits[0, -1, : self.vocab_limit].float()
            slot.cached += 1


def run_to_end(engine: Engine, specs: Sequence[CompletionSpec], timeout: float = 60.0) -> list[list[Event]]:
    """Submit ``specs`` together and wait for all their events (a helper for tests and scripts)."""
    import queue

    boxes = [queue.Queue() for _ in specs]
    for spec, box in zip(specs, boxes):
        engine.submit(spec, box.put)
    out = []
    for box in boxes:
        events = []
        while not events or not isinstance(events[-1], Finish):
            events.append(box.get(timeout=timeout))
        out.append(events)
    return out
