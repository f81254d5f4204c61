"""The modern block as a Hugging Face Qwen3 (with QK-norm) or Llama (without) folder, and back.

Our modern block computes exactly what those architectures compute with ``num_key_value_heads
= num_attention_heads``, no biases, RMSNorm eps 1e-6 and default rotary positions, so the
conversion is a renaming plus two splits: our fused ``c_attn`` is their ``q_proj | k_proj |
v_proj`` and our fused ``mlp.c_fc`` their ``gate_proj | up_proj``. Torch is imported only to
split and join tensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nanogpt.config import GPTConfig
from nanogpt.errors import NanoGPTError

if TYPE_CHECKING:
    import torch

MODEL_TYPES = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
# ours (inside transformer.h.{i}.) -> theirs (inside model.layers.{i}.), one to one
_SAME = {"ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight",
         "attn.c_proj.weight": "self_attn.o_proj.weight", "attn.q_norm.weight": "self_attn.q_norm.weight",
         "attn.k_norm.weight": "self_attn.k_norm.weight", "mlp.c_proj.weight": "mlp.down_proj.weight"}
_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
_GATE_UP = ("mlp.gate_proj.weight", "mlp.up_proj.weight")
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings")


def hf_config_dict(config: GPTConfig, eot_id: int | None = None) -> dict[str, Any]:
    """config.json of the Qwen3 (qk_norm) or Llama model that computes what ``config`` computes."""
    model_type = "qwen3" if config.qk_norm else "llama"
    return {
        "architectures": [MODEL_TYPES[model_type]], "model_type": model_type, "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd, "intermediate_size": config.mlp_width, "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head, "num_key_value_heads": config.n_head, "head_dim": config.head_dim,
        "max_position_embeddings": config.block_size, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "rope_theta": config.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False, "mlp_bias": False, "attention_dropout": config.dropout,
        "tie_word_embeddings": config.tie_embeddings, "bos_token_id": eot_id, "eos_token_id": eot_id,
        "torch_dtype": "float32",
    }


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> GPTConfig:
    """Our modern GPTConfig from a Qwen3/Llama config.json, refusing what the modern block does not compute."""
    kind = hf.get("model_type")
    missing = [k for k in _REQUIRED if not isinstance(hf.get(k), int) or isinstance(hf.get(k), bool)]
    if missing:
        raise NanoGPTError(f"this {kind} config.json lacks {', '.join(missing)} (whole numbers); it is not a complete model config")
    n_head, hidden = hf.get("num_attention_heads"), hf.get("hidden_size")
    problems = [
        (hf.get("num_key_value_heads", n_head) != n_head, "grouped-query attention (num_key_value_heads != heads)"),
        (isinstance(hidden, int) and isinstance(n_head, int) and hf.get("head_dim", hidden // max(n_head, 1)) * n_head != hidden,
         "a head_dim that does not split hidden_size"),
        (hf.get("attention_bias") or hf.get("mlp_bias"), "biases"),
        (hf.get("hidden_act", "silu") != "silu", f"activation {hf.get('hidden_act')}"),
        ((hf.get("rope_parameters") or hf.get("rope_scaling") or {}).get("rope_type", "default") not in ("default", None),
         "scaled rotary positions"),
        (abs(float(hf.get("rms_norm_eps", 1e-6)) - 1e-6) > 1e-12, f"rms_norm_eps {hf.get('rms_norm_eps')} (ours: 1e-6)"),
        (hf.get("use_sliding_window"), "sliding-window attention"),
    ]
    for bad, what in problems:
        if bad:
            raise NanoGPTError(f"this {kind} model uses {what}, which nanogpt's modern block does not compute")
    theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0))
    args = dict(arch="modern", vocab_size=hf.get("vocab_size"), n_layer=hf.get("num_hidden_layers"), n_head=n_head,
                n_embd=hidden, block_size=hf.get("max_position_embeddings"), mlp_hidden=hf.get("intermediate_size"),
                rope_theta=float(theta), qk_norm=kind == "qwen3", tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                bias=False, dropout=0.0)
    return GPTConfig(**{**args, **overrides})


def modern_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight of a modern ``GPT(config)`` (``lm_head`` only when untied)."""
    C, V, H, hs = config.n_embd, config.vocab_size, config.mlp_width, config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (V, C), "transformer.ln_f.weight": (C,)}
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    block = {"ln_1.weight": (C,), "attn.c_attn.weight": (3 * C, C), "attn.c_proj.weight": (C, C), "ln_2.weight": (C,),
             "mlp.c_fc.weight": (2 * H, C), "mlp.c_proj.weight": (C, H)}
    if config.qk_norm:
        block.update({"attn.q_norm.weight": (hs,), "attn.k_norm.weight": (hs,)})
    for i in range(config.n_layer):
        shapes.update({f"transformer.h.{i}.{k}": v for k, v in block.items()})
    return shapes


def to_hf_state(config: GPTConfig, state: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """Our modern state dict -> Qwen3/Llama names (untied head included, tied one left to HF's tying)."""
    import torch

    out = {"model.embed_tokens.weight": state["transformer.wte.weight"], "model.norm.weight": state["transformer.ln_f.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        for a, b in _SAME.items():
            if ours + a in state:
                out[theirs + b] = state[ours + a]
        for name, part in zip(_QKV, torch.chunk(state[ours + "attn.c_attn.weight"], 3, dim=0)):
            out[theirs + name] = part
        for name, part in zip(_GATE_UP, torch.chunk(state[ours + "mlp.c_fc.weight"], 2, dim=0)):
            out[theirs + name] = part
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def from_hf_state(config: GPTConfig, sd: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """Qwen3/Llama names -> our modern state dict (``lm_head.weight`` only when untied)."""
    import torch

    try:
        out = {"transformer.wte.weight": sd["model.embed_tokens.weight"], "transformer.ln_f.weight": sd["model.norm.weight"]}
        if not config.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
        for i in range(config.n_layer):
            ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
            for a, b in _SAME.items():
                if theirs + b in sd:
                    out[ours + a] = sd[theirs + b]
            out[ours + "attn.c_attn.weight"] = torch.cat([sd[theirs + n] for n in _QKV], dim=0)
            out[ours + "mlp.c_fc.weight"] = torch.cat([sd[theirs + n] for n in _GATE_UP], dim=0)
    except KeyError as e:
        raise NanoGPTError(f"the weights lack {e.args[0]}, which config.json implies") from None
    return out


def write(config: GPTConfig, state: dict[str, "torch.Tensor"], out_dir: str | os.PathLike, eot_id: int | None = None) -> Path:
    """Write a Qwen3/Llama folder (config.json + model.safetensors) for a modern model."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(to_hf_state(config, state), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config_dict(config, eot_id), indent=2) + "\n", encoding="utf-8")
    return out
