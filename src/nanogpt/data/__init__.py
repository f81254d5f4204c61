"""Datasets: corpora, ``nanogpt prepare``, token files and the training batch loader.

A prepared dataset is a folder with three files:

* ``train.bin`` and ``val.bin``: token files: a 32-byte header (magic, format version, bytes
  per token, token count, vocabulary size) and then the raw tokens, uint16 when the vocabulary
  has at most 65,536 ids and uint32 otherwise.
* ``meta.json``: the tokenizer (:meth:`Tokenizer.to_dict`), the counts of documents,
  characters, UTF-8 bytes and tokens per split (bytes per token gives bits-per-byte), and the
  sources. It is written last, so a folder without it is never taken as a finished dataset.

The modules, each importing only those before it:

* :mod:`nanogpt.data.format`: the token-file format and meta.json's tags.
* :mod:`nanogpt.data.corpora`: text sources: the built-in Shakespeare, tinyshakespeare, UTF-8
  files and folders, Hugging Face datasets.
* :mod:`nanogpt.data.loader`: what training needs: :func:`load_prepared`, :class:`BatchLoader`
  (imports neither corpora nor the prepare pipeline).
* :mod:`nanogpt.data.preparation`: the parallel prepare pipeline and the ``nanogpt prepare``
  command.

The names below are importable from ``nanogpt.data`` too; each loads its module on first use,
so importing this package loads nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "format": ("HEADER_SIZE", "META_FORMAT", "META_VERSION", "SPLITS", "TOKEN_FORMAT_VERSION", "TOKEN_MAGIC",
               "TokenWriter", "read_token_header", "read_tokens", "token_dtype", "write_tokens"),
    "corpora": ("HF_DATASETS", "SHAKESPEARE_FIRST_PLAY", "TINYSHAKESPEARE_CHARS", "TINYSHAKESPEARE_URL",
                "CorpusSource", "convert_play_markdown", "corpus_source", "read_text_file",
                "shakespeare_markdown_files", "shakespeare_plays", "shakespeare_text", "tinyshakespeare_text"),
    "loader": ("BatchLoader", "PreparedData", "load_prepared"),
    "preparation": ("default_out_dir", "format_summary", "prepare", "split_for_bpe"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
