"""What a training run starts from: the resumed configuration, the data, the model.

Small functions the :class:`nanogpt.trainer.Trainer` calls while it sets a run up; each reads
its inputs and returns something new (the caller's configuration is never changed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable


from nanogpt.config import GPTConfig, OptimConfig, TrainConfig
from nanogpt.device import Dist
from nanogpt.errors import NanoGPTError
from nanogpt.model import GPT

Log = Callable[[str], None]



def resume_config(cfg: TrainConfig, saved: dict[str, dict[str, Any]], explicit: set[str], run_dir: Path) -> TrainConfig:
    """A run's saved configuration with the settings named in ``explicit`` taken from ``cfg``.

    Returns a new object (``cfg`` is not changed). The model's settings may only repeat the
    saved ones: the checkpoint's weights have that shape.
    """
    merged = TrainConfig.from_flat({f"{s}.{k}": v for s, d in saved.items() for k, v in d.items()})
    for key in explicit:
        section, name = key.split(".", 1)
        new, old = getattr(getattr(cfg, section), name), getattr(getattr(merged, section), name)
        if section == "model" and new != old:
            raise NanoGPTError(f"cannot resume with {key}={new}: the checkpoint in {run_dir} was trained with {old}")
        if key == "optim.name" and new != old:
            raise NanoGPTError(f"cannot resume with optim.name={new}: the checkpoint in {run_dir} holds {old}'s optimizer "
                               f"state; to switch optimizers, fine-tune from it into a new folder: --init-from {run_dir} "
                               f"--optim.name {new} --out-dir NEW_FOLDER")
        setattr(getattr(merged, section), name, new)
    merged.run.init_from = "resume"
    return merged


def ensure_dataset(cfg: TrainConfig, is_main: bool, log: Log) -> None:
    """Prepare the dataset folder first if it is missing and the config says from what."""
    from nanogpt.data.loader import needs_preparing
    from nanogpt.data.preparation import prepare

    folder = Path(cfg.data.dataset)
    if not needs_preparing(folder, cfg.data.tokenizer, cfg.data.prepare):  # one line when it cannot be
        return
    if is_main:
        log(f"preparing {cfg.data.prepare} ({cfg.data.tokenizer} tokens) into {folder} ...")
        prepare([cfg.data.prepare], str(folder), tokenizer=cfg.data.tokenizer, progress=False)


def load_data(cfg: TrainConfig, dist: Dist, log: Log) -> Any:
    """The prepared dataset (``nanogpt.data.loader.PreparedData``); rank 0 prepares it first if missing."""
    from nanogpt.data.loader import load_prepared

    if dist.is_main:
        ensure_dataset(cfg, dist.is_main, log)
    if dist.enabled:  # the other ranks wait for rank 0's preparation
        import torch.distributed as tdist

        tdist.barrier()
    return load_prepared(cfg.data.dataset)


def micro_steps_per_rank(optim: OptimConfig, world_size: int) -> int:
    """Each process's share of ``optim.grad_accum_steps``, which must divide evenly."""
    per_rank, rem = divmod(optim.grad_accum_steps, world_size)
    if rem:
        raise NanoGPTError(
            f"optim.grad_accum_steps ({optim.grad_accum_steps}) must be divisible by the number of processes "
            f"({world_size}) so that every optimizer step sees the same number of tokens"
        )
    return per_rank


def build_model(init_from: str, model_cfg: GPTConfig, data_vocab: int, vocab_given: bool, log: Log,
                fits: Callable[[GPTConfig], None] = lambda config: None) -> GPT:
    """A new model for ``run.init_from`` (anything but resume): scratch, a GPT-2 name, a Hugging
    Face GPT-2 folder, or another run folder (its best checkpoint).

    ``model_cfg`` is read, not changed; the returned model's ``config`` is the resolved one.
    From scratch the vocabulary is the dataset's unless ``vocab_given`` (the user chose
    ``model.vocab_size``, e.g. padded, which must then hold the dataset's). A pretrained model
    keeps its shape and vocabulary, takes ``model_cfg.dropout`` and is cropped to
    ``model_cfg.block_size``. ``fits(config)`` refuses a configuration that would not fit in memory,
    before the model is made (from scratch) or before its training state is (pretrained).
    """
    if init_from == "scratch":
        if vocab_given and model_cfg.vocab_size < data_vocab:
            raise NanoGPTError(f"model.vocab_size ({model_cfg.vocab_size}) is smaller than the dataset's vocabulary ({data_vocab})")
        resolved = dataclasses.replace(model_cfg, vocab_size=model_cfg.vocab_size if vocab_given else data_vocab)
        fits(resolved)
        return GPT(resolved)
    model = pretrained_model(init_from, model_cfg.dropout, log)
    block, base = model_cfg.block_size, model.config
    if block > base.block_size:
        raise NanoGPTError(
            f"model.block_size {block} is larger than the pretrained model's {base.block_size}; "
            f"use --model.block_size {base.block_size} or less"
        )
    if block < base.block_size:
        model.crop_block_size(block)
    fits(model.config)
    if data_vocab > base.vocab_size:
        raise NanoGPTError(
            f"the dataset's vocabulary ({data_vocab}) is larger than the model's ({base.vocab_size}); "
            "prepare the data with the model's tokenizer (--tokenizer gpt2)"
        )
    return model


def pretrained_model(init_from: str, dropout: float, log: Log) -> GPT:
    """The model ``init_from`` names (a run folder's best checkpoint, an HF folder or hub name, a nanoGPT
    checkpoint), with ``dropout``."""
    from nanogpt.checkpoint import load_model
    from nanogpt.resolve import LOADABLE, resolve_source

    src = resolve_source(init_from, LOADABLE, label="run.init_from (scratch, resume, or a model)")
    loaded = load_model(src, which="best", dropout=dropout)
    at = f" (iteration {loaded.meta['iter']})" if loaded.meta.get("iter") is not None else ""
    log(f"initialised from {src.description}{at}")
    return loaded.model
