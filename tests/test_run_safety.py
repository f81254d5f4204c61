"""Run-folder safety: one owner per folder, nothing replaced unasked, finite-only checkpoints,
confined pointers, no writing through links, crash-safe saving and pruning, one line per OS error."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import TINY, cfg_for, char_data  # noqa: F401 - char_data is a fixture

import nanogpt
import nanogpt.checkpoint as ckpt
from nanogpt.checkpoint import clean_run_dir, load_checkpoint, save_checkpoint
from nanogpt.cli import main
from nanogpt.config import GPTConfig
from nanogpt.errors import NanoGPTError
from nanogpt.fsutil import RunLock
from nanogpt.model import GPT
from nanogpt.train import train

SRC = str(Path(nanogpt.__file__).resolve().parents[1])
SMALL = GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


def train_args(data, out, **kw):
    flat = {**TINY, "data.dataset": str(data), "run.out_dir": str(out), **kw}
    return ["train"] + [f"--{k}={v}" for k, v in flat.items()]


def small_save(run, it, best=False, **info):
    torch.manual_seed(it)
    return save_checkpoint(run, GPT(SMALL), {"x": torch.zeros(1)}, {"iter": it, "config": {"model": SMALL.to_dict()}, **info},
                           is_best=best)


# --------------------------------------------------------------------------------------------
# 1. one owner per run folder


def test_a_second_training_is_refused_and_a_dead_holder_is_taken_over(tmp_path, char_data, capsys):
    out = tmp_path / "run"
    code = "import sys, time; from nanogpt.fsutil import RunLock; RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_line_error(capsys, train_args(char_data, out))
        assert f"is in use by another training (pid {holder.pid})" in line and "--out-dir" in line
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the flock
        holder.wait()
    with RunLock(out) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
        with pytest.raises(NanoGPTError, match=rf"in use by another training \(pid {os.getpid()}\)"):
            RunLock(out).acquire()  # a second lock in the same process is refused too
    cfg, explicit = cfg_for(char_data, out, **{"run.max_iters": 2, "run.eval_interval": 2})
    assert train(cfg, explicit).iter == 2  # and the lock is free again after a run


# --------------------------------------------------------------------------------------------
# 2. nothing replaced unasked


def test_training_from_scratch_refuses_an_earlier_run(tmp_path, char_data, capsys):
    out = tmp_path / "run"
    cfg, explicit = cfg_for(char_data, out, **{"run.max_iters": 5, "run.eval_interval": 5})
    train(cfg, explicit)
    before = snapshot(out)
    line = one_line_error(capsys, train_args(char_data, out))
    assert line.endswith(f"{out} holds an earlier run (config.json, metrics.jsonl, last.json, best.json, checkpoints); "
                         "to continue it use --init-from resume, to replace it pass --overwrite (--run.overwrite true), "
                         "or pick another --out-dir")
    assert snapshot(out) == before


def test_overwrite_keeps_the_earlier_run_until_the_new_one_has_saved(tmp_path, char_data, monkeypatch):
    out = tmp_path / "run"
    cfg, explicit = cfg_for(char_data, out, **{"run.max_iters": 5, "run.eval_interval": 5})
    train(cfg, explicit)
    before = snapshot(out)
    import nanogpt.trainer as tr

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tr, "save_checkpoint", no_space)
    again, explicit = cfg_for(char_data, out, **{"run.max_iters": 3, "run.eval_interval": 3, "run.overwrite": True})
    with pytest.raises(NanoGPTError, match="the disk is full; free some space or make the folder writable, then train again "
                       r"\(no checkpoint of this run was saved"):
        train(again, explicit)
    (aside,) = out.glob(".replaced-*")
    assert snapshot(aside) == before  # the old run is whole, moved aside
    monkeypatch.undo()
    train(again, explicit)  # the failed attempt's files are moved aside in their turn, then removed
    assert [p.name for p in out.glob(".replaced-*")] == [aside.name]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["kind"] == "eval"] == [3]  # only the new run's rows
    assert load_checkpoint(out).info["iter"] == 3


def test_overwrite_removes_the_earlier_run_after_the_first_save(tmp_path, char_data, capsys):
    out = tmp_path / "run"
    cfg, explicit = cfg_for(char_data, out, **{"run.max_iters": 5, "run.eval_interval": 5})
    train(cfg, explicit)
    capsys.readouterr()
    assert main(train_args(char_data, out, **{"run.max_iters": 4, "run.eval_interval": 2}) + ["--overwrite"]) == 0
    text = capsys.readouterr().out
    assert "was moved to" in text and "note: removed the earlier run" in text
    assert not list(out.glob(".replaced-*"))
    assert load_checkpoint(out).info["iter"] == 4 and load_checkpoint(out, "best").info["iter"] in (2, 4)
    assert len([r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]) == 2


# --------------------------------------------------------------------------------------------
# 3. finite-only checkpoints, atomic re-save, crash-safe pruning, stale temporaries


@pytest.mark.parametrize("always", [False, True])
def test_a_nan_evaluation_is_never_saved_or_pointed_to(tmp_path, char_data, monkeypatch, always):
    import nanogpt.trainer as tr

    real = tr.estimate_loss
    calls = {"n": 0}

    def nan_on_second(*a, **k):
        calls["n"] += 1
        losses = real(*a, **k)
        return {s: float("nan") for s in losses} if calls["n"] == 2 else losses

    monkeypatch.setattr(tr, "estimate_loss", nan_on_second)
    out = tmp_path / "run"
    cfg, explicit = cfg_for(char_data, out, **{"run.max_iters": 20, "run.eval_interval": 5,
                                               "run.always_save_checkpoint": always})
    with pytest.raises(NanoGPTError, match=r"evaluation at iteration 10 gave a non-finite loss .*nothing was saved\. "
                                           r"The last good checkpoint, iteration 5 .*step-0000005\), is intact"):
        train(cfg, explicit)
    assert load_checkpoint(out, "last").info["iter"] == 5 and load_checkpoint(out, "best").info["iter"] == 5
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000005"]


def test_a_nan_before_any_checkpoint_says_there_is_none(tmp_path, char_data, monkeypatch):
    import nanogpt.trainer as tr

    monkeypatch.setattr(tr, "estimate_loss", lambda *a, **k: {"train": float("inf"), "val": float("nan")})
    cfg, explicit = cfg_for(char_data, tmp_path / "run", **{"run.max_iters": 5, "run.eval_interval": 5})
    with pytest.raises(NanoGPTError, match=f"No checkpoint of this run was saved in {tmp_path / 'run'}"):
        train(cfg, explicit)
    with pytest.raises(NanoGPTError, match=r"refusing to save a checkpoint with a non-finite val_loss \(nan\)"):
        small_save(tmp_path / "x", 1, val_loss=float("nan"))
    assert not (tmp_path / "x").exists()


def test_resaving_a_step_never_leaves_a_pointer_to_a_missing_folder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    small_save(run, 5, best=True)
    # a crash after the new folder is in place but before the pointers move
    real_write = ckpt.atomic_write_text
    monkeypatch.setattr(ckpt, "atomic_write_text", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        small_save(run, 5)
    assert load_checkpoint(run).path.name == "step-0000005"
    assert (run / "checkpoints" / "step-0000005-1").is_dir()  # the new, unpointed copy
    # a crash after the pointers moved but before the old folder is removed
    monkeypatch.setattr(ckpt, "atomic_write_text", real_write)
    monkeypatch.setattr(ckpt, "clean_run_dir", lambda run: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        small_save(run, 5)
    assert load_checkpoint(run, "last").path.name == "step-0000005-2"
    assert load_checkpoint(run, "best").path.name == "step-0000005"
    monkeypatch.undo()
    clean_run_dir(run)  # what the next start does: the unpointed copy goes, the pointed ones stay
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000005", "step-0000005-2"]
    small_save(run, 5, best=True)  # once more: the smallest free name, then the older ones go
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000005-1"]


def test_stale_temporaries_and_half_deleted_checkpoints_are_cleaned_at_the_next_start(tmp_path, char_data):
    out = tmp_path / "run"
    cfg, explicit = cfg_for(char_data, out, **{"run.max_iters": 5, "run.eval_interval": 5})
    train(cfg, explicit)
    ck = out / "checkpoints"
    (ck / ".tmp-step-0000009-abc").mkdir()
    (ck / ".tmp-step-0000009-abc" / "model.safetensors").write_bytes(b"partial")
    (ck / ".old-step-0000003-77").mkdir()
    (ck / "step-0000002").mkdir()  # half-deleted by a kill during pruning
    (ck / "step-0000002" / "info.json").write_text("{}")
    (out / ".last.json.x1y2.tmp").write_text("{")
    (ck / "notes").mkdir()  # not ours: left alone
    again, _ = cfg_for(char_data, out, **{"run.init_from": "resume", "run.max_iters": 6})
    assert train(again, {"run.init_from", "run.max_iters"}).iter == 6
    pointed = {load_checkpoint(out, w).path.name for w in ("last", "best")}
    assert "step-0000006" in pointed and sorted(p.name for p in ck.iterdir()) == sorted({"notes", *pointed})
    assert not list(out.glob(".*.tmp"))


def test_a_damaged_pointer_stops_pruning(tmp_path):
    run = tmp_path / "run"
    small_save(run, 1, best=True)
    small_save(run, 2)
    (run / "best.json").write_text("{not json")
    clean_run_dir(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]
    with pytest.raises(NanoGPTError, match="best.json is damaged"):
        load_checkpoint(run, "best")


def test_a_full_disk_during_a_checkpoint_leaves_the_previous_one(tmp_path, char_data, monkeypatch, capsys):
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def full_disk(tensors, filename, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(filename).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out = tmp_path / "run"
    line = one_line_error(capsys, train_args(char_data, out, **{"run.max_iters": 10, "run.eval_interval": 5,
                                                                  "run.always_save_checkpoint": True}))
    assert line == (f"nanogpt train: error: cannot save the checkpoint of iteration 10 in {out / 'checkpoints'}: the disk "
                    "is full; free some space or make the folder writable, then resume with --init-from resume (the last "
                    f"good checkpoint, iteration 5 ({out / 'checkpoints' / 'step-0000005'}), is intact)")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000005"]
    assert load_checkpoint(out).info["iter"] == 5


# --------------------------------------------------------------------------------------------
# 4. confinement and links


@pytest.mark.parametrize("rel", ["../../outside/checkpoints/step-0000001", "/abs/checkpoints/step-0000001",
                                 "checkpoints/../../outside/step-0000001", "checkpoints/step-0000001/..", "models/x", 7])
def test_pointers_name_only_checkpoints_of_their_run(tmp_path, rel):
    small_save(tmp_path / "outside", 1)
    run = tmp_path / "a" / "run"
    small_save(run, 1)
    (run / "last.json").write_text(json.dumps({"path": rel}))
    with pytest.raises(NanoGPTError, match=r"last.json names .*, which is not a checkpoint folder of this run; a pointer "
                                           r"may only name checkpoints/step-NNNNNNN inside its run folder"):
        load_checkpoint(run, "last")


def test_a_checkpoint_linked_out_of_the_run_is_refused(tmp_path):
    small_save(tmp_path / "outside", 1)
    run = tmp_path / "run"
    small_save(run, 2)
    (run / "checkpoints" / "step-0000003").symlink_to(tmp_path / "outside" / "checkpoints" / "step-0000001")
    (run / "last.json").write_text(json.dumps({"path": "checkpoints/step-0000003"}))
    with pytest.raises(NanoGPTError, match="not a checkpoint folder of this run"):
        load_checkpoint(run)


def test_an_info_json_without_its_config_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    path = small_save(run, 1)
    info = json.loads((path / "info.json").read_text())
    del info["config"]
    (path / "info.json").write_text(json.dumps(info))
    with pytest.raises(NanoGPTError, match="info.json has no model configuration"):
        load_checkpoint(run)
    (path / "info.json").write_text(json.dumps({**info, "config": {"model": {"n_layer": "x"}}}))
    line = one_line_error(capsys, ["sample", str(run), "--max-new-tokens", "2"])
    assert "info.json" in line


def test_symlinked_metrics_and_plot_are_never_written_through(tmp_path, char_data, capsys):
    out = tmp_path / "run"
    cfg, explicit = cfg_for(char_data, out, **{"run.max_iters": 5, "run.eval_interval": 5})
    train(cfg, explicit)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "metrics.jsonl").rename(tmp_path / "metrics.jsonl")
    (out / "metrics.jsonl").symlink_to(victim)
    line = one_line_error(capsys, ["train", "--init-from", "resume", "--out-dir", str(out), "--run.max_iters", "6"])
    assert f"refusing to write {out / 'metrics.jsonl'}: it is a symbolic link" in line
    (out / "metrics.jsonl").unlink()
    (tmp_path / "metrics.jsonl").rename(out / "metrics.jsonl")
    (out / "loss.png").symlink_to(victim)
    line = one_line_error(capsys, ["plot", str(out)])
    assert f"refusing to write {out / 'loss.png'}: it is a symbolic link" in line
    assert victim.read_text() == "precious\n"


# --------------------------------------------------------------------------------------------
# 6. resume checks the data, the optimizer and the time budget


def test_resume_refuses_another_tokenizer_and_another_optimizer(tmp_path, char_data, capsys):
    from nanogpt.data import prepare

    out = tmp_path / "run"
    cfg, explicit = cfg_for(char_data, out, **{"run.max_iters": 5, "run.eval_interval": 5})
    train(cfg, explicit)
    (tmp_path / "other.txt").write_text("zyxwvu tsrq 0123456789 " * 400, encoding="utf-8")
    prepare([str(tmp_path / "other.txt")], str(tmp_path / "other"), tokenizer="char", progress=False)
    line = one_line_error(capsys, ["train", "--init-from", "resume", "--out-dir", str(out),
                                   "--data.dataset", str(tmp_path / "other")])
    assert f"cannot resume {out} on {tmp_path / 'other'}: its data uses a char tokenizer of" in line
    assert f"resume with the checkpoint's dataset (--data.dataset {char_data})" in line
    line = one_line_error(capsys, ["train", "--init-from", "resume", "--out-dir", str(out), "--optim.name", "muon"])
    assert f"cannot resume with optim.name=muon: the checkpoint in {out} holds adamw's optimizer state" in line


def test_a_spent_time_budget_is_explained_and_can_be_extended(tmp_path, char_data, capsys):
    out = tmp_path / "run"
    cfg, explicit = cfg_for(char_data, out, **{"run.max_seconds": 1e-9})
    assert train(cfg, explicit).stopped_by == "max_seconds"
    line = one_line_error(capsys, ["train", "--init-from", "resume", "--out-dir", str(out), "--run.max_iters", "4"])
    assert "the run's saved time budget of 1e-09 s is already spent" in line and "--run.max_seconds" in line
    lines = []
    again, _ = cfg_for(char_data, out, **{"run.init_from": "resume", "run.max_iters": 4, "run.max_seconds": 1000})
    assert train(again, {"run.init_from", "run.max_iters", "run.max_seconds"}, log=lines.append).iter == 4
    assert any(x.startswith("time budget: 1000 s of training in total") and "(set by --run.max_seconds)" in x for x in lines)


# --------------------------------------------------------------------------------------------
# 7. OS errors in one line


def test_out_dir_that_is_a_file_and_a_read_only_write(tmp_path, char_data, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    line = one_line_error(capsys, train_args(char_data, tmp_path / "file"))
    assert line.endswith(f"--run.out_dir {tmp_path / 'file'} is a file, not a folder; pick another --out-dir")
    import nanogpt.trainer as tr

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tr, "atomic_write_text", read_only)
    line = one_line_error(capsys, train_args(char_data, tmp_path / "ro"))
    assert f"cannot write {tmp_path / 'ro' / 'config.json'}: the file system is read-only" in line


# --------------------------------------------------------------------------------------------
# export and plot


def test_export_refuses_run_folders_and_non_empty_targets(tmp_path, capsys):
    run = tmp_path / "run"
    small_save(run, 1)
    line = one_line_error(capsys, ["export", str(run), "--to", str(tmp_path / "hf")])
    assert "has no best checkpoint" in line and "--which last" in line
    small_save(run, 2, best=True)
    for target in (run, run / "hf"):
        line = one_line_error(capsys, ["export", str(run), "--to", str(target), "--overwrite"])
        assert "run folder" in line and "export into a folder of its own" in line
    assert json.loads((run / "last.json").read_text())["iter"] == 2 and not (run / "hf").exists()
    out = tmp_path / "hf"
    out.mkdir()
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    (out / "config.json").symlink_to(victim)
    line = one_line_error(capsys, ["export", str(run), "--to", str(out)])
    assert line.endswith(f"--to {out} is not empty; pass --overwrite to replace its files, or pick an empty folder")
    assert main(["export", str(run), "--to", str(out), "--overwrite"]) == 0
    assert victim.read_text() == "precious" and not (out / "config.json").is_symlink()
    assert GPT.from_pretrained(str(out)).config.n_embd == SMALL.n_embd


def test_plot_skips_rows_that_are_not_objects_and_reports_the_real_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    rows = [[1, 2], "text", 3, {"kind": "train", "iter": 1, "tokens": 8, "loss": 2.5},
            {"kind": "eval", "iter": 1, "tokens": 8, "train_loss": 2.4, "val_loss": 2.6}, {"kind": "train", "iter": "x"}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'runs.png'}"
    assert (tmp_path / "runs.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(run), "--out", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run / 'loss.png'}"
    (run / "metrics.jsonl").write_text("[1]\n2\n")
    assert "holds no rows" in one_line_error(capsys, ["plot", str(run)])


# --------------------------------------------------------------------------------------------
# crash safety: kill -9 at random moments, including during checkpoint writes and pruning

KILL_RUN = {"run.max_iters": 100000, "run.max_seconds": 0, "optim.lr_decay_iters": 100000, "run.eval_interval": 1, "run.eval_iters": 1,
            "run.always_save_checkpoint": True, "run.log_interval": 1}


def _launch_and_kill(args: list[str], run: Path, delay: float) -> None:
    """Start a training, wait until it is past its first evaluation with a checkpoint, then SIGKILL it after ``delay``."""
    import signal
    import time

    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1",
                              # the same thread count as this process, so that its sums are bit for bit ours
                              "OMP_NUM_THREADS": str(torch.get_num_threads())})
    try:
        seen = []
        for line in p.stdout:
            seen.append(line)
            if line.startswith("eval ") and (run / "last.json").exists():
                break
        else:
            raise AssertionError("the training ended before it could be killed:\n" + "".join(seen))
        time.sleep(delay)  # evaluation and checkpoint writes are most of each step here
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()


def _check_pointers(run: Path) -> int:
    """Every pointer names a complete, loadable checkpoint; returns the last one's iteration."""
    for which in ("last", "best"):
        if (run / f"{which}.json").exists():
            ck = load_checkpoint(run, which, trainer=True)
            assert ck.path.parent == run / "checkpoints"
    return load_checkpoint(run, "last").info["iter"]


