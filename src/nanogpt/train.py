"""``nanogpt train``: the command that trains or fine-tunes a model.

This module is only the command: its flags (one per config field, generated from the
dataclasses) and turning them into a :class:`~nanogpt.config.TrainConfig`. The training itself
is the library module ``nanogpt.trainer`` (:func:`~nanogpt.trainer.train`, the
:class:`~nanogpt.trainer.Trainer`, the step); the optimizer and its schedule are in
``nanogpt.optim``. Other modules import from those, never from this entry point; the names
re-exported below keep older ``from nanogpt.train import ...`` lines working.
"""

from __future__ import annotations

import argparse

import torch

from nanogpt.config import (
    DataConfig,
    GPTConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    add_dataclass_args,
    preset_names,
)
from nanogpt.optim import configure_optimizer, lr_at
from nanogpt.runlog import Logger
from nanogpt.trainer import (
    StopRequested,
    Trainer,
    TrainResult,
    ensure_dataset,
    estimate_loss,
    gather_loader_states,
    rng_state,
    set_rng_state,
    train,
    train_step,
)

__all__ = [
    "Logger", "StopRequested", "TrainResult", "Trainer", "add_cli_args", "cli_main", "configure_optimizer",
    "default_preset", "ensure_dataset", "estimate_loss", "gather_loader_states", "lr_at", "rng_state",
    "set_rng_state", "train", "train_step",
]


def default_preset(device: torch.device) -> str:
    """The preset `nanogpt train` uses when none is given: the one that fits this device."""
    return "shakespeare-char-cpu" if device.type == "cpu" else "shakespeare-char"


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """The flags of `nanogpt train`: a preset, a config file, shorthands, and one flag per config field."""
    parser.add_argument("--preset", help=f"named configuration: {', '.join(preset_names())} "
                        "(default: shakespeare-char-cpu on a CPU, shakespeare-char on a GPU)")
    parser.add_argument("--config", metavar="FILE", help="a TOML/YAML/JSON file of settings (may name a preset)")
    parser.add_argument("--init-from", dest="run.init_from", default=argparse.SUPPRESS,
                        help="shorthand for --run.init_from (scratch | resume | gpt2... | HF folder | run folder)")
    parser.add_argument("--out-dir", dest="run.out_dir", default=argparse.SUPPRESS, help="shorthand for --run.out_dir")
    parser.add_argument("--overwrite", dest="run.overwrite", action="store_const", const=True, default=argparse.SUPPRESS,
                        help="shorthand for --run.overwrite true: replace an earlier run in the out_dir")
    add_dataclass_args(parser, GPTConfig, "model")
    add_dataclass_args(parser, DataConfig, "data")
    add_dataclass_args(parser, OptimConfig, "optim")
    add_dataclass_args(parser, RunConfig, "run")


def cli_main(args: argparse.Namespace) -> int:
    """Run `nanogpt train`; exit status 130 when stopped by a signal (a checkpoint was saved)."""
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
