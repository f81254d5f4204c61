"""Equivalence with the reference GPT-2 (transformers) through our real converter."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nanogpt.errors import NanoGPTError  # noqa: E402
from nanogpt.config import GPTConfig  # noqa: E402
from nanogpt.model import GPT  # noqa: E402

CONFIGS = [
    # GPT-2 small widths, 2 layers
    dict(n_embd=768, n_head=12, n_layer=2, vocab_size=50257, n_positions=64),
    # odd shapes: 5 heads x 16, vocab 123, block 37
    dict(n_embd=80, n_head=5, n_layer=3, vocab_size=123, n_positions=37),
    dict(n_embd=48, n_head=1, n_layer=1, vocab_size=7, n_positions=5),
    dict(n_embd=96, n_head=8, n_layer=4, vocab_size=1001, n_positions=128),
]


def _hf_model(kw, seed):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**kw, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    # HF zero-initialises biases and sets LayerNorm to identity: randomise them so that a
    # swapped or untransposed tensor cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("i", range(len(CONFIGS)))
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_from_pretrained_matches_transformers(tmp_path, i, fmt):
    kw = CONFIGS[i]
    hf = _hf_model(kw, seed=i)
    hf.save_pretrained(tmp_path)
    if fmt == "bin":
        # transformers 5 writes only safetensors; older folders hold the same dict pickled
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
        (tmp_path / "model.safetensors").unlink()
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    assert ours.config.n_layer == kw["n_layer"] and ours.config.block_size == kw["n_positions"]
    idx = torch.randint(0, kw["vocab_size"], (2, kw["n_positions"]))
    with torch.no_grad():
        ref = hf(idx, labels=idx)
        logits, loss = ours(idx[:, :-1], idx[:, 1:])
        full, _ = ours(idx)
    assert (full - ref.logits).abs().max().item() < 1e-5
    # HF shifts labels inside; ours takes the targets already shifted
    assert abs(loss.item() - ref.loss.item()) < 1e-5


def test_pytorch_bin_with_openai_key_names(tmp_path):
    """OpenAI's original checkpoints have no 'transformer.' prefix and carry attn.bias buffers."""
    kw = CONFIGS[1]
    hf = _hf_model(kw, seed=5)
    sd = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(kw["n_layer"]):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(37, 37)).view(1, 1, 37, 37)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "config.json")
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 123, (1, 37))
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max().item() < 1e-5


@pytest.mark.parametrize("bias, activation", [(True, "gelu_tanh"), (False, "gelu_tanh"), (True, "gelu")])
def test_save_pretrained_round_trip(tmp_path, bias, activation):
    cfg = GPTConfig(block_size=37, vocab_size=123, n_layer=2, n_head=5, n_embd=80, bias=bias, activation=activation)
    ours = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.normal_(0, 0.1)
    ours.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == {"gelu_tanh": "gelu_new", "gelu": "gelu"}[activation]
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    idx = torch.randint(0, 123, (3, 37))
    with torch.no_grad():
        assert (hf.eval()(idx).logits - ours(idx)[0]).abs().max().item() < 1e-5
    # and back again through our loader
    again = GPT.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert (again(idx)[0] - ours(idx)[0]).abs().max().item() < 1e-6


def test_from_pretrained_crops_block_size(tmp_path):
    hf = _hf_model(CONFIGS[1], seed=1)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path), block_size=16)
    assert ours.config.block_size == 16 and ours.transformer.wpe.weight.shape == (16, 80)


def test_refuses_unsupported_variants(tmp_path):
    hf = _hf_model(CONFIGS[2], seed=2)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["activation_function"] = "relu"  # not a GELU
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NanoGPTError, match="activation_function=relu is not supported"):
        GPT.from_pretrained(str(tmp_path))


def test_not_a_folder_or_name():
    with pytest.raises(NanoGPTError, match="neither a folder nor a GPT-2 name"):
        GPT.from_pretrained("no-such-model-here")
