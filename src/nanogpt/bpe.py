"""A byte-level BPE tokenizer trained on your own text (Hugging Face ``tokenizers`` does the work).

GPT-2's BPE was learned on English web text: Japanese, for one, costs it about two bytes per
token, and a character vocabulary runs to thousands of entries. Training the same kind of
tokenizer on the corpus itself gives a small vocabulary that fits the text. Like GPT-2's: byte
level (any UTF-8 text encodes and decodes back exactly, no unknown token), GPT-2's
pre-tokenization regex, and ``<|endoftext|>`` as the one special token. Training is
deterministic for the same texts and settings.

The tokenizer travels as its ``tokenizer.json`` text inside :meth:`BPETokenizer.to_dict`, so
a dataset's meta.json and a checkpoint carry it whole, and an export writes it out unchanged.
"""

from __future__ import annotations

from typing import Iterable

from nanogpt.errors import NanoGPTError
from nanogpt.tokenizer import GPT2_EOT, BPETokenizer, hf_tokenizers

MIN_VOCAB = 257  # the 256 byte tokens and <|endoftext|>


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, progress: bool = False) -> BPETokenizer:
    """Learn a byte-level BPE of at most ``vocab_size`` tokens (bytes, merges and ``<|endoftext|>``) from ``texts``."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise NanoGPTError(f"a bpe vocabulary needs at least {MIN_VOCAB} tokens (256 bytes + <|endoftext|>), got {vocab_size}")
    tk = hf_tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's regex
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=progress,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), special_tokens=[GPT2_EOT],
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok.to_str())
