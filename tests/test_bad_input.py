"""Bad input, as a careless or hostile user types it: exit code 2 and exactly one line on stderr.

Each case builds what it needs in a temporary folder (the working directory of the command)
and returns the command line; the line must hold the case's key words.
"""

import errno
import json
import os

import numpy as np
import pytest
import torch

from nanogpt import budget
from nanogpt.cli import main
from nanogpt.config import GPTConfig
from nanogpt.data import format as fmt
from nanogpt.data import preparation
from nanogpt.hf import write_gpt2
from nanogpt.model import GPT


def _hf(tmp, name="hf", vocab=50257, **over):
    cfg = GPTConfig(block_size=16, vocab_size=vocab, n_layer=1, n_head=2, n_embd=8)
    torch.manual_seed(0)
    out = write_gpt2(cfg, GPT(cfg).state_dict(), tmp / name)
    if over:
        conf = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**conf, **over}))
    return str(out)


def _dataset(tmp, name="ds"):
    (tmp / "text.txt").write_text("hello world, a tiny corpus\n" * 40)
    preparation.prepare([str(tmp / "text.txt")], str(tmp / name), progress=False)
    return tmp / name


def _ids_past_vocab(tmp):
    ds = _dataset(tmp)
    vocab = json.loads((ds / "meta.json").read_text())["vocab_size"]
    mm = np.memmap(ds / "val.bin", dtype=np.uint16, mode="r+", offset=fmt.HEADER_SIZE)
    mm[3] = vocab + 5  # a damaged file: an id the vocabulary does not have
    mm.flush()
    return ["eval", _hf(tmp, vocab=64), "--data", str(ds)]  # no tokenizer to compare: the ids are checked


def _cut_vocab(tmp):
    ds = _dataset(tmp)
    meta = json.loads((ds / "meta.json").read_text())
    meta["tokenizer"]["chars"] = meta["tokenizer"]["chars"][:-2]
    (ds / "meta.json").write_text(json.dumps(meta))
    return ["eval", _hf(tmp), "--data", str(ds)]


def _file(tmp, name, data=b"x"):
    (tmp / name).write_bytes(data)
    return str(tmp / name)


def _empty_safetensors(tmp):
    folder = _hf(tmp)
    (tmp / "hf" / "model.safetensors").write_bytes(b"")
    return ["sample", folder, "--max-new-tokens", "2"]


