"""What a model argument names: a run folder, a Hugging Face folder, a hub name or a preset.

Every command that takes a model (sample, eval, export, inspect, train's ``run.init_from``)
asks :func:`resolve_source` with the kinds it accepts, and gets one answer and one kind of
error message. The answer comes from the file system and the names alone, so this module
imports no torch; :func:`model_config` then reads a source's configuration without weights,
and ``nanogpt.checkpoint.load_model`` its weights.

Rules, in order:

1. a path that exists is a folder, even if it is also spelled like a name (``./gpt2``):
   with ``last.json`` or ``best.json`` a nanogpt *run*; with ``config.json`` and
   ``model.safetensors`` or ``pytorch_model.bin`` a Hugging Face GPT-2 folder (*hf*);
   anything else is an error that says what the folder lacks;
2. otherwise a name: one of :data:`HUB_NAMES` is a *hub* model where hub names are accepted,
   else (like the training presets of ``nanogpt.config.PRESETS``) a *preset*: a configuration
   without weights.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Literal

from nanogpt.config import PRESETS as TRAINING_PRESETS
from nanogpt.config import GPTConfig, get_preset
from nanogpt.errors import NanoGPTError
from nanogpt import hf_modern
from nanogpt.nanogpt_format import checkpoint_file
from nanogpt.hf import HUB_NAMES, config_from_hf, is_hf_dir

__all__ = [
    "KINDS", "LOADABLE", "HUB_NAMES", "GPT2_VOCAB", "SHAKESPEARE_CHARS", "Kind", "ModelSource",
    "resolve_source", "model_config", "preset_config", "dataset_vocab", "describe_kinds",
    "is_run_dir", "is_hf_dir", "checkpoint_path", "preset_names", "CHECKPOINT_NAME",
]

Kind = Literal["run", "hf", "nanogpt", "hub", "preset"]
KINDS: tuple[Kind, ...] = ("run", "hf", "nanogpt", "hub", "preset")
# What can be loaded with weights (sample, eval, load_model, train's init_from).
LOADABLE: frozenset[str] = frozenset({"run", "hf", "nanogpt", "hub"})

GPT2_VOCAB = 50257  # tokens of the GPT-2 BPE tokenizer
SHAKESPEARE_CHARS = 76  # distinct characters of the built-in Shakespeare corpus (tiny Shakespeare has 65)

# The name of a checkpoint folder in a run's checkpoints/ (a re-saved step gets a "-K" suffix).
CHECKPOINT_NAME = re.compile(r"step-\d{7,}(?:-\d+)?")

_KIND_NAMES = {
    "run": "a run folder",
    "hf": "a Hugging Face GPT-2 folder",
    "nanogpt": "a nanoGPT checkpoint (ckpt.pt or its out folder)",
    "hub": "a GPT-2 hub name",
    "preset": "a preset",
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model argument. ``name`` is the text as given; ``path`` the folder (run, hf) or None."""

    kind: Kind
    name: str
    path: Path | None

    @property
    def description(self) -> str:
        """'run folder runs/x', 'Hugging Face GPT-2 folder hf/', 'GPT-2 hub name gpt2', 'preset gpt2'."""
        return f"{_KIND_NAMES[self.kind].split(' ', 1)[1]} {self.name}"


def preset_names() -> list[str]:
    """Every preset name: the GPT-2 sizes, then the training presets."""
    return [*GPTConfig.PRESETS, *(n for n in TRAINING_PRESETS if n not in GPTConfig.PRESETS)]


def describe_kinds(allowed: Collection[str]) -> str:
    """'a run folder, a Hugging Face GPT-2 folder or a GPT-2 hub name (gpt2, ...)' for ``allowed``."""
    parts = []
    for kind in KINDS:
        if kind in allowed:
            names = list(HUB_NAMES) if kind == "hub" else preset_names() if kind == "preset" else []
            parts.append(_KIND_NAMES[kind] + (f" ({', '.join(names)})" if names else ""))
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def is_run_dir(path: str | Path) -> bool:
    """True for a nanogpt run folder with a checkpoint pointer (last.json or best.json)."""
    p = Path(path)
    return (p / "last.json").is_file() or (p / "best.json").is_file()


