"""``nanogpt train``: the training loop, built from small functions.

One process and ``torchrun`` take the same path. The pieces other commands reuse — the
optimizer set-up, the learning-rate schedule and the training step — are defined here once.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from nanogpt.config import (
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    add_dataclass_args,
    preset_names,
)
from nanogpt.device import Runtime, prepare_model, setup_runtime, teardown_distributed
from nanogpt.errors import NanoGPTError
from nanogpt.config import GPTConfig
from nanogpt.model import GPT


# --------------------------------------------------------------------------------------------
# Optimizer, schedule, step (shared with `nanogpt bench` and the benchmarks)


def configure_optimizer(model: torch.nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (dim >= 2) only; the fused kernel where torch has one.

    Biases and LayerNorm gains are not decayed: shrinking them toward zero has no
    regularising meaning. The tied wte/lm_head matrix appears once. With ``optim.name ==
    "muon"``, the blocks' weight matrices get Muon instead (``nanogpt.optim``).
    """
    if optim.name == "muon":
        from nanogpt.optim import Muon, muon_param_groups

        groups = muon_param_groups(model, optim.lr, optim.muon_lr, optim.weight_decay, optim.muon_weight_decay)
        return Muon(groups, momentum=optim.muon_momentum, ns_steps=optim.muon_ns_steps, betas=(optim.beta1, optim.beta2),
                    eps=optim.eps)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = dict(lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)
    if device.type in ("cuda", "cpu"):
        # One kernel for the whole update (CPU too, since torch 2.4): on GPT-2 small on our CPU
        # the optimizer step went from ~700 ms with foreach to ~165 ms.
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True  # multi-tensor kernels instead of a Python loop over parameters
    return torch.optim.AdamW(groups, **kwargs)