def _damaged_safetensors(tmp):
    folder = _hf(tmp)
    (tmp / "hf" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    return ["sample", folder, "--max-new-tokens", "2"]


def _no_space(tmp, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(preparation, "_install", full)
    return ["prepare", "shakespeare", "--out", "out", "--quiet"]


CASES = {
    # config values
    "seed over 64 bits": (lambda t: ["train", "--run.seed", str(2**70)], ["run.seed is too large", "2^63"]),
    "seed over the seed range": (lambda t: ["train", "--run.seed", str(2**63 - 1)], ["run.seed must be an integer in 0..2^62"]),
    "list where a number belongs": (
        lambda t: ["train", "--config", _file(t, "c.json", b'{"model": {"n_layer": [1, 2]}}')],
        ["model.n_layer must be int, got [1, 2]"]),
    "TOML array where a number belongs": (
        lambda t: ["train", "--config", _file(t, "c.toml", b"[optim]\nlr = [1, 2]\n")],
        ["optim.lr must be float"]),
    "nan max_seconds": (lambda t: ["train", "--run.max_seconds", "nan"], ["run.max_seconds must be a finite number"]),
    "inf lr": (lambda t: ["train", "--optim.lr", "inf"], ["optim.lr must be a finite number"]),
    "negative grad_clip": (lambda t: ["train", "--optim.grad_clip", "-1"], ["optim.grad_clip must be >= 0"]),
    "negative weight_decay": (lambda t: ["train", "--optim.weight_decay", "-0.1"], ["optim.weight_decay must be >= 0"]),
    "non-UTF-8 config": (lambda t: ["train", "--config", _file(t, "c.toml", b"[run]\nseed = 1 # \xff\xfe\n")],
                         ["c.toml is not UTF-8 text"]),
    # data
    "token ids past the vocabulary": (_ids_past_vocab, ["val.bin holds token id", "outside the vocabulary", "--overwrite"]),
    "cut char vocabulary": (_cut_vocab, ["meta.json describes a char tokenizer of", "damaged"]),
    "dataset that is a file": (lambda t: ["eval", _hf(t), "--data", str(t)], ["is not a prepared dataset"]),
    "prepare glob with ..": (lambda t: ["prepare", str(t), "--glob", "../*.txt"], ["--glob '../*.txt' must be a relative pattern"]),
    "prepare absolute glob": (lambda t: ["prepare", str(t), "--glob", "/etc/*"], ["--glob '/etc/*' must be a relative pattern"]),
    "prepare into a file": (lambda t: ["prepare", "shakespeare", "--out", _file(t, "f")], ["is a file"]),
    "prepare under a file": (lambda t: ["prepare", "shakespeare", "--out", _file(t, "f") + "/sub", "--quiet"],
                             ["f/sub", "a part of the path is a file"]),
    # models and sampling
    "empty model.safetensors": (_empty_safetensors, ["model.safetensors is empty (0 bytes)"]),
    "damaged model.safetensors": (_damaged_safetensors, ["model.safetensors is damaged", "export the model again"]),
    "config.json with a list": (lambda t: ["sample", _hf(t, n_layer=[1])], ["model.n_layer must be a positive integer, got [1]"]),
    "tiny temperature is fine but inf is not": (lambda t: ["sample", _hf(t), "--temperature", "inf"],
                                                ["--temperature must be a finite number"]),
    "config.json with a list for the activation": (lambda t: ["sample", _hf(t, activation_function=["gelu"])],
                                                   ["config.json holds a value of the wrong type"]),
    "sample seed out of range": (lambda t: ["sample", _hf(t), "--seed", str(2**64)], ["--seed must be an integer in 0..2^62"]),
    # sizes before allocation
    "too many samples": (lambda t: ["sample", _hf(t), "--num-samples", str(10**9)],
                         ["sampling needs at least", "lower --num-samples or --max-new-tokens"]),
    "too many new tokens": (lambda t: ["sample", _hf(t), "--max-new-tokens", str(10**12)], ["generated ids", "free; lower"]),
    "n_layer 100000 in config.json": (lambda t: ["sample", _hf(t, n_layer=100_000, n_embd=768)], ["sampling needs at least", "weights"]),
    "bench n_layer 100000": (lambda t: ["bench", "--model.n_layer", "100000", "--device", "cpu"], ["training needs at least"]),
    "inspect block size 1e12 as text": (lambda t: ["inspect", "--block-size", "1e12"], ["invalid int value: '1e12'"]),
    "inspect block size 1e12": (lambda t: ["inspect", "--block-size", str(10**12)], ["attention scores", "--block-size"]),
    "inspect batch size 1e15": (lambda t: ["inspect", "--batch-size", str(10**15)], ["would hold", "--batch-size"]),
    # the command line
    "mistyped flag": (lambda t: ["sample", "gpt2", "--tempreature", "0.5"], ["unknown option '--tempreature'",
                                                                            "did you mean '--temperature'?"]),
    "mistyped train flag": (lambda t: ["train", "--model.nlayer", "2"], ["did you mean '--model.n_layer'?"]),
    "missing argument": (lambda t: ["eval", "gpt2"], ["the following arguments are required: --data"]),
    "disk full while preparing": (None, ["out: no space left on device", "the disk is full"]),
    "train on a dataset that is a file": (lambda t: ["train", "--data.dataset", _file(t, "tokens.bin")], ["tokens.bin"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(budget, "available_bytes", lambda device="cpu": 8 * 2**30)
    make, needles = CASES[name]
    argv = _no_space(tmp_path, monkeypatch) if make is None else make(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"nanogpt {argv[0]}: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_read_only_output_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        code = main(["prepare", "shakespeare", "--out", "ro/ds", "--quiet"])
    finally:
        (tmp_path / "ro").chmod(0o700)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "ro/ds: permission denied; check its permissions" in lines[0]


def test_read_only_file_system_is_one_line(tmp_path, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "out/.train.bin.tmp")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(preparation, "_install", read_only)
    assert main(["prepare", "shakespeare", "--out", "out", "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["nanogpt prepare: error: out/.train.bin.tmp: read-only file system; "
                     "choose a folder on a writable disk"]


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--debug", "train", "--optim.grad_clip", "-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].endswith("optim.grad_clip must be >= 0 (0 = no clipping), got -1.0")


def test_a_programming_error_keeps_its_traceback(monkeypatch):
    from nanogpt import explain

    def broken(*a, **k):
        raise OSError(errno.EIO, "bug")  # no path, not an error the user can fix

    monkeypatch.setattr(explain, "resolve_config", broken)
    with pytest.raises(OSError):
        main(["inspect"])


def test_a_mistyped_dataset_is_not_filled_with_the_preset_s_corpus(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--data.dataset", "data/shakespeare-chr", "--run.max_iters", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "data/shakespeare-chr" in err[-1]
    assert not (tmp_path / "data" / "shakespeare-chr").exists()


def test_the_preset_s_own_dataset_is_still_prepared_automatically():
    from nanogpt.config import resolve_train_flat

    flat, user = resolve_train_flat("shakespeare-char", None, {"data.dataset": "data/shakespeare-char"})
    assert flat["data.prepare"] == "shakespeare"
    flat, user = resolve_train_flat("shakespeare-char", None, {"data.dataset": "data/mine"})
    assert flat["data.prepare"] is None and "data.prepare" in user
    flat, _ = resolve_train_flat("shakespeare-char", None, {"data.dataset": "data/mine", "data.prepare": "shakespeare"})
    assert flat["data.prepare"] == "shakespeare"


def test_prepare_command_per_preset_and_folder(tmp_path):
    from nanogpt.data.corpora import HF_DATASETS
    from nanogpt.data.loader import NAMED_SOURCES, needs_preparing, prepare_command

    assert set(HF_DATASETS) <= set(NAMED_SOURCES)
    assert prepare_command("data/fineweb-edu", "gpt2") == "nanogpt prepare fineweb-edu --tokenizer gpt2 --out data/fineweb-edu"
    assert prepare_command("data/shakespeare-char") == "nanogpt prepare shakespeare --tokenizer char --out data/shakespeare-char"
    assert prepare_command("data/mine", "char") == "nanogpt prepare SOURCE --tokenizer char --out data/mine"
    assert needs_preparing(tmp_path / "new", "char", "shakespeare") is True
    with pytest.raises(Exception, match="does not exist; run: nanogpt prepare fineweb-edu --tokenizer gpt2"):
        needs_preparing(tmp_path / "fineweb-edu", "gpt2", None)
    (tmp_path / "f").write_text("x")
    with pytest.raises(Exception, match="is a file; data.dataset must be a folder"):
        needs_preparing(tmp_path / "f", "char", "shakespeare")


def test_stop_escapes_as_typed_in_a_shell():
    from nanogpt.generate import unescape_stop

    assert unescape_stop(r"\n\n") == "\n\n"
    assert unescape_stop(r"a\tb\\n") == "a\tb\\n"  # an escaped backslash stays one backslash
    assert unescape_stop(r"\q") == r"\q"  # unknown escapes are kept as typed
    assert unescape_stop("\n") == "\n"


def test_tiny_temperature_is_greedy():
    from nanogpt.generate import sample_next_token

    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]])
    for t in (1e-308, 1e-37, 1e-10):
        assert sample_next_token(logits, temperature=t).tolist() == [1, 0]


def test_tokenizer_larger_than_the_model_is_refused():
    from nanogpt.errors import NanoGPTError
    from nanogpt.generate import check_tokenizer_fits
    from nanogpt.tokenizer import CharTokenizer

    check_tokenizer_fits(CharTokenizer(list("abc")), 3, "run")
    with pytest.raises(NanoGPTError, match="pairs a char tokenizer of 3 ids with a model vocabulary of 2"):
        check_tokenizer_fits(CharTokenizer(list("abc")), 2, "run")


def test_inspect_names_the_activation(capsys):
    from nanogpt import explain

    notes = {r.key: r.note for r in explain.forward_table(GPTConfig(activation="gelu"))}
    assert notes["h.gelu"] == "GELU (exact, erf form), elementwise"
    notes = {r.key: r.note for r in explain.forward_table(GPTConfig())}
    assert notes["h.gelu"] == "GELU (tanh approximation), elementwise"


def test_bench_vocab_is_the_dataset_s(tmp_path, monkeypatch):
    from nanogpt.bench import resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "shakespeare-char").mkdir(parents=True)
    (tmp_path / "data" / "shakespeare-char" / "meta.json").write_text(json.dumps({"vocab_size": 76}))
    config, _, _ = resolve_model("shakespeare-char-cpu", {}, torch.device("cpu"))
    assert config.vocab_size == 76
    config, _, _ = resolve_model("shakespeare-char-cpu", {"model.vocab_size": "80"}, torch.device("cpu"))
    assert config.vocab_size == 80
