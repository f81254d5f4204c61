"""nanogpt prepare, token files, the built-in corpus and the batch loader."""

from __future__ import annotations

import json
import os
import random
import re
import struct
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from nanogpt import data as D
from nanogpt.cli import main
from nanogpt.data import corpora, preparation
from nanogpt.errors import NanoGPTError
from nanogpt.tokenizer import get_gpt2_tokenizer


def run_cli(capsys, *argv):
    """Run `nanogpt ...`; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Token files


@pytest.mark.parametrize("vocab, dtype", [(65, np.uint16), (65536, np.uint16), (65537, np.uint32), (100_000, np.uint32)])
def test_token_file_round_trip_and_dtype(tmp_path, vocab, dtype):
    tokens = np.array([0, 1, vocab - 1, 7, vocab // 2], dtype=np.int64)
    path = tmp_path / "t.bin"
    D.write_tokens(path, tokens, vocab)
    header = D.read_token_header(path)
    assert header["dtype"] == np.dtype(dtype) and header["count"] == 5 and header["vocab_size"] == vocab
    assert path.stat().st_size == D.HEADER_SIZE + 5 * np.dtype(dtype).itemsize
    got = D.read_tokens(path)
    assert got.dtype == dtype and got.tolist() == tokens.tolist()
    assert not list(tmp_path.glob(".*.tmp"))


def test_token_file_rejects_ids_outside_vocab(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 65\)"):
        D.write_tokens(tmp_path / "t.bin", [3, 65], 65)
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_empty_token_file(tmp_path):
    D.write_tokens(tmp_path / "t.bin", np.zeros(0, np.int64), 10)
    assert len(D.read_tokens(tmp_path / "t.bin")) == 0


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:10], "truncated"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\0\0", "longer than its header"),
        (lambda b: b"XXXXXXXX" + b[8:], "not a nanogpt token file"),
        (lambda b: b[:8] + struct.pack("<I", 99) + b[12:], "format version 99"),
        (lambda b: b[:12] + struct.pack("<I", 3) + b[16:], "token size 3"),
    ],
)
def test_corrupt_token_files_are_refused(tmp_path, damage, message):
    path = tmp_path / "t.bin"
    D.write_tokens(path, np.arange(100), 200)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(NanoGPTError, match=message) as exc:
        D.read_tokens(path)
    assert "prepare the dataset again" in str(exc.value) and "\n" not in str(exc.value)


# --------------------------------------------------------------------------------------------
# BPE-safe chunking


def test_split_for_bpe_gives_the_tokens_of_the_whole():
    rng = random.Random(0)
    atoms = ["word", "Ünïcødé", "日本語", "😀", "12", "3.5", "!!", "'s", "'ll", " ", "  ", "\n", "\n\n", "\t", " \n", "—"]
    text = "".join(rng.choice(atoms) for _ in range(4000))
    tok = get_gpt2_tokenizer()
    whole = tok.encode_ordinary(text)
    for target in (1, 7, 50, 333):
        pieces = D.split_for_bpe(text, target)
        assert "".join(pieces) == text
        assert len(pieces) > 3
        assert [t for p in pieces for t in tok.encode_ordinary(p)] == whole, target


def test_split_for_bpe_keeps_text_without_safe_cuts_whole():
    assert D.split_for_bpe("x" * 100, 10) == ["x" * 100]


# --------------------------------------------------------------------------------------------
# The built-in corpus


@pytest.fixture(scope="module")
def plays():
    return D.shakespeare_plays()


@pytest.fixture(scope="module")
def corpus_text():
    return D.shakespeare_text()


def test_shakespeare_starts_with_coriolanus_and_holds_every_play(plays, corpus_text):
    names = [n for n, _ in plays]
    files = D.shakespeare_markdown_files()
    assert len(plays) == len(files) == 38
    assert names[0] == "roman/coriolanus" and names[1:] == sorted(names[1:])
    text = corpus_text
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n")
    assert text.endswith("\n") and not text.endswith("\n\n")
    pos = 0
    for name, play in plays:  # each play, in order, is in the text
        assert len(play) > 50_000, name
        found = text.find(play, pos)
        assert found == pos, name
        pos += len(play) + 2
    openings = {
        "tragedies/hamlet": "BERNARDO:\nWho's there?\n\nFRANCISCO:\n",
        "tragedies/macbeth": "First Witch:\nWhen shall we three meet again\n",
        "histories/richard-iii": "GLOUCESTER:\nNow is the winter of our discontent\n",
        "histories/edward-iii": "KING EDWARD:\nRobert of Artois",  # asterisk stage directions dropped
    }
    by_name = dict(plays)
    for name, start in openings.items():
        assert by_name[name].startswith(start), name


def test_shakespeare_has_no_markdown_left(corpus_text):
    text = corpus_text
    assert not re.search(r"[*_#\[\]\\]", text)
    assert not re.search(r"^(Enter|Exeunt|Exit) [A-Z]{2}", text, re.MULTILINE)  # stage directions dropped
    assert "\n\n\n" not in text
    # Every paragraph is "Speaker:" + lines, except a few unlabelled prologues.
    paragraphs = text.strip("\n").split("\n\n")
    labelled = sum(bool(re.match(r"^[^\n]+:\n\S", p)) for p in paragraphs)
    assert labelled / len(paragraphs) > 0.99


def test_convert_play_markdown_rules():
    md = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A street.\n\n"
        "_Enter two lords, with\nattendants_\n\n"
        "**First Lord**  \nGood morrow.  \n_\\[Aside]_ He looks ill.  \n\n"
        "**SECOND LORD**  \n[Within]_  \nWho calls?\n\n"
        "_Shouts within_\n\n"
        "What noise is \\*that\\*?  \n\n"
        "*Exit, pursued*\n\n"
        "### SCENE II. Elsewhere.\n\n"
        "**First Lord**  \nAgain.\n"
    )
    assert D.convert_play_markdown(md) == (
        "First Lord:\nGood morrow.\nHe looks ill.\n\n"
        "SECOND LORD:\nWho calls?\nWhat noise is that?\n\n"
        "First Lord:\nAgain."
    )


def test_tinyshakespeare_from_input_file(tmp_path, capsys):
    text = "".join(f"Speaker{i}:\nLine number {i}.\n\n" for i in range(200))
    src = write(tmp_path / "input.txt", text)
    code, out, _ = run_cli(capsys, "prepare", "tinyshakespeare", "--input", str(src), "--out", str(tmp_path / "ts"))
    assert code == 0 and "tail split" in out
    ds = D.load_prepared(tmp_path / "ts")
    cut = int(len(text) * 0.9)  # nanoGPT: data[:int(n * 0.9)]
    assert ds.tokenizer.decode(ds.split("train")) == text[:cut]
    assert ds.tokenizer.decode(ds.split("val")) == text[cut:]


def test_tinyshakespeare_offline_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path / "cache"))

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(corpora.urllib.request, "urlopen", offline)
    code, _, err = run_cli(capsys, "prepare", "tinyshakespeare", "--out", str(tmp_path / "ts"))
    assert_one_line_error(code, err, "cannot download tinyshakespeare", "--input PATH", "'shakespeare'")
    assert not (tmp_path / "ts").exists()


def test_tinyshakespeare_download_is_checked_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path / "cache"))
    body = {"data": b"not it"}

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return body["data"]

    monkeypatch.setattr(corpora.urllib.request, "urlopen", lambda url, timeout: Response())
    with pytest.raises(NanoGPTError, match="is not tiny Shakespeare"):
        D.tinyshakespeare_text()
    fake = "First Citizen:\n" + "x" * (D.TINYSHAKESPEARE_CHARS - 15)
    body["data"] = fake.encode()
    assert D.tinyshakespeare_text() == fake
    body["data"] = b"changed"  # second call reads the cache, not the network
    assert D.tinyshakespeare_text() == fake
    assert (tmp_path / "cache" / "tinyshakespeare.txt").is_file()


# --------------------------------------------------------------------------------------------
# prepare


@pytest.fixture(scope="module")
def shakespeare_char(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "shakespeare-char"
    meta = D.prepare(["shakespeare"], str(out), tokenizer="char", progress=False)
    return out, meta


def test_prepare_shakespeare_counts_are_consistent(shakespeare_char, corpus_text):
    out, meta = shakespeare_char
    text = corpus_text
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    assert tr["characters"] == int(len(text) * 0.9) and tr["characters"] + va["characters"] == len(text)
    assert tr["tokens"] == tr["characters"] and va["tokens"] == va["characters"]  # char: one token each
    assert tr["bytes"] + va["bytes"] == len(text.encode("utf-8"))
    assert meta["vocab_size"] == len(set(text)) and meta["dtype"] == "uint16" and meta["split"]["mode"] == "tail"
    assert json.loads((out / "meta.json").read_text()) == meta
    ds = D.load_prepared(out)
    train = ds.split("train")
    assert isinstance(train, np.memmap) and ds.split("train") is train  # opened once
    assert len(train) == tr["tokens"] and len(ds.split("val")) == va["tokens"]
    assert ds.tokenizer.decode(train[:200]) == text[:200]
    assert ds.tokenizer.decode(ds.split("val")[-100:]) == text[-100:]
    assert ds.bytes_per_token("train") == pytest.approx(tr["bytes"] / tr["tokens"])
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_prepare_folder_gpt2_per_document_split(tmp_path, capsys):
    docs = {f"d{i:02d}.txt": f"Document {i}: " + "some words here. " * (i + 1) + "\n" for i in range(20)}
    for name, text in docs.items():
        write(tmp_path / "corpus" / "sub" / name, text)
    write(tmp_path / "corpus" / "notes.md", "ignored by the default glob")
    code, out, _ = run_cli(capsys, "prepare", str(tmp_path / "corpus"), "--tokenizer", "gpt2", "--out", str(tmp_path / "o"))
    assert code == 0 and "documents split" in out
    ds = D.load_prepared(tmp_path / "o")
    meta = ds.meta
    # 2 of 20 documents, evenly spaced, the last one always: d09 and d19.
    assert meta["splits"]["val"]["documents"] == 2 and meta["splits"]["train"]["documents"] == 18
    tok = get_gpt2_tokenizer()
    val = np.asarray(ds.split("val"))
    train = np.asarray(ds.split("train"))
    assert (val == 50256).sum() == 2 and (train == 50256).sum() == 18 and val[-1] == 50256 == train[-1]
    assert tok.decode(val) == docs["d09.txt"] + "<|endoftext|>" + docs["d19.txt"] + "<|endoftext|>"
    assert "ignored" not in tok.decode(train)
    assert meta["splits"]["val"]["bytes"] == len((docs["d09.txt"] + docs["d19.txt"]).encode())


def test_prepare_gpt2_tokens_do_not_depend_on_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(preparation, "_UNIT_CHARS", 2000)  # many units even for a small corpus
    rng = random.Random(1)
    for i in range(12):
        write(tmp_path / "c" / f"{i}.txt", " ".join(rng.choice(["thee", "thou", "日本", "😀", "art\n"]) for _ in range(900)))
    one = D.prepare([str(tmp_path / "c")], str(tmp_path / "w1"), tokenizer="gpt2", workers=1, progress=False)
    two = D.prepare([str(tmp_path / "c")], str(tmp_path / "w2"), tokenizer="gpt2", workers=2, progress=False)
    # Where fork is not safe (another thread running, macOS, Windows) the pool spawns its workers.
    import threading

    monkeypatch.setattr(threading, "active_count", lambda: 2)
    spawned = D.prepare([str(tmp_path / "c")], str(tmp_path / "w3"), tokenizer="gpt2", workers=2, progress=False)
    assert one["splits"] == two["splits"] == spawned["splits"] and two["workers"] == 2
    for split in ("train.bin", "val.bin"):
        data = (tmp_path / "w1" / split).read_bytes()
        assert data == (tmp_path / "w2" / split).read_bytes() == (tmp_path / "w3" / split).read_bytes()


def test_prepare_single_file_gpt2_tail_split(tmp_path):
    text = "To be, or not to be, that is the question:\n" * 300
    src = write(tmp_path / "hamlet.txt", text)
    meta = D.prepare([str(src)], str(tmp_path / "o"), tokenizer="gpt2", val_fraction=0.2, progress=False)
    ds = D.load_prepared(tmp_path / "o")
    cut = int(len(text) * 0.8)
    assert ds.tokenizer.decode(ds.split("train")) == text[:cut]  # no EOT in a single text
    assert ds.tokenizer.decode(ds.split("val")) == text[cut:]
    assert meta["splits"]["train"]["bytes"] == cut


def test_prepare_japanese_char_round_trip(tmp_path):
    text = "吾輩は猫である。名前はまだ無い。\n" * 50 + "😀\n"
    src = write(tmp_path / "neko.txt", text)
    meta = D.prepare([str(src)], str(tmp_path / "o"), progress=False)
    ds = D.load_prepared(tmp_path / "o")
    assert ds.tokenizer.decode(np.concatenate([ds.split("train"), ds.split("val")])) == text
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == len(text.encode())
    cut = int(len(text) * 0.9)
    assert ds.bytes_per_token("train") == pytest.approx(len(text[:cut].encode()) / cut)  # ~2.9: 3-byte characters


def test_prepare_normalises_newlines_and_bom(tmp_path):
    src = tmp_path / "win.txt"
    src.write_bytes(b"\xef\xbb\xbf" + b"line one\r\nline two\rline three\n" * 10)
    D.prepare([str(src)], str(tmp_path / "o"), val_fraction=0.0, progress=False)
    ds = D.load_prepared(tmp_path / "o")
    assert ds.tokenizer.decode(ds.split("train")) == "line one\nline two\nline three\n" * 10
    assert len(ds.split("val")) == 0


def test_prepare_hf_dataset_streamed(tmp_path, monkeypatch):
    rows = [{"text": f"web page {i} " * 3, "id": i} for i in range(1000)]
    calls = []

    def fake_stream(name):
        calls.append(name)
        return iter(rows)

    monkeypatch.setattr(corpora, "_load_hf_stream", fake_stream)
    meta = D.prepare(["fineweb-edu"], str(tmp_path / "fw"), tokenizer="gpt2", max_documents=50,
                     workers=1, progress=False)
    assert calls == ["fineweb-edu"]
    # Unknown length: every 10th document (9, 19, ...) goes to val.
    assert meta["splits"]["val"]["documents"] == 5 and meta["splits"]["train"]["documents"] == 45
    ds = D.load_prepared(tmp_path / "fw")
    assert ds.tokenizer.decode(ds.split("val")).startswith("web page 9 web page 9 web page 9 <|endoftext|>web page 19 ")
    assert meta["sources"][0]["location"] == "HuggingFaceFW/fineweb-edu"


def test_hf_dataset_without_datasets_package(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    with pytest.raises(NanoGPTError, match="pip install datasets"):
        corpora._load_hf_stream("openwebtext")


@pytest.mark.parametrize("workers", [1, 2])
def test_failed_prepare_keeps_the_previous_dataset(tmp_path, workers):
    corpus = tmp_path / "c"
    for i in range(3):
        write(corpus / f"{i}.txt", f"text number {i}\n" * 20)
    out = tmp_path / "o"
    D.prepare([str(corpus)], str(out), tokenizer="gpt2", progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (corpus / "2.txt").write_bytes(b"fine\n" * 10 + b"\xff\xfe broken")
    with pytest.raises(NanoGPTError, match="not valid UTF-8"):
        D.prepare([str(corpus)], str(out), tokenizer="gpt2", workers=workers, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, no temp files


def test_prepare_same_sources_again_replaces_the_dataset(tmp_path):
    src = write(tmp_path / "a.txt", "abc\n" * 100)
    D.prepare([str(src)], str(tmp_path / "o"), progress=False)
    write(tmp_path / "a.txt", "abcd\n" * 100)
    meta = D.prepare([str(src)], str(tmp_path / "o"), progress=False)
    assert meta["vocab_size"] == 5 and D.load_prepared(tmp_path / "o").vocab_size == 5


# --------------------------------------------------------------------------------------------
# Bad input: one clear line, non-zero exit, nothing half-written


def test_missing_path(tmp_path, capsys):
    code, _, err = run_cli(capsys, "prepare", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "no such file or folder", "nope.txt", "shakespeare")
    assert not (tmp_path / "o").exists()


def test_empty_file(tmp_path, capsys):
    (tmp_path / "empty.txt").write_bytes(b"")
    write(tmp_path / "blank.txt", "  \n\n")
    for name in ("empty.txt", "blank.txt"):
        code, _, err = run_cli(capsys, "prepare", str(tmp_path / name), "--out", str(tmp_path / "o"))
        assert_one_line_error(code, err, f"{name} is empty")
        assert not (tmp_path / "o").exists()


def test_folder_without_text(tmp_path, capsys):
    write(tmp_path / "f" / "data.csv", "a,b\n")
    code, _, err = run_cli(capsys, "prepare", str(tmp_path / "f"), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "has no files matching '**/*.txt'", "--glob")
    (tmp_path / "f" / "x.txt").write_bytes(b"")
    code, _, err = run_cli(capsys, "prepare", str(tmp_path / "f"), "--tokenizer", "gpt2", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "has no text", "all empty")
    assert not (tmp_path / "o").exists()
    code, _, _ = run_cli(capsys, "prepare", str(tmp_path / "f"), "--glob", "*.csv", "--out", str(tmp_path / "o"))
    assert code == 0


def test_invalid_utf8_names_file_and_offset(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good text\n" * 5 + b"caf\xe9 au lait\n" * 20)
    code, _, err = run_cli(capsys, "prepare", str(bad), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "bad.txt", "not valid UTF-8", "byte offset 53", "--errors replace")
    assert not (tmp_path / "o").exists()
    code, out, err = run_cli(capsys, "prepare", str(bad), "--errors", "replace", "--out", str(tmp_path / "o"))
    assert code == 0 and "warning" in err and "offset 53" in err
    ds = D.load_prepared(tmp_path / "o")
    assert "caf\ufffd au lait" in ds.tokenizer.decode(ds.split("train"))


def test_out_dir_with_a_different_dataset(tmp_path, capsys):
    a = write(tmp_path / "a.txt", "aaa bbb\n" * 50)
    b = write(tmp_path / "b.txt", "ccc ddd\n" * 50)
    out = str(tmp_path / "o")
    assert run_cli(capsys, "prepare", str(a), "--out", out)[0] == 0
    before = (tmp_path / "o" / "train.bin").read_bytes()
    code, _, err = run_cli(capsys, "prepare", str(b), "--out", out)
    assert_one_line_error(code, err, "already holds a different dataset", "a.txt", "--overwrite")
    code, _, err = run_cli(capsys, "prepare", str(a), "--tokenizer", "gpt2", "--out", out)
    assert_one_line_error(code, err, "different dataset", "tokenizer char")
    assert (tmp_path / "o" / "train.bin").read_bytes() == before
    assert run_cli(capsys, "prepare", str(b), "--out", out, "--overwrite")[0] == 0
    ds = D.load_prepared(out)
    assert ds.meta["sources"][0]["source"] == str(b)


def test_bad_options(tmp_path, capsys):
    src = str(write(tmp_path / "a.txt", "abc\n" * 10))
    out = str(tmp_path / "o")
    for argv, needle in [
        (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--input", src], "--input is the file for the 'tinyshakespeare' source"),
    ]:
        code, _, err = run_cli(capsys, "prepare", src, "--out", out, *argv)
        assert_one_line_error(code, err, needle)
    code, _, err = run_cli(capsys, "prepare", src, "--tokenizer", "sentencepiece")
    assert code == 2
    assert_one_line_error(code, err, "invalid choice: 'sentencepiece'")


def test_load_prepared_missing_or_unfinished(tmp_path):
    with pytest.raises(NanoGPTError, match=r"does not exist; run: nanogpt prepare shakespeare --tokenizer char --out .*shakespeare-char"):
        D.load_prepared(tmp_path / "shakespeare-char")
    (tmp_path / "half").mkdir()
    D.write_tokens(tmp_path / "half" / "train.bin", [1, 2], 5)  # as if prepare died before meta.json
    with pytest.raises(NanoGPTError, match=r"no meta.json\); run: nanogpt prepare SOURCE --tokenizer char --out"):
        D.load_prepared(tmp_path / "half")


def test_load_prepared_detects_damaged_token_files(shakespeare_char, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(shakespeare_char[0], out)
    data = (out / "val.bin").read_bytes()
    (out / "val.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(NanoGPTError, match="val.bin is truncated"):
        D.load_prepared(out)
    (out / "val.bin").write_bytes(data)
    D.write_tokens(out / "train.bin", [1, 2, 3], 76)  # valid file, wrong length for meta.json
    with pytest.raises(NanoGPTError, match="holds 3 tokens but meta.json says"):
        D.load_prepared(out).split("train")


def test_prepare_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "--help"])
    assert exc.value.code == 0
    assert "--val-fraction" in capsys.readouterr().out


def test_default_out_dir():
    assert D.default_out_dir(["shakespeare"], "char") == "data/shakespeare-char"
    assert D.default_out_dir(["/x/my_novel.txt"], "gpt2") == "data/my_novel-gpt2"


# --------------------------------------------------------------------------------------------
# BatchLoader


def test_batches_are_contiguous_windows_shifted_by_one():
    tokens = np.arange(1000, 1040, dtype=np.uint16)
    loader = D.BatchLoader(tokens, block_size=16, batch_size=8, seed=3)
    starts = []
    for _ in range(200):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
        assert torch.equal(x - x[:, :1], torch.arange(16).expand(8, 16))  # contiguous slices
        starts += x[:, 0].tolist()
    assert min(starts) == 1000 and max(starts) == 1040 - 17  # every window fits, both ends reachable


def test_batches_from_memmap(shakespeare_char, corpus_text):
    ds = D.load_prepared(shakespeare_char[0])
    loader = D.BatchLoader(ds.split("val"), block_size=32, batch_size=4, seed=0)
    x, y = loader.next_batch()
    text = ds.tokenizer.decode(x[0].tolist() + y[0, -1:].tolist())
    assert text in corpus_text


def test_loader_is_determined_by_seed_rank_and_state():
    tokens = np.arange(10_000, dtype=np.uint32)

    def draws(loader, n):
        return [loader.next_batch()[0].clone() for _ in range(n)]

    a = draws(D.BatchLoader(tokens, 8, 4, seed=1), 3)
    b = draws(D.BatchLoader(tokens, 8, 4, seed=1), 3)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    other_seed = draws(D.BatchLoader(tokens, 8, 4, seed=2), 3)
    other_rank = draws(D.BatchLoader(tokens, 8, 4, seed=1, rank=1, world_size=2), 3)
    assert not torch.equal(a[0], other_seed[0]) and not torch.equal(a[0], other_rank[0])

    # Save after 5 batches, continue 3 more; a fresh loader restored from the state gives those 3.
    first = D.BatchLoader(tokens, 8, 4, seed=1, rank=1, world_size=2)
    draws(first, 5)
    state = json.loads(json.dumps(first.state_dict()))
    expected = draws(first, 3)
    resumed = D.BatchLoader(tokens, 8, 4, seed=1, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(expected, draws(resumed, 3)))
    with pytest.raises(NanoGPTError, match="seed 1 but this run uses seed 9"):
        D.BatchLoader(tokens, 8, 4, seed=9).load_state_dict(state)


def test_loader_leaves_global_rngs_alone():
    torch.manual_seed(0)
    np.random.seed(0)
    t_state, n_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    loader = D.BatchLoader(np.arange(500), 8, 4, seed=5)
    for _ in range(5):
        loader.next_batch()
    assert torch.equal(torch.get_rng_state(), t_state)
    assert np.array_equal(np.random.get_state()[1], n_state)


def test_loader_split_too_short():
    with pytest.raises(NanoGPTError, match=r"val split is 64 tokens, shorter than block_size \+ 1 = 65; lower --model.block_size"):
        D.BatchLoader(np.arange(64), block_size=64, batch_size=2, seed=0, name="val split")
    D.BatchLoader(np.arange(65), block_size=64, batch_size=2, seed=0).next_batch()  # exactly enough


# --------------------------------------------------------------------------------------------
# The package's layers


def test_loader_does_not_import_the_prepare_pipeline():
    code = "import sys, nanogpt.data.loader; print(sorted(m for m in sys.modules if m.startswith('nanogpt.data')))"
    env = {**os.environ, "PYTHONPATH": str(Path(D.__file__).parents[2])}  # this checkout's nanogpt
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "['nanogpt.data', 'nanogpt.data.format', 'nanogpt.data.loader']"


def test_package_names_are_the_submodules_functions():
    assert D.prepare is preparation.prepare  # the function, though the pipeline's module is loaded
    assert D.read_text_file is corpora.read_text_file and D.BatchLoader.__module__ == "nanogpt.data.loader"
    with pytest.raises(AttributeError, match="no attribute 'resolve_source'"):
        D.resolve_source
