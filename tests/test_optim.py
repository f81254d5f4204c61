"""nanogpt.optim: Muon (the orthogonalisation, the update rule, the AdamW half, the groups),
configure_optimizer and the learning-rate schedule lr_at."""

import math

import pytest
import torch

from nanogpt.config import GPTConfig, OptimConfig
from nanogpt.errors import NanoGPTError
from nanogpt.model import GPT
from nanogpt.optim import (
    Muon,
    configure_optimizer,
    lr_at,
    muon_param_groups,
    orthogonalize,
)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48)])
def test_orthogonalize_is_near_the_polar_factor(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    o = orthogonalize(g).float()
    assert o.shape == g.shape and orthogonalize(g).dtype == torch.bfloat16
    s = torch.linalg.svdvals(o)
    # the quintic iteration lands every singular value near 1 (roughly 0.7-1.2), not exactly on it
    assert s.min() > 0.6 and s.max() < 1.3
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh
    cos = (o * polar).sum() / (o.norm() * polar.norm())
    assert cos > 0.95
    # scale-invariant: only the direction of g matters
    assert torch.equal(orthogonalize(g), orthogonalize(g * 8))


def test_orthogonalize_stack_equals_one_by_one():
    g = torch.randn(3, 40, 24, generator=torch.Generator().manual_seed(1))
    stacked = orthogonalize(g)
    for i in range(3):
        torch.testing.assert_close(stacked[i].float(), orthogonalize(g[i]).float(), atol=2e-2, rtol=0)


def _params(seed: int, shapes) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in shapes]


def test_adamw_groups_match_torch_adamw():
    shapes = [(5, 7), (7,), (3, 2, 4)]
    ours, ref = _params(0, shapes), _params(0, shapes)
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    opt = Muon([{"params": ours, "weight_decay": 0.1}], **kw)
    ref_opt = torch.optim.AdamW([{"params": ref, "weight_decay": 0.1}], **kw)
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        grads = [torch.randn(*s, generator=gen) for s in shapes]
        for p, q, g in zip(ours, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)


def test_muon_step_is_the_scaled_orthogonalised_nesterov_momentum():
    (w,) = _params(0, [(12, 4)])  # tall: update scaled by sqrt(12 / 4)
    start = w.detach().clone()
    opt = Muon([{"params": [w], "muon": True, "weight_decay": 0.5}], lr=0.1, momentum=0.9)
    g1, g2 = torch.randn(12, 4), torch.randn(12, 4)
    w.grad = g1
    opt.step()
    expect = start * (1 - 0.1 * 0.5) - 0.1 * 3**0.5 * orthogonalize(g1 + 0.9 * g1).float()
    torch.testing.assert_close(w.detach(), expect)
    w.grad = g2
    opt.step()
    buf = 0.9 * g1 + g2
    expect = expect * (1 - 0.1 * 0.5) - 0.1 * 3**0.5 * orthogonalize(g2 + 0.9 * buf).float()
    torch.testing.assert_close(w.detach(), expect)


def test_muon_groups_take_matrices_only():
    with pytest.raises(ValueError, match="2-D"):
        Muon([{"params": _params(0, [(4,)]), "muon": True}])


def test_param_groups_split_the_model():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    groups = muon_param_groups(model, lr=1e-3, muon_lr=0.05, weight_decay=0.1, muon_weight_decay=0.0)
    hidden, embed, other = groups
    assert hidden["muon"] and len(hidden["params"]) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    assert hidden["lr_scale"] == pytest.approx(50)
    assert any(p is model.transformer.wte.weight for p in embed["params"])  # tied head: once, on AdamW
    assert all(p.dim() == 1 for p in other["params"]) and other["weight_decay"] == 0.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_configure_optimizer_builds_muon_and_rejects_bad_settings():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    opt = configure_optimizer(model, OptimConfig(name="muon", muon_lr=0.04), torch.device("cpu"))
    assert isinstance(opt, Muon) and opt.param_groups[0]["lr"] == 0.04
    with pytest.raises(NanoGPTError, match="muon_momentum"):
        OptimConfig(name="muon", muon_momentum=1.0)


