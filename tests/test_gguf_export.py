"""The GGUF export read back with the gguf package's own reader: names, shapes, types, values, metadata."""

import numpy as np
import pytest
import torch

from nanogpt.config import GPTConfig
from nanogpt.errors import NanoGPTError
from nanogpt.model import GPT
from nanogpt.tokenizer import CharTokenizer, get_gpt2_tokenizer

gguf = pytest.importorskip("gguf")
from nanogpt.gguf_export import gelu_note, gguf_tensor_names, write_gguf  # noqa: E402


def tiny(vocab, bias=True, activation="gelu_tanh"):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=vocab, bias=bias, activation=activation))


def read(path):
    reader = gguf.GGUFReader(str(path))
    fields = {name: f.contents() for name, f in reader.fields.items()}
    return reader, fields, {t.name: t for t in reader.tensors}


def test_gpt2_tokenizer_model_in_f32_reads_back_exactly(tmp_path):
    model = tiny(50257)
    path = write_gguf(model.config, model.state_dict(), get_gpt2_tokenizer(), tmp_path / "m.gguf", kind="f32")
    _, fields, tensors = read(path)
    assert fields["general.architecture"] == "gpt2"
    assert (fields["gpt2.block_count"], fields["gpt2.context_length"], fields["gpt2.embedding_length"],
            fields["gpt2.feed_forward_length"], fields["gpt2.attention.head_count"]) == (2, 16, 32, 128, 2)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == 50257 and tokens[50256] == "<|endoftext|>" and tokens[262] == "\u0120the"
    assert fields["tokenizer.ggml.merges"][0] == "\u0120 t" and fields["tokenizer.ggml.eos_token_id"] == 50256
    assert fields["tokenizer.ggml.bos_token_id"] == 50256 and fields["tokenizer.ggml.add_bos_token"] is False
    expected = set(gguf_tensor_names(model.config).values()) | {"output.weight"}
    assert set(tensors) == expected
    sd = model.state_dict()
    for ours, theirs in gguf_tensor_names(model.config).items():
        got = np.asarray(tensors[theirs].data).reshape(sd[ours].shape)  # stored as nn.Linear (out, in)
        assert np.array_equal(got, sd[ours].numpy()), theirs
    assert np.array_equal(np.asarray(tensors["output.weight"].data).reshape(50257, 32), sd["lm_head.weight"].numpy())


@pytest.mark.parametrize("kind, qtype, atol", [("f16", "F16", 1e-3), ("bf16", "BF16", 1e-2), ("q8_0", "Q8_0", 2e-2)])
def test_compressed_matrices_and_f32_norms(tmp_path, kind, qtype, atol):
    model = tiny(65, bias=False)
    tok = CharTokenizer([chr(c) for c in range(32, 97)])
    _, fields, tensors = read(write_gguf(model.config, model.state_dict(), tok, tmp_path / "m.gguf", kind=kind))
    qkv = tensors["blk.0.attn_qkv.weight"]
    assert qkv.tensor_type.name == qtype
    values = gguf.quants.dequantize(qkv.data, qkv.tensor_type).reshape(96, 32)
    np.testing.assert_allclose(values, model.state_dict()["transformer.h.0.attn.c_attn.weight"].numpy(), atol=atol)
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert not np.asarray(tensors["blk.1.ffn_up.bias"].data).any()  # no biases: zeros, the same function
    assert fields["tokenizer.ggml.tokens"][:3] == ["\u0120", "!", '"']  # ' ' is byte-level U+0120


def test_refusals_are_one_line(tmp_path):
    model = tiny(3)
    with pytest.raises(NanoGPTError, match="non-ASCII characters \\(é\\)"):
        write_gguf(model.config, model.state_dict(), CharTokenizer(["a", "b", "é"]), tmp_path / "m.gguf")
    with pytest.raises(NanoGPTError, match="the tokenizer has 2 tokens but the model 3"):
        write_gguf(model.config, model.state_dict(), CharTokenizer(["a", "b"]), tmp_path / "m.gguf")
    with pytest.raises(NanoGPTError, match="GGUF type must be one of"):
        write_gguf(model.config, model.state_dict(), CharTokenizer(["a", "b", "c"]), tmp_path / "m.gguf", kind="q4")


def test_gelu_note_measures_the_tanh_difference_and_restores_the_model():
    model = tiny(65, activation="gelu").eval()
    assert gelu_note(tiny(65), list(range(10))) is None  # already tanh: nothing to say
    modern = GPT(GPTConfig(arch="modern", n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=65, activation="gelu"))
    assert gelu_note(modern, list(range(10))) is None  # SwiGLU: no GELU for llama.cpp to change
    before = model(torch.arange(10).unsqueeze(0))[0]
    note = gelu_note(model, list(range(10)))
    assert note.startswith("note: this model was trained with the exact GELU") and "top token agrees" in note
    assert torch.equal(model(torch.arange(10).unsqueeze(0))[0], before)


