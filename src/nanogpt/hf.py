"""Hugging Face GPT-2 interop, without transformers at run time.

Our parameter names are GPT-2's, so converting is: strip/add the ``transformer.`` prefix, drop
GPT-2's causal-mask buffers (``attn.bias``, ``attn.masked_bias``), and transpose the four
projection weights per block, which HF stores as ``Conv1D`` (in, out) rather than ``Linear``
(out, in). This module knows the file format only: it reads and writes state dicts and
configurations and never builds a model (``GPT.from_pretrained`` / ``save_pretrained`` do).
Importing it does not import torch (``nanogpt.resolve`` reads HF folders through it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nanogpt.errors import NanoGPTError
from nanogpt.config import GPTConfig

if TYPE_CHECKING:  # torch is imported where tensors are made, so that this module stays light
    import torch

# Weights stored transposed in HF's Conv1D layout.
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# HF activation_function -> our GPTConfig.activation
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
# Hub repositories of OpenAI's released checkpoints.
HUB_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}


def is_hf_dir(path: str | os.PathLike) -> bool:
    """True for a folder with an HF ``config.json`` and weights (model.safetensors or pytorch_model.bin)."""
    p = Path(path)
    return (p / "config.json").is_file() and ((p / "model.safetensors").is_file() or (p / "pytorch_model.bin").is_file())


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> GPTConfig:
    """GPTConfig from an HF ``config.json`` dict, refusing variants our model does not compute."""
    try:
        return _config_from_hf(hf, **overrides)
    except (TypeError, ValueError, AttributeError) as e:  # a list or string where a number belongs
        raise NanoGPTError(f"config.json holds a value of the wrong type ({e}); it is not a GPT-2 configuration") from None


def _config_from_hf(hf: dict[str, Any], **overrides: Any) -> GPTConfig:
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise NanoGPTError(f"config.json describes a '{model_type}' model; only GPT-2 ('gpt2') folders can be loaded")
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise NanoGPTError(f"n_inner={hf['n_inner']} is not supported (nanogpt's MLP is 4 x n_embd = {4 * n_embd})")
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise NanoGPTError(f"activation_function={act} is not supported (GPT-2 uses gelu_new; nanogpt also reads gelu)")
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise NanoGPTError("this config changes the attention scaling (scale_attn_*), which nanogpt does not implement")
    if abs(float(hf.get("layer_norm_epsilon", 1e-5)) - 1e-5) > 1e-12:
        raise NanoGPTError(f"layer_norm_epsilon={hf['layer_norm_epsilon']} is not supported (GPT-2 uses 1e-5)")
    args = dict(
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        vocab_size=hf.get("vocab_size", 50257),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        dropout=0.0,
        bias=True,
        activation=_ACTIVATIONS[act],
    )
    args.update(overrides)
    return GPTConfig(**args)


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    file = folder / "model.safetensors"
    if file.is_file():
        from safetensors.torch import load_file

        if file.stat().st_size == 0:
            raise NanoGPTError(f"{file} is empty (0 bytes); download or export the model again")
        try:
            return load_file(str(file))
        except Exception as e:  # noqa: BLE001 - safetensors reports a damaged file in several exception types
            raise NanoGPTError(f"{file} is damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                               "download or export the model again") from None
    import torch

    # Older HF folders: a pickle. weights_only=True refuses anything but tensors and plain
    # containers, so a malicious file cannot run code.
    try:
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        raise NanoGPTError(f"cannot read {folder / 'pytorch_model.bin'} as plain weights: {e}") from None


def hf_to_nanogpt_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename/transpose an HF GPT-2 state dict into our parameter layout (without the tied lm_head)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith(".attn.bias") or key.endswith(".attn.masked_bias"):
            continue  # causal-mask buffers, not weights
        if key == "lm_head.weight":
            continue  # tied to wte
        name = key if key.startswith("transformer.") else f"transformer.{key}"
        if name.endswith(_CONV1D):
            value = value.t()
        out[name] = value.contiguous()
    return out


def gpt2_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight of ``GPT(config)`` in our layout, without the tied lm_head."""
    C, V = config.n_embd, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (config.block_size, C)}
    per_block = {"ln_1": (C,), "attn.c_attn": (3 * C, C), "attn.c_proj": (C, C), "ln_2": (C,),
                 "mlp.c_fc": (4 * C, C), "mlp.c_proj": (C, 4 * C)}
    for i in range(config.n_layer):
        for name, shape in per_block.items():
            shapes[f"transformer.h.{i}.{name}.weight"] = shape
            if config.bias:
                shapes[f"transformer.h.{i}.{name}.bias"] = (shape[0],)
    shapes["transformer.ln_f.weight"] = (C,)
    if config.bias:
        shapes["transformer.ln_f.bias"] = (C,)
    return shapes


