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
