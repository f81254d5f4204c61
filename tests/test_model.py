"""The model's own behaviour: config validation, parameter counts, init loss, causality."""

import math

import pytest
import torch

from nanogpt.config import GPTConfig
from nanogpt.errors import NanoGPTError
from nanogpt.model import GPT


def tiny(**kw):
    base = dict(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    base.update(kw)
    return GPTConfig(**base)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_embd=30, n_head=4), "divisible by model.n_head"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(vocab_size=-3), "vocab_size must be a positive integer"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(block_size=2.5), "block_size must be a positive integer"),
    ],
)
def test_config_validation_says_what_to_change(kw, match):
    with pytest.raises(NanoGPTError, match=match):
        tiny(**kw)


def test_divisibility_error_suggests_sizes():
    with pytest.raises(NanoGPTError, match="try n_embd=28 or n_embd=32"):
        tiny(n_embd=30, n_head=4)


def test_presets():
    c = GPTConfig.from_name("gpt2-medium", dropout=0.1)
    assert (c.n_layer, c.n_head, c.n_embd, c.dropout, c.vocab_size, c.block_size) == (24, 16, 1024, 0.1, 50257, 1024)
    with pytest.raises(NanoGPTError, match="unknown model name"):
        GPTConfig.from_name("gpt3")


def test_gpt2_parameter_count():
    with torch.device("meta"):
        m = GPT(GPTConfig.from_name("gpt2"))
    assert m.num_params() == 124_439_808
    # non_embedding leaves out wpe only (1024 x 768); wte stays because it is the tied lm_head
    assert m.num_params(non_embedding=True) == 124_439_808 - 1024 * 768
    m.crop_block_size(512)
    assert m.num_params() == 124_046_592


def test_parameter_names_are_gpt2s():
    names = set(dict(GPT(tiny(n_layer=1)).named_parameters()))
    expected = {
        "transformer.wte.weight", "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias",
        "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
        "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias",
        "transformer.h.0.ln_2.weight", "transformer.h.0.ln_2.bias",
        "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias",
        "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.mlp.c_proj.bias",
        "transformer.ln_f.weight", "transformer.ln_f.bias",
    }
    assert names == expected  # lm_head.weight is the same tensor as wte: listed once
    m = GPT(tiny())
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()


def test_init_statistics():
    cfg = tiny(n_layer=8, n_embd=256, n_head=4, vocab_size=1000)
    m = GPT(cfg)
    assert m.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert m.transformer.h[0].attn.c_attn.bias.abs().max().item() == 0.0


def test_forward_shapes_and_loss_none():
    m = GPT(tiny())
    idx = torch.randint(0, 50, (3, 16))
    logits, loss = m(idx)
    assert logits.shape == (3, 16, 50) and loss is None
    logits, _ = m(idx, last_logits_only=True)
    assert logits.shape == (3, 1, 50)


def test_loss_at_init_is_near_uniform():
    cfg = tiny(vocab_size=512, n_embd=64)
    m = GPT(cfg)
    idx = torch.randint(0, 512, (8, 16))
    _, loss = m(idx, torch.randint(0, 512, (8, 16)))
    assert abs(loss.item() - math.log(512)) < 0.15


def test_overfits_one_batch():
    m = GPT(tiny())
    idx = torch.randint(0, 50, (4, 16))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = m(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_causality():
    m = GPT(tiny()).eval()
    idx = torch.randint(0, 50, (2, 16))
    changed = idx.clone()
    t = 6
    changed[:, t + 1 :] = torch.randint(0, 50, (2, 16 - t - 1))
    a, _ = m(idx)
    b, _ = m(changed)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_too_long_input_is_a_clear_error():
    m = GPT(tiny())
    with pytest.raises(ValueError, match=r"sequence of 17 tokens is longer than the model's block_size \(16\)"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_ignore_index_targets():
    m = GPT(tiny())
    idx = torch.randint(0, 50, (2, 16))
    y = idx.clone()
    y[:, :8] = -1
    _, loss = m(idx, y)
    logits, _ = m(idx)
    ref = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 50), y[:, 8:].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)


def test_bias_false_has_no_biases():
    m = GPT(tiny(bias=False))
    assert not any(n.endswith("bias") for n, _ in m.named_parameters())
    logits, _ = m(torch.randint(0, 50, (1, 8)))
    assert torch.isfinite(logits).all()


def test_crop_block_size_rejects_growing():
    m = GPT(tiny())
    with pytest.raises(ValueError, match="block_size must be in 1..16"):
        m.crop_block_size(32)


def test_gpt_config_is_importable_from_the_model_and_the_package():
    import nanogpt
    import nanogpt.model

    assert nanogpt.model.GPTConfig is GPTConfig and nanogpt.GPTConfig is GPTConfig


def test_forward_returns_the_same_kind_of_result_for_the_same_arguments():
    torch.manual_seed(0)
    m = GPT(tiny())
    idx = torch.randint(0, 50, (2, 9))
    logits, loss = m(idx, idx)
    assert logits.shape == (2, 9, 50) and loss.dim() == 0
    none, loss_only = m(idx, idx, return_logits=False)
    assert none is None
    torch.testing.assert_close(loss_only, loss)
    logits, loss = m(idx)
    assert logits.shape == (2, 9, 50) and loss is None


def test_crop_block_size_does_not_change_the_config_it_was_built_from():
    cfg = tiny()
    m = GPT(cfg)
    m.crop_block_size(8)
    assert m.config.block_size == 8 and m.transformer.wpe.weight.shape == (8, 32)
    assert cfg.block_size == 16
