"""The training loop as a library: :func:`train` runs a configured run and returns a :class:`TrainResult`.

One process and ``torchrun`` take the same path. A :class:`Trainer` holds one run's state
(iteration, best validation loss, training time, tokens seen, model, optimizer, gradient
scaler, batch loader, logger) and advances it with small methods: :meth:`Trainer.step`,
:meth:`Trainer.evaluate_and_save`, :meth:`Trainer.save`, :meth:`Trainer.run`.

The pieces other commands reuse, ``train_step`` and ``estimate_loss``, are in
``nanogpt.step``. The optimizer and its learning-rate schedule are in ``nanogpt.optim``, the logging
in ``nanogpt.runlog``, the ``nanogpt train`` command in ``nanogpt.train``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nanogpt.checkpoint import (
    Checkpoint,
    check_resume_data,
    checkpoint_path,
    clean_run_dir,
    load_checkpoint,
    load_weights,
    move_run_aside,
    refuse_earlier_run,
    save_checkpoint,
)
from nanogpt.config import GPTConfig, RunConfig, TrainConfig
from nanogpt.device import (
    Runtime,
    prepare_model,
    setup_runtime,
    teardown_distributed,
)
from nanogpt.errors import NanoGPTError
from nanogpt.fsutil import RunLock, atomic_write_text, os_error
from nanogpt.model import GPT
from nanogpt.optim import configure_optimizer, lr_at
from nanogpt.runlog import Logger
from nanogpt.runsetup import Log, build_model, ensure_dataset, load_data, micro_steps_per_rank, resume_config  # noqa: F401
from nanogpt.step import (
    StopRequested,
    all_reduce_any,
    all_reduce_mean,
    estimate_loss,
    gather_loader_states,
    rng_state,
    set_rng_state,
    train_step,
)


LOG_EVERY_S = 10.0  # the longest wall-clock gap between two training log lines


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports back, for tests and callers."""

    run_dir: Path
    iter: int
    losses: list[float] = field(default_factory=list)  # training loss of each step run here
    evals: list[dict[str, Any]] = field(default_factory=list)
    best_val: float | None = None
    stopped_by: str | None = None  # None, "signal", "max_seconds"
    train_time: float = 0.0


def _print_line(text: str) -> None:
    print(text, flush=True)


