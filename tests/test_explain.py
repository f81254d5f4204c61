"""nanogpt inspect: shapes, parameters, FLOPs, memory and attention maps."""

import json
import re

import pytest
import torch

from nanogpt import explain, flops
from nanogpt.cli import main
from nanogpt.errors import NanoGPTError
from nanogpt.config import GPTConfig
from nanogpt.model import GPT

# Small configurations that differ in the ways that matter: heads, head size, bias, vocab.
CONFIGS = [
    GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=4, n_embd=32),
    GPTConfig(block_size=9, vocab_size=37, n_layer=1, n_head=1, n_embd=24, bias=False),
    GPTConfig(block_size=12, vocab_size=70, n_layer=3, n_head=3, n_embd=48, dropout=0.1),
]


def run_cli(capsys, *argv):
    code = main(["inspect", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_model(cfg: GPTConfig) -> GPT:
    torch.manual_seed(0)
    return GPT(cfg).eval()


# --------------------------------------------------------------------------------------------
# Parameters


def test_gpt2_reports_124439808_parameters(capsys):
    code, out, _ = run_cli(capsys, "--preset", "gpt2")
    assert code == 0
    assert re.search(r"^\s+total\s+124,439,808$", out, re.M)
    assert "124,046,592" not in out


def test_gpt2_block_size_512_reports_124046592(capsys):
    code, out, _ = run_cli(capsys, "--preset", "gpt2", "--block-size", "512")
    assert code == 0
    assert re.search(r"^\s+total\s+124,046,592$", out, re.M)
    # wpe shrinks from 1024 x 768 to 512 x 768; without it both counts are the same.
    assert re.search(r"total without wpe\s+123,653,376", out)


@pytest.mark.parametrize("cfg", CONFIGS + [GPTConfig.from_name("gpt2-medium")])
def test_parameter_table_counts_the_real_module(cfg):
    with torch.device("meta"):
        model = GPT(cfg)
    table = explain.parameter_table(cfg)
    assert table["total"] == model.num_params()
    assert table["total_without_wpe"] == model.num_params(non_embedding=True)
    # Each per-block component equals the parameters under that name in block 0.
    for comp in table["components"]:
        if comp["name"].startswith("h.*."):
            prefix = "transformer.h.0." + comp["name"][4:] + "."
            real = sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))
            assert comp["count"] == real, comp["name"]
    # The tied matrix is counted once: untying would add exactly V x C.
    assert model.lm_head.weight is model.transformer.wte.weight
    assert table["total_if_untied"] - table["total"] == cfg.vocab_size * cfg.n_embd


# --------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_every_table_shape_equals_the_hooked_shape(cfg, batch_size):
    model = tiny_model(cfg)
    T = cfg.block_size
    idx = torch.randint(0, cfg.vocab_size, (batch_size, T))
    captured = explain.capture_shapes(model, idx)
    rows = explain.forward_table(cfg, batch_size, T)
    assert explain.check_table(rows, captured, cfg.n_layer) == []
    # ... and the table covers everything the hooks saw.
    keys = {r.key for r in rows}
    for key in captured:
        generic = re.sub(r"^h\.\d+\.", "h.", key)
        assert generic in keys, key
    assert len(captured) == len([r for r in rows if not r.per_block]) + cfg.n_layer * len(
        [r for r in rows if r.per_block]
    )


def test_table_symbols_and_numbers_for_gpt2_512():
    rows = {r.key: r for r in explain.forward_table(GPTConfig.from_name("gpt2", block_size=512), 1)}
    assert rows["h.q"].symbols == ("B", "nh", "T", "hs") and rows["h.q"].shape == (1, 12, 512, 64)
    assert rows["h.probs"].shape == (1, 12, 512, 512)
    assert rows["h.c_attn"].shape == (1, 512, 3 * 768)
    assert rows["h.c_fc"].shape == (1, 512, 4 * 768)
    assert rows["logits"].shape == (1, 512, 50257)


def test_table_mismatch_is_reported():
    cfg = CONFIGS[0]
    captured = explain.capture_shapes(tiny_model(cfg), torch.zeros(1, 8, dtype=torch.long))
    problems = explain.check_table(explain.forward_table(cfg, 1, 9), captured, cfg.n_layer)
    assert problems and "idx" in problems[0]


def test_meta_device_run_matches_a_real_run():
    cfg = CONFIGS[0]
    real = explain.capture_shapes(tiny_model(cfg), torch.zeros(2, 16, dtype=torch.long))
    with torch.device("meta"):
        meta = explain.capture_shapes(GPT(cfg), torch.zeros(2, 16, dtype=torch.long))
    assert meta == real


