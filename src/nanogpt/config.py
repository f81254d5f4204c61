"""Typed configuration: one dataclass per concern, presets by name, config files, CLI flags.

A training run is described by :class:`TrainConfig` = model (:class:`GPTConfig`) + data +
optim + run. Values come, in order of precedence, from the dataclass defaults, a named preset,
a TOML/YAML/JSON config file, and dotted command-line flags (``--model.n_layer 4``). The CLI
flags are generated from the dataclass fields, so every option is documented once, in the
field's ``help`` metadata. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

from nanogpt.errors import NanoGPTError


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


# Integers from files and flags end up in int64 tensors and C calls: larger ones are refused here.
INT_LIMIT = 2**63 - 1
# Seeds: room for seed + rank and seed + 1 within int64 (torch.manual_seed, numpy's SeedSequence).
MAX_SEED = 2**62


def check_seed(seed: Any, name: str) -> int:
    """``seed`` as an int in 0..MAX_SEED, or one line naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise NanoGPTError(f"{name} must be an integer in 0..2^62, got {seed!r}")
    return seed


THREADS_HELP = ("CPU threads: auto (time the steps at a few counts and keep the fastest, again when the load "
                "changes; OMP_NUM_THREADS in the environment fixes it) or a fixed count; a fixed count reproduces "
                "results bit for bit")


def check_threads(value: str, name: str = "threads") -> str:
    """``value`` if it is 'auto' or a positive integer, else one error line."""
    if value == "auto" or (value.isdigit() and int(value) >= 1):
        return value
    raise NanoGPTError(f"{name} must be 'auto' or a positive number of threads, got '{value}'")


