"""The one place checkpoints are saved and loaded.

A run folder looks like::

    runs/NAME/
      config.json              resolved TrainConfig (also written at start)
      metrics.jsonl            one JSON object per log/eval line
      checkpoints/step-000500/
        model.safetensors      weights of the unwrapped module (no '_orig_mod.'/'module.' prefixes)
        trainer.pt             optimizer, grad scaler, RNG states (torch.load(weights_only=True))
        info.json              iteration, losses, loader state, config, tokenizer
      last.json, best.json     pointers: {"path": "checkpoints/step-000500", ...}

Writes are atomic: a checkpoint is written into a temporary folder, fsynced, renamed into
place, and only then does the pointer file move to it (itself via temp file + rename). A crash
at any moment leaves the previous pointer and the checkpoint it names intact. Only finite
evaluations are saved, pointers may name only ``checkpoints/step-*`` folders of their own run
(see ``nanogpt.resolve.checkpoint_path``), and a training holds the folder's lock
(``nanogpt.fsutil.RunLock``) while it writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanogpt.config import GPTConfig
from nanogpt.errors import NanoGPTError
from nanogpt.fsutil import atomic_write_text, fsync_dir, fsync_file, refuse_symlink
from nanogpt.model import GPT
from nanogpt.resolve import CHECKPOINT_NAME, LOADABLE, ModelSource, resolve_source
# Re-exported: these lived here before nanogpt.resolve, which is torch-free, took them over.
from nanogpt.resolve import checkpoint_path, is_run_dir  # noqa: F401

FORMAT_VERSION = 1


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights of ``model`` (already unwrapped) for safetensors: a tied lm_head is left out (it is wte)."""
    tied = getattr(getattr(model, "config", None), "tie_embeddings", True)
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight" or not tied}


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def save_checkpoint(
    run_dir: str | Path,
    model: torch.nn.Module,
    trainer_state: dict[str, Any],
    info: dict[str, Any],
    is_best: bool = False,
) -> Path:
    """Write a checkpoint for ``info['iter']`` and point last.json (and best.json) at it.

    ``model`` must be the unwrapped module. ``trainer_state`` holds tensors and plain data
    (optimizer/scaler state dicts, RNG states). ``info`` must be JSON-serialisable and its
    losses finite: a NaN/inf evaluation is never saved. The caller holds the run's lock.

    A step that already has a checkpoint (a finished run resumed and saved again) gets a new
    folder (``step-NNNNNNN-1``): the pointers move to it and only then is the old one removed,
    so no pointer ever names a missing folder.
    """
    from safetensors.torch import save_file

    bad = [k for k in ("val_loss", "train_loss", "best_val") if not _finite(info.get(k))]
    if bad:
        raise NanoGPTError(f"refusing to save a checkpoint with a non-finite {bad[0]} ({info[bad[0]]})")
    run = Path(run_dir)
    ckdir = run / "checkpoints"
    refuse_symlink(ckdir)
    ckdir.mkdir(parents=True, exist_ok=True)
    name = _free_name(ckdir, int(info["iter"]))
    final = ckdir / name
    tmp = Path(tempfile.mkdtemp(dir=ckdir, prefix=f".tmp-{name}-"))
    try:
        save_file(model_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save(trainer_state, tmp / "trainer.pt")
        (tmp / "info.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **info}, indent=1), encoding="utf-8")
        for f in tmp.iterdir():
            fsync_file(f)
        fsync_dir(tmp)
        os.replace(tmp, final)
        fsync_dir(ckdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = {"path": f"checkpoints/{name}", "iter": int(info["iter"])}
    for key in ("val_loss", "train_loss"):
        if key in info:
            pointer[key] = info[key]
    if is_best:
        atomic_write_text(run / "best.json", json.dumps(pointer) + "\n")
    atomic_write_text(run / "last.json", json.dumps(pointer) + "\n")
    clean_run_dir(run)
    return final


def _free_name(ckdir: Path, iteration: int) -> str:
    """``step-NNNNNNN``, or ``step-NNNNNNN-K`` with the smallest free K when that step is taken."""
    base = f"step-{iteration:07d}"
    name, k = base, 0
    while (ckdir / name).exists():
        k += 1
        name = f"{base}-{k}"
    return name


def _pointed(run: Path) -> set[str] | None:
    """Names of the checkpoint folders the pointers name; None if a pointer exists but cannot be read."""
    keep = set()
    for p in ("last.json", "best.json"):
        if not (run / p).exists():
            continue
        try:
            rel = json.loads((run / p).read_text(encoding="utf-8"))["path"]
            keep.add(Path(rel).name)
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return keep


def clean_run_dir(run: str | Path) -> None:
    """Remove what no pointer needs: unpointed checkpoints, and temporaries left by dead processes.

    Called after every save and at the start of a run, under the run's lock. An unpointed
    checkpoint is first renamed to ``.old-*`` and then deleted, so a kill half-way leaves a
    folder that is plainly garbage (and is removed next time). If a pointer cannot be read,
    no checkpoint is removed.
    """
    run = Path(run)
    for f in run.glob(".*.tmp"):  # atomic_write_text's temporaries (pointers, config.json)
        if f.is_file() and not f.is_symlink():
            f.unlink(missing_ok=True)
    ckdir = run / "checkpoints"
    if not ckdir.is_dir() or ckdir.is_symlink():
        return
    keep = _pointed(run)
    for d in sorted(ckdir.iterdir()):
        if d.is_symlink() or not d.is_dir():
            continue
        if d.name.startswith((".tmp-step-", ".old-step-")):
            shutil.rmtree(d, ignore_errors=True)
        elif keep is not None and CHECKPOINT_NAME.fullmatch(d.name) and d.name not in keep:
            trash = ckdir / f".old-{d.name}-{os.getpid()}"
            os.replace(d, trash)
            fsync_dir(ckdir)
            shutil.rmtree(trash, ignore_errors=True)


# The files of a run, in the order they appear; what `train` from scratch refuses to replace.
RUN_FILES = ("config.json", "metrics.jsonl", "last.json", "best.json", "checkpoints")
# What moves aside with them under --run.overwrite.
RUN_EXTRAS = ("loss.png", "tb")


def run_files(run: str | Path) -> list[str]:
    """The names of :data:`RUN_FILES` that ``run`` holds (an empty checkpoints/ does not count)."""
    run = Path(run)
    found = []
    for name in RUN_FILES:
        p = run / name
        if name == "checkpoints":
            if p.is_dir() and any(CHECKPOINT_NAME.fullmatch(d.name) for d in p.iterdir()):
                found.append(name)
        elif p.exists() or p.is_symlink():
            found.append(name)
    return found


def move_run_aside(run: str | Path) -> Path | None:
    """Move an earlier run's files into ``run/.replaced-<time>/`` and return that folder (None if nothing moved)."""
    run = Path(run)
    names = [n for n in (*RUN_FILES, *RUN_EXTRAS) if (run / n).exists() or (run / n).is_symlink()]
    if not names:
        return None
    aside = Path(tempfile.mkdtemp(dir=run, prefix=f".replaced-{time.strftime('%Y%m%d-%H%M%S')}-"))
    for n in names:
        os.replace(run / n, aside / n)
    fsync_dir(run)
    return aside


def check_resume_data(info: dict[str, Any], tokenizer: Any, dataset: str, run_dir: Path) -> None:
    """Refuse to resume on a dataset whose tokenizer differs from the one the checkpoint was trained with."""
    saved = info.get("tokenizer")
    if not isinstance(saved, dict) or saved == tokenizer.to_dict():
        return
    now = tokenizer.to_dict()
    if saved.get("type") != now.get("type"):
        what = f"the {now.get('type')} tokenizer, the checkpoint's is {saved.get('type')}"
    else:
        size = len(saved["chars"]) if isinstance(saved.get("chars"), str) else "?"
        what = f"a {now.get('type')} tokenizer of {tokenizer.vocab_size} tokens, the checkpoint's has {size} (or other) tokens"
    was = info.get("dataset")
    hint = f"resume with the checkpoint's dataset (--data.dataset {was})" if was and was != str(dataset) else \
        "prepare the dataset again with the checkpoint's tokenizer"
    raise NanoGPTError(f"cannot resume {run_dir} on {dataset}: its data uses {what}; {hint}, or fine-tune from the run "
                       f"into a new folder (--init-from {run_dir} --out-dir NEW_FOLDER)")


def refuse_earlier_run(run_dir: Path, overwrite: bool) -> None:
    """Refuse to train from scratch into a folder that holds another run's files, unless ``overwrite``."""
    found = run_files(run_dir) if run_dir.is_dir() else []
    if found and not overwrite:
        raise NanoGPTError(f"{run_dir} holds an earlier run ({', '.join(found)}); to continue it use --init-from resume, "
                           f"to replace it pass --overwrite (--run.overwrite true), or pick another --out-dir")


@dataclass
class Checkpoint:
    path: Path
    info: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    trainer_state: dict[str, Any] | None

    @property
    def model_config(self) -> GPTConfig:
        return GPTConfig.from_dict(self.info["config"]["model"])


def load_checkpoint(run_dir: str | Path, which: str = "last", trainer: bool = True) -> Checkpoint:
    """Read a checkpoint. Weights come from safetensors; trainer state via weights_only loading."""
    from safetensors.torch import load_file

    path = checkpoint_path(run_dir, which)
    try:
        info = json.loads((path / "info.json").read_text(encoding="utf-8"))
        weights = load_file(str(path / "model.safetensors"))
        state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True) if trainer else None
    except NanoGPTError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file: one clear line
        raise NanoGPTError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it may be corrupt") from None
    _check_info(info, path)
    return Checkpoint(path, info, weights, state)


def _check_info(info: Any, path: Path) -> None:
    """One line if info.json is not what :func:`save_checkpoint` writes (no config, no iteration, ...)."""
    where = path / "info.json"
    if not isinstance(info, dict):
        raise NanoGPTError(f"{where} does not hold a JSON object; the checkpoint is damaged")
    if info.get("format_version") != FORMAT_VERSION:
        raise NanoGPTError(f"checkpoint {path} has format {info.get('format_version')}, this nanogpt reads {FORMAT_VERSION}")
    config = info.get("config")
    if not (isinstance(config, dict) and isinstance(config.get("model"), dict)):
        raise NanoGPTError(f"{where} has no model configuration (its 'config' section is missing or damaged); "
                           "the checkpoint cannot be used")
    if not isinstance(info.get("iter"), int) or isinstance(info.get("iter"), bool):
        raise NanoGPTError(f"{where} has no iteration number; the checkpoint is damaged")
    try:
        GPTConfig.from_dict(config["model"])
    except NanoGPTError as e:
        raise NanoGPTError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise NanoGPTError(f"{where}: the model configuration is invalid ({e})") from None


def load_weights(model: GPT, weights: dict[str, torch.Tensor]) -> None:
    """Load safetensors weights into ``model``, strictly; a tied lm_head (left out when saved) is wte."""
    sd = dict(weights)
    if "transformer.wte.weight" not in sd:
        raise NanoGPTError("checkpoint does not fit the model configuration: it has no transformer.wte.weight")
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise NanoGPTError(f"checkpoint does not fit the model configuration: {' '.join(first[:2])[:300]}") from None


@dataclass
class LoadedModel:
    """A model ready for inference, with its tokenizer (None if unknown) and metadata."""

    model: GPT
    tokenizer: Any
    meta: dict[str, Any]


def load_model(
    source: str | Path | ModelSource, device: str | torch.device = "cpu", which: str = "best",
    dropout: float | None = None,
) -> LoadedModel:
    """A model from a run folder, a local HF folder, a nanoGPT checkpoint, or (online) a GPT-2 hub name.

    ``source`` is resolved by :func:`nanogpt.resolve.resolve_source` unless it is already a
    :class:`~nanogpt.resolve.ModelSource` (a caller that accepts fewer kinds resolves first).
    ``dropout`` replaces the saved one (fine-tuning). The model is returned in eval mode and
    float32 on ``device``.
    """
    from nanogpt.budget import check_model_fits
    from nanogpt.resolve import model_config

    src = source if isinstance(source, ModelSource) else resolve_source(str(source), LOADABLE)
    if src.kind in ("run", "hf"):  # its size from its configuration, before any weight is read
        check_model_fits(model_config(src)[0], device)
    if src.kind == "run":
        model, tok, meta = _load_run(src, which, dropout)
    elif src.kind == "nanogpt":
        model, tok, meta = _load_nanogpt(src, dropout)
    elif src.kind in ("hf", "hub"):
        model = GPT.from_pretrained(src.name, **({} if dropout is None else {"dropout": dropout}))
        tok = _hf_folder_tokenizer(src.path) or _gpt2_tokenizer_if_fits(model.config.vocab_size)
        meta = {"source": src.name, "kind": "hf"}
    else:
        raise NanoGPTError(f"{src.description} is a configuration without weights; pass a run folder, "
                           "a Hugging Face GPT-2 folder or a GPT-2 hub name")
    model.to(device).eval()
    return LoadedModel(model, tok, meta)


def _hf_folder_tokenizer(folder: Path | None) -> Any:
    """The tokenizer an export of ours wrote beside its weights (nanogpt_tokenizer.json), if any."""
    path = folder / "nanogpt_tokenizer.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    from nanogpt.tokenizer import TokenizerError, tokenizer_from_dict

    try:
        return tokenizer_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TokenizerError) as e:
        raise NanoGPTError(f"{path} is not a nanogpt tokenizer description ({e}); delete it or export again") from None


def _with_dropout(config: GPTConfig, dropout: float | None) -> GPTConfig:
    return config if dropout is None else dataclasses.replace(config, dropout=dropout)


def _load_nanogpt(src: ModelSource, dropout: float | None = None) -> tuple[GPT, Any, dict[str, Any]]:
    """A nanoGPT checkpoint: its model, and its character vocabulary (meta.pkl) or GPT-2's tokenizer."""
    from nanogpt.budget import check_model_fits
    from nanogpt.nanogpt_format import read_checkpoint
    from nanogpt.tokenizer import CharTokenizer

    ck = read_checkpoint(src.path or src.name)
    check_model_fits(ck.config)
    model = GPT(_with_dropout(ck.config, dropout))
    load_weights(model, ck.state)
    tok = CharTokenizer(ck.chars) if ck.chars else _gpt2_tokenizer_if_fits(ck.config.vocab_size)
    meta = {"source": src.name, "kind": "nanogpt", "checkpoint": str(ck.path), "iter": ck.iter_num,
            "val_loss": ck.best_val_loss, "dataset": ck.dataset}
    return model, tok, meta


def _load_run(src: ModelSource, which: str, dropout: float | None = None) -> tuple[GPT, Any, dict[str, Any]]:
    ck = load_checkpoint(src.name, which, trainer=False)
    model = GPT(_with_dropout(ck.model_config, dropout))
    load_weights(model, ck.model_state)
    tok = None
    if ck.info.get("tokenizer"):
        from nanogpt.tokenizer import tokenizer_from_dict

        tok = tokenizer_from_dict(ck.info["tokenizer"])
    meta = {"source": src.name, "kind": "run", "checkpoint": str(ck.path),
            **{k: ck.info.get(k) for k in ("iter", "val_loss", "train_loss")}}
    meta["dataset"] = ck.info.get("dataset")
    return model, tok, meta


def _gpt2_tokenizer_if_fits(vocab_size: int) -> Any:
    if vocab_size < 50257:
        return None
    from nanogpt.tokenizer import get_gpt2_tokenizer

    return get_gpt2_tokenizer()
