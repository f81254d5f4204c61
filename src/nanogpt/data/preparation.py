"""``nanogpt prepare``: tokenize sources into a dataset folder, in parallel for GPT-2 BPE.

Train/val split, deterministic: a single text (one file, a built-in corpus) is cut at
``int(len(text) * (1 - val_fraction))`` characters, nanoGPT-style, so val is its tail. Many
documents are split whole: ``k = max(1, round(n * val_fraction))`` evenly spaced documents,
always including the last, go to val (for a stream of unknown length, every
``1 / val_fraction``-th document). With the gpt2 tokenizer every document of a multi-document
corpus is followed by ``<|endoftext|>``; char has no such id, so documents are concatenated.

GPT-2 encoding is cut into units of about a million characters at places where the BPE result
does not change, encoded in a process pool and written in order, so the tokens do not depend
on the number of workers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from nanogpt.data.corpora import HF_DATASETS, CorpusSource, corpus_source
from nanogpt.data.format import META_FORMAT, META_VERSION, SPLITS, TokenWriter, token_dtype
from nanogpt.errors import NanoGPTError
from nanogpt.tokenizer import CharTokenizer, Tokenizer, get_gpt2_tokenizer

# --------------------------------------------------------------------------------------------
# Splitting and encoding

# Work units of about this many characters: big enough that handing one to a worker costs
# little next to encoding it, small enough to keep every worker busy and memory bounded.
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
    """Encode (text, EOT after it) pieces, at least one, with GPT-2 into one uint16 array (runs in workers)."""
    tok = get_gpt2_tokenizer()
    eot = np.array([tok.eot_id], dtype=np.uint32)
    parts = []
    for text, add_eot in pieces:
        parts.append(tok.encode_array(text))
        if add_eot:
            parts.append(eot)
    return np.concatenate(parts).astype(np.uint16)


def _warm_worker() -> None:
    get_gpt2_tokenizer()  # build the ranks once per worker, before the first unit


def _start_pool(workers: int) -> Any:
    """A process pool for GPT-2 encoding, its workers already started.

    fork where it is safe (Linux, and no other thread yet: call this before any progress bar):
    workers start in milliseconds and inherit the built tokenizer. Elsewhere spawn, where each
    worker imports tiktoken and builds the ranks first, which pays only for large inputs.
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


def _run_units(
    units: Iterator[tuple[str, list[tuple[str, bool]]]], pool: Any, workers: int
) -> Iterator[tuple[str, np.ndarray]]:
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
    """What meta.json counts per split."""

    documents: int = 0
    characters: int = 0
    bytes: int = 0
    tokens: int = 0

    def add_text(self, text: str) -> None:
        self.characters += len(text)
        self.bytes += len(text.encode("utf-8"))



# --------------------------------------------------------------------------------------------
# prepare


def _identity(meta: dict[str, Any]) -> tuple:
    """What makes two datasets the same one: their sources and their tokenizer type."""
    sources = tuple((s.get("kind"), s.get("location")) for s in meta.get("sources", []))
    return sources, meta.get("tokenizer", {}).get("type")


def _check_out_dir(out: Path, new_identity: tuple, overwrite: bool) -> None:
    """Refuse an --out that is a file or holds a different dataset (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise NanoGPTError(f"--out {out} is a file; give a folder")
    meta_path = out / "meta.json"
    foreign = [f"{s}.bin" for s in SPLITS if (out / f"{s}.bin").exists()]
    if foreign and not meta_path.is_file() and not overwrite:  # e.g. nanoGPT's data/shakespeare_char
        raise NanoGPTError(f"{out} holds {' and '.join(foreign)} that nanogpt did not write (no meta.json; nanoGPT's "
                           "token files look like this); choose another --out, or pass --overwrite to replace them")
    if overwrite or not meta_path.is_file():
        return
    try:
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        same = _identity(old) == new_identity
        what = (", ".join(s.get("source", "?") for s in old.get("sources", []))
                + f" with tokenizer {old['tokenizer']['type']}")
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


def _check_options(sources: list[str], tokenizer: str, val_fraction: float, errors: str, workers: int | None,
                   max_documents: int | None, input_path: str | None) -> None:
    """prepare's arguments, checked before any source is opened."""
    if not sources:
        raise NanoGPTError("give at least one SOURCE: shakespeare, tinyshakespeare, a text file, a folder, "
                           f"or {' / '.join(HF_DATASETS)}")
    if tokenizer not in ("char", "gpt2", "bpe"):
        raise NanoGPTError(f"unknown tokenizer '{tokenizer}'; choose char, gpt2 or bpe")
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


