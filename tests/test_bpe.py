"""A BPE trained on our own text: exact round trips, determinism, GPT-2-like specials, a fitting vocabulary."""

import random

import pytest

from nanogpt.bpe import BPETokenizer, train_bpe
from nanogpt.errors import NanoGPTError
from nanogpt.tokenizer import TokenizerError, get_gpt2_tokenizer

pytest.importorskip("tokenizers")

JAPANESE = ("吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所で"
            "ニャーニャー泣いていた事だけは記憶している。") * 40
ENGLISH = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


@pytest.fixture(scope="module")
def tok():
    return train_bpe([JAPANESE, ENGLISH], vocab_size=600)


def test_any_utf8_text_round_trips_exactly(tok):
    rng = random.Random(0)
    alphabet = "abc XYZ\n\t  日本語カタカナ🤖👩\u200d💻é\u0301\x00\x7f" + "".join(chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(200))
    samples = ["", " ", "\n\n\n", JAPANESE[:100], ENGLISH[:200]]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 80))) for _ in range(200)]
    for text in samples:
        if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            continue  # lone surrogates are not UTF-8
        assert tok.decode(tok.encode(text)) == text, repr(text)


def test_training_is_deterministic_and_the_vocabulary_fits(tok):
    again = train_bpe([JAPANESE, ENGLISH], vocab_size=600)
    assert again.tokenizer_json == tok.tokenizer_json
    assert 257 <= tok.vocab_size <= 600
    # it learned this text: far fewer tokens than GPT-2's English BPE on the Japanese part
    assert len(tok.encode(JAPANESE)) * 2 < len(get_gpt2_tokenizer().encode(JAPANESE))


def test_end_of_text_is_one_special_token_and_the_dict_round_trips(tok):
    ids = tok.encode("a<|endoftext|>b")
    assert tok.eot_id is not None and tok.eot_id in ids and len(ids) == 3
    assert tok.decode(ids) == "a<|endoftext|>b"
    copy = BPETokenizer(tok.to_dict()["tokenizer_json"])
    assert copy.encode(JAPANESE[:50]) == tok.encode(JAPANESE[:50]) and copy.vocab_size == tok.vocab_size


def test_bad_settings_and_ids_are_one_line(tok):
    with pytest.raises(NanoGPTError, match="at least 257 tokens"):
        train_bpe(["x"], vocab_size=100)
    with pytest.raises(TokenizerError, match="outside this bpe tokenizer's vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(TokenizerError, match="cannot be read"):
        BPETokenizer("{not json")


def test_prepare_trains_a_bpe_on_the_train_split_and_training_uses_it(tmp_path):
    from nanogpt.cli import main
    from nanogpt.data.loader import load_prepared

    text = tmp_path / "jp.txt"
    text.write_text(JAPANESE * 5 + ENGLISH * 5, encoding="utf-8")
    out = tmp_path / "data"
    assert main(["prepare", str(text), "--tokenizer", "bpe", "--vocab-size", "400", "--out", str(out), "--quiet"]) == 0
    data = load_prepared(out)
    assert data.tokenizer.name == "bpe" and 257 <= data.tokenizer.vocab_size <= 400
    train = data.split("train")
    assert data.tokenizer.decode(train[:200].tolist()) == (JAPANESE * 5 + ENGLISH * 5)[: len(data.tokenizer.decode(train[:200].tolist()))]
    again = tmp_path / "again"
    assert main(["prepare", str(text), "--tokenizer", "bpe", "--vocab-size", "400", "--out", str(again), "--quiet"]) == 0
    assert (again / "train.bin").read_bytes() == (out / "train.bin").read_bytes()  # deterministic


def test_prepare_refuses_token_files_it_did_not_write(tmp_path, capsys):
    from nanogpt.cli import main

    nanogpt_data = tmp_path / "shakespeare_char"
    nanogpt_data.mkdir()
    (nanogpt_data / "train.bin").write_bytes(b"\x00\x01" * 10)
    (nanogpt_data / "val.bin").write_bytes(b"\x00\x01")
    text = tmp_path / "t.txt"
    text.write_text(ENGLISH, encoding="utf-8")
    assert main(["prepare", str(text), "--out", str(nanogpt_data), "--quiet"]) == 2
    assert "nanogpt did not write" in capsys.readouterr().err
    assert (nanogpt_data / "train.bin").read_bytes() == b"\x00\x01" * 10
    assert main(["prepare", str(text), "--out", str(nanogpt_data), "--quiet", "--overwrite"]) == 0