@pytest.mark.parametrize("cfg", CONFIGS[:2])
def test_attention_maps_are_the_model_s_own_weights_and_leave_its_kernels_alone(cfg):
    from nanogpt.ops import Kernels, kernels_of

    model = tiny_model(cfg)
    ids = list(range(min(cfg.block_size, 7)))
    maps = explain.attention_maps(model, ids, layers=[0])
    probs = maps[0]  # (nh, T, T)
    assert probs.shape == (cfg.n_head, len(ids), len(ids))
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5)
    assert (probs.triu(diagonal=1) == 0).all()  # nothing from the future
    # the weights reproduce the block's attention output: probs @ v, merged, projected
    attn = model.transformer.h[0].attn
    x = model.transformer.h[0].ln_1(model.transformer.wte(torch.tensor([ids])) + model.transformer.wpe(torch.arange(len(ids))))
    with torch.no_grad():
        v = attn.c_attn(x).split(cfg.n_embd, dim=2)[2].view(1, len(ids), cfg.n_head, -1).transpose(1, 2)
        merged = (probs.unsqueeze(0) @ v).transpose(1, 2).reshape(1, len(ids), cfg.n_embd)
        assert torch.allclose(attn.c_proj(merged), attn(x), atol=1e-5)
    assert kernels_of(model) == Kernels()  # the spelled-out attention was only borrowed


# --------------------------------------------------------------------------------------------
# FLOPs and memory


def test_flops_come_from_nanogpt_flops():
    cfg = GPTConfig.from_name("gpt2", block_size=512)
    f = explain.flops_summary(cfg, 512)
    assert f["forward_per_token"] == flops.flops_per_token(cfg, 512, backward=False)
    assert f["forward_backward_per_token"] == flops.flops_per_token(cfg, 512, backward=True)
    assert f["forward_attention_per_token"] == 4 * 12 * 768 * 512  # q k^T and att @ v: 2 x 2TC per layer
    assert f["forward_matmuls_per_token"] + f["forward_attention_per_token"] == f["forward_per_token"]
    assert f["forward_matmuls_per_token"] == 2 * flops.matmul_params(cfg)


@pytest.mark.parametrize(
    "cfg,B,T",
    [
        (GPTConfig(block_size=32, vocab_size=100, n_layer=2, n_head=4, n_embd=64), 4, 32),
        (GPTConfig(block_size=64, vocab_size=500, n_layer=3, n_head=2, n_embd=48, bias=False), 2, 64),
    ],
)
def test_activation_estimate_within_25_percent_of_measured(cfg, B, T):
    model = GPT(cfg).train()
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    targets = torch.randint(0, cfg.vocab_size, (B, T))
    measured = explain.saved_activation_bytes(model, idx, targets)
    estimate = explain.activation_bytes(cfg, B, T, "float32")
    assert 0.75 * measured <= estimate <= 1.25 * measured, (estimate, measured)


def test_activation_measurement_sees_the_saved_tensors():
    # Doubling the batch doubles what autograd keeps, up to what does not grow with it
    # (the T int64 positions and the scalar loss).
    cfg = CONFIGS[0]
    model = GPT(cfg).train()
    one = explain.saved_activation_bytes(model, torch.zeros(1, 16, dtype=torch.long), torch.zeros(1, 16, dtype=torch.long))
    two = explain.saved_activation_bytes(model, torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 16, dtype=torch.long))
    assert one > 16 * cfg.n_layer * cfg.n_embd * 4
    assert abs(two - 2 * one) <= 16 * 8 + 4


def test_memory_numbers():
    cfg = GPTConfig.from_name("gpt2")
    n = explain.parameter_table(cfg)["total"]
    m = explain.memory_table(cfg, 2, 1024, "bfloat16", n)
    assert m["weights"] == 2 * n and m["gradients"] == 2 * n and m["adamw_state"] == 8 * n
    assert m["kv_cache_per_token"] == 2 * 12 * 768 * 2
    assert m["kv_cache_full_context"] == m["kv_cache_per_token"] * 1024 * 2
    assert explain.activation_bytes(cfg, 2, 1024, "bfloat16") < explain.activation_bytes(cfg, 2, 1024, "float32")


# --------------------------------------------------------------------------------------------
# CLI, JSON, sources