@dataclass
class _Plan:
    """What one prepare call reads and how, decided before any text is read."""

    sources: list[CorpusSource]
    tokenizer: str  # char | gpt2
    val_fraction: float
    max_documents: int | None
    n_docs: int | None  # documents that will be read; None for a stream of unknown length
    total_bytes: int | None  # for the progress bar; None when unknown
    workers: int  # processes for GPT-2 encoding
    vocab_size: int = 4096  # bpe: the vocabulary to train

    @property
    def tail_split(self) -> bool:
        """One text: val is its tail. Otherwise whole documents go to val."""
        return self.n_docs == 1

    def documents(self) -> Iterator[tuple[str, str]]:
        """(name, text) of every source in order, stopping after ``max_documents``."""
        seen = 0
        for source in self.sources:
            for doc in source.documents():
                if self.max_documents is not None and seen >= self.max_documents:
                    return
                seen += 1
                yield doc


def _make_plan(sources: list[CorpusSource], tokenizer: str, val_fraction: float, workers: int | None,
               max_documents: int | None) -> _Plan:
    """Count documents and bytes where known and choose the workers (None: all cores for 16 MB or more)."""
    counts = [s.count for s in sources]
    n_docs = None if None in counts else sum(counts)  # type: ignore[arg-type]
    if n_docs is not None and max_documents is not None:
        n_docs = min(n_docs, max_documents)
    sizes = [s.total_bytes for s in sources]
    total_bytes = None if any(b is None for b in sizes) else sum(sizes)  # type: ignore[arg-type]
    if tokenizer == "gpt2" and workers is None:
        big = total_bytes is None or total_bytes >= 16 * 2**20
        workers = (os.cpu_count() or 1) if big else 1
    return _Plan(sources, tokenizer, val_fraction, max_documents, n_docs, total_bytes, workers or 1)


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
    vocab_size: int = 4096,
) -> dict[str, Any]:
    """Tokenize ``sources`` into ``out_dir``/{train.bin, val.bin, meta.json}; returns the meta dict.

    ``tokenizer``: char | gpt2 | bpe (a byte-level BPE of ``vocab_size`` tokens trained on the
    train split first, ``nanogpt.bpe``). ``val_fraction`` in [0, 1). ``errors``: strict | replace | ignore
    for invalid UTF-8. ``workers``: processes for GPT-2 encoding (None: all cores for inputs of
    16 MB and more, else 1); the tokens do not depend on it. ``input_path``: the file to use for
    ``tinyshakespeare``. ``progress``: show a progress bar and print a summary.
    ``max_documents``: stop after this many documents (for large streamed corpora).
    Files are written under temporary names and renamed, meta.json last.
    """
    t0 = time.perf_counter()
    _check_options(sources, tokenizer, val_fraction, errors, workers, max_documents, input_path)
    resolved = [corpus_source(s, glob, errors, input_path) for s in sources]
    out = Path(out_dir)
    _check_out_dir(out, (tuple((s.kind, s.location) for s in resolved), tokenizer), overwrite)
    plan = dataclasses.replace(_make_plan(resolved, tokenizer, val_fraction, workers, max_documents), vocab_size=vocab_size)
    options = {"glob": glob, "errors": errors, "max_documents": max_documents}
    try:
        meta = _write_dataset(plan, out, options, t0, progress)
    except OSError as e:
        if e.filename is None:  # a full disk on write() names no file: name the folder for the one-line error
            raise OSError(e.errno, e.strerror, str(out)) from e
        raise
    if progress:
        print(format_summary(meta, str(out)))
    return meta


def _write_dataset(plan: _Plan, out: Path, options: dict[str, Any], t0: float, progress: bool) -> dict[str, Any]:
    """Encode the plan into ``out``; on any failure remove what this call wrote and keep the old dataset."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = {s: out / f".{s}.bin.tmp" for s in SPLITS}
    meta_tmp = out / ".meta.json.tmp"
    writers: dict[str, TokenWriter] = {}
    pool = bar = None
    done = False
    try:
        # The pool first: its workers may be forked only while this process has no other thread.
        pool = _start_pool(plan.workers) if plan.tokenizer == "gpt2" and plan.workers > 1 else None
        if progress:
            bar = _progress_bar(plan)
        tok, stats, workers = _encode_splits(plan, writers, tmp, pool, bar)
        meta = _dataset_meta(plan, tok, stats, options, workers, time.perf_counter() - t0)
        _install(out, tmp, meta_tmp, meta)
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
    return meta


def _progress_bar(plan: _Plan) -> Any:
    """A tqdm bar over the input's UTF-8 bytes, drawn only on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=plan.total_bytes, unit="B", unit_scale=True, desc=f"prepare {plan.tokenizer}", file=sys.stderr,
                dynamic_ncols=True, leave=False, disable=None)  # None: only on a terminal


