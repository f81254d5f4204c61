"""nanoGPT's checkpoint format, in and out: ``out-*/ckpt.pt`` and its dataset's ``meta.pkl``.

nanoGPT's ``train.py`` saves one ``torch.save`` dict: ``model_args`` (n_layer, n_head, n_embd,
block_size, bias, vocab_size, dropout), ``model`` (the state dict; our parameter names, with
``_orig_mod.`` in front when the model was compiled and the tied ``lm_head.weight`` beside
``transformer.wte.weight``), ``optimizer``, ``iter_num``, ``best_val_loss`` and ``config`` (the
run's settings, ``dataset`` among them). A character model's vocabulary is in
``data/<dataset>/meta.pkl`` (``{'vocab_size', 'itos', 'stoi'}``). nanoGPT's MLP uses the exact
GELU. Like ``nanogpt.hf`` this module knows the format only and never builds a model.

Reading runs no pickled code: ``torch.load(weights_only=True)`` for the checkpoint and a
restricted unpickler that accepts only plain containers, strings and numbers for ``meta.pkl``.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nanogpt.config import GPTConfig
from nanogpt.errors import NanoGPTError

if TYPE_CHECKING:
    import torch

CKPT_NAME = "ckpt.pt"
META_NAME = "meta.pkl"
_PREFIX = "_orig_mod."  # torch.compile's wrapper module, saved as part of every key
_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


@dataclass
class NanoGPTCheckpoint:
    """What nanogpt takes from a nanoGPT checkpoint."""

    path: Path
    config: GPTConfig
    state: dict[str, "torch.Tensor"]  # our names, no lm_head (tied)
    iter_num: int | None
    best_val_loss: float | None
    dataset: str | None
    chars: list[str] | None  # a character model's vocabulary (itos), when its meta.pkl was found


def checkpoint_file(path: str | os.PathLike) -> Path | None:
    """The ``ckpt.pt`` that ``path`` names (the file, or a folder holding one), else None."""
    p = Path(path)
    if p.is_file() and p.name.endswith(".pt"):
        return p
    if p.is_dir() and (p / CKPT_NAME).is_file():
        return p / CKPT_NAME
    return None


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings and numbers; refuses every class or function."""

    def find_class(self, module: str, name: str) -> Any:
        raise NanoGPTError(
            f"refusing to load {module}.{name} from a pickle: a nanoGPT meta.pkl holds only plain data, "
            "and anything else could run code"
        )


def read_meta_pkl(path: str | os.PathLike) -> list[str]:
    """The character vocabulary (itos, by id) of a nanoGPT ``meta.pkl``, read without running code."""
    try:
        meta = _PlainUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except NanoGPTError as e:
        raise NanoGPTError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - truncated or not a pickle: one line
        raise NanoGPTError(f"{path} is not a readable nanoGPT meta.pkl ({type(e).__name__}: {e})") from None
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if not isinstance(itos, dict) or sorted(itos) != list(range(len(itos))):
        raise NanoGPTError(f"{path} has no 'itos' table of ids 0..n-1; it is not a character vocabulary")
    chars = [itos[i] for i in range(len(itos))]
    if not all(isinstance(c, str) and len(c) == 1 for c in chars) or len(set(chars)) != len(chars):
        raise NanoGPTError(f"{path}: 'itos' must map each id to a distinct single character")
    return chars


def _find_meta(ckpt: Path, dataset: str | None) -> Path | None:
    """meta.pkl beside the checkpoint, or nanoGPT's data/<dataset>/meta.pkl seen from its repository."""
    candidates = [ckpt.parent / META_NAME]
    if dataset and "/" not in dataset and "\\" not in dataset and dataset not in (".", ".."):
        candidates += [root / "data" / dataset / META_NAME for root in (ckpt.parent.parent, Path.cwd())]
    return next((c for c in candidates if c.is_file()), None)


def _state_in_our_names(model: Any, where: Path) -> dict[str, "torch.Tensor"]:
    import torch

    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise NanoGPTError(f"{where}: 'model' is not a state dict of tensors")
    state = {k[len(_PREFIX):] if k.startswith(_PREFIX) else k: v for k, v in model.items()}
    state = {k: v for k, v in state.items() if not k.endswith(".attn.bias")}  # causal-mask buffers (no flash)
    head = state.pop("lm_head.weight", None)
    wte = state.get("transformer.wte.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise NanoGPTError(f"{where}: lm_head.weight is not tied to transformer.wte.weight; nanogpt ties them")
    return state


def _config(args: Any, where: Path) -> GPTConfig:
    if not isinstance(args, dict) or any(k not in args for k in _MODEL_ARGS):
        raise NanoGPTError(f"{where}: 'model_args' must hold {', '.join(_MODEL_ARGS)}")
    return GPTConfig(**{k: args[k] for k in _MODEL_ARGS}, activation="gelu")  # nanoGPT: nn.GELU(), exact


def read_checkpoint(path: str | os.PathLike) -> NanoGPTCheckpoint:
    """Read a nanoGPT ``ckpt.pt`` (or the out folder holding it) and its character vocabulary, if any."""
    import torch

    ckpt = checkpoint_file(path)
    if ckpt is None:
        raise NanoGPTError(f"{path} is not a nanoGPT checkpoint (a ckpt.pt file, or a folder holding one)")
    try:
        data = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refused (code in the pickle) or unreadable: one line
        raise NanoGPTError(f"{ckpt} cannot be read as plain weights ({type(e).__name__}): "
                           "it is not a nanoGPT checkpoint, or it holds objects that could run code") from None
    if not isinstance(data, dict) or "model" not in data:
        raise NanoGPTError(f"{ckpt} has no 'model' state dict; it is not a nanoGPT checkpoint")
    run = data.get("config") if isinstance(data.get("config"), dict) else {}
    dataset = run.get("dataset") if isinstance(run.get("dataset"), str) else None
    meta = _find_meta(ckpt, dataset)
    best = data.get("best_val_loss")
    return NanoGPTCheckpoint(
        path=ckpt, config=_config(data.get("model_args"), ckpt), state=_state_in_our_names(data["model"], ckpt),
        iter_num=int(data["iter_num"]) if isinstance(data.get("iter_num"), int) else None,
        best_val_loss=float(best) if best is not None else None, dataset=dataset,
        chars=read_meta_pkl(meta) if meta is not None else None,
    )


def write_checkpoint(config: GPTConfig, state: dict[str, "torch.Tensor"], out_dir: str | os.PathLike,
                     chars: list[str] | None = None, dataset: str = "nanogpt_export") -> Path:
    """Write ``ckpt.pt`` (+ ``meta.pkl`` for a character vocabulary) that nanoGPT's ``sample.py`` loads.

    nanoGPT reads ``meta.pkl`` from ``data/<dataset>/``; it is written beside the checkpoint, to
    be copied there. Returns the checkpoint's path.
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    model.setdefault("lm_head.weight", model["transformer.wte.weight"])
    args = {k: getattr(config, k) for k in _MODEL_ARGS}
    torch.save({"model_args": args, "model": model, "iter_num": 0, "best_val_loss": float("nan"),
                "config": {"dataset": dataset, **args}}, out / CKPT_NAME)
    if chars is not None:
        meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
        (out / META_NAME).write_bytes(pickle.dumps(meta))
    return out / CKPT_NAME