def checkpoint_path(run_dir: str | Path, which: str = "last") -> Path:
    """The checkpoint folder that ``which`` (last | best) points to; clear errors otherwise."""
    run = Path(run_dir)
    if not run.exists():
        raise NanoGPTError(f"run folder {run} does not exist")
    pointer = run / f"{which}.json"
    if not pointer.is_file():
        other = "best" if which == "last" else "last"
        if (run / f"{other}.json").is_file():
            pointer = run / f"{other}.json"
        else:
            raise NanoGPTError(
                f"{run} holds no checkpoint (no last.json); train into it first, or pass the folder of a finished run"
            )
    path = _pointed_folder(run, pointer)
    for f in ("model.safetensors", "trainer.pt", "info.json"):
        if not (path / f).is_file():
            raise NanoGPTError(f"checkpoint {path} is incomplete ({f} is missing); it cannot be loaded")
    return path


def _pointed_folder(run: Path, pointer: Path) -> Path:
    """The folder a pointer names, confined to ``run/checkpoints/step-*`` (no ``..``, absolute paths or links out)."""
    try:
        rel = json.loads(pointer.read_text(encoding="utf-8"))["path"]
    except (ValueError, KeyError, TypeError):
        raise NanoGPTError(f"{pointer} is damaged; delete it to fall back to the other pointer") from None
    except OSError as e:
        raise NanoGPTError(f"{pointer} cannot be read ({e.strerror})") from None
    parts = rel.split("/") if isinstance(rel, str) else []
    ckdir = run / "checkpoints"
    inside = len(parts) == 2 and parts[0] == "checkpoints" and CHECKPOINT_NAME.fullmatch(parts[1]) is not None
    if inside:
        path = ckdir / parts[1]
        try:
            inside = not ckdir.is_symlink() and path.resolve().parent == ckdir.resolve()
        except OSError:
            inside = False
    if not inside:
        raise NanoGPTError(f"{pointer} names {rel!r}, which is not a checkpoint folder of this run; a pointer may "
                           "only name checkpoints/step-NNNNNNN inside its run folder: delete it or restore the run")
    return path


# --------------------------------------------------------------------------------------------
# Resolving


def resolve_source(
    text: str, allowed: Collection[str] = KINDS, *, need_weights: bool = True, label: str = ""
) -> ModelSource:
    """What ``text`` names, among the ``allowed`` kinds (see the module docstring for the rules).

    With ``need_weights=False`` (a configuration is enough, as for ``nanogpt inspect``) a folder
    with only a ``config.json`` counts too: a run's (it has a ``model`` section) or an HF one.
    ``label`` (e.g. 'run.init_from') starts every error message. Raises :class:`NanoGPTError`
    with one line saying what was given and what is accepted here.
    """
    unknown = set(allowed) - set(KINDS)
    if unknown or not allowed:
        raise ValueError(f"allowed kinds must be a non-empty subset of {KINDS}, got {sorted(allowed)}")
    start = f"{label}: " if label else ""
    accepted = describe_kinds(allowed)
    text = str(text)
    if not text:
        raise NanoGPTError(f"{start}no model given; pass {accepted}")
    path = Path(text)
    if {"run", "hf", "nanogpt"} & set(allowed) and path.exists():
        kind = _folder_kind(path, need_weights, start)
    else:
        kind = _name_kind(text, allowed, start, accepted)
    if kind not in allowed:
        raise NanoGPTError(f"{start}'{text}' is {_KIND_NAMES[kind]}, which is not accepted here; pass {accepted}")
    return ModelSource(kind, text, path if kind in ("run", "hf", "nanogpt") else None)


