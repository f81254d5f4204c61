"""The hand-written C kernels (nanogpt.native) against PyTorch's own, and the fallbacks when they cannot build."""

import pytest
import torch
import torch.nn.functional as F

from nanogpt import native
from nanogpt.device import choose_kernels
from nanogpt.model import GPT, GPTConfig
from nanogpt.ops import (
    Kernels,
    MatmulAttention,
    NativeCausalSelfAttention,
    NativeGELU,
    NativeLayerNorm,
    NativeMatmulAttention,
    _CausalAttentionFn,
    apply_kernels,
    kernels_of,
)

needs_kernels = pytest.mark.skipif(not native.available(), reason=f"C kernels unavailable: {native.load()[1]}")


def every_bf16() -> torch.Tensor:
    """All finite bf16 values."""
    x = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    return x[torch.isfinite(x)].contiguous()


def causal_reference(scores: torch.Tensor, scale: float) -> torch.Tensor:
    t_query, t_key = scores.shape[-2:]
    allowed = torch.ones(t_query, t_key, dtype=torch.bool).tril(diagonal=t_key - t_query)
    return F.softmax((scores * scale).masked_fill(~allowed, float("-inf")), dim=-1)


@needs_kernels
@pytest.mark.parametrize("shape", [(6, 64, 64), (3, 5, 37), (4, 1, 19), (2, 33, 33), (2, 17, 16 * 17)])
def test_causal_softmax_and_its_gradient_are_as_close_to_float64_as_torchs_bf16(shape):
    torch.manual_seed(0)
    scale = 0.125
    scores = (torch.randn(*shape) * 4).bfloat16().requires_grad_()
    grad = torch.randn(*shape).bfloat16()
    exact = scores.detach().double().requires_grad_()
    ref = causal_reference(exact, scale)
    ref.backward(grad.double())
    torch_bf16 = causal_reference(scores, scale)
    (torch_grad,) = torch.autograd.grad(torch_bf16, scores, grad)
    probs = native.causal_softmax(scores.detach(), scale)
    ours_grad = native.causal_softmax_backward(probs, grad, scale)
    t_query, t_key = shape[-2:]
    masked = ~torch.ones(t_query, t_key, dtype=torch.bool).tril(diagonal=t_key - t_query)
    assert torch.equal(probs[..., masked], torch.zeros_like(probs[..., masked]))  # exact zeros, not tiny values
    assert torch.equal(ours_grad[..., masked], torch.zeros_like(ours_grad[..., masked]))
    # within bf16 rounding of the exact answer, as PyTorch's bf16 kernels are
    assert (probs.double() - ref).abs().max() <= (torch_bf16.double() - ref).abs().max() + 2 ** -9
    assert (ours_grad.double() - exact.grad).abs().max() <= (torch_grad.double() - exact.grad).abs().max() + 2 ** -9
    torch.testing.assert_close(probs.float().sum(-1), torch.ones(shape[:-1]), atol=1e-2, rtol=0)


@needs_kernels
def test_gelu_and_its_backward_on_every_bf16_value_are_torchs_bit_for_bit():
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.uint16).view(torch.bfloat16)  # NaNs and infinities too
    assert torch.equal(native.gelu(every).view(torch.int16), F.gelu(every).view(torch.int16))
    torch.manual_seed(0)
    x = every_bf16()
    for grad in (torch.ones_like(x), torch.randn(x.shape).bfloat16() * 100, torch.randn(x.shape).bfloat16() * 1e-30):
        assert torch.equal(native.gelu_backward(grad, x), torch.ops.aten.gelu_backward(grad, x))
    # and on a shape the model makes, with a length that is not a multiple of the 16 lanes
    h, g = torch.randn(3, 7, 37).bfloat16() * 4, torch.randn(3, 7, 37).bfloat16()
    assert torch.equal(native.gelu(h), F.gelu(h))
    assert torch.equal(native.gelu_backward(g, h), torch.ops.aten.gelu_backward(g, h))