def _check_finite(obj: Any, section: str) -> None:
    """Every float field of a config dataclass is a finite number (NaN and inf are never meant)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise NanoGPTError(f"{section}.{f.name} must be a finite number, got {value}")


# --------------------------------------------------------------------------------------------
# dataclass <-> flags / dicts


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on", "y", "t"):
        return True
    if low in ("0", "false", "no", "off", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (from a file or the command line) to the field type ``tp``."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise NanoGPTError(f"{name} cannot be empty")
    origin = get_origin(tp)
    try:
        if origin is Literal:
            choices = get_args(tp)
            if value not in choices:
                raise NanoGPTError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
            return value
        if tp is bool:
            return value if isinstance(value, bool) else parse_bool(value)
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(value) if not isinstance(value, str) else int(value.replace("_", ""))
            if abs(number) > INT_LIMIT:
                raise NanoGPTError(f"{name} is too large ({value}); integers here must be below 2^63")
            return number
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise NanoGPTError(f"{name} must be a finite number, got {value!r}")
            return number
        if tp is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (ValueError, TypeError, OverflowError, argparse.ArgumentTypeError):
        # TypeError: a list or table from a YAML/TOML/JSON file where a number belongs
        raise NanoGPTError(f"{name} must be {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    """Add one ``--prefix.field`` flag per dataclass field (defaults suppressed)."""
    group = parser.add_argument_group(f"{prefix} options ({cls.__name__})")
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        flag = f"--{prefix}.{f.name}"
        help_ = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        kw: dict[str, Any] = dict(dest=f"{prefix}.{f.name}", default=argparse.SUPPRESS, help=f"{help_} (default: {default})")
        if get_origin(tp) is Literal:
            kw["choices"] = list(get_args(tp))
        elif tp is bool:
            kw["type"] = parse_bool
            kw["metavar"] = "BOOL"
        else:
            kw["metavar"] = getattr(tp, "__name__", "VALUE").upper()
        group.add_argument(flag, **kw)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"n_layer": 4}} -> {"model.n_layer": 4}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------------------------
# The model's shape


@dataclass
class GPTConfig:
    """Shape of a GPT-2-style model (the math is in ``nanogpt.model``). Defaults are GPT-2 small (124M).

    ``arch`` picks the block: ``gpt2`` (learned positions, LayerNorm, GELU MLP, tied head) or
    ``modern`` (rotary positions, RMSNorm, optional QK-norm, SwiGLU MLP, no biases, optional
    untied head: the Llama/Qwen3 block).
    """

    arch: Literal["gpt2", "modern"] = _help("the block: gpt2 (GPT-2's) or modern (rotary, RMSNorm, QK-norm, SwiGLU)",
                                            default="gpt2")
    block_size: int = _help("context length in tokens (positions in wpe)", default=1024)
    vocab_size: int = _help("number of token ids (rows of wte)", default=50257)
    n_layer: int = _help("number of Transformer blocks", default=12)
    n_head: int = _help("attention heads per block; n_embd must divide by it", default=12)
    n_embd: int = _help("channels of the residual stream (C)", default=768)
    dropout: float = _help("dropout probability in [0, 1); 0 for pretraining", default=0.0)
    bias: bool = _help("biases in Linear and LayerNorm layers (GPT-2: true; modern: always false)", default=True)
    activation: Literal["gelu_tanh", "gelu"] = _help(
        "MLP activation: gelu_tanh (GPT-2's tanh approximation) or gelu (exact erf form; much faster on CPUs)",
        default="gelu_tanh",
    )
    mlp_hidden: int = _help("modern only: SwiGLU hidden width (0: 8/3 n_embd rounded up to a multiple of 64)", default=0)
    rope_theta: float = _help("modern only: base of the rotary position angles", default=10000.0)
    qk_norm: bool = _help("modern only: RMSNorm on each head's queries and keys before the rotation (Qwen3)",
                          default=True)
    tie_embeddings: bool = _help("the output head shares wte's matrix (gpt2: always)", default=True)

    # Published GPT-2 sizes; every other field keeps its default (vocab 50257, block 1024, bias).
    PRESETS: ClassVar[dict[str, dict[str, int]]] = {
        "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
        "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
        "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
        "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    }

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise NanoGPTError(f"model.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            lo = self.n_embd // self.n_head * self.n_head
            raise NanoGPTError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}); "
                f"try n_embd={lo or self.n_head} or n_embd={lo + self.n_head}, or change n_head"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise NanoGPTError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if self.activation not in ("gelu_tanh", "gelu"):
            raise NanoGPTError(f"model.activation must be gelu_tanh or gelu, got {self.activation!r}")
        self._check_modern()

    def _check_modern(self) -> None:
        if self.arch not in ("gpt2", "modern"):
            raise NanoGPTError(f"model.arch must be gpt2 or modern, got {self.arch!r}")
        if isinstance(self.mlp_hidden, bool) or not isinstance(self.mlp_hidden, int) or self.mlp_hidden < 0:
            raise NanoGPTError(f"model.mlp_hidden must be a non-negative integer (0 = automatic), got {self.mlp_hidden!r}")
        if isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, (int, float)) or not self.rope_theta > 1:
            raise NanoGPTError(f"model.rope_theta must be a number above 1, got {self.rope_theta!r}")
        if self.arch == "gpt2" and not self.tie_embeddings:
            raise NanoGPTError("model.tie_embeddings false needs model.arch modern (GPT-2's head is tied to wte)")
        if self.arch == "modern" and self.head_dim % 2:
            raise NanoGPTError(f"rotary positions rotate channel pairs: n_embd / n_head ({self.head_dim}) must be even")
        if self.arch == "modern":  # resolved once, so a saved config states the real shape
            self.bias, self.mlp_hidden = False, self.mlp_hidden or -(-8 * self.n_embd // 3 // 64) * 64

    @property
    def mlp_width(self) -> int:
        """Hidden channels of the MLP: 4C for gpt2, mlp_hidden for modern."""
        return 4 * self.n_embd if self.arch == "gpt2" else self.mlp_hidden

    @property
    def head_dim(self) -> int:
        """Channels per attention head (hs)."""
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A published GPT-2 configuration by name, with any field overridden."""
        if name not in cls.PRESETS:
            raise NanoGPTError(f"unknown model name {name!r}; choose one of {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        """From a saved dict; keys this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------------------------
# Training configuration


Schedule = Literal["cosine", "linear", "constant", "wsd"]


@dataclass
class DataConfig:
    """Which token files to train on and how batches are drawn."""

    dataset: str = _help("folder made by 'nanogpt prepare' (train.bin, val.bin, meta.json)", default="data/shakespeare-char")
    prepare: str | None = _help(
        "if the dataset folder is missing, prepare it from this source first (e.g. 'shakespeare')", default=None
    )
    tokenizer: Literal["char", "gpt2", "bpe"] = _help(
        "tokenizer used when preparing automatically (bpe: trained on the corpus)", default="char")
    batch_size: int = _help("sequences per micro-step per process", default=12)

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise NanoGPTError(f"data.batch_size must be positive, got {self.batch_size!r}")


@dataclass
class OptimConfig:
    """The optimizer (AdamW, or Muon for the hidden matrices) and the learning-rate schedule."""

    name: Literal["adamw", "muon"] = _help(
        "adamw: AdamW for every parameter; muon: Muon for the 2-D weights inside the blocks, AdamW for "
        "embeddings, biases and LayerNorm gains",
        default="adamw",
    )
    lr: float = _help("peak learning rate (of AdamW)", default=6e-4)
    min_lr: float = _help("learning rate at the end of the decay", default=6e-5)
    schedule: Schedule = _help(
        "cosine: warmup then cosine to min_lr; linear: warmup then linear to min_lr; "
        "wsd: warmup, constant, then linear to min_lr over the last decay_frac; constant: warmup then lr",
        default="cosine",
    )
    warmup_iters: int = _help("iterations of linear warmup from 0 to lr", default=2000)
    lr_decay_iters: int | None = _help("iteration where the decay reaches min_lr (default: run.max_iters)", default=None)
    decay_frac: float = _help("wsd only: fraction of the run spent decaying", default=0.2)
    weight_decay: float = _help("AdamW weight decay, applied to 2-D weights only", default=0.1)
    beta1: float = _help("AdamW beta1", default=0.9)
    beta2: float = _help("AdamW beta2", default=0.95)
    eps: float = _help("AdamW epsilon", default=1e-8)
    muon_lr: float = _help("muon only: peak learning rate of the Muon matrices (same schedule as lr)", default=0.02)
    muon_momentum: float = _help("muon only: momentum of the Muon matrices (Nesterov)", default=0.95)
    muon_weight_decay: float = _help("muon only: decoupled weight decay of the Muon matrices", default=0.0)
    muon_ns_steps: int = _help("muon only: Newton-Schulz iterations per update (more: closer to orthogonal, slower)",
                               default=5)
    grad_clip: float = _help("clip the global gradient norm to this (0 = off)", default=1.0)
    grad_accum_steps: int = _help(
        "micro-steps per optimizer step, in total over all processes (must divide by the world size)", default=1
    )

    def __post_init__(self) -> None:
        _check_finite(self, "optim")
        if self.lr <= 0 or self.min_lr < 0:
            raise NanoGPTError(f"optim.lr must be > 0 and optim.min_lr >= 0 (got {self.lr}, {self.min_lr})")
        if self.min_lr > self.lr:
            raise NanoGPTError(f"optim.min_lr ({self.min_lr}) must not exceed optim.lr ({self.lr})")
        if self.warmup_iters < 0:
            raise NanoGPTError("optim.warmup_iters must be >= 0")
        if self.grad_accum_steps <= 0:
            raise NanoGPTError("optim.grad_accum_steps must be positive")
        if not 0 < self.decay_frac <= 1:
            raise NanoGPTError("optim.decay_frac must be in (0, 1]")
        if self.muon_lr <= 0 or not 0 <= self.muon_momentum < 1 or self.muon_weight_decay < 0 or self.muon_ns_steps < 1:
            raise NanoGPTError("optim.muon_lr must be > 0, optim.muon_momentum in [0, 1), optim.muon_weight_decay >= 0 "
                               "and optim.muon_ns_steps >= 1")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise NanoGPTError("optim.beta1 and optim.beta2 must be in [0, 1)")
        if self.grad_clip < 0:
            raise NanoGPTError(f"optim.grad_clip must be >= 0 (0 = no clipping), got {self.grad_clip}")
        if self.weight_decay < 0:
            raise NanoGPTError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.eps <= 0:
            raise NanoGPTError(f"optim.eps must be > 0, got {self.eps}")
        if self.lr_decay_iters is not None and self.lr_decay_iters <= 0:
            raise NanoGPTError(f"optim.lr_decay_iters must be positive (or none), got {self.lr_decay_iters}")
        # A warmup longer than the run is allowed: a short smoke run of a long recipe only warms up.


@dataclass
class RunConfig:
    """Length of the run, evaluation, checkpoints, device and logging."""

    out_dir: str = _help("run folder: checkpoints, metrics.jsonl, config.json", default="runs/default")
    max_iters: int = _help("optimizer steps to train for", default=600000)
    max_seconds: float = _help(
        "time budget: stop after this much training time (0 = none; evaluation not counted); the lr schedule then "
        "follows whichever of iterations and time is further along",
        default=0.0,
    )
    eval_interval: int = _help("evaluate every this many steps (and at the end)", default=2000)
    eval_iters: int = _help("batches per split for each evaluation", default=200)
    log_interval: int = _help("print a log line every this many steps", default=10)
    init_from: str = _help(
        "scratch | resume | a GPT-2 name (gpt2, gpt2-medium, ...) | a Hugging Face GPT-2 folder | another run folder",
        default="scratch",
    )
    always_save_checkpoint: bool = _help("save at every evaluation, not only when val loss improves", default=False)
    seed: int = _help("random seed (model init, batches, dropout)", default=1337)
    device: str = _help("auto | cpu | cuda | cuda:N | mps", default="auto")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _help(
        "compute dtype for autocast (auto: bfloat16 where the hardware supports it)", default="auto"
    )
    compile: Literal["auto", "true", "false"] = _help("torch.compile the model (auto: on CUDA)", default="auto")
    threads: str = _help(THREADS_HELP, default="auto")
    tensorboard: bool = _help("write TensorBoard event files to out_dir/tb", default=False)
    wandb: bool = _help("log to Weights & Biases (needs 'pip install wandb')", default=False)
    wandb_project: str = _help("wandb project name", default="nanogpt")
    sample_tokens: int = _help("print a sample of this many tokens at the end (0 = none)", default=300)
    progress: bool = _help("show a progress bar", default=True)
    overwrite: bool = _help(
        "train from scratch into an out_dir that holds an earlier run: its files are moved into out_dir/.replaced-*/ "
        "and deleted once this run has saved its first checkpoint (without it such a folder is refused)",
        default=False,
    )

    def __post_init__(self) -> None:
        _check_finite(self, "run")
        check_seed(self.seed, "run.seed")
        self.threads = check_threads(str(self.threads), "run.threads")  # a config file may give a number
        if self.sample_tokens < 0:
            raise NanoGPTError(f"run.sample_tokens must be >= 0 (0 = none), got {self.sample_tokens}")
        if self.max_iters <= 0:
            raise NanoGPTError("run.max_iters must be positive")
        if self.eval_interval <= 0 or self.eval_iters <= 0 or self.log_interval <= 0:
            raise NanoGPTError("run.eval_interval, run.eval_iters and run.log_interval must be positive")
        if self.max_seconds < 0:
            raise NanoGPTError("run.max_seconds must be >= 0")


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    SECTIONS = ("model", "data", "optim", "run")

    @classmethod
    def section_classes(cls) -> dict[str, type]:
        return {"model": GPTConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}

    def to_dict(self) -> dict[str, Any]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in self.SECTIONS}

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> "TrainConfig":
        """Build from dotted keys, checking every key and value; unknown keys get a suggestion."""
        classes = cls.section_classes()
        known = {f"{s}.{f.name}": (s, f.name) for s, c in classes.items() for f in dataclasses.fields(c)}
        per: dict[str, dict[str, Any]] = {s: {} for s in classes}
        for key, value in flat.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else "; see 'nanogpt train --help'"
                raise NanoGPTError(f"unknown config key '{key}'{hint}")
            section, name = known[key]
            per[section][name] = coerce(value, _field_types(classes[section])[name], key)
        return cls(**{s: classes[s](**kw) for s, kw in per.items()})


