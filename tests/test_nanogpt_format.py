"""nanoGPT's ckpt.pt and meta.pkl, read and written without running pickled code."""

import math
import os
import pickle

import pytest
import torch
from torch.nn import functional as F

from nanogpt import nanogpt_format as fmt
from nanogpt.config import GPTConfig
from nanogpt.errors import NanoGPTError
from nanogpt.generate import generate
from nanogpt.model import GPT

CHARS = list("\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def nanogpt_style_model():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=len(CHARS), bias=False,
                    activation="gelu", dropout=0.0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # far from init, so a wrong layout would show
    return model


def save_like_nanogpt(model, root):
    """A checkpoint as nanoGPT's train.py writes it: compiled-model keys, mask buffers, model_args, config."""
    out = root / "out-shakespeare-char"
    out.mkdir(parents=True)
    c = model.config
    state = {f"_orig_mod.{k}": v.clone() for k, v in model.state_dict().items()}
    for i in range(c.n_layer):  # nanoGPT registers this mask buffer when torch has no flash attention
        state[f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(c.block_size, c.block_size)).view(
            1, 1, c.block_size, c.block_size)
    model_args = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size, bias=c.bias,
                      vocab_size=c.vocab_size, dropout=c.dropout)
    torch.save({"model": state, "optimizer": {}, "model_args": model_args, "iter_num": 250,
                "best_val_loss": torch.tensor(1.4697), "config": {"dataset": "shakespeare_char", "batch_size": 64}},
               out / "ckpt.pt")
    meta = {"vocab_size": len(CHARS), "itos": dict(enumerate(CHARS)), "stoi": {ch: i for i, ch in enumerate(CHARS)}}
    (root / "data" / "shakespeare_char").mkdir(parents=True)
    (root / "data" / "shakespeare_char" / "meta.pkl").write_bytes(pickle.dumps(meta))
    return out


def reference_logits(sd, args, idx):
    """nanoGPT's forward written out plainly over its own state dict (pre-LN blocks, exact GELU, tied head)."""
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}
    B, T = idx.shape
    C, nh = args["n_embd"], args["n_head"]
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    for i in range(args["n_layer"]):
        p = f"transformer.h.{i}."
        h = F.layer_norm(x, (C,), sd[p + "ln_1.weight"], None, 1e-5)
        q, k, v = (h @ sd[p + "attn.c_attn.weight"].t()).split(C, dim=2)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // nh)
        att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(B, T, C) @ sd[p + "attn.c_proj.weight"].t()
        h = F.layer_norm(x, (C,), sd[p + "ln_2.weight"], None, 1e-5)
        x = x + F.gelu(h @ sd[p + "mlp.c_fc.weight"].t()) @ sd[p + "mlp.c_proj.weight"].t()
    x = F.layer_norm(x, (C,), sd["transformer.ln_f.weight"], None, 1e-5)
    return x @ sd["lm_head.weight"].t()


def test_a_nanogpt_checkpoint_samples_the_tokens_of_nanogpt_s_own_forward(tmp_path):
    out = save_like_nanogpt(nanogpt_style_model(), tmp_path)
    raw = torch.load(out / "ckpt.pt", weights_only=True)
    for source in (out, out / "ckpt.pt"):
        ck = fmt.read_checkpoint(source)
        assert (ck.iter_num, ck.dataset, ck.chars) == (250, "shakespeare_char", CHARS)
        assert ck.best_val_loss == pytest.approx(1.4697) and ck.config.activation == "gelu"
    model = GPT(ck.config).eval()
    model.load_state_dict({**ck.state, "lm_head.weight": ck.state["transformer.wte.weight"]})
    idx = torch.tensor([[CHARS.index(ch) for ch in "ROMEO:\n"]])
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], reference_logits(raw["model"], raw["model_args"], idx))
        ours = generate(model, idx, 15, temperature=0.0)[0, idx.size(1):].tolist()
        seq = idx
        for _ in range(15):  # nanoGPT's greedy loop: whole context, argmax of the last position
            seq = torch.cat([seq, reference_logits(raw["model"], raw["model_args"], seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert ours == seq[0, idx.size(1):].tolist()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_meta_pkl_that_would_run_code_is_refused(tmp_path):
    marker = str(tmp_path / "it-ran")
    evil = tmp_path / "meta.pkl"
    evil.write_bytes(pickle.dumps({"vocab_size": 2, "itos": {0: "a", 1: _RunsCode(marker)}}))
    with pytest.raises(NanoGPTError, match=r"refusing to load .*makedirs from a pickle"):
        fmt.read_meta_pkl(evil)
    assert not os.path.exists(marker)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = str(tmp_path / "it-ran")
    torch.save({"model": {}, "extra": _RunsCode(marker)}, tmp_path / "ckpt.pt")
    with pytest.raises(NanoGPTError, match="cannot be read as plain weights"):
        fmt.read_checkpoint(tmp_path)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("broken, match", [
    ({"model_args": {"n_layer": 1}}, "'model_args' must hold"),
    ({"model": "nope"}, "'model' is not a state dict of tensors"),
])
def test_malformed_checkpoints_are_one_line(tmp_path, broken, match):
    model = nanogpt_style_model()
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=24, bias=False, vocab_size=len(CHARS), dropout=0.0)
    torch.save({"model": model.state_dict(), "model_args": args, **broken}, tmp_path / "ckpt.pt")
    with pytest.raises(NanoGPTError, match=match):
        fmt.read_checkpoint(tmp_path / "ckpt.pt")


def test_written_checkpoint_reads_back_as_nanogpt_would_see_it(tmp_path):
    model = nanogpt_style_model()
    path = fmt.write_checkpoint(model.config, model.state_dict(), tmp_path / "out", chars=CHARS, dataset="mine")
    raw = torch.load(path, weights_only=True)  # what nanoGPT's sample.py reads
    assert raw["model_args"] == dict(n_layer=2, n_head=2, n_embd=32, block_size=24, bias=False,
                                     vocab_size=len(CHARS), dropout=0.0)
    assert raw["config"]["dataset"] == "mine"
    assert torch.equal(raw["model"]["lm_head.weight"], raw["model"]["transformer.wte.weight"])
    assert set(raw["model"]) == set(model.state_dict())
    ck = fmt.read_checkpoint(path.parent)
    assert ck.config == model.config and ck.chars == CHARS
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ck.state.items())


def test_a_nanogpt_checkpoint_is_a_model_source_everywhere(tmp_path, capsys):
    from nanogpt.checkpoint import load_model
    from nanogpt.cli import main
    from nanogpt.resolve import LOADABLE, resolve_source

    out = save_like_nanogpt(nanogpt_style_model(), tmp_path)
    for source in (out, out / "ckpt.pt"):
        assert resolve_source(str(source), LOADABLE).kind == "nanogpt"
    loaded = load_model(out)
    assert loaded.tokenizer.chars == CHARS and loaded.meta["iter"] == 250
    assert main(["sample", str(out / "ckpt.pt"), "--prompt", "ROMEO:", "--max-new-tokens", "4", "--dtype", "float32"]) == 0
    assert main(["inspect", str(out)]) == 0
    assert main(["export", str(out), "--to", str(tmp_path / "hf")]) == 0  # a nanoGPT user's model, for transformers
    assert load_model(tmp_path / "hf").tokenizer.chars == CHARS
    capsys.readouterr()