def lr_at(it: int, optim: OptimConfig, max_iters: int, time_frac: float | None = None) -> float:
    """Learning rate at iteration ``it`` (0-based): linear warmup, then the chosen decay.

    The decay runs from the end of warmup to ``optim.lr_decay_iters`` (default ``max_iters``).
    With a time budget, ``time_frac`` (training time / budget) can end it sooner: progress is
    whichever of the two is further along, so a run stopped by its budget has finished its
    schedule on any machine.
    """
    if optim.warmup_iters > 0 and it < optim.warmup_iters:
        return optim.lr * (it + 1) / optim.warmup_iters
    if optim.schedule == "constant":
        return optim.lr
    decay_end = optim.lr_decay_iters or max_iters
    frac = (it - optim.warmup_iters) / max(1, decay_end - optim.warmup_iters)
    if time_frac is not None:
        frac = max(frac, time_frac)
    frac = min(max(frac, 0.0), 1.0)
    if optim.schedule == "wsd":
        # warmup, stable at lr, then linear to min_lr over the last decay_frac of the run
        start = 1.0 - optim.decay_frac
        if frac <= start:
            return optim.lr
        return optim.lr + (frac - start) / optim.decay_frac * (optim.min_lr - optim.lr)
    if optim.schedule == "linear":
        return optim.lr + frac * (optim.min_lr - optim.lr)
    coeff = 0.5 * (1.0 + math.cos(math.pi * frac))  # 1 -> 0
    return optim.min_lr + coeff * (optim.lr - optim.min_lr)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    grad_clip: float,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One optimizer step over the micro-batches; returns the mean loss (a 0-d tensor).

    Under DDP, gradients are all-reduced only on the last micro-step (``no_sync`` before).
    The caller sets the learning rate beforehand.
    """
    n = len(batches)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    total = torch.zeros((), device=runtime.device)
    for i, (x, y) in enumerate(batches):
        sync = nullcontext() if (not ddp or i == n - 1) else model.no_sync()
        with sync:
            with runtime.autocast():
                _, loss = model(x, y, return_logits=False)
            loss = loss / n  # gradients of the mean over all micro-batches
            total += loss.detach()
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module, splits: dict[str, Any], cfg: TrainConfig, runtime: Runtime, seed: int
) -> dict[str, float]:
    """Mean loss over ``run.eval_iters`` batches per split, averaged over all processes.

    Each evaluation draws the same batches (its own loader with a fixed seed), so successive
    evaluations compare like with like and training's random streams are left untouched.
    """
    from nanogpt.data.loader import BatchLoader

    was_training = model.training
    model.eval()
    out = {}
    for name, tokens in splits.items():
        loader = BatchLoader(
            tokens, cfg.model.block_size, cfg.data.batch_size, seed=seed, rank=runtime.dist.rank,
            world_size=runtime.dist.world_size, device=runtime.device,
        )
        losses = torch.zeros(cfg.run.eval_iters, device=runtime.device)
        for k in range(cfg.run.eval_iters):
            x, y = loader.next_batch()
            with runtime.autocast():
                _, loss = model(x, y, return_logits=False)
            losses[k] = loss.float()
        mean = losses.mean()
        if runtime.dist.enabled:
            mean = _all_reduce_mean(mean, runtime)
        out[name] = mean.item()
    model.train(was_training)
    return out


def _all_reduce_mean(t: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    import torch.distributed as tdist

    t = t.detach().clone()
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)  # gloo has no AVG
    return t / runtime.dist.world_size


def _all_reduce_any(flags: list[bool], runtime: Runtime) -> list[bool]:
    import torch.distributed as tdist

    t = torch.tensor([float(f) for f in flags], device=runtime.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


# --------------------------------------------------------------------------------------------
# Run state helpers


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopRequested:
    """Turns the first SIGINT/SIGTERM into a flag so the loop can save and exit cleanly.

    A second signal restores the default behaviour (Ctrl-C twice kills at once).
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequested":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Logger:
    """metrics.jsonl + console (+ TensorBoard, wandb when asked). Only rank 0 logs."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, enabled: bool, resume: bool) -> None:
        self.enabled = enabled
        self.tb = None
        self.wandb = None
        self.bar = None
        if not enabled:
            return
        self.file = open(run_dir / "metrics.jsonl", "a" if resume else "w", encoding="utf-8")
        if cfg.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ModuleNotFoundError:
                raise NanoGPTError("--run.tensorboard needs tensorboard: pip install 'nanogpt[log]'") from None
            self.tb = SummaryWriter(str(run_dir / "tb"))
        if cfg.run.wandb:
            try:
                import wandb
            except ModuleNotFoundError:
                raise NanoGPTError("--run.wandb needs wandb: pip install wandb") from None
            self.wandb = wandb.init(project=cfg.run.wandb_project, name=run_dir.name, config=cfg.to_dict(), resume="allow")

    def start_bar(self, start: int, total: int, show: bool) -> None:
        if self.enabled and show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, leave=False,
                            disable=not sys.stderr.isatty())

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def record(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        step = row.get("iter", 0)
        for k, v in row.items():
            if k != "iter" and isinstance(v, (int, float)):
                if self.tb is not None:
                    self.tb.add_scalar(f"{row.get('kind', 'train')}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{row.get('kind', 'train')}/{k}": v for k, v in row.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# --------------------------------------------------------------------------------------------
# Building the run


def default_preset(device: torch.device) -> str:
    """The preset `nanogpt train` uses when none is given: the one that fits this device."""
    return "shakespeare-char-cpu" if device.type == "cpu" else "shakespeare-char"


def ensure_dataset(cfg: TrainConfig, is_main: bool, log: Callable[[str], None]) -> None:
    """Prepare the dataset folder first if it is missing and the config says from what."""
    from nanogpt.data.preparation import prepare

    folder = Path(cfg.data.dataset)
    if (folder / "meta.json").is_file():
        return
    if not cfg.data.prepare:
        raise NanoGPTError(
            f"dataset folder {folder} is not prepared; run: nanogpt prepare shakespeare --tokenizer {cfg.data.tokenizer} --out {folder}"
        )
    if is_main:
        log(f"preparing {cfg.data.prepare} ({cfg.data.tokenizer} tokens) into {folder} ...")
        prepare([cfg.data.prepare], str(folder), tokenizer=cfg.data.tokenizer, progress=False)


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


def _build_model(cfg: TrainConfig, data_vocab: int, explicit: set[str], log: Callable[[str], None]) -> GPT:
    """The model for ``run.init_from`` other than resume (scratch, GPT-2, HF folder, another run)."""
    init = cfg.run.init_from
    if init == "scratch":
        if "model.vocab_size" not in explicit or cfg.model.vocab_size < data_vocab:
            if "model.vocab_size" in explicit:
                raise NanoGPTError(
                    f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the dataset's vocabulary ({data_vocab})"
                )
            cfg.model.vocab_size = data_vocab
        return GPT(cfg.model)
    from nanogpt import hf
    from nanogpt.checkpoint import is_run_dir, load_checkpoint, load_weights

    if Path(init).is_dir() and is_run_dir(init):
        ck = load_checkpoint(init, "best", trainer=False)
        base = ck.model_config
        model = GPT(GPTConfig(**{**base.to_dict(), "dropout": cfg.model.dropout}))
        load_weights(model, ck.model_state)
        log(f"initialised from run {init} (iteration {ck.info.get('iter')})")
    elif (Path(init).is_dir() and hf.is_hf_dir(init)) or init in hf.HUB_NAMES:
        model = GPT.from_pretrained(init, dropout=cfg.model.dropout)
        log(f"initialised from Hugging Face GPT-2 {init}")
    else:
        raise NanoGPTError(
            f"run.init_from '{init}' is not scratch, resume, a GPT-2 name ({', '.join(hf.HUB_NAMES)}), "
            "a Hugging Face GPT-2 folder or a run folder"
        )
    if cfg.model.block_size > model.config.block_size:
        raise NanoGPTError(
            f"model.block_size {cfg.model.block_size} is larger than the pretrained model's {model.config.block_size}; "
            f"use --model.block_size {model.config.block_size} or less"
        )
    if cfg.model.block_size < model.config.block_size:
        model.crop_block_size(cfg.model.block_size)
    if data_vocab > model.config.vocab_size:
        raise NanoGPTError(
            f"the dataset's vocabulary ({data_vocab}) is larger than the model's ({model.config.vocab_size}); "
            "prepare the data with the model's tokenizer (--tokenizer gpt2)"
        )
    cfg.model = model.config
    return model


def train(cfg: TrainConfig, explicit: set[str] | None = None, log: Callable[[str], None] | None = None) -> TrainResult:
    """Run training as configured. Returns when done, stopped by a signal, or out of time."""
    explicit = explicit or set()
    runtime = setup_runtime(cfg.run.device, cfg.run.dtype, cfg.run.compile, distributed=True)
    dist = runtime.dist
    try:
        return _train(cfg, runtime, explicit, log)
    finally:
        teardown_distributed(dist)


def _train(cfg: TrainConfig, runtime: Runtime, explicit: set[str], log_fn: Callable[[str], None] | None) -> TrainResult:
    from nanogpt.checkpoint import atomic_write_text, load_checkpoint, load_weights, save_checkpoint
    from nanogpt.data.loader import BatchLoader, load_prepared

    dist, device = runtime.dist, runtime.device
    is_main = dist.is_main
    run_dir = Path(cfg.run.out_dir)
    resume = cfg.run.init_from == "resume"
    say = (log_fn or (lambda s: print(s, flush=True))) if is_main else (lambda s: None)

    # ---- resume: the run's own configuration, with this invocation's run.* settings on top
    ck = None
    if resume:
        ck = load_checkpoint(run_dir, "last", trainer=True)
        saved = TrainConfig.from_flat(
            {f"{s}.{k}": v for s, d in ck.info["config"].items() for k, v in d.items()}
        )
        for key in explicit:
            section, name = key.split(".", 1)
            new, old = getattr(getattr(cfg, section), name), getattr(getattr(saved, section), name)
            if section == "model" and new != old:
                raise NanoGPTError(
                    f"cannot resume with {key}={new}: the checkpoint in {run_dir} was trained with {old}"
                )
            setattr(getattr(saved, section), name, new)
        saved.run.init_from = "resume"
        cfg = saved

    # ---- data
    if is_main:
        ensure_dataset(cfg, is_main, say)
    if dist.enabled:
        import torch.distributed as tdist

        tdist.barrier()
    data = load_prepared(cfg.data.dataset)
    per_rank_accum, rem = divmod(cfg.optim.grad_accum_steps, dist.world_size)
    if rem:
        raise NanoGPTError(
            f"optim.grad_accum_steps ({cfg.optim.grad_accum_steps}) must be divisible by the number of processes "
            f"({dist.world_size}) so that every optimizer step sees the same number of tokens"
        )

    # ---- model
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    if resume:
        model = GPT(cfg.model)
        load_weights(model, ck.model_state)
    else:
        model = _build_model(cfg, data.tokenizer.vocab_size, explicit, say)
    if data.tokenizer.vocab_size > cfg.model.vocab_size:
        raise NanoGPTError(f"dataset vocabulary {data.tokenizer.vocab_size} exceeds the model's {cfg.model.vocab_size}")
    train_tokens, val_tokens = data.split("train"), data.split("val")
    loader = BatchLoader(train_tokens, cfg.model.block_size, cfg.data.batch_size, seed=cfg.run.seed,
                         rank=dist.rank, world_size=dist.world_size, device=device,
                         name=f"the train split of {cfg.data.dataset}")
    # build an eval loader now so that a too-short val split fails before training starts
    BatchLoader(val_tokens, cfg.model.block_size, cfg.data.batch_size, seed=0, device="cpu",
                name=f"the val split of {cfg.data.dataset}")
    model.to(device)
    optimizer = configure_optimizer(model, cfg.optim, device)
    scaler = torch.amp.GradScaler(device.type) if runtime.dtype is torch.float16 else None
    start_iter, best_val, train_time, tokens_seen = 0, float("inf"), 0.0, 0
    if resume:
        ts = ck.trainer_state
        optimizer.load_state_dict(ts["optimizer"])
        if scaler is not None and ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        loader.load_state_dict(ck.info["loader"][str(dist.rank)] if str(dist.rank) in ck.info["loader"] else ck.info["loader"]["0"])
        set_rng_state(ts["rng"])
        start_iter = int(ck.info["iter"])
        best_val = float(ck.info["best_val"]) if ck.info.get("best_val") is not None else float("inf")
        train_time = float(ck.info.get("train_time", 0.0))
        tokens_seen = int(ck.info.get("tokens", 0))
    else:
        torch.manual_seed(cfg.run.seed + dist.rank)  # dropout differs per rank

    if is_main:
        from nanogpt.checkpoint import is_run_dir

        if not resume and is_run_dir(run_dir):
            say(f"note: {run_dir} holds an earlier run, which this one replaces as it saves; "
                f"to continue that run instead use --init-from resume, or pick another --out-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")

    say(f"nanogpt train: {runtime.describe()}")
    say(
        f"model: {cfg.model.n_layer} layers, {cfg.model.n_head} heads, {cfg.model.n_embd} channels, block {cfg.model.block_size}, "
        f"vocab {cfg.model.vocab_size}: {model.num_params():,} parameters"
    )
    tokens_per_step = cfg.data.batch_size * cfg.model.block_size * cfg.optim.grad_accum_steps
    say(
        f"data: {cfg.data.dataset} ({len(train_tokens):,} train / {len(val_tokens):,} val tokens, {data.tokenizer.name} tokenizer); "
        f"{tokens_per_step:,} tokens per step = {cfg.data.batch_size} x {cfg.model.block_size} x {cfg.optim.grad_accum_steps} accumulation"
        + (f" over {dist.world_size} processes" if dist.enabled else "")
    )
    length = f"{cfg.run.max_iters:,} iterations"
    if cfg.run.max_seconds:
        length = f"{cfg.run.max_seconds:g} s of training (or {length}, whichever comes first; the lr schedule follows)"
    say(f"run: {run_dir} ({'resuming at iteration ' + str(start_iter) if resume else cfg.run.init_from}), {length}")

    fwd = prepare_model(model, runtime, cfg.model.block_size, say)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(fwd, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    model.train()

    bytes_per_token = {s: data.bytes_per_token(s) for s in ("train", "val")}
    mfu_fn = _mfu_function(cfg.model, runtime)
    logger = Logger(run_dir, cfg, is_main, resume)
    result = TrainResult(run_dir=run_dir, iter=start_iter, best_val=None if best_val == float("inf") else best_val)

    def evaluate_and_save(it: int, final: bool) -> None:
        nonlocal best_val
        losses = estimate_loss(model, {"train": train_tokens, "val": val_tokens}, cfg, runtime, seed=cfg.run.seed + 1)
        bpb = {s: losses[s] / math.log(2) / bytes_per_token[s] for s in losses}
        row = {"kind": "eval", "iter": it, "train_loss": losses["train"], "val_loss": losses["val"],
               "train_bpb": bpb["train"], "val_bpb": bpb["val"], "tokens": tokens_seen, "train_time": round(train_time, 3)}
        logger.record(row)
        say(f"eval {it}: train loss {losses['train']:.4f} ({bpb['train']:.3f} bpb), val loss {losses['val']:.4f} "
            f"({bpb['val']:.3f} bpb), {train_time:.1f}s of training")
        result.evals.append(row)
        improved = losses["val"] < best_val
        if improved:
            best_val = losses["val"]
            result.best_val = best_val
        if improved or cfg.run.always_save_checkpoint or final:
            save(it, losses, is_best=improved)  # every rank: the loader states are gathered

    def save(it: int, losses: dict[str, float] | None, is_best: bool) -> None:
        loader_states = gather_loader_states(loader, dist)
        if not is_main:
            return
        info = {
            "iter": it, "best_val": best_val if best_val != float("inf") else None, "train_time": train_time,
            "tokens": tokens_seen, "config": cfg.to_dict(), "tokenizer": data.tokenizer.to_dict(),
            "dataset": str(cfg.data.dataset), "loader": loader_states, "world_size": dist.world_size,
        }
        if losses:
            info["val_loss"], info["train_loss"] = losses["val"], losses["train"]
        state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None, "rng": rng_state()}
        save_checkpoint(run_dir, model, state, info, is_best=is_best)

    it = start_iter
    stopped_by = None
    logger.start_bar(start_iter, cfg.run.max_iters, cfg.run.progress)
    try:
        with StopRequested() as stop:
            # ms/iter is measured on training time alone, so an evaluation or a checkpoint
            # written between two log lines does not show up as a slow iteration.
            time_at_log = train_time
            steps_since_log = 0
            while it < cfg.run.max_iters:
                if it % cfg.run.eval_interval == 0 and (it > start_iter or it == 0) and it > 0:
                    evaluate_and_save(it, final=False)
                time_frac = train_time / cfg.run.max_seconds if cfg.run.max_seconds else None
                lr = lr_at(it, cfg.optim, cfg.run.max_iters, time_frac)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's groups run at their own scale
                t0 = time.perf_counter()
                batches = [loader.next_batch() for _ in range(per_rank_accum)]
                loss_t = train_step(fwd, optimizer, batches, runtime, cfg.optim.grad_clip, scaler)
                if dist.enabled:  # report the mean over all ranks, as one process would
                    loss_t = _all_reduce_mean(loss_t, runtime)
                loss = loss_t.item()  # syncs the device, so the timing below is real
                dt = time.perf_counter() - t0
                train_time += dt
                it += 1
                tokens_seen += tokens_per_step
                steps_since_log += 1
                if not math.isfinite(loss):
                    raise NanoGPTError(
                        f"loss became {loss} at iteration {it}; stopping. The last good checkpoint in {run_dir} is intact. "
                        "Lower --optim.lr, raise --optim.warmup_iters, or train in --run.dtype bfloat16/float32"
                    )
                result.losses.append(loss)
                if logger.bar is not None:
                    logger.bar.update(1)
                    logger.bar.set_postfix(loss=f"{loss:.4f}")
                if it % cfg.run.log_interval == 0 or it == 1:
                    ms = (train_time - time_at_log) / steps_since_log * 1000
                    tok_s = tokens_per_step / (ms / 1000)
                    # per-device MFU: the step's tokens are spread over world_size devices
                    mfu = mfu_fn(tok_s / dist.world_size) if mfu_fn else None
                    logger.record({"kind": "train", "iter": it, "loss": loss, "lr": lr, "ms_per_iter": ms,
                                   "tokens_per_s": tok_s, "mfu": mfu, "tokens": tokens_seen, "train_time": round(train_time, 3)})
                    say(f"iter {it}: loss {loss:.4f}, lr {lr:.2e}, {ms:.1f} ms/iter, {tok_s:,.0f} tok/s, "
                        f"{'MFU ' + format(mfu * 100, '.1f') + '%' if mfu is not None else 'MFU: unknown peak'}")
                    time_at_log, steps_since_log = train_time, 0
                flags = [stop.signal is not None, bool(cfg.run.max_seconds and train_time >= cfg.run.max_seconds)]
                if dist.enabled:  # decide together, or the ranks' collectives would not match
                    flags = _all_reduce_any(flags, runtime)
                if flags[0]:
                    stopped_by = "signal"
                    break
                if flags[1]:
                    stopped_by = "max_seconds"
                    break
        result.iter = it
        result.train_time = train_time
        result.stopped_by = stopped_by
        if stopped_by == "signal":
            save(it, None, is_best=False)
            say(f"stopped by signal at iteration {it}; checkpoint saved. Resume with: "
                f"nanogpt train --run.init_from resume --run.out_dir {run_dir}")
            return result
        if stopped_by == "max_seconds":
            say(f"time budget of {cfg.run.max_seconds:g}s reached at iteration {it}")
        evaluate_and_save(it, final=True)
    except torch.OutOfMemoryError:
        raise NanoGPTError(
            "out of memory; lower --data.batch_size (raise --optim.grad_accum_steps to keep the tokens per step) "
            "or --model.block_size"
        ) from None
    finally:
        logger.close()
    if is_main and cfg.run.sample_tokens > 0:
        _print_sample(model, data.tokenizer, cfg, runtime, say)
    return result


def gather_loader_states(loader: Any, dist: Any) -> dict[str, Any]:
    """Every rank's loader state, keyed by rank (all ranks must call this together)."""
    state = loader.state_dict()
    if not dist.enabled:
        return {"0": state}
    import torch.distributed as tdist

    states: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(states, state)
    return {str(r): s for r, s in enumerate(states)}


