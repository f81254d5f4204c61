"""Hugging Face GPT-2 interop, without transformers at run time.

Our parameter names are GPT-2's, so converting is: strip/add the ``transformer.`` prefix, drop
GPT-2's causal-mask buffers (``attn.bias``, ``attn.masked_bias``), and transpose the four
projection weights per block, which HF stores as ``Conv1D`` (in, out) rather than ``Linear``
(out, in). Also the ``export`` subcommand: a run's checkpoint -> an HF GPT-2 folder.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from nanogpt.errors import NanoGPTError
from nanogpt.model import GPT, GPTConfig

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
    p = Path(path)
    return (p / "config.json").is_file() and ((p / "model.safetensors").is_file() or (p / "pytorch_model.bin").is_file())


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> GPTConfig:
    """GPTConfig from an HF ``config.json`` dict, refusing variants our model does not compute."""
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
    try:
        return GPTConfig(**args)
    except ValueError as e:
        raise NanoGPTError(str(e)) from None


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    # Older HF folders: a pickle. weights_only=True refuses anything but tensors and plain
    # containers, so a malicious file cannot run code.
    try:
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        raise NanoGPTError(f"cannot read {folder / 'pytorch_model.bin'} as plain weights: {e}") from None


def hf_to_nanogpt_state(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Rename/transpose an HF GPT-2 state dict into our parameter layout."""
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
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def load_hf_gpt2(name_or_dir: str, **overrides: Any) -> GPT:
    """GPT from a local HF GPT-2 folder, or (online) from a hub name such as 'gpt2-medium'.

    ``overrides`` may change ``dropout`` (fine-tuning) or shrink ``block_size``.
    """
    folder = Path(name_or_dir)
    if not folder.is_dir():
        folder = download_hf_gpt2(name_or_dir)
    if not is_hf_dir(folder):
        raise NanoGPTError(
            f"{folder} is not a Hugging Face GPT-2 folder (needs config.json and model.safetensors or pytorch_model.bin)"
        )
    try:
        hf_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise NanoGPTError(f"{folder / 'config.json'} is not valid JSON: {e}") from None
    block_size = overrides.pop("block_size", None)
    config = config_from_hf(hf_config, **{k: v for k, v in overrides.items() if k == "dropout"})
    model = GPT(config)
    sd = hf_to_nanogpt_state(_read_state_dict(folder), config.n_layer)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise NanoGPTError(
            f"{folder} does not match its config.json: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    for k, v in sd.items():
        if v.shape != expected[k].shape:
            raise NanoGPTError(f"{folder}: weight {k} has shape {tuple(v.shape)}, config.json implies {tuple(expected[k].shape)}")
    with torch.no_grad():
        model.load_state_dict(sd)
    if block_size is not None and block_size != config.block_size:
        model.crop_block_size(block_size)
    return model


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


def nanogpt_to_hf_state(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights in HF GPT-2 layout (Conv1D transposes; biases of zeros where bias=False)."""
    config = model.config
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == "lm_head.weight":
            continue  # tied: HF re-ties it to wte on load
        if key.endswith(_CONV1D):
            value = value.t()
        out[key] = value.contiguous()
    if not config.bias:
        # GPT-2 always has biases; zeros compute the same function.
        C = config.n_embd
        for i in range(config.n_layer):
            p = f"transformer.h.{i}."
            out[p + "ln_1.bias"] = torch.zeros(C)
            out[p + "ln_2.bias"] = torch.zeros(C)
            out[p + "attn.c_attn.bias"] = torch.zeros(3 * C)
            out[p + "attn.c_proj.bias"] = torch.zeros(C)
            out[p + "mlp.c_fc.bias"] = torch.zeros(4 * C)
            out[p + "mlp.c_proj.bias"] = torch.zeros(C)
        out["transformer.ln_f.bias"] = torch.zeros(C)
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


def save_hf_gpt2(model: GPT, out_dir: str | os.PathLike, eot_id: int | None = 50256) -> Path:
    """Write ``model`` as an HF GPT-2 folder (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(nanogpt_to_hf_state(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = hf_config_dict(model.config, eot_id)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------
# nanogpt export RUN_DIR --to DIR


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run folder (runs/NAME)")
    parser.add_argument("--to", required=True, metavar="DIR", help="output folder for the Hugging Face GPT-2 files")
    parser.add_argument("--which", choices=["best", "last"], default="best", help="which checkpoint (default: best)")


def cli_main(args: argparse.Namespace) -> int:
    from nanogpt.checkpoint import load_model

    loaded = load_model(args.run_dir, which=args.which)
    tok = loaded.tokenizer
    eot = getattr(tok, "eot_id", None) if tok is not None else None
    out = save_hf_gpt2(loaded.model, args.to, eot_id=eot)
    if tok is not None and getattr(tok, "name", "") == "gpt2":
        note = "the tokenizer is GPT-2's: load it with AutoTokenizer.from_pretrained('gpt2')"
    elif tok is not None:
        note = f"the tokenizer is '{tok.name}' (written beside the weights as nanogpt_tokenizer.json)"
        (out / "nanogpt_tokenizer.json").write_text(json.dumps(tok.to_dict()) + "\n", encoding="utf-8")
    else:
        note = "no tokenizer information in the checkpoint"
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'} ({loaded.model.num_params():,} parameters); {note}")
    return 0
