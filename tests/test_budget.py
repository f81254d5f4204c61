"""Size limits before allocation: the shared formulas, the estimates and the one-line refusals."""

import time
import tracemalloc

import pytest
import torch

from nanogpt import budget, explain
from nanogpt.config import GPTConfig
from nanogpt.errors import NanoGPTError
from nanogpt.model import GPT

GIB = 2**30


@pytest.fixture
def free_8gib(monkeypatch):
    """Every device has exactly 8 GiB free, whatever this machine has."""
    monkeypatch.setattr(budget, "available_bytes", lambda device="cpu": 8 * GIB)
    monkeypatch.delenv("NANOGPT_MEMORY_CHECK", raising=False)


def test_parameter_count_is_the_model_s():
    assert budget.parameter_count(GPTConfig()) == 124_439_808  # GPT-2 small, wpe included, lm_head tied
    for cfg in (GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=6, bias=False),
                GPTConfig(block_size=5, vocab_size=7, n_layer=1, n_head=1, n_embd=4)):
        with torch.device("meta"):
            assert budget.parameter_count(cfg) == GPT(cfg).num_params(non_embedding=False)
        assert budget.parameter_count(cfg) == explain.parameter_table(cfg)["total"]


def test_gpt2_small_training_estimate_equals_inspect_s_figures():
    cfg = GPTConfig()
    m = explain.explain(cfg, batch_size=4)["memory"]  # float32: what inspect prints
    est = budget.training_estimate(cfg, 4, "float32")
    assert est.parts == {"weights": m["weights"], "gradients": m["gradients"], "AdamW state": m["adamw_state"],
                         "activations": m["activations"]}
    assert est.total == m["training_total"]
    assert m["weights"] == 124_439_808 * 4
    # 4 x 1024 tokens x (12 blocks x (16 x 768 x 4 + 4 x 16) + 2 x 768 x 4 + 8 + 4 x 50257 + 16) + 1024 x 8
    assert m["activations"] == 4 * 1024 * (12 * (16 * 768 * 4 + 64) + 2 * 768 * 4 + 8 + 4 * 50257 + 16) + 8192


def test_gpt2_small_kv_cache_equals_inspect_s_figures():
    cfg = GPTConfig()
    m = explain.explain(cfg, batch_size=2, dtype="bfloat16")["memory"]
    assert budget.kv_cache_bytes(cfg, 1, 1, "bfloat16") == m["kv_cache_per_token"] == 2 * 12 * 768 * 2
    est = budget.inference_estimate(cfg, 2, 100, "bfloat16")
    assert est.parts["KV cache"] == m["kv_cache_full_context"] == 2 * 12 * 768 * 2 * 1024 * 2
    assert est.parts["weights"] == m["weights"]
    assert est.parts["generated ids"] == 2 * 100 * budget.OUTPUT_BYTES_PER_TOKEN
    # one position of logits per sequence when sampling: the dtype + two fp32 copies
    assert est.parts["forward pass"] == 2 * 1024 * 16 * 768 * 2 + 2 * 1 * 50257 * (2 + 8)


def test_dtype_bytes_by_name_and_torch_dtype():
    assert [budget.dtype_bytes(d) for d in ("float32", "bfloat16", torch.float16, torch.float32)] == [4, 2, 2, 4]
    with pytest.raises(NanoGPTError, match="dtype must be one of"):
        budget.dtype_bytes("int8")


def test_refusal_is_one_line_with_estimate_limit_and_what_to_lower(free_8gib):
    est = budget.Estimate("training", {"weights": 6 * GIB, "activations": 3 * GIB}, "data.batch_size")
    with pytest.raises(NanoGPTError) as e:
        budget.check_fits(est, "cpu")
    assert str(e.value) == ("training needs at least 9.0 GiB (weights 6.0 GiB, activations 3.0 GiB) but cpu has "
                            "8.0 GiB free; lower data.batch_size")
    budget.check_fits(budget.Estimate("training", {"weights": 8 * GIB}, "x"), "cpu")  # exactly fits: accepted


def test_huge_model_is_refused_at_once_without_allocating(free_8gib):
    cfg = GPTConfig(n_layer=100_000)  # ~ 708 billion parameters
    tracemalloc.start()
    t0 = time.perf_counter()
    for check in (lambda: budget.check_model_fits(cfg, "cpu"),
                  lambda: budget.check_training_fits(cfg, 12, 1, "bfloat16", "cpu"),
                  lambda: budget.check_inference_fits(cfg, 1, 10, "float32", "cpu")):
        with pytest.raises(NanoGPTError, match=r"needs at least .* but cpu has 8.0 GiB free; lower"):
            check()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 1_000_000


def test_sampling_and_training_sizes_are_refused(free_8gib):
    cfg = GPTConfig(block_size=64, vocab_size=100, n_layer=2, n_head=2, n_embd=32)
    budget.check_inference_fits(cfg, 4, 500, "float32", "cpu")
    with pytest.raises(NanoGPTError, match="lower --num-samples or --max-new-tokens"):
        budget.check_inference_fits(cfg, 1, 10**12, "float32", "cpu")
    with pytest.raises(NanoGPTError, match="lower --num-samples"):
        budget.check_inference_fits(cfg, 10**9, 10, "float32", "cpu")
    budget.check_training_fits(cfg, 32, 1000, "float32", "cpu")  # accumulation adds no memory
    with pytest.raises(NanoGPTError, match="lower data.batch_size"):
        budget.check_training_fits(cfg, 10**7, 1, "float32", "cpu")
    with pytest.raises(NanoGPTError, match="gradient accumulation steps must be positive"):
        budget.check_training_fits(cfg, 1, 0, "float32", "cpu")


def test_memory_check_can_be_turned_off_but_not_the_integer_limits(free_8gib, monkeypatch):
    monkeypatch.setenv("NANOGPT_MEMORY_CHECK", "off")
    budget.check_model_fits(GPTConfig(n_layer=100_000), "cpu")
    with pytest.raises(NanoGPTError, match=r"attention scores \[B, nh, T, T\] would hold 1.2e\+25 numbers"):
        budget.check_shape(GPTConfig(block_size=10**12))


def test_available_bytes_of_this_machine():
    free = budget.available_bytes("cpu")
    assert free is None or free > 0
    assert budget.available_bytes(torch.device("cpu")) is None or free > 0
