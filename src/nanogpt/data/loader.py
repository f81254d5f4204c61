"""What training needs from a prepared dataset: :func:`load_prepared` and :class:`BatchLoader`.

:class:`BatchLoader` draws random windows of ``block_size + 1`` tokens; batch number ``k`` of
process ``rank`` depends only on ``(seed, rank, k)``, so its state is one counter. This module
imports neither the prepare pipeline nor the corpora.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nanogpt.data.format import META_FORMAT, META_VERSION, SPLITS, read_token_header, read_tokens
from nanogpt.errors import NanoGPTError
from nanogpt.tokenizer import Tokenizer, tokenizer_from_dict

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------------------------
# Loading a prepared dataset


# Sources 'nanogpt prepare' knows by name (nanogpt.data.corpora; a test keeps the two in step).
NAMED_SOURCES = ("shakespeare", "tinyshakespeare", "openwebtext", "fineweb-edu")


def prepare_command(folder: str | os.PathLike, tokenizer: str | None = None, source: str | None = None) -> str:
    """The ``nanogpt prepare`` command that makes ``folder``: from ``source`` and ``tokenizer`` when
    known (a preset's data.prepare and data.tokenizer), else guessed from the folder's name
    (data/shakespeare-char, data/fineweb-edu-gpt2, ...; SOURCE when the name says nothing)."""
    path = Path(folder)
    name = path.name
    tok = tokenizer or ("gpt2" if "gpt2" in name else "char")
    if source is None:
        stem = name.removesuffix("-char").removesuffix("-gpt2")
        source = stem if stem in NAMED_SOURCES else "shakespeare" if "shakespeare" in stem else "SOURCE"
    return f"nanogpt prepare {source} --tokenizer {tok} --out {path}"


def _prepare_hint(path: Path) -> str:
    return prepare_command(path)


def needs_preparing(folder: str | os.PathLike, tokenizer: str | None = None, source: str | None = None) -> bool:
    """Whether training must prepare ``folder`` from ``source`` first (False: it is prepared).

    Raises one line when it cannot: ``folder`` is a file, or it is not prepared and there is no
    ``source`` to prepare it from (the line gives the command for this folder and tokenizer).
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise NanoGPTError(f"dataset {path} is a file; data.dataset must be a folder made by 'nanogpt prepare'")
    if (path / "meta.json").is_file():
        return False
    if source:
        return True
    state = "does not exist" if not path.exists() else "is not a prepared dataset (no meta.json)"
    raise NanoGPTError(f"dataset folder {path} {state}; run: {prepare_command(path, tokenizer)}")


def check_token_range(tokens: np.ndarray, vocab_size: int, file: str | os.PathLike, hint: str) -> None:
    """Refuse token ids >= ``vocab_size`` (one pass of numpy's max over the memmap)."""
    if len(tokens) and int(tokens.max()) >= vocab_size:
        raise NanoGPTError(
            f"{file} holds token id {int(tokens.max())}, outside the vocabulary of {vocab_size} in meta.json; "
            f"the file is corrupt: run {hint} --overwrite"
        )


@dataclass
class PreparedData:
    """A prepared dataset folder: its meta.json, its tokenizer and its (memory-mapped) splits."""

    path: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer
    _splits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def vocab_size(self) -> int:
        """The tokenizer's number of ids."""
        return int(self.meta["vocab_size"])

    def split(self, name: str) -> np.ndarray:
        """The tokens of ``train`` or ``val`` as a read-only memmap, shape (count,), opened once."""
        if name not in SPLITS:
            raise NanoGPTError(f"unknown split '{name}'; choose train or val")
        if name not in self._splits:
            file = self.path / f"{name}.bin"
            header = read_token_header(file)
            expected = self.meta["splits"][name]["tokens"]
            if header["count"] != expected:
                raise NanoGPTError(
                    f"{file} holds {header['count']:,} tokens but meta.json says {expected:,}; "
                    f"prepare the dataset again ({_prepare_hint(self.path)} --overwrite)"
                )
            tokens = read_tokens(file)
            check_token_range(tokens, self.vocab_size, file, _prepare_hint(self.path))
            self._splits[name] = tokens
        return self._splits[name]

    def bytes_per_token(self, split: str) -> float:
        """UTF-8 bytes of text per token in ``split`` (bits per byte = loss / ln 2 / this)."""
        st = self.meta["splits"][split]
        if not st["tokens"]:
            raise NanoGPTError(f"split '{split}' of {self.path} has no tokens")
        return st["bytes"] / st["tokens"]


def load_prepared(path: str | os.PathLike) -> PreparedData:
    """Open a folder made by ``nanogpt prepare``; a missing or unfinished one says the command to run."""
    path = Path(path)
    meta_path = path / "meta.json"
    if path.exists() and not path.is_dir():
        raise NanoGPTError(f"dataset {path} is a file; give a folder made by 'nanogpt prepare'")
    if not meta_path.is_file():
        state = "does not exist" if not path.exists() else "is not a prepared dataset (no meta.json)"
        raise NanoGPTError(f"dataset folder {path} {state}; run: {_prepare_hint(path)}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        ok = meta.get("format") == META_FORMAT and all(s in meta["splits"] for s in SPLITS)
        ok = ok and isinstance(meta.get("vocab_size"), int) and not isinstance(meta["vocab_size"], bool)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise NanoGPTError(f"{meta_path} is not a nanogpt dataset description; run: {_prepare_hint(path)} --overwrite")
    if meta.get("version") != META_VERSION:
        raise NanoGPTError(f"{meta_path} has version {meta.get('version')}, expected {META_VERSION}; "
                           f"run: {_prepare_hint(path)} --overwrite")
    for s in SPLITS:
        header = read_token_header(path / f"{s}.bin")  # fail now, not mid-training
        if header["vocab_size"] != meta["vocab_size"]:
            raise NanoGPTError(f"{path / (s + '.bin')} was written for vocab {header['vocab_size']}, meta.json says "
                               f"{meta['vocab_size']}; run: {_prepare_hint(path)} --overwrite")
    return PreparedData(path=path, meta=meta, tokenizer=_meta_tokenizer(meta, meta_path, path))


def _meta_tokenizer(meta: dict[str, Any], meta_path: Path, path: Path) -> Tokenizer:
    """meta.json's tokenizer, which must have exactly meta.json's vocab_size ids (a cut vocabulary cannot decode)."""
    try:
        tok = tokenizer_from_dict(meta.get("tokenizer"))
    except NanoGPTError as e:
        raise NanoGPTError(f"{meta_path}: {e}; run: {_prepare_hint(path)} --overwrite") from None
    if tok.vocab_size != meta["vocab_size"]:
        raise NanoGPTError(f"{meta_path} describes a {tok.name} tokenizer of {tok.vocab_size} ids but says vocab_size "
                           f"{meta['vocab_size']}; it is damaged: run {_prepare_hint(path)} --overwrite")
    return tok


# --------------------------------------------------------------------------------------------
# Batches


class BatchLoader:
    """Random (x, y) windows from a token array, reproducible from (seed, rank, batches drawn).

    Each batch takes ``batch_size`` windows of ``block_size + 1`` consecutive tokens starting at
    uniform random offsets; x = window[:-1], y = window[1:]. Batches are numbered globally
    across the job: rank ``r`` of ``world_size`` draws global batches r, r + world_size,
    r + 2 * world_size, ... and the offsets of global batch ``g`` come from a numpy Generator
    seeded with (seed, g), never from a global RNG. So every rank has its own stream, and N
    processes accumulating k micro-batches each see exactly the batches one process
    accumulating N * k would: distributed training is the single-process run, split up. The
    state to save is the counter of batches drawn.
    """

    _SALT = 0x6E67_7074  # keeps these streams apart from other uses of the same seed

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: "torch.device | str" = "cpu",
        name: str = "the data",
    ):
        import torch

        if block_size <= 0 or batch_size <= 0:
            raise NanoGPTError(f"block_size and batch_size must be positive, got {block_size} and {batch_size}")
        if not 0 <= rank < world_size:
            raise NanoGPTError(f"rank {rank} is outside world_size {world_size}")
        if seed < 0:
            raise NanoGPTError(f"the batch seed must be >= 0, got {seed}")
        if tokens.ndim != 1:
            raise NanoGPTError(f"tokens must be 1-D, got shape {tokens.shape}")
        if len(tokens) < block_size + 1:
            raise NanoGPTError(
                f"{name} is {len(tokens):,} tokens, shorter than block_size + 1 = {block_size + 1:,}; "
                "lower --model.block_size or add data"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.step = 0  # batches drawn so far
        self._pin = self.device.type == "cuda"

    def offsets(self, step: int) -> np.ndarray:
        """Start offsets of batch ``step``: shape (batch_size,), in [0, len - block_size - 1]."""
        global_batch = step * self.world_size + self.rank
        rng = np.random.default_rng([self._SALT, self.seed, global_batch])
        return rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)

    def next_batch(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """The next (x, y), both int64 of shape (batch_size, block_size) on the loader's device."""
        import torch

        T = self.block_size
        starts = self.offsets(self.step)
        self.step += 1
        # (B, T+1) windows copied out of the memmap as contiguous slices.
        win = np.stack([np.asarray(self.tokens[s : s + T + 1]) for s in starts]).astype(np.int64)
        x = torch.from_numpy(np.ascontiguousarray(win[:, :-1]))  # (B, T)
        y = torch.from_numpy(np.ascontiguousarray(win[:, 1:]))  # (B, T), shifted by one
        if self._pin:
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            x, y = x.to(self.device), y.to(self.device)
        return x, y

    def state_dict(self) -> dict[str, int]:
        """Small and JSON-able: the counter plus what it was counted for."""
        return {"step": self.step, "seed": self.seed, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state (from any rank: only the counter is per-run state)."""
        if "step" not in state:
            raise NanoGPTError("batch loader state has no 'step'; the checkpoint is damaged")
        if "seed" in state and int(state["seed"]) != self.seed:
            raise NanoGPTError(
                f"batch loader state was saved with seed {state['seed']} but this run uses seed {self.seed}; "
                "resume with the original --run.seed"
            )
        step = int(state["step"])
        saved_world = int(state.get("world_size", self.world_size))
        if saved_world != self.world_size:
            # resumed on a different number of processes: continue at the same global batch
            total = step * saved_world
            if total % self.world_size:
                raise NanoGPTError(
                    f"cannot resume the batch stream of {saved_world} processes on {self.world_size}: "
                    f"{total} batches drawn is not divisible by {self.world_size}"
                )
            step = total // self.world_size
        self.step = step