def _check_state(folder: Path, sd: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise NanoGPTError(
            f"{folder} does not match its config.json: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    for k, v in sd.items():
        if tuple(v.shape) != expected[k]:
            raise NanoGPTError(f"{folder}: weight {k} has shape {tuple(v.shape)}, config.json implies {expected[k]}")


def read_pretrained(name_or_dir: str, **overrides: Any) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """Configuration and weights (our layout) of a local HF folder or, online, a GPT-2 hub name.

    GPT-2 folders, and Qwen3/Llama folders of the modern block (``nanogpt.hf_modern``).
    ``overrides`` may change ``dropout`` (fine-tuning) or shrink ``block_size`` (a GPT-2
    position table is cut to its first rows). The tied head is not in the state dict.
    """
    from nanogpt import hf_modern

    folder = Path(name_or_dir)
    if not folder.is_dir():
        folder = download_hf_gpt2(name_or_dir)
    if not is_hf_dir(folder):
        raise NanoGPTError(
            f"{folder} is not a Hugging Face model folder (needs config.json and model.safetensors or pytorch_model.bin)"
        )
    try:
        hf_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise NanoGPTError(f"{folder / 'config.json'} is not valid JSON: {e}") from None
    block_size = overrides.pop("block_size", None)
    dropout = {k: v for k, v in overrides.items() if k == "dropout"}
    if isinstance(hf_config, dict) and hf_config.get("model_type") in hf_modern.MODEL_TYPES:
        config = hf_modern.config_from_hf(hf_config, **dropout)
        sd = hf_modern.from_hf_state(config, _read_state_dict(folder))
        expected = hf_modern.modern_shapes(config)
    else:
        config = config_from_hf(hf_config, **dropout)
        sd = hf_to_nanogpt_state(_read_state_dict(folder))
        expected = gpt2_shapes(config)
    _check_state(folder, sd, expected)
    if block_size is not None and block_size != config.block_size:
        if not 0 < block_size <= config.block_size:
            raise NanoGPTError(f"block_size must be in 1..{config.block_size} (the model's context), got {block_size}")
        config = GPTConfig(**{**config.to_dict(), "block_size": block_size})
        if "transformer.wpe.weight" in sd:
            sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"][:block_size].clone()
    return config, sd


read_gpt2 = read_pretrained  # the name before Llama/Qwen3 folders were read too


def download_hf_gpt2(name: str) -> Path:
    """Download config.json + model.safetensors of a GPT-2 hub model (needs internet)."""
    repo = HUB_NAMES.get(name, name)
    if name not in HUB_NAMES and "/" not in name:
        raise NanoGPTError(
            f"'{name}' is neither a folder nor a GPT-2 name; use a Hugging Face GPT-2 folder or one of {', '.join(HUB_NAMES)}"
        )
    try:
        from huggingface_hub import snapshot_download
    except ModuleNotFoundError:
        raise NanoGPTError("downloading from the hub needs huggingface_hub: pip install 'nanogpt[hub]'") from None
    try:
        path = snapshot_download(repo_id=repo, allow_patterns=["config.json", "model.safetensors"])
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, ...
        raise NanoGPTError(f"cannot download '{repo}' from the Hugging Face hub ({type(e).__name__}); "
                           "check the name and your connection, or pass a local folder") from None
    return Path(path)


def nanogpt_to_hf_state(config: GPTConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our weights (a model's state dict) in HF GPT-2 layout: Conv1D transposes, zero biases where bias=False."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "lm_head.weight":
            continue  # tied: HF re-ties it to wte on load
        value = value.detach().to("cpu", torch.float32)
        if key.endswith(_CONV1D):
            value = value.t()
        out[key] = value.contiguous()
    if not config.bias:
        # GPT-2 always has biases; zeros compute the same function.
        for key, shape in gpt2_shapes(GPTConfig(**{**config.to_dict(), "bias": True})).items():
            if key.endswith(".bias"):
                out[key] = torch.zeros(shape)
    return out


def hf_config_dict(config: GPTConfig, eot_id: int | None = 50256) -> dict[str, Any]:
    if eot_id is not None and not 0 <= eot_id < config.vocab_size:
        eot_id = None  # e.g. a character vocabulary: no end-of-text token
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new" if config.activation == "gelu_tanh" else "gelu",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
    }


def write_gpt2(config: GPTConfig, state: dict[str, torch.Tensor], out_dir: str | os.PathLike,
               eot_id: int | None = 50256) -> Path:
    """Write an HF GPT-2 folder (config.json + model.safetensors) from a model's config and state dict."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(nanogpt_to_hf_state(config, state), str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = hf_config_dict(config, eot_id)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return out


def write_pretrained(config: GPTConfig, state: dict[str, torch.Tensor], out_dir: str | os.PathLike,
                     eot_id: int | None = 50256) -> Path:
    """An HF folder for any of our models: GPT-2's layout, or Qwen3/Llama for ``arch="modern"``."""
    if config.arch == "modern":
        from nanogpt import hf_modern

        eot = eot_id if eot_id is not None and 0 <= eot_id < config.vocab_size else None
        return hf_modern.write(config, state, out_dir, eot)
    return write_gpt2(config, state, out_dir, eot_id)