# --------------------------------------------------------------------------------------------
# Presets: named runs as dotted overrides of the defaults.

PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT's GPU recipe for character-level Shakespeare (val loss ~1.47 in its write-up), with
    # nanoGPT's model: no biases, exact GELU.
    "shakespeare-char": {
        "model.n_layer": 6, "model.n_head": 6, "model.n_embd": 384, "model.block_size": 256,
        "model.dropout": 0.2, "model.bias": False, "model.activation": "gelu",
        "data.dataset": "data/shakespeare-char", "data.prepare": "shakespeare", "data.tokenizer": "char",
        "data.batch_size": 64,
        "optim.lr": 1e-3, "optim.min_lr": 1e-4, "optim.warmup_iters": 100, "optim.beta2": 0.99,
        "optim.lr_decay_iters": 5000,
        "run.out_dir": "runs/shakespeare-char", "run.max_iters": 5000, "run.eval_interval": 250,
        "run.eval_iters": 200, "run.log_interval": 10,
    },
    # The best validation loss on tiny Shakespeare within 5 minutes on a 2-core CPU; the schedule
    # follows the time budget. Under a minute, more and shorter windows per step learn faster
    # (`--model.block_size 64 --data.batch_size 32`). Why each setting and the measured
    # alternatives: benchmarks/README.md, "shakespeare-char-cpu: measured alternatives".
    "shakespeare-char-cpu": {
        "model.n_layer": 4, "model.n_head": 4, "model.n_embd": 192, "model.block_size": 128,
        "model.dropout": 0.0, "model.activation": "gelu", "model.bias": False,
        "data.dataset": "data/shakespeare-char", "data.prepare": "shakespeare", "data.tokenizer": "char",
        "data.batch_size": 16,
        "optim.name": "muon", "optim.lr": 4e-3, "optim.min_lr": 3e-5, "optim.warmup_iters": 10, "optim.grad_clip": 0.0,
        "optim.beta1": 0.8, "optim.beta2": 0.99,
        "optim.weight_decay": 0.5, "optim.schedule": "linear",
        "optim.muon_lr": 0.065, "optim.muon_momentum": 0.9, "optim.muon_weight_decay": 0.05,
        "run.out_dir": "runs/shakespeare-char-cpu", "run.max_iters": 1_000_000, "run.max_seconds": 300.0,
        "run.eval_interval": 500, "run.eval_iters": 50, "run.log_interval": 50,
    },
    # GPT-2 124M reproduction: 0.5M tokens per step (16 x 1024 x 32 accumulation), 10B tokens.
    "gpt2-124m": {
        "model.n_layer": 12, "model.n_head": 12, "model.n_embd": 768, "model.block_size": 1024,
        "model.vocab_size": 50304, "model.dropout": 0.0,
        "data.dataset": "data/fineweb-edu", "data.tokenizer": "gpt2", "data.batch_size": 16,
        "optim.lr": 6e-4, "optim.min_lr": 6e-5, "optim.warmup_iters": 700, "optim.weight_decay": 0.1,
        "optim.beta2": 0.95, "optim.grad_accum_steps": 32, "optim.lr_decay_iters": 19073,
        "run.out_dir": "runs/gpt2-124m", "run.max_iters": 19073, "run.eval_interval": 1000,
        "run.eval_iters": 100, "run.log_interval": 10,
    },
    # Fine-tune GPT-2 small on BPE Shakespeare with a small constant learning rate.
    "finetune-shakespeare": {
        "model.dropout": 0.1, "model.block_size": 512,
        "data.dataset": "data/shakespeare-gpt2", "data.prepare": "shakespeare", "data.tokenizer": "gpt2",
        "data.batch_size": 4,
        "optim.lr": 3e-5, "optim.min_lr": 3e-5, "optim.schedule": "constant", "optim.warmup_iters": 0,
        "optim.grad_accum_steps": 8, "optim.weight_decay": 0.0,
        "run.init_from": "gpt2", "run.out_dir": "runs/finetune-shakespeare", "run.max_iters": 200,
        "run.eval_interval": 50, "run.eval_iters": 20, "run.log_interval": 5,
    },
}