def _kill_repeatedly(tmp_path, char_data, kills: int, seed: int) -> None:
    import random

    rng = random.Random(seed)
    run = tmp_path / "run"
    base = [sys.executable, "-m", "nanogpt"] + train_args(char_data, run, **KILL_RUN)
    _launch_and_kill(base, run, rng.uniform(0.0, 0.3))
    reached = _check_pointers(run)
    for _ in range(kills - 1):
        _launch_and_kill(base + ["--init-from", "resume"], run, rng.uniform(0.0, 0.3))
        reached = max(reached, _check_pointers(run))
    # resume reaches training and ends where an uninterrupted run ends, weight for weight
    end = reached + 3
    assert main(["train", "--init-from", "resume", "--out-dir", str(run), "--run.max_iters", str(end)]) == 0
    assert main(train_args(char_data, tmp_path / "ref", **{**KILL_RUN, "run.max_iters": end})) == 0
    assert load_checkpoint(run).info["iter"] == load_checkpoint(tmp_path / "ref").info["iter"] == end
    a, b = load_checkpoint(run).model_state, load_checkpoint(tmp_path / "ref").model_state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_at_random_moments_never_breaks_a_pointer(tmp_path, char_data):
    _kill_repeatedly(tmp_path, char_data, kills=3, seed=15)


@pytest.mark.perf
def test_kill_9_many_times_never_breaks_a_pointer(tmp_path, char_data):
    _kill_repeatedly(tmp_path, char_data, kills=15, seed=1515)
