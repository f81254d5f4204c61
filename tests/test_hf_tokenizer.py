"""Exported tokenizer files load in transformers offline and give our ids and our text back."""

import pytest

from nanogpt.errors import NanoGPTError
from nanogpt.hf_tokenizer import write_hf_tokenizer
from nanogpt.tokenizer import CharTokenizer, get_gpt2_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello, world!",
    "  leading spaces and\ttabs\n\n\nand newlines   ",
    "Ünïcödé — “quotes”, 日本語のテキスト, emoji 🤖🎉 and a zero-width joiner 👩\u200d💻",
    "end of one<|endoftext|>start of the next",
    "",
    "'s 're 've 'll 123 4567 ...!!!",
]


def test_gpt2_files_give_our_ids_and_text(tmp_path):
    ours = get_gpt2_tokenizer()
    names = write_hf_tokenizer(ours, tmp_path, model_max_length=1024)
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= set(names)
    for fast in (True, False):  # tokenizer.json, and the slow tokenizer from vocab.json + merges.txt
        hf = transformers.AutoTokenizer.from_pretrained(tmp_path, use_fast=fast)
        assert hf.eos_token_id == ours.eot_id == 50256
        for text in TEXTS:
            ids = hf(text)["input_ids"]
            assert ids == ours.encode(text), (fast, text)
            assert hf.decode(ids) == ours.decode(ids), (fast, text)


def test_char_files_give_our_ids_and_text(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n  All:\tSpeak, speak."
    ours = CharTokenizer.from_text(text + "é")
    write_hf_tokenizer(ours, tmp_path, model_max_length=256)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for sample in (text, "  \n\n", "é, speak", ""):
        ids = hf(sample)["input_ids"]
        assert ids == ours.encode(sample), sample
        assert hf.decode(ids) == sample
    with pytest.raises(Exception):  # a character outside the vocabulary is an error, as with ours
        hf("Zebra #")
    with pytest.raises(NanoGPTError):
        ours.encode("Zebra #")


def test_unknown_tokenizer_is_one_line(tmp_path):
    with pytest.raises(NanoGPTError, match="no Hugging Face tokenizer files"):
        write_hf_tokenizer(object(), tmp_path, 8)


def test_trained_bpe_files_give_our_ids_and_text(tmp_path):
    from nanogpt.bpe import train_bpe

    text = "吾輩は猫である。名前はまだ無い。\nFirst Citizen: speak, speak.\n" * 30
    ours = train_bpe([text], vocab_size=400)
    write_hf_tokenizer(ours, tmp_path, model_max_length=128)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for sample in [*TEXTS, text[:80]]:
        ids = hf(sample)["input_ids"]
        assert ids == ours.encode(sample), sample
        assert hf.decode(ids) == ours.decode(ids) == sample