def _mfu_function(model_cfg: GPTConfig, runtime: Runtime) -> Callable[[float], float | None] | None:
    try:
        from nanogpt import flops
    except ImportError:
        return None
    return lambda tok_s: flops.mfu(tok_s, model_cfg, model_cfg.block_size, runtime.device, runtime.dtype)


def _print_sample(model: GPT, tokenizer: Any, cfg: TrainConfig, runtime: Runtime, say: Callable[[str], None]) -> None:
    """End the run with a short sample, so the user sees what the model learned."""
    from nanogpt.generate import sample_text

    start = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")
    g = torch.Generator(device=runtime.device).manual_seed(cfg.run.seed)
    with torch.no_grad(), runtime.autocast():
        text = sample_text(model, tokenizer, start, max_new_tokens=cfg.run.sample_tokens, temperature=0.8,
                           top_k=200, generator=g)[0]
    say("sample:\n" + text.strip("\n"))


# --------------------------------------------------------------------------------------------
# CLI


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help=f"named configuration: {', '.join(preset_names())} "
                        "(default: shakespeare-char-cpu on a CPU, shakespeare-char on a GPU)")
    parser.add_argument("--config", metavar="FILE", help="a TOML/YAML/JSON file of settings (may name a preset)")
    parser.add_argument("--init-from", dest="run.init_from", default=argparse.SUPPRESS,
                        help="shorthand for --run.init_from (scratch | resume | gpt2... | HF folder | run folder)")
    parser.add_argument("--out-dir", dest="run.out_dir", default=argparse.SUPPRESS, help="shorthand for --run.out_dir")
    add_dataclass_args(parser, GPTConfig, "model")
    add_dataclass_args(parser, DataConfig, "data")
    add_dataclass_args(parser, OptimConfig, "optim")
    add_dataclass_args(parser, RunConfig, "run")


def cli_main(args: argparse.Namespace) -> int:
    from nanogpt.config import resolve_train_flat
    from nanogpt.device import resolve_device

    overrides = {k: v for k, v in vars(args).items() if "." in k}
    device = resolve_device(str(overrides.get("run.device", "auto")))
    flat, user_keys = resolve_train_flat(args.preset, args.config, overrides, default_preset(device))
    cfg = TrainConfig.from_flat(flat)
    # On resume only what the user typed overrides the saved run; otherwise preset keys count
    # as chosen too (e.g. a preset's padded vocab_size is kept).
    explicit = user_keys if cfg.run.init_from == "resume" else set(flat)
    result = train(cfg, explicit)
    return 130 if result.stopped_by == "signal" else 0