def _encode_splits(plan: _Plan, writers: dict[str, TokenWriter], tmp: dict[str, Path], pool: Any,
                   bar: Any) -> tuple[Tokenizer, dict[str, _SplitStats], int]:
    """Tokenize every document into the split files; returns the tokenizer, the counts and the workers used."""
    stats = {s: _SplitStats() for s in SPLITS}
    if plan.tokenizer == "char":
        tok: Tokenizer = _prepare_char(plan, stats, writers, tmp, bar)
        workers = 1
    elif plan.tokenizer == "bpe":
        tok, workers = _prepare_bpe(plan, stats, writers, tmp, bar), 1
    else:
        tok = get_gpt2_tokenizer()
        for s in SPLITS:
            writers[s] = TokenWriter(tmp[s], tok.vocab_size)
        units = _gpt2_units(plan, stats, bar)
        for split, arr in _run_units(units, pool, plan.workers):
            writers[split].write(arr)
        workers = plan.workers
    for s in SPLITS:
        writers[s].close()
        stats[s].tokens = writers[s].count
    if stats["train"].tokens == 0:
        raise NanoGPTError("the training split is empty: the sources hold too little text; add data")
    if plan.val_fraction > 0 and stats["val"].tokens == 0:
        raise NanoGPTError(
            f"the validation split is empty: too few documents for --val-fraction {plan.val_fraction}; add data"
        )
    return tok, stats, workers


def _dataset_meta(plan: _Plan, tok: Tokenizer, stats: dict[str, _SplitStats], options: dict[str, Any],
                  workers: int, seconds: float) -> dict[str, Any]:
    """The contents of meta.json."""
    return {
        "format": META_FORMAT,
        "version": META_VERSION,
        "tokenizer": tok.to_dict(),
        "tokenizer_name": tok.name,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": np.dtype(token_dtype(tok.vocab_size)).name,
        "sources": [s.describe() for s in plan.sources],
        "split": {"mode": "tail" if plan.tail_split else "documents", "val_fraction": plan.val_fraction},
        "splits": {s: vars(stats[s]) for s in SPLITS},
        "options": options,
        "workers": workers,
        "seconds": round(seconds, 3),
    }


def _install(out: Path, tmp: dict[str, Path], meta_tmp: Path, meta: dict[str, Any]) -> None:
    """Rename the finished token files into place, then meta.json."""
    meta_tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    # An old meta.json must not vouch for the new token files while they are renamed in.
    (out / "meta.json").unlink(missing_ok=True)
    for s in SPLITS:
        os.replace(tmp[s], out / f"{s}.bin")
    os.replace(meta_tmp, out / "meta.json")


def _prepare_bpe(plan: _Plan, stats: dict[str, _SplitStats], writers: dict[str, TokenWriter], tmp: dict[str, Path],
                 bar: Any) -> Tokenizer:
    """Train a BPE on the train split's text (one pass), then encode both splits with it (a second pass)."""
    from nanogpt.bpe import train_bpe

    train_text = (text for split, pieces in _gpt2_units(plan, {s: _SplitStats() for s in SPLITS}, None)
                  if split == "train" for text, _ in pieces)
    tok = train_bpe(train_text, plan.vocab_size, progress=bar is not None and not bar.disable)
    for s in SPLITS:
        writers[s] = TokenWriter(tmp[s], tok.vocab_size)
    eot = np.array([tok.eot_id], dtype=np.uint32)
    for split, pieces in _gpt2_units(plan, stats, bar):
        for text, add_eot in pieces:
            writers[split].write(tok.encode_array(text))
            if add_eot:
                writers[split].write(eot)
    return tok


def _prepare_char(plan: _Plan, stats: dict[str, _SplitStats], writers: dict[str, TokenWriter], tmp: dict[str, Path],
                  bar: Any) -> CharTokenizer:
    """Char tokenization: the vocabulary needs every character first, so the text is held in memory."""
    tail_split, val_fraction = plan.tail_split, plan.val_fraction
    texts = []
    for _, text in plan.documents():
        texts.append(text)
        if bar is not None:
            bar.update(len(text.encode("utf-8")))
    if not any(texts):
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


def _gpt2_units(plan: _Plan, stats: dict[str, _SplitStats], bar: Any) -> Iterator[tuple[str, list[tuple[str, bool]]]]:
    """Group documents into (split, [(text, EOT after)]) units of about _UNIT_CHARS characters."""
    tail_split, val_fraction = plan.tail_split, plan.val_fraction
    is_val = _val_selector(plan.n_docs, val_fraction)
    unit: list[tuple[str, bool]] = []
    unit_split, unit_chars = "train", 0
    any_text = False
    for i, (_, text) in enumerate(plan.documents()):
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