@needs_kernels
def test_kernels_refuse_wrong_inputs():
    x = torch.randn(4, 8, 8).bfloat16()
    with pytest.raises(ValueError, match="bfloat16"):
        native.causal_softmax(x.float(), 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        native.causal_softmax(x.transpose(1, 2), 1.0)
    with pytest.raises(ValueError, match="one shape"):
        native.gelu_backward(x, x[:2])
    with pytest.raises(ValueError, match="bfloat16"):
        native.gelu(x.float())


def tiny(**kw):
    base = {"block_size": 32, "vocab_size": 50, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0, "bias": False,
            "activation": "gelu"}
    base.update(kw)
    return GPTConfig(**base)


def loss_and_grads(model, idx, targets):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, targets)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@needs_kernels
def test_the_model_with_c_kernels_trains_like_the_matmul_path_under_bf16_autocast():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx, targets = torch.randint(0, 50, (3, 32)), torch.randint(0, 50, (3, 32))
    apply_kernels(model, Kernels(attention="matmul", low_precision_stream=True))
    ref_loss, ref_grads = loss_and_grads(model, idx, targets)
    apply_kernels(model, Kernels(attention="matmul", low_precision_stream=True, native=True))
    assert type(model.transformer.h[0].attn.attend) is NativeMatmulAttention
    assert type(model.transformer.h[0].mlp.gelu) is NativeGELU and kernels_of(model).native
    assert type(model.transformer.ln_f) is NativeLayerNorm and type(model.transformer.h[1].ln_2) is NativeLayerNorm
    loss, grads = loss_and_grads(model, idx, targets)
    torch.testing.assert_close(loss, ref_loss, atol=1e-2, rtol=1e-2)
    for name, grad in grads.items():  # equal up to bf16 rounding inside attention and the MLP
        cos = F.cosine_similarity(grad.flatten(), ref_grads[name].flatten(), dim=0)
        assert cos > 0.999, name
    # outside autocast (float32) the C kernels step aside: exactly the matmul path
    model.zero_grad(set_to_none=True)
    _, plain = model(idx, targets)
    apply_kernels(model, Kernels(attention="matmul"))
    assert type(model.transformer.h[0].attn.attend) is MatmulAttention and type(model.transformer.h[0].mlp.gelu) is torch.nn.GELU
    assert type(model.transformer.ln_f) is torch.nn.LayerNorm and not kernels_of(model).native
    _, again = model(idx, targets)
    assert torch.equal(plain, again)


@needs_kernels
def test_attention_probabilities_stay_visible_to_hooks_and_decode_offsets_work():
    torch.manual_seed(0)
    att = NativeMatmulAttention()
    seen = []
    att.probs.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    q = torch.randn(2, 3, 4, 16).bfloat16()
    k, v = torch.randn(2, 3, 9, 16).bfloat16(), torch.randn(2, 3, 9, 16).bfloat16()
    got = att(q, k, v)  # 4 queries at the end of 9 keys, as with a KV cache
    ref = MatmulAttention()(q, k, v)
    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=2e-2)
    assert seen[0].shape == (2, 3, 4, 9) and torch.equal(seen[0][..., 0, 7:], torch.zeros_like(seen[0][..., 0, 7:]))


@needs_kernels
@pytest.mark.parametrize("B, T, nh, hs", [(3, 37, 4, 16), (2, 64, 6, 64), (1, 1, 2, 8)])
def test_fused_attention_is_the_split_attend_merge_path(B, T, nh, hs):
    torch.manual_seed(0)
    C = nh * hs
    qkv = torch.randn(B, T, 3 * C).bfloat16().requires_grad_()
    grad = torch.randn(B, T, C).bfloat16()
    y = _CausalAttentionFn.apply(qkv, nh)
    (dqkv,) = torch.autograd.grad(y, qkv, grad)
    # model.py's way: split the projection, heads as a batch dim, attend, merge the heads
    ref_in = qkv.detach().clone().requires_grad_()
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in ref_in.split(C, dim=2))
    ref = NativeMatmulAttention()(q, k, v).transpose(1, 2).contiguous().view(B, T, C)
    (ref_grad,) = torch.autograd.grad(ref, ref_in, grad)
    assert torch.equal(y, ref)  # the same products on the same layouts
    torch.testing.assert_close(dqkv.float(), ref_grad.float(), atol=1e-2, rtol=1e-2)  # dk's product is transposed
    assert (dqkv == ref_grad).float().mean() > 0.9


@needs_kernels
def test_fused_attention_steps_aside_for_hooks_dropout_and_caches():
    torch.manual_seed(0)
    model = GPT(tiny(dropout=0.1))
    apply_kernels(model, Kernels(attention="matmul", low_precision_stream=True, native=True))
    attn = model.transformer.h[0].attn
    assert type(attn) is NativeCausalSelfAttention
    x = torch.randn(2, 8, 32).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.eval()
        assert attn(x).grad_fn is not None and attn.attend.fusable(x)
        seen = []
        handle = attn.attend.probs.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
        out = attn(x)
        assert seen == [(2, 2, 8, 8)]  # a hook on the weights sees them: the fused path stepped aside
        handle.remove()
        torch.testing.assert_close(out.float(), attn(x).float(), atol=1e-2, rtol=1e-2)
        handle = attn.attend.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        attn(x)
        assert seen[-1] == (2, 2, 8, 16) and not attn.attend.fusable(x)  # a hook on the attention itself too
        handle.remove()
        model.train()  # attention dropout in training: model.py's path, which applies it
        assert not attn.attend.fusable(x)
    assert not attn.attend.fusable(x)  # float32 outside autocast


def test_tanh_gelu_and_float32_inputs_keep_torchs_gelu():
    x = torch.randn(5, 7, requires_grad=True)
    for approximate in ("none", "tanh"):
        ours = NativeGELU(approximate=approximate)
        torch.testing.assert_close(ours(x), F.gelu(x, approximate=approximate), atol=0, rtol=0)
    assert NativeGELU(approximate="tanh")(x.bfloat16()).grad_fn.name() == "GeluBackward0"