def _config_kind(config_json: Path) -> str | None:
    """'run' or 'hf' from what a config.json holds, None if it is neither (or unreadable)."""
    try:
        data = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("model"), dict):
        return "run"  # a resolved TrainConfig, written when training starts
    return "hf" if "n_embd" in data or "model_type" in data else None


def _folder_kind(path: Path, need_weights: bool, start: str) -> str:
    if checkpoint_file(path) is not None and not is_run_dir(path) and not is_hf_dir(path):
        return "nanogpt"  # a ckpt.pt, or nanoGPT's out folder holding one
    if not path.is_dir():
        raise NanoGPTError(f"{start}{path} is a file, not a folder; pass the run or Hugging Face folder that holds the model")
    if is_run_dir(path):
        return "run"
    if is_hf_dir(path):
        return "hf"
    config = path / "config.json"
    found = _config_kind(config) if config.is_file() else None
    if found and not need_weights:
        return found
    if found == "run":
        raise NanoGPTError(f"{start}{path} is a run folder without a checkpoint yet (no last.json or best.json); "
                           "wait for its first checkpoint, or pass another run")
    if need_weights:
        hf_lacks = "its config.json has no model.safetensors or pytorch_model.bin beside it" if config.is_file() else "no config.json"
        raise NanoGPTError(f"{start}{path} holds no model: no last.json or best.json (a nanogpt run folder) "
                           f"and {hf_lacks} (a Hugging Face GPT-2 folder)")
    hf_lacks = "its config.json has neither a 'model' section nor n_embd or model_type" if config.is_file() else "no config.json"
    raise NanoGPTError(f"{start}{path} holds no model configuration: no last.json or best.json "
                       f"(a nanogpt run folder) and {hf_lacks} (a run's or a Hugging Face GPT-2 configuration)")


