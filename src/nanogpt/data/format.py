"""The dataset folder's file formats: token files (``train.bin``, ``val.bin``) and meta.json's tags.

A token file is a 32-byte header (magic, format version, bytes per token, token count,
vocabulary size) and then the raw tokens, uint16 when the vocabulary has at most 65,536 ids
and uint32 otherwise.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from nanogpt.errors import NanoGPTError

# The splits of every dataset, and meta.json's format tag and version.
SPLITS = ("train", "val")
META_FORMAT = "nanogpt-dataset"
META_VERSION = 1

TOKEN_MAGIC = b"NGPTTOK\x00"
TOKEN_FORMAT_VERSION = 1
# magic (8 bytes), version (u32), bytes per token (u32), token count (u64), vocab size (u64)
_HEADER = struct.Struct("<8sIIQQ")
HEADER_SIZE = _HEADER.size  # 32
_DTYPES = {2: np.uint16, 4: np.uint32}


def token_dtype(vocab_size: int) -> type:
    """uint16 when every id fits (vocab_size <= 65,536), else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size > 2**32:
        raise ValueError(f"vocab_size {vocab_size} does not fit in uint32 token ids")
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class TokenWriter:
    """Append token arrays to a new token file; the header's count is filled in by :meth:`close`."""

    def __init__(self, path: str | os.PathLike, vocab_size: int):
        self.path = Path(path)
        self.vocab_size = int(vocab_size)
        self.dtype = np.dtype(token_dtype(self.vocab_size))
        self.count = 0
        self._f = open(self.path, "wb")
        self._f.write(self._header())

    def _header(self) -> bytes:
        return _HEADER.pack(TOKEN_MAGIC, TOKEN_FORMAT_VERSION, self.dtype.itemsize, self.count, self.vocab_size)

    def write(self, tokens: Any) -> None:
        """Append ``tokens`` (any integer array-like); ids outside the vocabulary raise ValueError."""
        arr = np.asarray(tokens)
        if arr.size == 0:
            return
        if arr.dtype.kind not in "iu":
            raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got [{lo}, {hi}]")
        self._f.write(np.ascontiguousarray(arr.reshape(-1), dtype=self.dtype).tobytes())
        self.count += arr.size

    def close(self) -> None:
        """Write the final header and flush the file to disk."""
        if self._f.closed:
            return
        self._f.seek(0)
        self._f.write(self._header())
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def abort(self) -> None:
        """Close and delete the unfinished file."""
        if not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)


def write_tokens(path: str | os.PathLike, tokens: Any, vocab_size: int) -> None:
    """Write a token file atomically (a temporary name, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = TokenWriter(tmp, vocab_size)
    try:
        writer.write(tokens)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    os.replace(tmp, path)


def read_token_header(path: str | os.PathLike) -> dict[str, Any]:
    """Validate a token file's header and size; returns {count, dtype, vocab_size, version}."""
    path = Path(path)
    if not path.is_file():
        raise NanoGPTError(f"token file not found: {path}")
    size = path.stat().st_size
    redo = "prepare the dataset again"
    if size < HEADER_SIZE:
        raise NanoGPTError(f"token file {path} is truncated ({size} bytes, shorter than its {HEADER_SIZE}-byte header); {redo}")
    with open(path, "rb") as f:
        magic, version, itemsize, count, vocab_size = _HEADER.unpack(f.read(HEADER_SIZE))
    if magic != TOKEN_MAGIC:
        raise NanoGPTError(f"{path} is not a nanogpt token file (bad magic bytes {magic!r}); {redo}")
    if version != TOKEN_FORMAT_VERSION:
        raise NanoGPTError(
            f"token file {path} has format version {version}, this nanogpt reads version {TOKEN_FORMAT_VERSION}; {redo}"
        )
    if itemsize not in _DTYPES:
        raise NanoGPTError(f"token file {path} is corrupt (token size {itemsize} bytes, expected 2 or 4); {redo}")
    expected = HEADER_SIZE + count * itemsize
    if size != expected:
        what = "truncated" if size < expected else "corrupt (longer than its header says)"
        raise NanoGPTError(
            f"token file {path} is {what}: header says {count:,} tokens = {expected:,} bytes, file has {size:,}; {redo}"
        )
    return {"count": int(count), "dtype": np.dtype(_DTYPES[itemsize]), "vocab_size": int(vocab_size), "version": version}


def read_tokens(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a token file (read-only) after validating its header: shape (count,)."""
    header = read_token_header(path)
    if header["count"] == 0:
        return np.zeros(0, dtype=header["dtype"])
    return np.memmap(path, dtype=header["dtype"], mode="r", offset=HEADER_SIZE, shape=(header["count"],))