def _final_loss(name: str, steps: int = 30) -> tuple[float, float]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=13))
    opt = configure_optimizer(model, OptimConfig(name=name, lr=3e-3, muon_lr=0.05), torch.device("cpu"))
    x = torch.randint(0, 13, (8, 16), generator=torch.Generator().manual_seed(1))  # (8, 16)
    y = torch.roll(x, 1, dims=1)  # predict the previous token: needs attention, not just the embeddings
    losses = []
    for _ in range(steps):
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_muon_reaches_a_lower_loss_than_adamw_in_30_steps():
    # Fixed seeds and step count: deterministic, and not about speed. Measured 0.73 (Muon) vs
    # 0.98 (AdamW) from 2.59; float-kernel differences (1 vs 2 threads) move Muon's by 0.002,
    # and other seeds give ratios 0.62-0.74, so the 0.85 bound holds on any CPU.
    first, muon = _final_loss("muon")
    first_adamw, adamw = _final_loss("adamw")
    assert first == first_adamw  # same model, same batch
    assert muon < 0.3 * first
    assert muon < 0.85 * adamw


@pytest.mark.parametrize(
    "schedule, expected",
    [
        # lr 1.0, min_lr 0.2, warmup 4 (0.25, 0.5, 0.75, 1.0), decay over iterations 4..24
        ("cosine", {0: 0.25, 3: 1.0, 4: 1.0, 9: 0.2 + 0.4 * (1 + math.sqrt(0.5)), 14: 0.6, 24: 0.2, 99: 0.2}),
        ("linear", {0: 0.25, 3: 1.0, 4: 1.0, 9: 0.8, 14: 0.6, 19: 0.4, 24: 0.2, 99: 0.2}),
        ("wsd", {0: 0.25, 3: 1.0, 9: 1.0, 14: 1.0, 19: 0.6, 24: 0.2, 99: 0.2}),  # decay_frac 0.5: the last half
        ("constant", {0: 0.25, 2: 0.75, 3: 1.0, 14: 1.0, 99: 1.0}),
    ],
)
def test_lr_at_exact_values(schedule, expected):
    o = OptimConfig(lr=1.0, min_lr=0.2, warmup_iters=4, schedule=schedule, decay_frac=0.5)
    got = {it: lr_at(it, o, max_iters=24) for it in expected}
    assert got == {it: pytest.approx(v, rel=1e-12, abs=1e-15) for it, v in expected.items()}


def test_lr_at_decay_end_and_time_budget():
    o = OptimConfig(lr=1.0, min_lr=0.2, warmup_iters=4, schedule="linear", lr_decay_iters=14)
    assert lr_at(9, o, max_iters=1000) == pytest.approx(0.6, rel=1e-12)  # halfway from 4 to 14
    assert lr_at(14, o, max_iters=1000) == pytest.approx(0.2, rel=1e-12)
    # the time budget is further along than the iterations: it sets the progress
    assert lr_at(5, o, max_iters=1000, time_frac=0.75) == pytest.approx(0.4, rel=1e-12)
    assert lr_at(2, o, max_iters=1000, time_frac=0.75) == pytest.approx(0.75, rel=1e-12)  # warmup ignores it


@pytest.mark.parametrize("clip", [1e-3, 1e3])  # the clip binds / it does not
def test_clipping_folded_into_the_fused_step_equals_clip_grad_norm_then_step(clip):
    import copy

    from nanogpt.device import setup_runtime
    from nanogpt.step import train_step

    runtime = setup_runtime("cpu", dtype="float32", threads="1")
    torch.manual_seed(0)
    ours = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, dropout=0.0))
    ref = copy.deepcopy(ours)
    opt = configure_optimizer(ours, OptimConfig(lr=1e-2), runtime.device)
    ref_opt = configure_optimizer(ref, OptimConfig(lr=1e-2), runtime.device)
    assert opt.defaults["fused"]
    for i in range(3):
        x, y = torch.randint(0, 65, (4, 16)), torch.randint(0, 65, (4, 16))
        train_step(ours, opt, [(x, y)], runtime, grad_clip=clip)
        assert getattr(opt, "grad_scale", None) is None  # nothing left for the next step
        _, loss = ref(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        ref_opt.step()
        ref_opt.zero_grad()
        for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