def _name_kind(text: str, allowed: Collection[str], start: str, accepted: str) -> str:
    matches = [k for k, names in (("hub", HUB_NAMES), ("preset", preset_names())) if text in names]
    for kind in matches:
        if kind in allowed:
            return kind
    if matches:
        return matches[0]  # a known name of a kind not accepted here: the caller says so
    names = [*(HUB_NAMES if "hub" in allowed else ()), *(preset_names() if "preset" in allowed else ())]
    looks_like_path = "/" in text or "\\" in text or text.startswith((".", "~"))
    close = [] if looks_like_path else difflib.get_close_matches(text, list(dict.fromkeys(names)), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    if "run" not in allowed and "hf" not in allowed:
        what = "preset" if "preset" in allowed else "GPT-2 hub name"
        raise NanoGPTError(f"{start}unknown {what} '{text}'; {hint}choose one of: {', '.join(dict.fromkeys(names))}")
    missing = "no such folder or name" if names and not looks_like_path else "no such folder"
    raise NanoGPTError(f"{start}'{text}' not found: {missing}; {hint}pass {accepted}")


# --------------------------------------------------------------------------------------------
# Configurations without weights


def model_config(source: ModelSource, vocab_size: int | None = None) -> tuple[GPTConfig, str]:
    """The configuration of ``source`` without reading weights, and a description of where it is from.

    Run folder: its config.json (or its checkpoint's info.json); HF folder: config.json; hub
    name: the published GPT-2 size; preset: :func:`preset_config`. ``vocab_size`` is for
    presets only (a trained model's vocabulary is fixed).
    """
    if vocab_size is not None and source.kind != "preset":
        raise NanoGPTError(f"a vocabulary size applies to presets only; {source.description} has its own")
    if source.kind == "run":
        return _run_config(_folder(source)), source.description
    if source.kind == "hf":
        data = _read_json(_folder(source) / "config.json")
        if not isinstance(data, dict):
            raise NanoGPTError(f"{_folder(source) / 'config.json'} does not hold a JSON object")
        if data.get("model_type") in hf_modern.MODEL_TYPES:  # a Llama/Qwen3 folder of the modern block
            return hf_modern.config_from_hf(data), source.description
        return config_from_hf(data), source.description
    if source.kind == "hub":
        return GPTConfig.from_name(source.name), f"{source.description} (configuration only, no download)"
    if source.kind == "nanogpt":  # its model_args live inside the checkpoint, beside the weights
        from nanogpt.nanogpt_format import read_checkpoint

        return read_checkpoint(_folder(source)).config, source.description
    return preset_config(source.name, vocab_size)


def _folder(source: ModelSource) -> Path:
    return source.path if source.path is not None else Path(source.name)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise NanoGPTError(f"{path} is not valid JSON: {e}") from None
    except OSError as e:
        raise NanoGPTError(f"{path} cannot be read ({e.strerror})") from None


def _run_config(folder: Path) -> GPTConfig:
    """A run's model configuration: config.json, written at start, or the checkpoint's info.json."""
    where = folder / "config.json"
    data = _read_json(where) if where.is_file() else None
    if not (isinstance(data, dict) and isinstance(data.get("model"), dict)):
        where = checkpoint_path(folder) / "info.json"
        info = _read_json(where)
        data = info.get("config") if isinstance(info, dict) else None
    if not (isinstance(data, dict) and isinstance(data.get("model"), dict)):
        raise NanoGPTError(f"{folder} holds no model configuration ({where} has no 'model' section)")
    try:
        return GPTConfig.from_dict(data["model"])
    except (TypeError, ValueError, NanoGPTError) as e:
        raise NanoGPTError(f"{where}: the model configuration is invalid: {e}") from None


def dataset_vocab(preset: dict[str, Any]) -> tuple[int, str]:
    """The vocabulary a training preset will get from its dataset, and where that number is from.

    Training sets ``model.vocab_size`` from the prepared dataset when the preset does not fix
    it; this reads the same dataset's meta.json if it is there, else the tokenizer's size.
    """
    from nanogpt.config import DataConfig

    dataset = Path(preset.get("data.dataset", DataConfig.dataset))
    meta_path = dataset / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if isinstance(meta.get("vocab_size"), int):
                return meta["vocab_size"], f"vocab from {meta_path}"
            from nanogpt.tokenizer import tokenizer_from_dict

            return tokenizer_from_dict(meta["tokenizer"]).vocab_size, f"vocab from {meta_path}"
        except (ValueError, KeyError, TypeError, AttributeError, NanoGPTError):
            pass  # unreadable: fall back to what the tokenizer implies
    tokenizer = preset.get("data.tokenizer", DataConfig.tokenizer)
    if tokenizer == "gpt2":
        return GPT2_VOCAB, "vocab of the GPT-2 tokenizer"
    if preset.get("data.prepare") == "shakespeare":
        return SHAKESPEARE_CHARS, f"vocab: Shakespeare's {SHAKESPEARE_CHARS} characters ({dataset} not prepared yet)"
    raise NanoGPTError(
        f"the vocabulary of this preset comes from its dataset {dataset}, which is not prepared; "
        "run 'nanogpt prepare' first or pass --vocab-size"
    )


def preset_config(name: str, vocab_size: int | None = None) -> tuple[GPTConfig, str]:
    """A GPT-2 size (gpt2, gpt2-medium, ...) or the model part of a training preset, and its description.

    A training preset that does not fix ``model.vocab_size`` gets its dataset's (see
    :func:`dataset_vocab`) unless ``vocab_size`` is given.
    """
    extra = {} if vocab_size is None else {"vocab_size": vocab_size}
    if name in GPTConfig.PRESETS:
        return GPTConfig.from_name(name, **extra), f"preset {name}"
    preset = get_preset(name)  # unknown names: an error with a did-you-mean
    model = {k.split(".", 1)[1]: v for k, v in preset.items() if k.startswith("model.")}
    where = f"training preset {name}"
    model.update(extra)
    if "vocab_size" not in model:
        model["vocab_size"], note = dataset_vocab(preset)
        where += f"; {note}"
    try:
        return GPTConfig(**model), where
    except (TypeError, ValueError) as e:
        raise NanoGPTError(str(e)) from None
