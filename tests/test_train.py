"""Training: loss falls, exact resume, DDP parity, atomic checkpoints, signals, fine-tuning."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanogpt.checkpoint import load_checkpoint, load_model
from nanogpt.cli import main
from nanogpt.config import TrainConfig
from nanogpt.errors import NanoGPTError
from nanogpt.train import lr_at, train

TINY = {
    "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32, "model.dropout": 0.0,
    "data.batch_size": 8, "data.tokenizer": "char",
    "optim.lr": 3e-3, "optim.min_lr": 3e-4, "optim.warmup_iters": 5, "optim.beta2": 0.99,
    "run.max_iters": 40, "run.eval_interval": 20, "run.eval_iters": 4, "run.log_interval": 5,
    "run.device": "cpu", "run.dtype": "float32", "run.compile": "false", "run.sample_tokens": 0,
    "run.progress": False,
}


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    """A character-level dataset of generated text (fast; no corpus needed)."""
    from nanogpt.data import prepare

    root = tmp_path_factory.mktemp("data")
    words = ["the", "king", "queen", "speaks", "of", "war", "and", "love", "to", "his", "her", "people"]
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(3000):
        n = int(torch.randint(3, 9, (1,), generator=g))
        lines.append(" ".join(words[int(i)] for i in torch.randint(0, len(words), (n,), generator=g)) + ".")
    src = root / "text.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare([str(src)], str(root / "chars"), tokenizer="char", progress=False)
    return root / "chars"


def cfg_for(data_dir, out_dir, **kw):
    flat = {**TINY, "data.dataset": str(data_dir), "run.out_dir": str(out_dir), **kw}
    return TrainConfig.from_flat(flat), set(flat)


def test_lr_schedule_shapes():
    cfg = TrainConfig.from_flat({"optim.lr": 1.0, "optim.min_lr": 0.1, "optim.warmup_iters": 10})
    o = cfg.optim
    assert lr_at(0, o, 110) == pytest.approx(0.1) and lr_at(9, o, 110) == pytest.approx(1.0)
    assert lr_at(60, o, 110) == pytest.approx(0.55)  # cosine midpoint
    assert lr_at(110, o, 110) == pytest.approx(0.1) and lr_at(500, o, 110) == pytest.approx(0.1)
    o.schedule = "wsd"
    o.decay_frac = 0.5
    assert lr_at(50, o, 110) == pytest.approx(1.0) and lr_at(110, o, 110) == pytest.approx(0.1)
    assert lr_at(85, o, 110) == pytest.approx(0.55)  # halfway through the decay half
    o.schedule = "cosine"
    assert lr_at(20, o, 110, time_frac=1.0) == pytest.approx(0.1)  # the time budget is spent
    assert lr_at(60, o, 110, time_frac=0.1) == pytest.approx(0.55)  # iterations are further along
    o.schedule = "constant"
    assert lr_at(100, o, 110) == 1.0


def test_loss_falls_on_builtin_corpus(tmp_path):
    """A tiny model on the built-in Shakespeare: a few dozen steps cut the loss clearly."""
    from nanogpt.data import prepare

    prepare(["shakespeare"], str(tmp_path / "data"), tokenizer="char", progress=False)
    cfg, explicit = cfg_for(tmp_path / "data", tmp_path / "run", **{"run.max_iters": 60, "run.eval_interval": 60})
    result = train(cfg, explicit)
    assert result.losses[0] > 3.8  # ~ln(vocab) at init
    assert sum(result.losses[-5:]) / 5 < result.losses[0] - 1.0
    ev = result.evals[-1]
    assert ev["val_loss"] < 3.2 and ev["val_bpb"] == pytest.approx(ev["val_loss"] / 0.693147 / 1.0, rel=0.1)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"train", "eval"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["n_layer"] == 2


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_exact_resume_bit_for_bit(tmp_path, char_data, optimizer):
    """2k steps straight == k steps, stop, resume for k more (fp32 CPU, dropout on)."""
    k = 12
    common = {"run.max_iters": 2 * k, "optim.lr_decay_iters": 2 * k, "model.dropout": 0.1, "run.eval_interval": 5,
              "optim.name": optimizer}
    straight, e1 = cfg_for(char_data, tmp_path / "a", **common)
    full = train(straight, e1).losses
    first, e2 = cfg_for(char_data, tmp_path / "b", **{**common, "run.max_iters": k})
    part1 = train(first, e2).losses
    again, e3 = cfg_for(char_data, tmp_path / "b", **{"run.init_from": "resume", "run.max_iters": 2 * k})
    part2 = train(again, {"run.init_from", "run.max_iters"}).losses
    assert len(full) == 2 * k and len(part1) == k and len(part2) == k
    assert part1 + part2 == full  # exact float equality, step by step


def test_exact_resume_in_bf16_with_the_c_kernels(tmp_path, char_data, capsys):
    """The CPU's bf16 path with nanogpt's C kernels is deterministic too: resume is bit for bit."""
    from nanogpt import cpu, native

    if not cpu.has_fast_bf16() or not native.available():
        pytest.skip("needs a bf16 CPU where the C kernels build")
    k = 8
    common = {"run.max_iters": 2 * k, "optim.lr_decay_iters": 2 * k, "run.eval_interval": 4, "run.dtype": "bfloat16",
              "run.threads": "1", "model.activation": "gelu", "model.bias": False}
    straight, e1 = cfg_for(char_data, tmp_path / "a", **common)
    full = train(straight, e1).losses
    assert "C kernels (causal softmax, GELU, LayerNorm)" in capsys.readouterr().out
    first, e2 = cfg_for(char_data, tmp_path / "b", **{**common, "run.max_iters": k})
    part1 = train(first, e2).losses
    again, _ = cfg_for(char_data, tmp_path / "b", **{"run.init_from": "resume", "run.max_iters": 2 * k})
    part2 = train(again, {"run.init_from", "run.max_iters"}).losses
    assert part1 + part2 == full and full[-1] < full[0]


@pytest.mark.parametrize("init", ["scratch", "hf"])
def test_train_leaves_the_callers_config_unchanged(tmp_path, char_data, init):
    """The run resolves its own model config (the dataset's vocabulary, a pretrained model's shape)."""
    import copy

    from nanogpt.config import GPTConfig
    from nanogpt.model import GPT

    extra = {"run.max_iters": 2, "run.eval_interval": 2}
    if init == "hf":
        GPT(GPTConfig(block_size=64, vocab_size=100, n_layer=2, n_head=2, n_embd=32)).save_pretrained(str(tmp_path / "hf"))
        extra["run.init_from"] = str(tmp_path / "hf")
    cfg, explicit = cfg_for(char_data, tmp_path / "run", **extra)
    before = copy.deepcopy(cfg)
    train(cfg, explicit)
    assert cfg == before and cfg.model.vocab_size == 50257  # the default, not the data's or the base model's
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    from nanogpt.data.loader import load_prepared

    data_vocab = load_prepared(str(char_data)).tokenizer.vocab_size
    assert data_vocab < 100 and saved["vocab_size"] == (data_vocab if init == "scratch" else 100)
    assert saved["block_size"] == 32


def test_trainer_resumes_at_the_checkpoint_iteration(tmp_path, char_data):
    """A Trainer built on a run folder continues from its last checkpoint: iteration, counters, no re-evaluation."""
    from nanogpt.device import setup_runtime
    from nanogpt.trainer import Trainer

    cfg, explicit = cfg_for(char_data, tmp_path / "run", **{"run.max_iters": 7, "run.eval_interval": 5})
    first = train(cfg, explicit)
    again, _ = cfg_for(char_data, tmp_path / "run", **{"run.init_from": "resume", "run.max_iters": 10})
    trainer = Trainer(again, setup_runtime("cpu", "float32", "false"), {"run.init_from", "run.max_iters"}, log=lambda s: None)
    try:
        assert (trainer.iter, trainer.start_iter, trainer.train_time) == (7, 7, first.train_time)
        assert trainer.tokens_seen == 7 * TINY["data.batch_size"] * TINY["model.block_size"]
        assert trainer.best_val == first.best_val and trainer.cfg.run.max_iters == 10
        trainer.step()
        assert trainer.iter == 8
    finally:
        trainer.close()
    result = Trainer(again, setup_runtime("cpu", "float32", "false"), {"run.init_from", "run.max_iters"},
                     log=lambda s: None).run()
    assert result.iter == 10 and len(result.losses) == 3 and [e["iter"] for e in result.evals] == [10]


def test_checkpoint_has_clean_names_and_no_pickle_weights(tmp_path, char_data):
    cfg, explicit = cfg_for(char_data, tmp_path / "run", **{"run.max_iters": 5, "run.eval_interval": 5})
    train(cfg, explicit)
    ck = load_checkpoint(tmp_path / "run", "last")
    assert all(k.startswith("transformer.") for k in ck.model_state)  # no _orig_mod./module.
    assert ck.info["iter"] == 5 and ck.info["tokenizer"]["type"] == "char"
    loaded = load_model(tmp_path / "run")
    assert loaded.tokenizer.vocab_size == loaded.model.config.vocab_size


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, char_data, monkeypatch):
    cfg, explicit = cfg_for(char_data, tmp_path / "run", **{"run.max_iters": 10, "run.eval_interval": 5,
                                                           "run.always_save_checkpoint": True})
    import nanogpt.checkpoint as ckpt

    real = ckpt.torch.save
    calls = {"n": 0}

    def crashing_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies mid-write
            Path(f).write_bytes(b"partial")
            raise OSError("disk full")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", crashing_save)
    with pytest.raises(NanoGPTError, match=r"cannot save the checkpoint of iteration 10 in .*checkpoints: disk full; "
                       r"free some space.*last good checkpoint, iteration 5 .*step-0000005\), is intact"):
        train(cfg, explicit)
    monkeypatch.setattr(ckpt.torch, "save", real)
    ck = load_checkpoint(tmp_path / "run", "last")
    assert ck.info["iter"] == 5
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    # and the run resumes from it
    again, _ = cfg_for(char_data, tmp_path / "run", **{"run.init_from": "resume"})
    assert train(again, {"run.init_from"}).iter == 10


def test_sigint_saves_a_resumable_checkpoint(tmp_path, char_data):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nanogpt", "train"] + [f"--{k}={v}" for k, v in TINY.items()] + [
        f"--data.dataset={char_data}", f"--run.out_dir={out}", "--run.max_iters=100000", "--run.eval_interval=100000",
        "--run.log_interval=1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("iter 3:"):
            p.send_signal(signal.SIGINT)
            break
    rest, _ = p.communicate(timeout=60)
    assert p.returncode == 130, "".join(lines) + rest
    assert "checkpoint saved" in rest
    ck = load_checkpoint(out, "last")
    assert ck.info["iter"] >= 3
    cfg, _ = cfg_for(char_data, out, **{"run.init_from": "resume", "run.max_iters": ck.info["iter"] + 2})
    assert train(cfg, {"run.init_from", "run.max_iters"}).iter == ck.info["iter"] + 2


def test_finetune_from_hf_folder(tmp_path, char_data):
    from nanogpt.config import GPTConfig
    from nanogpt.model import GPT

    base = GPT(GPTConfig(block_size=64, vocab_size=100, n_layer=2, n_head=2, n_embd=32))
    base.save_pretrained(str(tmp_path / "hf"))
    cfg, explicit = cfg_for(char_data, tmp_path / "ft", **{"run.init_from": str(tmp_path / "hf"), "run.max_iters": 10,
                                                          "run.eval_interval": 10, "model.block_size": 32})
    result = train(cfg, explicit)
    assert result.iter == 10 and result.losses[-1] < result.losses[0]
    loaded = load_model(tmp_path / "ft")
    assert loaded.model.config.vocab_size == 100 and loaded.model.config.block_size == 32
    # the fine-tuned weights moved away from the base
    assert not torch.equal(loaded.model.transformer.h[0].attn.c_attn.weight, base.transformer.h[0].attn.c_attn.weight)


def test_non_finite_loss_stops_with_checkpoint_intact(tmp_path, char_data, monkeypatch):
    cfg, explicit = cfg_for(char_data, tmp_path / "run", **{"run.max_iters": 20, "run.eval_interval": 5})
    import nanogpt.trainer as tr

    real = tr.train_step
    n = {"i": 0}

    def exploding(*a, **k):
        n["i"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if n["i"] == 8 else loss

    monkeypatch.setattr(tr, "train_step", exploding)
    with pytest.raises(NanoGPTError, match="loss became nan at iteration 8.*last good checkpoint"):
        train(cfg, explicit)
    assert load_checkpoint(tmp_path / "run", "last").info["iter"] == 5


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"data.dataset": "/nonexistent/data", "data.prepare": "none"}, "does not exist; run: nanogpt prepare SOURCE --tokenizer char --out /nonexistent/data"),
        ({"model.block_size": 100000}, "shorter than block_size"),
        ({"run.init_from": "resume"}, "holds no checkpoint|does not exist"),
        ({"run.init_from": "gpt7"}, r"run.init_from \(scratch, resume, or a model\): 'gpt7' not found.*did you mean 'gpt2'"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, char_data, capsys, extra, match):
    flat = {**TINY, "data.dataset": str(char_data), "run.out_dir": str(tmp_path / "empty"), **extra}
    rc = main(["train"] + [f"--{k}={v}" for k, v in flat.items()])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    import re

    assert re.search(match, err[0]), err[0]


def test_resume_refuses_a_different_model(tmp_path, char_data, capsys):
    cfg, explicit = cfg_for(char_data, tmp_path / "run", **{"run.max_iters": 5, "run.eval_interval": 5})
    train(cfg, explicit)
    rc = main(["train", "--run.init_from=resume", f"--run.out_dir={tmp_path / 'run'}", "--model.n_layer=3"])
    assert rc == 2
    assert "cannot resume with model.n_layer=3" in capsys.readouterr().err


def test_plot_writes_png(tmp_path, char_data):
    cfg, explicit = cfg_for(char_data, tmp_path / "run", **{"run.max_iters": 10, "run.eval_interval": 5})
    train(cfg, explicit)
    assert main(["plot", str(tmp_path / "run")]) == 0
    png = tmp_path / "run" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_tensorboard_logging(tmp_path, char_data):
    pytest.importorskip("tensorboard")
    cfg, explicit = cfg_for(char_data, tmp_path / "run", **{"run.max_iters": 5, "run.eval_interval": 5,
                                                           "run.tensorboard": True})
    train(cfg, explicit)
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100


def test_a_log_line_at_least_every_ten_seconds_whatever_log_interval_says(tmp_path, char_data, monkeypatch):
    import itertools
    import json as _json

    from nanogpt import trainer

    clock = itertools.count(0.0, 11.0)  # every reading 11 s after the last: each step is over the limit
    monkeypatch.setattr(trainer.time, "monotonic", lambda: next(clock))
    cfg, explicit = cfg_for(char_data, tmp_path / "run", **{"run.max_iters": 6, "run.log_interval": 1000,
                                                           "run.eval_interval": 1000})
    train(cfg, explicit)
    rows = [_json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_threads_auto_is_said_and_recorded(char_data, tmp_path, monkeypatch):
    """--run.threads auto on two cores times both counts first, says its choice and records it."""
    import time
    from types import SimpleNamespace

    from nanogpt import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    counts = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)
    # the tuner's step timer reads a scripted machine: 50 ms a step at 2 threads, 80 at 1
    now = [0.0]

    def perf_counter():
        now[0] += {2: 0.05, 1: 0.08}[counts[-1]]  # each unit: end - start = one step
        return now[0]

    monkeypatch.setattr(threads, "time", SimpleNamespace(perf_counter=perf_counter, monotonic=time.monotonic))
    cfg, explicit = cfg_for(char_data, tmp_path / "run", **{"run.max_iters": 12, "run.eval_interval": 100})
    lines = []
    train(cfg, explicit, log=lines.append)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    chosen = [r for r in rows if r["kind"] == "threads"]
    assert chosen == [{"kind": "threads", "iter": 7, "threads": 2, "ms": {"1": 80.0, "2": 50.0},
                       "why": "first measurement", "changed": True}]
    assert counts == [1, 2]  # the trial: 4 steps at 1 thread, then 2 threads, kept
    assert "threads: 2 (auto, first measurement: 50.0 ms per step at 2, 80.0 at 1)" in lines
    assert any("threads auto (2 cores; trying 2/1)" in x for x in lines)


def test_threads_fixed_by_flag_and_kept_on_resume(char_data, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    counts = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)
    cfg, explicit = cfg_for(char_data, tmp_path / "run", **{"run.max_iters": 6, "run.threads": "1"})
    lines = []
    train(cfg, explicit, log=lines.append)
    assert counts == [1] and any("1 thread (asked for)" in x for x in lines)
    cfg, explicit = cfg_for(char_data, tmp_path / "run", **{"run.max_iters": 8, "run.init_from": "resume"})
    explicit.discard("run.threads")
    train(cfg, {"run.max_iters", "run.init_from"}, log=lines.append)
    assert counts == [1, 1]  # the saved run's count