def test_the_runtime_uses_them_only_for_bf16_cpu_training_where_they_build(monkeypatch):
    cpu = torch.device("cpu")
    assert choose_kernels(cpu, torch.bfloat16, 64, 65, compiled=False).native == native.available()
    assert not choose_kernels(cpu, torch.float32, 64, 65, compiled=False).native
    assert not choose_kernels(cpu, torch.bfloat16, 64, 65, compiled=True).native
    assert not choose_kernels(cpu, torch.bfloat16, 64, 65, compiled=False, decode=True).native
    monkeypatch.setattr(native, "load", lambda: (None, "no C compiler"))
    assert not choose_kernels(cpu, torch.bfloat16, 64, 65, compiled=False).native


def test_a_missing_compiler_or_env_switch_is_a_reason_not_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native.load.cache_clear()
    try:
        monkeypatch.setenv("NANOGPT_NATIVE", "0")
        assert native.load() == (None, "NANOGPT_NATIVE=0")
        native.load.cache_clear()
        monkeypatch.delenv("NANOGPT_NATIVE")
        monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
        monkeypatch.setattr(native.cpu, "cpu_flags", lambda: frozenset(native.CPU_FLAGS))
        monkeypatch.setattr(native, "torch_openmp", lambda: tmp_path / "libgomp.so.1")  # any machine, any torch
        lib, why = native.load()
        assert lib is None and "did not run" in why
        assert not list((tmp_path / "nanogpt" / "kernels").glob("*.so"))  # nothing half-built left behind
        native.load.cache_clear()
        monkeypatch.setenv("CC", "cc")
        (tmp_path / "file").write_text("")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # the cache folder cannot be made
        lib, why = native.load()
        assert lib is None and "could not build" in why
    finally:
        native.load.cache_clear()


@needs_kernels
def test_the_build_is_cached_and_a_planted_symlink_is_never_loaded(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native.load.cache_clear()
    try:
        lib, why = native.load()
        assert lib is not None and why == "ok"
        built = list((tmp_path / "nanogpt" / "kernels").glob("*.so"))
        assert len(built) == 1 and not list((tmp_path / "nanogpt" / "kernels").glob(".build-*"))
        stamp = built[0].stat().st_mtime_ns
        native.load.cache_clear()
        assert native.load()[0] is not None and built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
        target = tmp_path / "elsewhere.so"
        built[0].rename(target)
        built[0].symlink_to(target)
        native.load.cache_clear()
        lib, why = native.load()
        assert lib is None and "symbolic link" in why
    finally:
        native.load.cache_clear()



@needs_kernels
@pytest.mark.parametrize("channels, bias", [(384, False), (40, True), (7, True)])
def test_layer_norm_and_its_gradients_match_torch_on_a_bf16_stream(channels, bias):
    torch.manual_seed(0)
    ln = torch.nn.LayerNorm(channels, bias=bias)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        if bias:
            ln.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(3, 11, channels) * 2 + 1).bfloat16().requires_grad_()
    grad = torch.randn(3, 11, channels).bfloat16()
    exact_x = x.detach().double().requires_grad_()
    exact = torch.nn.functional.layer_norm(exact_x, (channels,), ln.weight.double(), None if not bias else ln.bias.double())
    exact.backward(grad.double())
    xd = x.detach().double()
    xhat = (xd - xd.mean(-1, keepdim=True)) / torch.sqrt(xd.var(-1, unbiased=False, keepdim=True) + ln.eps)
    exact_grads = [exact_x.grad, (grad.double() * xhat).sum((0, 1))] + ([grad.double().sum((0, 1))] if bias else [])
    ref = ln(x)  # torch: bf16 stream, float32 gains
    ref_grads = torch.autograd.grad(ref, [x, *ln.parameters()], grad)
    ln.__class__ = NativeLayerNorm
    ours = ln(x)
    assert ours.grad_fn.name() == "_LayerNormFnBackward" and ours.dtype == torch.bfloat16
    our_grads = torch.autograd.grad(ours, [x, *ln.parameters()], grad)
    assert (ours.double() - exact).abs().max() <= (ref.double() - exact).abs().max() + 2 ** -7
    assert (our_grads[0].double() - exact_grads[0]).abs().max() <= (ref_grads[0].double() - exact_grads[0]).abs().max() * 1.5 + 2 ** -7
    for ours_p, ref_p, exact_p in zip(our_grads[1:], ref_grads[1:], exact_grads[1:]):
        # weight (and bias) gradients summed in float32: closer to exact than PyTorch's bf16 kernel
        assert ours_p.dtype == torch.float32 and ours_p.shape == (channels,)
        torch.testing.assert_close(ours_p.double(), exact_p, atol=1e-4, rtol=1e-5)
        assert (ours_p.double() - exact_p).abs().max() <= (ref_p.double() - exact_p).abs().max() + 1e-4