def _ignore(text: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# The run


class Trainer:
    """One training run: its state and the methods that advance it.

    Building one resolves the configuration (on resume: the saved run's, with the settings in
    ``explicit`` on top), loads the data, builds the model, optimizer and loader, restores the
    checkpoint's state when resuming, writes the run folder's config.json and prints what the
    run is. :meth:`run` then trains to the end. The caller's ``cfg`` is never changed: the
    run's resolved configuration is :attr:`cfg`.
    """

    def __init__(self, cfg: TrainConfig, runtime: Runtime, explicit: set[str] | None = None,
                 log: Log | None = None) -> None:
        self.runtime, self.dist = runtime, runtime.dist
        self.say: Log = (log or _print_line) if self.dist.is_main else _ignore
        self.run_dir = Path(cfg.run.out_dir)
        self.resuming = cfg.run.init_from == "resume"
        self.logger: Logger | None = None
        self._lock: RunLock | None = None
        self._replaced: Path | None = None  # an earlier run moved aside under --run.overwrite
        if self.dist.is_main:  # only rank 0 writes the run folder, so only it owns it
            if self.resuming:
                checkpoint_path(self.run_dir, "last")  # a missing run: one line, before any folder is made
            else:
                refuse_earlier_run(self.run_dir, cfg.run.overwrite)  # before anything is written
            self._lock = RunLock(self.run_dir).acquire()
        try:
            self._build(cfg, explicit or set())
        except BaseException:
            self.close()
            raise

    def _build(self, cfg: TrainConfig, explicit: set[str]) -> None:
        if self.dist.is_main:
            clean_run_dir(self.run_dir)  # temporaries and half-deleted checkpoints of a killed run
        ck = load_checkpoint(self.run_dir, "last", trainer=True) if self.resuming else None
        if ck is not None:
            cfg = resume_config(cfg, ck.info["config"], explicit, self.run_dir)
        self.data = load_data(cfg, self.dist, self.say)
        if ck is not None:
            check_resume_data(ck.info, self.data.tokenizer, cfg.data.dataset, self.run_dir)
        self.micro_steps = micro_steps_per_rank(cfg.optim, self.dist.world_size)
        self.model = self._new_model(cfg, ck, "model.vocab_size" in explicit)
        self.cfg = dataclasses.replace(cfg, model=self.model.config)  # the run's resolved configuration
        self.tokens_per_step = self.cfg.data.batch_size * self.cfg.model.block_size * self.cfg.optim.grad_accum_steps
        self._setup_training()
        self.iter, self.best_val, self.train_time, self.tokens_seen = 0, float("inf"), 0.0, 0
        if ck is not None:
            self.resume(ck)
        else:
            torch.manual_seed(self.cfg.run.seed + self.dist.rank)  # dropout differs per rank
        self.budget_note = self._time_budget(explicit)
        self.start_iter = self.iter
        # ms/iter is measured on training time alone, so an evaluation or a checkpoint
        # written between two log lines does not show up as a slow iteration.
        self._time_at_log, self._steps_since_log, self._wall_at_log = self.train_time, 0, time.monotonic()
        self._write_run_dir()
        self._announce()
        self.fwd = self._wrap_model()  # what the step calls: kernels installed, compiled, DDP
        self.bytes_per_token = {s: self.data.bytes_per_token(s) for s in ("train", "val")}
        self.mfu_fn = _mfu_meter(self.cfg.model, self.tokens_per_step // max(1, self.cfg.optim.grad_accum_steps), self.runtime)
        self.say(self.mfu_fn.note)
        self.logger = Logger(self.run_dir, self.cfg, self.dist.is_main, self.resuming)
        self.runtime.threads.on_decision = self._threads_chosen
        best = None if self.best_val == float("inf") else self.best_val
        self.result = TrainResult(run_dir=self.run_dir, iter=self.iter, best_val=best)

    # ---- building

    def _new_model(self, cfg: TrainConfig, ck: Checkpoint | None, vocab_given: bool) -> GPT:
        from nanogpt.budget import check_training_fits

        def fits(config: GPTConfig) -> None:  # weights, gradients, AdamW state and activations, before any of them
            check_training_fits(config, cfg.data.batch_size, self.micro_steps, self.runtime.dtype, self.runtime.device)

        vocab = self.data.tokenizer.vocab_size
        torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
        if ck is not None:
            fits(cfg.model)
            model = GPT(cfg.model)
            load_weights(model, ck.model_state)
        else:
            model = build_model(cfg.run.init_from, cfg.model, vocab, vocab_given, self.say, fits)
        if vocab > model.config.vocab_size:
            raise NanoGPTError(f"dataset vocabulary {vocab} exceeds the model's {model.config.vocab_size}")
        return model

    def _setup_training(self) -> None:
        """The train loader, the model on its device, the optimizer and (float16) the gradient scaler."""
        from nanogpt.data.loader import BatchLoader

        cfg, dist, device = self.cfg, self.dist, self.runtime.device
        self.train_tokens, self.val_tokens = self.data.split("train"), self.data.split("val")
        self.loader = BatchLoader(self.train_tokens, cfg.model.block_size, cfg.data.batch_size, seed=cfg.run.seed,
                                  rank=dist.rank, world_size=dist.world_size, device=device,
                                  name=f"the train split of {cfg.data.dataset}")
        # build an eval loader now so that a too-short val split fails before training starts
        BatchLoader(self.val_tokens, cfg.model.block_size, cfg.data.batch_size, seed=0, device="cpu",
                    name=f"the val split of {cfg.data.dataset}")
        self.model.to(device)
        self.optimizer = configure_optimizer(self.model, cfg.optim, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.runtime.dtype is torch.float16 else None

    def resume(self, ck: Checkpoint) -> None:
        """Continue from ``ck``: optimizer, scaler, this rank's data position, random streams, counters."""
        ts, info = ck.trainer_state, ck.info
        try:
            self.optimizer.load_state_dict(ts["optimizer"])
        except (ValueError, KeyError) as e:
            raise NanoGPTError(f"the optimizer state in {ck.path} does not fit this run's optimizer ({str(e)[:120]}); "
                               f"resume with the run's saved optim settings, or fine-tune from it into a new folder: "
                               f"--init-from {self.run_dir} --out-dir NEW_FOLDER") from None
        if self.scaler is not None and ts.get("scaler"):
            self.scaler.load_state_dict(ts["scaler"])
        rank = str(self.dist.rank)
        self.loader.load_state_dict(info["loader"][rank] if rank in info["loader"] else info["loader"]["0"])
        set_rng_state(ts["rng"])
        self.iter = int(info["iter"])
        self.best_val = float(info["best_val"]) if info.get("best_val") is not None else float("inf")
        self.train_time = float(info.get("train_time", 0.0))
        self.tokens_seen = int(info.get("tokens", 0))

    def _time_budget(self, explicit: set[str]) -> str | None:
        """On resume: the time budget that applies (a given --run.max_seconds is the new total), or a refusal if spent."""
        budget = self.cfg.run.max_seconds
        if not self.resuming or not budget:
            return None
        given = "run.max_seconds" in explicit
        if self.train_time >= budget:
            first = f"--run.max_seconds {budget:g} is" if given else f"the run's saved time budget of {budget:g} s is"
            raise NanoGPTError(f"{first} already spent ({self.train_time:.1f} s trained); pass a larger total, e.g. "
                               f"--run.max_seconds {max(2 * budget, self.train_time + budget):g}, or 0 for no time limit")
        source = "set by --run.max_seconds" if given else "saved with the run; --run.max_seconds N sets a new total, 0 none"
        return (f"time budget: {budget:g} s of training in total, {self.train_time:.1f} s done, "
                f"{budget - self.train_time:.1f} s left ({source})")

    def _write_run_dir(self) -> None:
        if not self.dist.is_main:
            return
        if not self.resuming and self.cfg.run.overwrite:
            try:
                self._replaced = move_run_aside(self.run_dir)
            except OSError as e:
                raise os_error(e, "move the earlier run aside in", self.run_dir, "check the folder's permissions") from None
            if self._replaced is not None:
                self.say(f"note: the earlier run in {self.run_dir} was moved to {self._replaced}; "
                         "it is deleted when this run saves its first checkpoint")
        try:
            atomic_write_text(self.run_dir / "config.json", json.dumps(self.cfg.to_dict(), indent=2) + "\n")
        except OSError as e:
            raise os_error(e, "write", self.run_dir / "config.json", "make the folder writable, free some space, "
                           "or pick another --out-dir") from None

    def _announce(self) -> None:
        """Print the device, model, data and run lines that open every run."""
        cfg, m, dist = self.cfg, self.cfg.model, self.dist
        self.say(f"nanogpt train: {self.runtime.describe()}")
        self.say(
            f"model: {m.n_layer} layers, {m.n_head} heads, {m.n_embd} channels, block {m.block_size}, "
            f"vocab {m.vocab_size}: {self.model.num_params():,} parameters"
        )
        self.say(
            f"data: {cfg.data.dataset} ({len(self.train_tokens):,} train / {len(self.val_tokens):,} val tokens, "
            f"{self.data.tokenizer.name} tokenizer); {self.tokens_per_step:,} tokens per step = "
            f"{cfg.data.batch_size} x {m.block_size} x {cfg.optim.grad_accum_steps} accumulation"
            + (f" over {dist.world_size} processes" if dist.enabled else "")
        )
        length = f"{cfg.run.max_iters:,} iterations"
        if cfg.run.max_seconds:
            length = f"{cfg.run.max_seconds:g} s of training (or {length}, whichever comes first; the lr schedule follows)"
        start = "resuming at iteration " + str(self.start_iter) if self.resuming else cfg.run.init_from
        self.say(f"run: {self.run_dir} ({start}), {length}")
        if self.budget_note:
            self.say(self.budget_note)

    def _wrap_model(self) -> torch.nn.Module:
        fwd = prepare_model(self.model, self.runtime, self.cfg.model.block_size, self.say)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device_ids = [self.dist.local_rank] if self.runtime.device.type == "cuda" else None
            fwd = DDP(fwd, device_ids=device_ids)
        self.model.train()
        return fwd

    # ---- running

    def run(self) -> TrainResult:
        """Train to ``run.max_iters`` (or a signal, or the time budget), evaluate and save; close the logger."""
        try:
            stopped_by = self._train_loop()
            self.result.iter, self.result.train_time, self.result.stopped_by = self.iter, self.train_time, stopped_by
            if stopped_by == "signal":
                self.save(None, is_best=False)
                self.say(f"stopped by signal at iteration {self.iter}; checkpoint saved. Resume with: "
                         f"nanogpt train --run.init_from resume --run.out_dir {self.run_dir}")
                return self.result
            if stopped_by == "max_seconds":
                self.say(f"time budget of {self.cfg.run.max_seconds:g}s reached at iteration {self.iter}")
            self.evaluate_and_save(final=True)
        except torch.OutOfMemoryError:
            raise NanoGPTError(
                "out of memory; lower --data.batch_size (raise --optim.grad_accum_steps to keep the tokens per step) "
                "or --model.block_size"
            ) from None
        finally:
            self.close()
        if self.dist.is_main and self.cfg.run.sample_tokens > 0:
            _print_sample(self.model, self.data.tokenizer, self.cfg, self.runtime, self.say)
        return self.result

    def _train_loop(self) -> str | None:
        """Steps until ``run.max_iters``; returns why it stopped early ("signal", "max_seconds") or None."""
        run = self.cfg.run
        budget = (self.train_time, run.max_seconds) if run.max_seconds else None
        self.logger.start_bar(self.iter, run.max_iters, run.progress, budget)
        with StopRequested() as stop:
            while self.iter < run.max_iters:
                if self.iter > self.start_iter and self.iter % run.eval_interval == 0:
                    self.evaluate_and_save(final=False)
                self.step()
                stopped_by = self._stop_reason(stop)
                if stopped_by is not None:
                    return stopped_by
        return None

    def step(self) -> float:
        """One optimizer step at the current iteration; returns its loss (the mean over all processes)."""
        lr = self._set_lr()
        t0 = time.perf_counter()
        with self.runtime.threads.unit():  # CPU threads: fixed, or tuned on the steps' own times
            batches = [self.loader.next_batch() for _ in range(self.micro_steps)]
            loss_t = train_step(self.fwd, self.optimizer, batches, self.runtime, self.cfg.optim.grad_clip, self.scaler)
            if self.dist.enabled:  # report the mean over all ranks, as one process would
                loss_t = all_reduce_mean(loss_t, self.runtime)
            loss = loss_t.item()  # syncs the device, so the timing below is real
        before, self.train_time = self.train_time, self.train_time + time.perf_counter() - t0
        self.iter += 1
        self.tokens_seen += self.tokens_per_step
        self._steps_since_log += 1
        if not math.isfinite(loss):
            raise NanoGPTError(f"loss became {loss} at iteration {self.iter}; stopping. {self._last_good()}. Lower "
                               "--optim.lr, raise --optim.warmup_iters, or train in --run.dtype bfloat16/float32")
        self.result.losses.append(loss)
        self.logger.advance_bar(loss, self.train_time - before, self.iter)
        # a line every log_interval steps, and at least every LOG_EVERY_S of wall time whatever that says
        if self.iter % self.cfg.run.log_interval == 0 or self.iter == 1 or time.monotonic() - self._wall_at_log >= LOG_EVERY_S:
            self._log_step(loss, lr)
        return loss

    def _threads_chosen(self, decision: dict[str, Any]) -> None:
        """Say and record a choice of ``--run.threads auto`` when it sets or changes the count."""
        from nanogpt.threads import say_changes

        say_changes(self.say)(decision)
        self.logger.record({"kind": "threads", "iter": self.iter, **decision,
                            "ms": {str(k): v for k, v in decision["ms"].items()}})

    def _set_lr(self) -> float:
        run = self.cfg.run
        time_frac = self.train_time / run.max_seconds if run.max_seconds else None
        lr = lr_at(self.iter, self.cfg.optim, run.max_iters, time_frac)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's groups run at their own scale
        return lr

    def _log_step(self, loss: float, lr: float) -> None:
        ms = (self.train_time - self._time_at_log) / self._steps_since_log * 1000
        tok_s = self.tokens_per_step / (ms / 1000)
        # per-device MFU: the step's tokens are spread over world_size devices
        note = self.mfu_fn.note
        mfu = self.mfu_fn(tok_s / self.dist.world_size)
        if self.mfu_fn.note != note:  # the step beat the probed peak: say which peak counts now
            self.say(self.mfu_fn.note)
        self.logger.record({"kind": "train", "iter": self.iter, "loss": loss, "lr": lr, "ms_per_iter": ms,
                            "tokens_per_s": tok_s, "mfu": mfu, "tokens": self.tokens_seen,
                            "train_time": round(self.train_time, 3)})
        self.say(f"iter {self.iter}: loss {loss:.4f}, lr {lr:.2e}, {ms:.1f} ms/iter, {tok_s:,.0f} tok/s, "
                 f"{'MFU ' + format(mfu * 100, '.1f') + '%' if mfu is not None else 'MFU: unknown peak'}")
        self._time_at_log, self._steps_since_log, self._wall_at_log = self.train_time, 0, time.monotonic()

    def _stop_reason(self, stop: StopRequested) -> str | None:
        run = self.cfg.run
        flags = [stop.signal is not None, bool(run.max_seconds and self.train_time >= run.max_seconds)]
        if self.dist.enabled:  # decide together, or the ranks' collectives would not match
            flags = all_reduce_any(flags, self.runtime)
        if flags[0]:
            return "signal"
        if flags[1]:
            return "max_seconds"
        return None

    def evaluate_and_save(self, final: bool) -> dict[str, Any]:
        """Evaluate both splits, log the row, and save a checkpoint if the validation loss improved
        (or always, with ``run.always_save_checkpoint``, or when ``final``). Returns the row."""
        cfg, t = self.cfg, self.train_time
        losses = estimate_loss(self.model, {"train": self.train_tokens, "val": self.val_tokens}, cfg, self.runtime,
                               seed=cfg.run.seed + 1)
        bpb = {s: losses[s] / math.log(2) / self.bytes_per_token[s] for s in losses}
        row = {"kind": "eval", "iter": self.iter, "train_loss": losses["train"], "val_loss": losses["val"],
               "train_bpb": bpb["train"], "val_bpb": bpb["val"], "tokens": self.tokens_seen, "train_time": round(t, 3)}
        self.logger.record(row)
        self.say(f"eval {self.iter}: train loss {losses['train']:.4f} ({bpb['train']:.3f} bpb), val loss "
                 f"{losses['val']:.4f} ({bpb['val']:.3f} bpb), {t:.1f}s of training")
        self.result.evals.append(row)
        if not all(math.isfinite(v) for v in losses.values()):  # never saved, never pointed to
            raise NanoGPTError(f"the evaluation at iteration {self.iter} gave a non-finite loss (train {losses['train']}, "
                               f"val {losses['val']}); nothing was saved. {self._last_good()}. Lower --optim.lr, raise "
                               "--optim.warmup_iters, or train in --run.dtype bfloat16/float32")
        improved = losses["val"] < self.best_val
        if improved:
            self.best_val = self.result.best_val = losses["val"]
        if improved or cfg.run.always_save_checkpoint or final:
            self.save(losses, is_best=improved)  # every rank: the loader states are gathered
        return row

    def save(self, losses: dict[str, float] | None, is_best: bool) -> None:
        """Checkpoint the current state (every rank must call this: the loader states are gathered).

        Weights that are not all finite are never saved: the previous checkpoint stays the last one.
        """
        loader_states = gather_loader_states(self.loader, self.dist)
        if not self.dist.is_main:
            return
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise NanoGPTError(f"the weights at iteration {self.iter} are not finite; nothing was saved. {self._last_good()}")
        info = {
            "iter": self.iter, "best_val": self.best_val if self.best_val != float("inf") else None,
            "train_time": self.train_time, "tokens": self.tokens_seen, "config": self.cfg.to_dict(),
            "tokenizer": self.data.tokenizer.to_dict(), "dataset": str(self.cfg.data.dataset),
            "loader": loader_states, "world_size": self.dist.world_size,
        }
        if losses:
            info["val_loss"], info["train_loss"] = losses["val"], losses["train"]
        state = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                 "rng": rng_state()}
        try:
            save_checkpoint(self.run_dir, self.model, state, info, is_best=is_best)
        except OSError as e:
            good = self._last_good()
            then = "resume with --init-from resume" if good.startswith("The") else "train again"
            raise os_error(e, f"save the checkpoint of iteration {self.iter} in", self.run_dir / "checkpoints",
                           f"free some space or make the folder writable, then {then} ({good[0].lower()}{good[1:]})") from None
        if self._replaced is not None:  # the new run has a checkpoint: the old one can go
            shutil.rmtree(self._replaced, ignore_errors=True)
            self.say(f"note: removed the earlier run moved to {self._replaced}")
            self._replaced = None

    def _last_good(self) -> str:
        """Which checkpoint remains, in words (for the messages of a run that has to stop)."""
        try:
            path = checkpoint_path(self.run_dir, "last")
            it = json.loads((path / "info.json").read_text(encoding="utf-8")).get("iter")
        except (NanoGPTError, OSError, ValueError, AttributeError):
            return f"No checkpoint of this run was saved in {self.run_dir}"
        return f"The last good checkpoint, iteration {it} ({path}), is intact"

    def close(self) -> None:
        """Close the logger (files, writers, progress bar) and give the run folder's lock back; safe to call twice."""
        if self.logger is not None:
            self.logger.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def train(cfg: TrainConfig, explicit: set[str] | None = None, log: Log | None = None) -> TrainResult:
    """Run training as configured. Returns when done, stopped by a signal, or out of time.

    ``explicit`` names the dotted settings the user chose: on resume they override the saved
    run's, and from scratch a chosen ``model.vocab_size`` is kept. ``log`` receives rank 0's
    console lines (default: print). ``cfg`` is not changed; the run's resolved configuration
    is written to its folder's config.json.
    """
    run = _runtime_settings(cfg, explicit or set())
    runtime = setup_runtime(run.device, run.dtype, run.compile, distributed=True, threads=run.threads)
    finished = False
    try:
        result = Trainer(cfg, runtime, explicit, log).run()
        finished = True
        return result
    finally:
        teardown_distributed(runtime.dist, finished)


# --------------------------------------------------------------------------------------------
# Small pieces of the run


def _runtime_settings(cfg: TrainConfig, explicit: set[str]) -> RunConfig:
    """The run settings the device is set up with: on resume the saved run's device, dtype and
    compile unless chosen again (a resumed float32 run must not continue in bfloat16)."""
    if cfg.run.init_from != "resume":
        return cfg.run
    try:
        info = json.loads((checkpoint_path(cfg.run.out_dir, "last") / "info.json").read_text(encoding="utf-8"))
        return resume_config(cfg, info["config"], explicit, Path(cfg.run.out_dir)).run
    except (NanoGPTError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return cfg.run  # the Trainer reports what is wrong with the checkpoint, in one line


def _mfu_meter(model_cfg: GPTConfig, tokens_per_micro_step: int, runtime: Runtime) -> Any:
    """MFU against a peak the step cannot exceed (``flops.MFUMeter``); its ``note`` says which peak."""
    from nanogpt import flops

    return flops.MFUMeter(model_cfg, tokens_per_micro_step, runtime.device, runtime.dtype)


def _print_sample(model: GPT, tokenizer: Any, cfg: TrainConfig, runtime: Runtime, say: Log) -> None:
    """End the run with a short sample, so the user sees what the model learned."""
    from nanogpt.generate import sample_text

    start = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")
    g = torch.Generator(device=runtime.device).manual_seed(cfg.run.seed)
    with torch.no_grad(), runtime.autocast():
        text = sample_text(model, tokenizer, start, max_new_tokens=cfg.run.sample_tokens, temperature=0.8,
                           top_k=200, generator=g)[0]
    say("sample:\n" + text.strip("\n"))