def test_trained_bpe_tokenizer_is_embedded_with_its_merges(tmp_path):
    from nanogpt.bpe import train_bpe

    bpe = train_bpe(["the cat sat on the mat, the end.\n" * 50], vocab_size=300)
    model = tiny(bpe.vocab_size)
    _, fields, _ = read(write_gguf(model.config, model.state_dict(), bpe, tmp_path / "m.gguf", kind="f32"))
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == bpe.vocab_size and tokens[bpe.eot_id] == "<|endoftext|>"
    merges = fields["tokenizer.ggml.merges"]
    assert merges and all(len(m.split(" ")) == 2 for m in merges)
    assert all("".join(m.split(" ")) in tokens for m in merges)  # each merge makes a token of the vocabulary


def tiny_modern(qk_norm, tie, n_embd=32, n_head=2):
    """A modern model with every weight random (norm gains too), so a swapped or misplaced tensor shows."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(arch="modern", n_layer=2, n_head=n_head, n_embd=n_embd, block_size=16, vocab_size=65,
                          qk_norm=qk_norm, tie_embeddings=tie, mlp_hidden=48, rope_theta=500.0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


ASCII = CharTokenizer([chr(c) for c in range(32, 97)])  # 65 tokens


def from_adjacent_pairs(rows, n_head):
    """Test-side inverse of llama's q/k row order: GGUF row h*hs + 2i + j holds our row h*hs + i + j*hs/2."""
    hs = rows.shape[0] // n_head
    ours = np.empty_like(rows)
    for h in range(n_head):
        for i in range(hs // 2):
            for j in range(2):
                ours[h * hs + i + j * hs // 2] = rows[h * hs + 2 * i + j]
    return ours


@pytest.mark.parametrize("qk_norm, tie", [(True, True), (True, False), (False, True), (False, False)])
def test_modern_block_in_f32_reads_back_as_qwen3_or_llama(tmp_path, qk_norm, tie):
    model = tiny_modern(qk_norm, tie)
    arch = "qwen3" if qk_norm else "llama"
    _, fields, tensors = read(write_gguf(model.config, model.state_dict(), ASCII, tmp_path / "m.gguf", kind="f32"))
    assert fields["general.architecture"] == arch and fields["general.file_type"] == 0
    own = {k.split(".", 1)[1]: v for k, v in fields.items() if k.startswith(arch + ".")}
    assert own == {"block_count": 2, "context_length": 16, "embedding_length": 32, "feed_forward_length": 48,
                   "attention.head_count": 2, "attention.head_count_kv": 2, "rope.freq_base": 500.0,
                   "attention.layer_norm_rms_epsilon": pytest.approx(1e-6, rel=1e-7), "rope.dimension_count": 16,
                   "attention.key_length": 16, "attention.value_length": 16, "vocab_size": 65}
    tokenizer_fields = {k: v for k, v in fields.items() if k.startswith("tokenizer.")}
    assert tokenizer_fields.pop("tokenizer.ggml.tokens") == [chr(0x120)] + [chr(c) for c in range(33, 97)]
    assert tokenizer_fields == {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.add_bos_token": False,
                                "tokenizer.ggml.token_type": [gguf.TokenType.NORMAL] * 65}  # no merges, no end-of-text
    assert set(fields) == {f"{arch}.{k}" for k in own} | set(tokenizer_fields) | {"tokenizer.ggml.tokens"} | {
        "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture", "general.name", "general.file_type"}

    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    per_block += ["attn_q_norm", "attn_k_norm"] if qk_norm else []
    expected = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if not tie else set())
    expected |= {f"blk.{i}.{n}.weight" for i in range(2) for n in per_block}
    assert set(tensors) == expected  # a tied head has no output tensor: llama.cpp falls back to token_embd
    model_arch = {"qwen3": gguf.MODEL_ARCH.QWEN3, "llama": gguf.MODEL_ARCH.LLAMA}[arch]
    known = {gguf.TENSOR_NAMES[t].format(bid=i) + ".weight" for t in gguf.MODEL_TENSORS[model_arch] for i in range(2)}
    assert expected <= known

    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    want = {"token_embd.weight": sd["transformer.wte.weight"], "output_norm.weight": sd["transformer.ln_f.weight"]}
    if not tie:
        want["output.weight"] = sd["lm_head.weight"]
    for i in range(2):
        p = f"transformer.h.{i}."
        q, k, v = np.split(sd[p + "attn.c_attn.weight"], 3)
        gate, up = np.split(sd[p + "mlp.c_fc.weight"], 2)
        want.update({f"blk.{i}.attn_norm.weight": sd[p + "ln_1.weight"], f"blk.{i}.attn_q.weight": q,
                     f"blk.{i}.attn_k.weight": k, f"blk.{i}.attn_v.weight": v,
                     f"blk.{i}.attn_output.weight": sd[p + "attn.c_proj.weight"], f"blk.{i}.ffn_norm.weight": sd[p + "ln_2.weight"],
                     f"blk.{i}.ffn_gate.weight": gate, f"blk.{i}.ffn_up.weight": up, f"blk.{i}.ffn_down.weight": sd[p + "mlp.c_proj.weight"]})
        if qk_norm:
            want.update({f"blk.{i}.attn_q_norm.weight": sd[p + "attn.q_norm.weight"], f"blk.{i}.attn_k_norm.weight": sd[p + "attn.k_norm.weight"]})
    assert set(want) == expected
    for name, ours in want.items():
        t = tensors[name]
        assert t.tensor_type.name == "F32", name
        assert tuple(int(d) for d in reversed(t.shape)) == ours.shape, name  # GGUF lists dimensions innermost first
        got = np.asarray(t.data).reshape(ours.shape)
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            assert not np.array_equal(got, ours), name  # llama's rows are reordered...
            got = from_adjacent_pairs(got, 2)  # ...and give ours back exactly
        assert np.array_equal(got, ours), name


def test_modern_q8_0_falls_back_to_f16_for_rows_its_blocks_do_not_split(tmp_path):
    model = tiny_modern(True, False)  # ffn_down's rows have mlp_hidden = 48 values: not a multiple of 32
    _, fields, tensors = read(write_gguf(model.config, model.state_dict(), ASCII, tmp_path / "m.gguf", kind="q8_0"))
    assert fields["general.file_type"] == 7
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "Q8_0" and tensors["output.weight"].tensor_type.name == "Q8_0"
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "F16"
    assert tensors["blk.0.attn_q_norm.weight"].tensor_type.name == tensors["output_norm.weight"].tensor_type.name == "F32"
    down = np.asarray(tensors["blk.1.ffn_down.weight"].data).astype(np.float32).reshape(32, 48)
    np.testing.assert_allclose(down, model.state_dict()["transformer.h.1.mlp.c_proj.weight"].numpy(), atol=2e-3)


def transformers_from_gguf(path):
    """transformers' model from a GGUF file, via the pieces ``from_pretrained(..., gguf_file=)`` uses (that
    entry point also wants accelerate): the config it reads from our metadata, the tensors it de-permutes."""
    transformers = pytest.importorskip("transformers")
    try:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError:
        pytest.skip(f"transformers {transformers.__version__} cannot read GGUF files")
    config = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    weights = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=hf)["tensors"]
    result = hf.load_state_dict(weights, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= ({"lm_head.weight"} if config.tie_word_embeddings else set())
    return hf


# transformers reads no head_dim from a qwen3 GGUF (its Qwen3Config default is 128), so the qwen3 cases use hs = 128
@pytest.mark.parametrize("qk_norm, tie, n_embd", [(True, True, 256), (True, False, 256), (False, True, 32), (False, False, 64)])
def test_transformers_reading_our_gguf_computes_our_logits(tmp_path, monkeypatch, qk_norm, tie, n_embd):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_modern(qk_norm, tie, n_embd=n_embd)
    path = write_gguf(model.config, model.state_dict(), ASCII, tmp_path / "m.gguf", kind="f32")
    hf = transformers_from_gguf(path)
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if qk_norm else "LlamaForCausalLM")
    assert hf.config.tie_word_embeddings == tie and hf.config.head_dim == n_embd // 2
    idx = torch.tensor([[(7 * i) % 65 for i in range(16)]])
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)[0]).abs().max().item() < 1e-4


def test_export_writes_a_modern_model_as_gguf(tmp_path):
    from nanogpt.export import write_export

    model = tiny_modern(False, True)
    assert write_export(tmp_path, "gguf", model, ASCII, "f16", "m.gguf") == ["m.gguf"]
    _, fields, tensors = read(tmp_path / "m.gguf")
    assert fields["general.architecture"] == "llama" and fields["general.file_type"] == 1
    assert tensors["blk.0.attn_k.weight"].tensor_type.name == "F16" and "output.weight" not in tensors
