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

from typing import TYPE_CHECKING, Any, Iterable, Sequence

from nanogpt.errors import NanoGPTError
from nanogpt.tokenizer import GPT2_EOT, TokenizerError

if TYPE_CHECKING:
    import numpy as np

MIN_VOCAB = 257  # the 256 byte tokens and <|endoftext|>


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ModuleNotFoundError:
        raise NanoGPTError("the bpe tokenizer needs Hugging Face tokenizers: pip install tokenizers") from None
    return tokenizers


class BPETokenizer:
    """A trained byte-level BPE; the same interface as the char and GPT-2 tokenizers."""

    name = "bpe"

    def __init__(self, tokenizer_json: str) -> None:
        tk = _tokenizers()
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


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, progress: bool = False) -> BPETokenizer:
    """Learn a byte-level BPE of at most ``vocab_size`` tokens (bytes, merges and ``<|endoftext|>``) from ``texts``."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise NanoGPTError(f"a bpe vocabulary needs at least {MIN_VOCAB} tokens (256 bytes + <|endoftext|>), got {vocab_size}")
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's regex
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=progress,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), special_tokens=[GPT2_EOT],
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok.to_str())
