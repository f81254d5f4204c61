"""Each kernel in nanogpt.ops computes what its plain reference in model.py computes."""

import pytest
import torch

from nanogpt.config import GPTConfig
from nanogpt.model import GPT, LinearCrossEntropy, RMSNorm, ScaledDotProductAttention
from nanogpt.ops import (
    ChunkedLinearCrossEntropy,
    Kernels,
    MatmulAttention,
    FusedRMSNorm,
    LowPrecisionStream,
    RowLinear,
    apply_kernels,
    kernels_of,
)


def tiny(**kw):
    base = dict(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    base.update(kw)
    return GPTConfig(**base)


@pytest.mark.parametrize("t_query, t_key", [(16, 16), (1, 9), (3, 9)])
def test_matmul_attention_equals_sdpa_for_every_query_offset(t_query, t_key):
    torch.manual_seed(0)
    q = torch.randn(2, 3, t_query, 8)
    k, v = torch.randn(2, 3, t_key, 8), torch.randn(2, 3, t_key, 8)
    ref = ScaledDotProductAttention().eval()(q, k, v)
    got = MatmulAttention().eval()(q, k, v)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_matmul_attention_in_the_model_equals_sdpa(dropout):
    torch.manual_seed(0)
    m = GPT(tiny(dropout=dropout))
    idx = torch.randint(0, 50, (3, 16))
    m.eval()
    a, _ = m(idx)
    apply_kernels(m, Kernels(attention="matmul"))
    assert isinstance(m.transformer.h[1].attn.attend, MatmulAttention)
    assert not m.transformer.h[1].attn.attend.training  # the mode came along
    b, _ = m(idx)
    assert (a - b).abs().max().item() < 1e-5
    if dropout == 0.0:  # gradients agree too (in training mode without dropout the functions are identical)
        m.train()
        grads = []
        for attention in ("sdpa", "matmul"):
            apply_kernels(m, Kernels(attention=attention))
            m.zero_grad()
            m(idx, idx)[1].backward()
            grads.append(m.transformer.h[0].attn.c_attn.weight.grad.clone())
        assert torch.allclose(grads[0], grads[1], atol=1e-6)
    with pytest.raises(ValueError, match="attention kernel must be one of sdpa, matmul"):
        Kernels(attention="flash")


def test_matmul_attention_exposes_probabilities_that_sum_to_one_below_the_diagonal():
    torch.manual_seed(0)
    attend = MatmulAttention().eval()
    seen = []
    attend.probs.register_forward_hook(lambda mod, inp, out: seen.append(out))
    attend(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4))
    (p,) = seen
    assert p.shape == (1, 2, 5, 5)
    torch.testing.assert_close(p.sum(-1), torch.ones(1, 2, 5))
    assert (p.triu(diagonal=1) == 0).all()


def _loss_and_grads(model, idx, targets, rows, autocast=False):
    apply_kernels(model, Kernels(loss_rows=rows))
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        _, loss = model(idx, targets, return_logits=False)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_chunked_loss_equals_the_full_logits_path():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=37))
    idx = torch.randint(0, 37, (2, 7))
    targets = torch.randint(0, 37, (2, 7))
    targets[0, :3] = -1  # ignored positions, inside a block of rows
    full_loss, full_grads = _loss_and_grads(model, idx, targets, 0)
    torch.testing.assert_close(model(idx, targets)[1], full_loss)  # the logits path gives the same loss
    for rows in (1, 5, 14, 100):  # blocks that do and do not divide the 14 positions
        loss, grads = _loss_and_grads(model, idx, targets, rows)
        assert isinstance(model.head_loss, ChunkedLinearCrossEntropy)
        torch.testing.assert_close(loss, full_loss, atol=1e-6, rtol=1e-6)
        for name, g in full_grads.items():
            torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-5, msg=name)
    # under bf16 autocast the head's matmul runs in bf16 on both paths; the loss stays float32
    full_loss, full_grads = _loss_and_grads(model, idx, targets, 0, autocast=True)
    loss, grads = _loss_and_grads(model, idx, targets, 4, autocast=True)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, full_loss, atol=1e-5, rtol=1e-5)
    for name, g in full_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-3, rtol=2e-2, msg=name)
    # without gradients (evaluation) it gives the same loss
    full_loss, _ = _loss_and_grads(model, idx, targets, 0)
    apply_kernels(model, Kernels(loss_rows=3))
    with torch.no_grad():
        torch.testing.assert_close(model(idx, targets, return_logits=False)[1], full_loss, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="non-negative"):
        Kernels(loss_rows=-1)