def test_json_is_valid_and_has_the_text_numbers(capsys):
    _, text, _ = run_cli(capsys, "--preset", "gpt2", "--block-size", "512", "--batch-size", "2", "--dtype", "bfloat16")
    code, out, _ = run_cli(capsys, "--preset", "gpt2", "--block-size", "512", "--batch-size", "2", "--dtype", "bfloat16", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["parameters"]["total"] == 124_046_592
    assert report["dims"] == {"B": 2, "T": 512, "C": 768, "nh": 12, "hs": 64, "V": 50257, "L": 12, "H": 3072}
    for row in report["forward"]:
        assert "[" + ", ".join(map(str, row["shape"])) + "]" in text
    assert f"{report['flops']['forward_per_token']:,}" in text
    assert f"{report['flops']['forward_backward_per_token']:,}" in text
    for key in ("weights", "gradients", "adamw_state", "activations", "kv_cache_per_token", "kv_cache_full_context"):
        assert explain.human_bytes(report["memory"][key]) in text, key
    assert report["memory"]["weights"] == 2 * 124_046_592


def test_positional_preset_name_and_training_preset(capsys):
    code, out, _ = run_cli(capsys, "gpt2-124m", "--json")
    report = json.loads(out)
    assert code == 0 and report["config"]["vocab_size"] == 50304
    code, out, _ = run_cli(capsys, "--preset", "shakespeare-char-cpu", "--vocab-size", "65", "--json")
    report = json.loads(out)
    assert report["config"]["n_layer"] == 4 and report["config"]["vocab_size"] == 65


def test_hf_folder_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 16, "n_positions": 8, "vocab_size": 30})
    )
    code, out, _ = run_cli(capsys, str(tmp_path), "--json")
    report = json.loads(out)
    assert code == 0
    assert report["parameters"]["total"] == GPT(GPTConfig(block_size=8, vocab_size=30, n_layer=2, n_head=2, n_embd=16)).num_params()
    code, _, err = run_cli(capsys, str(tmp_path), "--block-size", "9")
    assert code == 2 and "can only shrink" in err


def test_user_errors_are_one_line(capsys, tmp_path):
    for argv, words in [
        (["--preset", "gpt3"], "did you mean 'gpt2'"),
        ([str(tmp_path)], "holds no model configuration"),
        (["--preset", "gpt2", "--attention", "hi"], "needs a trained model"),
        (["--batch-size", "0"], "--batch-size must be positive"),
    ]:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (argv, err)


# --------------------------------------------------------------------------------------------
# Attention maps


def test_attention_maps_and_png(tmp_path):
    cfg = CONFIGS[0]
    model = tiny_model(cfg)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    maps = explain.attention_maps(model, ids, [1])
    assert list(maps) == [1] and maps[1].shape == (4, 8, 8)
    assert torch.allclose(maps[1].sum(-1), torch.ones(4, 8), atol=1e-5)
    assert (maps[1].triu(diagonal=1) == 0).all()
    out = explain.plot_attention(maps, [f"t{i}" for i in ids], tmp_path / "attn.png", title="test")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    overview = explain.plot_attention(explain.attention_maps(model, ids), [str(i) for i in ids], tmp_path / "all.png")
    assert overview.stat().st_size > 5000
    with pytest.raises(NanoGPTError, match="block_size"):
        explain.attention_maps(model, list(range(17)))


def test_attention_cli_from_a_run_folder(tmp_path, capsys):
    from nanogpt.checkpoint import save_checkpoint
    from nanogpt.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("hello world, the attention!")
    cfg = GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=16)
    run = tmp_path / "run"
    info = {"iter": 1, "config": {"model": cfg.to_dict()}, "tokenizer": tok.to_dict()}
    save_checkpoint(run, tiny_model(cfg), {}, info)
    out = tmp_path / "attn.png"
    code, stdout, err = run_cli(capsys, str(run), "--attention", "hello world", "--layer", "-1", "--out", str(out))
    assert code == 0, err
    assert "layer 1" in stdout and "11 tokens" in stdout
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 5000
    code, _, err = run_cli(capsys, str(run), "--attention", "hello", "--layer", "all", "--out", str(tmp_path / "all.png"))
    assert code == 0 and (tmp_path / "all.png").stat().st_size > 5000
    code, _, err = run_cli(capsys, str(run), "--attention", "hello", "--layer", "2")
    assert code == 2 and "layers 0..1" in err
    # Without --attention the run folder's configuration is explained (read from the checkpoint).
    code, stdout, _ = run_cli(capsys, str(run), "--json")
    assert code == 0 and json.loads(stdout)["config"] == cfg.to_dict()


def test_token_labels_are_printable():
    from nanogpt.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("a b\n")
    assert explain.token_labels(tok, tok.encode("a b\n")) == ["a", "\u00b7", "b", "\\n"]


def test_char_preset_takes_its_vocab_from_the_prepared_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, where = explain.resolve_config(None, "shakespeare-char")
    assert cfg.vocab_size == explain.SHAKESPEARE_CHARS and "not prepared" in where
    (tmp_path / "data" / "shakespeare-char").mkdir(parents=True)
    (tmp_path / "data" / "shakespeare-char" / "meta.json").write_text(json.dumps({"vocab_size": 77}))
    cfg, where = explain.resolve_config(None, "shakespeare-char")
    assert cfg.vocab_size == 77 and "meta.json" in where
