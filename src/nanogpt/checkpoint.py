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
at any moment leaves the previous pointer and the checkpoint it names intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanogpt.config import GPTConfig
from nanogpt.errors import NanoGPTError
from nanogpt.model import GPT
from nanogpt.resolve import LOADABLE, ModelSource, resolve_source
# Re-exported: these lived here before nanogpt.resolve, which is torch-free, took them over.
from nanogpt.resolve import checkpoint_path, is_run_dir  # noqa: F401

FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights of ``model`` (already unwrapped) for safetensors: the tied lm_head is left out."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}


def save_checkpoint(
    run_dir: str | Path,
    model: torch.nn.Module,
    trainer_state: dict[str, Any],
    info: dict[str, Any],
    is_best: bool = False,
) -> Path:
    """Write a checkpoint for ``info['iter']`` and point last.json (and best.json) at it.

    ``model`` must be the unwrapped module. ``trainer_state`` holds tensors and plain data
    (optimizer/scaler state dicts, RNG states). ``info`` must be JSON-serialisable.
    """
    from safetensors.torch import save_file

    run = Path(run_dir)
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"step-{int(info['iter']):07d}"
    final = ckdir / name
    tmp = Path(tempfile.mkdtemp(dir=ckdir, prefix=f".tmp-{name}-"))
    try:
        save_file(model_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save(trainer_state, tmp / "trainer.pt")
        (tmp / "info.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **info}, indent=1), encoding="utf-8")
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():
            # A checkpoint of the same step (e.g. saved at an eval and again at the end): swap.
            trash = ckdir / f".old-{name}-{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(ckdir)
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
    _prune(run)
    return final


def _pointed(run: Path) -> set[str]:
    keep = set()
    for p in ("last.json", "best.json"):
        try:
            keep.add(Path(json.loads((run / p).read_text(encoding="utf-8"))["path"]).name)
        except (OSError, ValueError, KeyError):
            pass
    return keep


def _prune(run: Path) -> None:
    """Delete checkpoints that neither last.json nor best.json names (and stale temp folders)."""
    keep = _pointed(run)
    for d in (run / "checkpoints").iterdir():
        if d.name not in keep and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


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
    if info.get("format_version") != FORMAT_VERSION:
        raise NanoGPTError(f"checkpoint {path} has format {info.get('format_version')}, this nanogpt reads {FORMAT_VERSION}")
    return Checkpoint(path, info, weights, state)


def load_weights(model: GPT, weights: dict[str, torch.Tensor]) -> None:
    """Load safetensors weights (no lm_head: it is tied) into ``model``, strictly."""
    sd = dict(weights)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
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
    source: str | Path | ModelSource, device: str | torch.device = "cpu", which: str = "best"
) -> LoadedModel:
    """A model from a run folder, a local HF GPT-2 folder, or (online) a GPT-2 hub name.

    ``source`` is resolved by :func:`nanogpt.resolve.resolve_source` unless it is already a
    :class:`~nanogpt.resolve.ModelSource` (a caller that accepts fewer kinds resolves first).
    The model is returned in eval mode and float32 on ``device``.
    """
    src = source if isinstance(source, ModelSource) else resolve_source(str(source), LOADABLE)
    if src.kind == "run":
        model, tok, meta = _load_run(src, which)
    elif src.kind in ("hf", "hub"):
        model = GPT.from_pretrained(src.name)
        tok = _gpt2_tokenizer_if_fits(model.config.vocab_size)
        meta = {"source": src.name, "kind": "hf"}
    else:
        raise NanoGPTError(f"{src.description} is a configuration without weights; pass a run folder, "
                           "a Hugging Face GPT-2 folder or a GPT-2 hub name")
    model.to(device).eval()
    return LoadedModel(model, tok, meta)


def _load_run(src: ModelSource, which: str) -> tuple[GPT, Any, dict[str, Any]]:
    ck = load_checkpoint(src.name, which, trainer=False)
    model = GPT(ck.model_config)
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