def preset_names() -> list[str]:
    return list(PRESETS)


# The CPU preset with the modern block (rotary, RMSNorm, QK-norm, SwiGLU): measured against it in
# benchmarks/README.md ("The modern block on the CPU budget").
PRESETS["shakespeare-char-cpu-modern"] = {
    **PRESETS["shakespeare-char-cpu"], "model.arch": "modern", "run.out_dir": "runs/shakespeare-char-cpu-modern"
}


def get_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise NanoGPTError(f"unknown preset '{name}'; {hint}choose one of: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file into dotted keys."""
    p = Path(path)
    if not p.is_file():
        raise NanoGPTError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise NanoGPTError(f"config file {p} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            try:
                import yaml  # optional
            except ModuleNotFoundError:
                raise NanoGPTError("reading YAML configs needs PyYAML: pip install pyyaml (or use TOML)") from None
            data = yaml.safe_load(text) or {}
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise NanoGPTError(f"config file {p} must end in .toml, .yaml, .yml or .json")
    except NanoGPTError:
        raise
    except Exception as e:  # parse errors from any of the readers
        raise NanoGPTError(f"cannot parse config file {p}: {e}") from None
    if not isinstance(data, dict):
        raise NanoGPTError(f"config file {p} must hold a table of settings")
    return flatten(data)  # may hold "preset": expanded by resolve_train_flat


def resolve_train_flat(
    preset: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    default_preset: str | None = None,
) -> tuple[dict[str, Any], set[str]]:
    """Merge defaults < preset < config file < overrides into dotted keys.

    The preset is ``preset``, else the one the config file names, else ``default_preset``.
    Returns the merged keys and the keys the user set (file + overrides, not the preset).
    """
    file_flat = load_config_file(config_file) if config_file else {}
    file_preset = file_flat.pop("preset", None)
    name = preset or file_preset or default_preset
    flat: dict[str, Any] = dict(get_preset(str(name))) if name else {}
    user = {**file_flat, **(overrides or {})}
    own_dataset = flat.get("data.dataset", DataConfig.dataset)
    if "data.dataset" in user and user["data.dataset"] != own_dataset and "data.prepare" not in user:
        # The preset prepares only its own dataset folder: another (perhaps mistyped) folder is
        # never quietly filled with the preset's corpus; a missing one is an error with the command.
        user["data.prepare"] = None
    flat.update(user)
    return flat, set(user)


def resolve_train_config(
    preset: str | None = None, config_file: str | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults < preset < config file < overrides (all dotted keys)."""
    flat, _ = resolve_train_flat(preset, config_file, overrides)
    return TrainConfig.from_flat(flat)