def test_row_linear_equals_linear_and_keeps_parameters_and_tying():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 50, (1, 6))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref, _ = model(idx)
    ref_one, _ = model(idx[:, :1])
    apply_kernels(model, Kernels(row_linear=True))
    assert type(model.lm_head) is RowLinear and type(model.transformer.h[0].mlp.c_fc) is RowLinear
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(model(idx)[0], ref)  # several rows: the ordinary path
    torch.testing.assert_close(model(idx[:, :1])[0], ref_one, atol=1e-5, rtol=1e-5)  # one row: matrix-vector
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_applying_the_defaults_restores_model_py_exactly():
    model = GPT(tiny())
    apply_kernels(model, Kernels(attention="matmul", loss_rows=8, row_linear=True))
    assert kernels_of(model) == Kernels(attention="matmul", loss_rows=8, row_linear=True)
    apply_kernels(model, Kernels())
    assert kernels_of(model) == Kernels()
    assert type(model.head_loss) is LinearCrossEntropy
    assert type(model.transformer.h[0].attn.attend) is ScaledDotProductAttention
    assert type(model.lm_head) is torch.nn.Linear


def test_kernel_policy():
    from nanogpt.device import choose_kernels

    cpu, cuda, bf16, fp32 = torch.device("cpu"), torch.device("cuda"), torch.bfloat16, torch.float32
    from nanogpt import native

    c = native.available()  # the C kernels where they build here
    assert choose_kernels(cpu, bf16, 256, 50304, compiled=False) == Kernels("matmul", 256, False, True, True, c)
    assert choose_kernels(cpu, bf16, 512, 65, compiled=False) == Kernels("sdpa", 0, False, True, True, c)  # long: fused wins
    assert choose_kernels(cpu, fp32, 64, 65, compiled=False) == Kernels("sdpa", 0, False, True)  # no autocast: no cast
    fused = choose_kernels(cpu, bf16, 64, 50304, compiled=True)
    # compiled: inductor fuses the loss, the norm and the casts
    assert fused.loss_rows == 0 and not fused.rms_norm and not fused.low_precision_stream
    assert choose_kernels(cuda, bf16, 64, 50304, compiled=False) == Kernels()
    assert choose_kernels(cpu, bf16, 1024, 50304, compiled=False, decode=True) == Kernels("sdpa", 0, True)
    assert choose_kernels(cpu, fp32, 1024, 50304, compiled=False, decode=True) == Kernels()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rms_norm_equals_rms_norm_forward_and_backward(dtype):
    torch.manual_seed(0)
    ref, fused = RMSNorm(24, eps=1e-6), FusedRMSNorm(24, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(24))
    fused.load_state_dict(ref.state_dict())
    x = (torch.randn(3, 5, 24) * 3).to(dtype)
    g = torch.randn(3, 5, 24).to(dtype)
    outs = []
    for norm in (ref, fused):
        xi = x.clone().requires_grad_()
        y = norm(xi)
        y.backward(g)
        outs.append((y, xi.grad, norm.weight.grad))
    tol = dict(atol=1e-5, rtol=1e-5) if dtype is torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for a, b in zip(outs[0], outs[1]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(b, a, **tol)


def test_fused_rms_norm_in_the_modern_model_keeps_loss_and_gradients():
    torch.manual_seed(0)
    model = GPT(tiny(arch="modern"))
    idx, targets = torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16))

    def loss_and_grads():
        model.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_loss, ref_grads = loss_and_grads()
    apply_kernels(model, Kernels(rms_norm=True))
    assert type(model.transformer.h[0].attn.q_norm) is FusedRMSNorm and kernels_of(model).rms_norm
    loss, grads = loss_and_grads()
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    apply_kernels(model, Kernels())
    assert type(model.transformer.ln_f) is RMSNorm


def test_low_precision_stream_is_plain_dropout_outside_autocast_and_bf16_inside():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx, targets = torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16))
    seen = []
    model.transformer.h[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))

    def loss_and_grads(autocast):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            _, loss = model(idx, targets)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref = loss_and_grads(False), loss_and_grads(True)
    assert seen == [torch.float32, torch.float32]  # model.py: a float32 stream, also under autocast
    apply_kernels(model, Kernels(low_precision_stream=True))
    assert type(model.transformer.drop) is LowPrecisionStream and kernels_of(model).low_precision_stream
    plain = loss_and_grads(False)
    assert torch.equal(plain[0], ref[0][0])  # no autocast: exactly the reference
    assert all(torch.equal(g, ref[0][1][n]) for n, g in plain[1].items())
    loss, grads = loss_and_grads(True)
    assert seen[-1] == torch.bfloat16  # the stream between blocks is bf16 now
    torch.testing.assert_close(loss, ref[1][0], atol=1e-2, rtol=1e-2)
    for name, grad in grads.items():  # the same gradients, up to bf16 rounding of the stream
        cos = torch.nn.functional.cosine_similarity(grad.flatten(), ref[1][1][name].flatten(), dim=0)
        assert cos > 0.99, name
    assert all(p.dtype == torch.float32 for p in model.parameters()) and all(g.dtype == torch.float32 for g in grads.values())
    apply_kernels(model, Kernels())
    assert type(model.transformer.drop) is torch.nn.Dropout
