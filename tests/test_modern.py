"""The modern block: the same contracts as GPT-2's, and equal to transformers' Qwen3 / Llama."""

import math

import pytest
import torch

from nanogpt.config import GPTConfig
from nanogpt.errors import NanoGPTError
from nanogpt.generate import generate
from nanogpt.model import GPT
from nanogpt.ops import Kernels, apply_kernels

transformers = pytest.importorskip("transformers")


def modern(**kw):
    base = dict(arch="modern", block_size=24, vocab_size=61, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                rope_theta=500.0)
    base.update(kw)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**base))
    with torch.no_grad():  # far from init, gains away from 1: a wrong layout or norm would show
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if p.dim() == 1 else p.normal_(0.0, 0.3)
    return model.eval()


def test_shapes_parameters_and_initial_loss():
    model = modern()
    names = set(dict(model.named_parameters()))
    assert "transformer.wpe.weight" not in names and "transformer.h.0.attn.q_norm.weight" in names
    assert not any(n.endswith(".bias") for n in names)
    C, H = 32, model.config.mlp_width
    assert H == 128 and model.transformer.h[0].mlp.c_fc.weight.shape == (2 * H, C)
    assert model.num_params() == 61 * C + 2 * (2 * C + 2 * 16 + 4 * C * C + 3 * C * H) + C
    torch.manual_seed(1)
    fresh = GPT(GPTConfig(arch="modern", block_size=24, vocab_size=61, n_layer=2, n_head=2, n_embd=32))
    idx, targets = torch.randint(0, 61, (4, 24)), torch.randint(0, 61, (4, 24))
    _, loss = fresh(idx, targets)
    assert abs(loss.item() - math.log(61)) < 0.3


@pytest.mark.parametrize("untied", [False, True])
def test_cached_greedy_decoding_equals_uncached_across_the_context_boundary(untied):
    model = modern(tie_embeddings=not untied)
    idx = torch.randint(0, 61, (2, 5))
    a = generate(model, idx, 60, temperature=0.0, use_cache=True)
    b = generate(model, idx, 60, temperature=0.0, use_cache=False)
    assert torch.equal(a, b) and len(set(a[0].tolist())) > 5


def test_matmul_attention_kernel_equals_the_reference():
    model = modern()
    idx = torch.randint(0, 61, (3, 24))
    ref, _ = model(idx)
    apply_kernels(model, Kernels(attention="matmul", loss_rows=7))
    torch.testing.assert_close(model(idx)[0], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(idx, idx, return_logits=False)[1], model(idx, idx)[1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kw, hf_class", [
    (dict(qk_norm=True), "Qwen3ForCausalLM"),
    (dict(qk_norm=False), "LlamaForCausalLM"),
    (dict(qk_norm=True, tie_embeddings=False, mlp_hidden=80), "Qwen3ForCausalLM"),
])
def test_export_loads_in_transformers_with_equal_logits_and_reads_back(tmp_path, kw, hf_class):
    ours = modern(**kw)
    ours.save_pretrained(str(tmp_path))
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf).__name__ == hf_class
    assert not info["missing_keys"] and not info["unexpected_keys"]
    idx = torch.randint(0, 61, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(idx).logits, ours(idx)[0], atol=1e-5, rtol=1e-5)
        again = GPT.from_pretrained(str(tmp_path)).eval()
        assert again.config == ours.config
        torch.testing.assert_close(again(idx)[0], ours(idx)[0], atol=0, rtol=0)


def test_a_random_transformers_qwen3_reads_with_equal_logits(tmp_path):
    cfg = transformers.Qwen3Config(vocab_size=61, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, head_dim=8, max_position_embeddings=32,
                                   tie_word_embeddings=True, rope_theta=1000.0)
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    assert (ours.config.arch, ours.config.n_head, ours.config.mlp_width, ours.config.rope_theta) == ("modern", 4, 72, 1000.0)
    idx = torch.randint(0, 61, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-5)


def test_grouped_query_attention_is_refused_in_one_line(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(NanoGPTError, match="grouped-query attention"):
        GPT.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("kw, match", [
    (dict(tie_embeddings=False), "tie_embeddings false needs model.arch modern"),
    (dict(arch="modern", n_embd=30, n_head=10), "must be even"),
    (dict(arch="modern", rope_theta=1.0), "rope_theta must be a number above 1"),
    (dict(arch="modern", mlp_hidden=-1), "mlp_hidden must be a non-negative integer"),
])
def test_config_errors_are_one_line(kw, match):
    with pytest.raises(NanoGPTError, match=match):
        GPTConfig(**kw)


@pytest.mark.parametrize("kw", [dict(), dict(qk_norm=False, tie_embeddings=False, mlp_hidden=96)])
def test_budget_counts_the_modern_parameters(kw):
    from nanogpt.budget import parameter_count

    model = modern(**kw)
    assert parameter_count(model.config) == model.num_params()


@pytest.mark.parametrize("kw", [dict(), dict(qk_norm=False, tie_embeddings=False)])
def test_inspect_explains_the_modern_block_checked_against_hooks(kw):
    from nanogpt import explain

    cfg = GPTConfig(arch="modern", block_size=24, vocab_size=61, n_layer=2, n_head=2, n_embd=32, **kw)
    report = explain.explain(cfg, batch_size=2)  # runs the shape check on the meta device
    keys = {row["key"] for row in report["forward"]} if isinstance(report.get("forward"), list) else None
    rows = explain.forward_table(cfg, 2, 24)
    assert "pos_emb" not in {r.key for r in rows} and "h.gated" in {r.key for r in rows}
    assert {r.key: r.shape for r in rows}["h.c_fc"] == (2, 24, 2 * cfg.mlp_width)
    with torch.device("meta"):
        model = GPT(cfg)
    assert report["parameters"]["total"] == model.num_params()
    assert keys is None or "h.gated" in keys
    text = explain.format_report(report)
    assert "RMSNorm" in text and "wpe" not in text.split("parameters")[-1].split("\n")[1]


def test_the_modern_cpu_preset_is_the_cpu_preset_with_the_modern_block():
    from nanogpt.config import get_preset

    base, modern_preset = get_preset("shakespeare-char-cpu"), get_preset("shakespeare-char-cpu-modern")
    assert modern_preset == {**base, "model.arch": "modern", "run.out_dir": "runs/shakespeare-char-cpu-modern"}
