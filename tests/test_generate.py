"""Generation: the KV cache changes nothing but speed; sampling controls; `nanogpt sample`."""

import json

import pytest
import torch
from torch.nn import functional as F

from nanogpt.cli import main
from nanogpt.errors import NanoGPTError
from nanogpt.generate import (
    KVCache,
    TextStream,
    filter_logits,
    generate,
    generate_stream,
    sample_next_token,
    window_start,
)
from nanogpt.config import GPTConfig
from nanogpt.model import GPT
from nanogpt.ops import Kernels, apply_kernels


def tiny_model(block_size=32, vocab_size=61, n_layer=2, n_head=2, n_embd=32, seed=0, std=0.3):
    """A small random model with sharp (non-uniform) next-token distributions.

    GPT-2's init (std 0.02) gives nearly uniform logits, where greedy decoding is decided by
    float noise; larger weights make the argmax well defined, so equality tests mean something.
    """
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
            elif "bias" in name:
                p.normal_(0.0, 0.1)
    return model.eval()


def greedy_steps(model, idx, n, use_cache, context_keep=None):
    logits = []
    out = torch.stack(
        list(generate_stream(model, idx, n, temperature=0.0, use_cache=use_cache, context_keep=context_keep, logits_out=logits)),
        dim=1,
    )
    return out, torch.stack(logits, dim=1)  # (B, n), (B, n, V)


# --------------------------------------------------------------------------------------------
# cached == uncached


@pytest.mark.parametrize("context_keep", [None, 32, 1, 25])
def test_greedy_cache_equals_no_cache_across_block_boundary(context_keep):
    model = tiny_model(block_size=32)
    idx = torch.randint(0, 61, (3, 5))
    n = 120  # crosses block_size = 32 several times
    tok_c, log_c = greedy_steps(model, idx, n, use_cache=True, context_keep=context_keep)
    tok_r, log_r = greedy_steps(model, idx, n, use_cache=False, context_keep=context_keep)
    assert tok_c.shape == (3, n)
    assert torch.equal(tok_c, tok_r)
    torch.testing.assert_close(log_c, log_r, atol=1e-4, rtol=0)
    # the sequence is not degenerate (a constant token would make the comparison weak)
    assert len(set(tok_c[0].tolist())) > 5


def test_cache_with_matmul_attention_equals_sdpa_reference():
    """The explicit-matmul attention (used for CPU bf16 training) serves the cache too."""
    model = tiny_model(block_size=32)
    idx = torch.randint(0, 61, (2, 5))
    tok_ref, log_ref = greedy_steps(model, idx, 80, use_cache=False)
    apply_kernels(model, Kernels(attention="matmul"))
    tok_c, log_c = greedy_steps(model, idx, 80, use_cache=True)
    assert torch.equal(tok_c, tok_ref)
    torch.testing.assert_close(log_c, log_ref, atol=1e-4, rtol=0)


def test_generate_cache_equals_no_cache_long_prompt():
    # a prompt longer than the context: both paths keep its last block_size tokens
    model = tiny_model(block_size=16)
    idx = torch.randint(0, 61, (2, 40))
    a = generate(model, idx, 50, temperature=0.0, use_cache=True)
    b = generate(model, idx, 50, temperature=0.0, use_cache=False)
    assert a.shape == (2, 90)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :40], idx)


def test_sliding_window_reference_is_nanogpt_crop():
    # context_keep = block_size is exactly nanoGPT's loop: crop to the last block_size tokens
    model = tiny_model(block_size=16)
    idx = torch.randint(0, 61, (1, 3))
    seq = idx
    with torch.no_grad():
        for _ in range(40):
            logits, _ = model(seq[:, -16:])
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    ours = generate(model, idx, 40, temperature=0.0, use_cache=True, context_keep=16)
    assert torch.equal(ours, seq)


def test_window_start_schedule():
    # block 8, keep 4: the window grows to 8 tokens, then restarts from the last 4
    starts, s = [], 0
    for length in range(1, 20):
        s = window_start(s, length, 8, 4)
        starts.append(s)
        assert 1 <= length - s <= 8
    assert starts[:8] == [0] * 8
    assert starts[8] == 5  # length 9 -> window 5..8 (4 tokens)


def test_sampled_cache_equals_no_cache_same_seed():
    model = tiny_model(block_size=32)
    idx = torch.randint(0, 61, (2, 4))
    outs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(7)
        outs.append(generate(model, idx, 80, temperature=1.0, top_k=20, top_p=0.9, use_cache=use_cache, generator=g))
    assert torch.equal(outs[0], outs[1])


# --------------------------------------------------------------------------------------------
# sampling


def test_same_seed_same_tokens_different_seed_different():
    model = tiny_model(std=0.05)  # flat distributions: sampling has real choices to make
    idx = torch.zeros(1, 1, dtype=torch.long)

    def run(seed):
        return generate(model, idx, 60, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_top_k_1_equals_greedy():
    model = tiny_model(std=0.05)
    idx = torch.randint(0, 61, (2, 3))
    greedy = generate(model, idx, 50, temperature=0.0)
    topk1 = generate(model, idx, 50, temperature=1.3, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(greedy, topk1)


def test_top_k_keeps_exactly_k():
    logits = torch.randn(4, 100)
    kept = torch.isfinite(filter_logits(logits, top_k=7))
    assert kept.sum(-1).tolist() == [7] * 4
    assert torch.equal(kept, torch.zeros_like(kept).scatter_(-1, logits.topk(7).indices, True))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.999])
def test_top_p_keeps_smallest_set_reaching_p(p):
    torch.manual_seed(1)
    logits = torch.randn(8, 50) * 2
    probs = logits.softmax(-1)
    kept = torch.isfinite(filter_logits(logits, top_p=p))
    for row in range(8):
        keep = kept[row]
        mass = probs[row][keep].sum().item()
        assert mass >= p - 1e-6  # the set reaches p ...
        least = probs[row][keep].min()
        assert mass - least.item() < p  # ... and is the smallest: without its least likely token it does not
        # and it is a top set: every kept token is at least as likely as every dropped one
        if (~keep).any():
            assert probs[row][keep].min() >= probs[row][~keep].max()


def test_top_p_one_keeps_everything_and_sampling_stays_in_set():
    logits = torch.randn(2, 30)
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()
    allowed = torch.isfinite(filter_logits(logits, top_p=0.5))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        tok = sample_next_token(logits, 1.0, None, 0.5, g)
        assert allowed[torch.arange(2), tok].all()


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(top_p=0.0), "top-p"),
        (dict(top_p=1.5), "top-p"),
        (dict(top_k=0), "top-k"),
        (dict(temperature=-1.0), "temperature"),
    ],
)
def test_bad_sampling_params(kw, msg):
    model = tiny_model()
    with pytest.raises(NanoGPTError, match=msg):
        generate(model, torch.zeros(1, 1, dtype=torch.long), 3, **kw)


def test_stop_ids_end_generation_and_pad_finished_rows():
    model = tiny_model()
    idx = torch.randint(0, 61, (2, 3))
    free = generate(model, idx, 40, temperature=0.0)
    stop = int(free[0, 3 + 5])  # row 0's 6th generated token
    out = generate(model, idx, 40, temperature=0.0, stop_ids=[stop])
    row0 = out[0, 3:].tolist()
    first = row0.index(stop)
    assert first <= 5
    assert all(t == stop for t in row0[first:])  # a finished row repeats its stop id
    assert out.shape[1] <= free.shape[1]


def test_kv_cache_update_and_overflow():
    cache = KVCache(n_layer=2, batch_size=1, n_head=2, max_len=4, head_dim=3)
    k = torch.randn(1, 2, 3, 3)
    k_all, v_all = cache.update(0, k, k + 1)
    assert k_all.shape == (1, 2, 3, 3) and torch.equal(k_all, k) and torch.equal(v_all, k + 1)
    cache.pos = 3
    k_all, _ = cache.update(1, torch.ones(1, 2, 1, 3), torch.ones(1, 2, 1, 3))
    assert k_all.shape == (1, 2, 4, 3)
    with pytest.raises(ValueError, match="holds 4 positions"):
        cache.update(0, torch.ones(1, 2, 2, 3), torch.ones(1, 2, 2, 3))


# --------------------------------------------------------------------------------------------
# text streaming and stop strings


class _Chars:
    name = "char"
    eot_id = None

    def __init__(self, chars):
        self.chars = chars
        self.vocab_size = len(chars)

    def encode(self, text):
        return [self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def test_text_stream_stop_string_cut_and_held_back():
    tok = _Chars("abcdefgh\n")
    s = TextStream(tok, stop=["\n\n", "cde"])
    pieces = [s.push(i) for i in tok.encode("abab\nba")]
    # the trailing "\n" may start "\n\n": it is held back until the next character
    assert "".join(pieces[:5]) == "abab"
    assert pieces[5] == "\nb"
    pieces += [s.push(i) for i in tok.encode("cdefff")]
    assert s.done and s.text == "abab\nba"
    assert "".join(pieces) + s.finish() == "abab\nba"


def test_text_stream_without_stop_shows_everything():
    tok = _Chars("xyz")
    s = TextStream(tok)
    shown = "".join(s.push(i) for i in [0, 1, 2, 2]) + s.finish()
    assert shown == "xyzz" and not s.done


def test_text_stream_holds_back_partial_utf8():
    from nanogpt.tokenizer import get_gpt2_tokenizer

    tok = get_gpt2_tokenizer()
    ids = tok.encode("héllo 日本語 wörld")
    s = TextStream(tok)
    pieces = [s.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + s.finish() == "héllo 日本語 wörld"


# --------------------------------------------------------------------------------------------
# the `nanogpt sample` command


CHARS = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@pytest.fixture
def char_run(tmp_path):
    """A run folder holding a checkpoint of a tiny random char model."""
    from nanogpt.checkpoint import save_checkpoint
    from nanogpt.tokenizer import CharTokenizer

    tok = CharTokenizer(sorted(CHARS))
    model = tiny_model(block_size=32, vocab_size=tok.vocab_size, std=0.1)
    info = {"iter": 1, "config": {"model": model.config.to_dict()}, "tokenizer": tok.to_dict(), "val_loss": 3.0}
    run = tmp_path / "run"
    save_checkpoint(run, model, {}, info, is_best=True)
    return run


@pytest.fixture
def gpt2_dir(tmp_path):
    """A Hugging Face GPT-2 folder of a tiny random model with GPT-2's vocabulary."""
    model = tiny_model(block_size=64, vocab_size=50257, n_embd=16, n_head=2, std=0.05)
    out = tmp_path / "hf"
    model.save_pretrained(str(out))
    return out


def run_cli(capsys, *argv):
    code = main(["sample", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_cli_char_run_same_seed_same_text(char_run, capsys):
    args = [char_run, "--prompt", "To be", "--max-new-tokens", 40, "--dtype", "float32"]
    code, out1, err = run_cli(capsys, *args, "--seed", 1)
    assert code == 0, err
    assert out1.startswith("To be") and len(out1.rstrip("\n")) == len("To be") + 40
    assert run_cli(capsys, *args, "--seed", 1)[1] == out1
    assert run_cli(capsys, *args, "--seed", 2)[1] != out1


def test_sample_cli_stream_equals_batch_output_and_stop(char_run, capsys):
    args = [char_run, "--prompt", "ab", "--max-new-tokens", 60, "--seed", 3, "--dtype", "float32"]
    _, plain, _ = run_cli(capsys, *args)
    _, streamed, _ = run_cli(capsys, *args, "--stream")
    assert streamed == plain
    gen = plain[2:].rstrip("\n")
    stop = gen[10:12]
    _, stopped, _ = run_cli(capsys, *args, "--stop", stop, "zzzz")
    assert stopped.rstrip("\n") == "ab" + gen[: gen.index(stop)]


def test_sample_cli_num_samples_and_bf16(char_run, capsys):
    code, out, err = run_cli(capsys, char_run, "--num-samples", 3, "--max-new-tokens", 10, "--dtype", "bfloat16")
    assert code == 0, err
    assert out.count("---------------") == 2
    assert "bfloat16" in err


def test_sample_cli_empty_prompt_char_starts_from_newline(char_run, capsys):
    code, out, err = run_cli(capsys, char_run, "--max-new-tokens", 5, "--dtype", "float32")
    assert code == 0 and "starting from a newline" in err


def test_sample_cli_gpt2_folder_empty_prompt_eot_and_long_prompt(gpt2_dir, capsys):
    code, out, err = run_cli(capsys, gpt2_dir, "--max-new-tokens", 5, "--dtype", "float32", "--top-k", "off")
    assert code == 0, err
    assert "end-of-text" in err
    long_prompt = "word " * 100  # 100+ tokens, context 64
    code, out, err = run_cli(capsys, gpt2_dir, "--prompt", long_prompt, "--max-new-tokens", 5, "--dtype", "float32")
    assert code == 0, err
    assert "longer than the model's context of 64" in err and "keeping its last 64 tokens" in err
    assert out.startswith(long_prompt)


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--prompt", "héllo €"], "not in the char vocabulary of this model: 'é', '€'"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be positive"),
        (["--num-samples", "-1"], "--num-samples must be positive"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.01"], "--top-p must be in (0, 1]"),
        (["--top-k", "0"], "--top-k must be an integer >= 1"),
        (["--temperature", "-0.5"], "--temperature must be"),
        (["--stream", "--num-samples", "2"], "--num-samples 1 with --stream"),
        (["--context-keep", "0"], "context_keep must be an integer in 1..32"),
        (["--prompt", "a", "--prompt-file", "x.txt"], "either --prompt or --prompt-file"),
        (["--prompt-file", "/nonexistent/p.txt"], "prompt file /nonexistent/p.txt does not exist"),
    ],
)
def test_sample_cli_bad_input_one_line(char_run, capsys, argv, msg):
    code, out, err = run_cli(capsys, char_run, "--dtype", "float32", *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("nanogpt sample: error: ")
    assert msg in err


def test_sample_cli_missing_and_partial_checkpoint(char_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, tmp_path / "nope")
    assert code == 2 and "not found" in err and err.count("\n") == 1
    ck = json.loads((char_run / "best.json").read_text())["path"]
    (char_run / ck / "model.safetensors").unlink()
    code, _, err = run_cli(capsys, char_run)
    assert code == 2 and "incomplete" in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------
# sampling dtype


def test_prepare_for_sampling_bf16_keeps_state_and_tracks_fp32():
    from nanogpt.generate import prepare_for_sampling
    from nanogpt.ops import RowLinear

    ref = tiny_model(block_size=32, std=0.1)
    model = prepare_for_sampling(tiny_model(block_size=32, std=0.1), torch.bfloat16)
    assert isinstance(model.lm_head, RowLinear) and isinstance(model.transformer.h[0].mlp.c_fc, RowLinear)
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert set(model.state_dict()) == set(ref.state_dict())
    idx = torch.randint(0, 61, (1, 6))
    # decode steps (one row: the mv kernel) agree with the fp32 model to bf16 precision
    _, log_bf = greedy_steps(model, idx, 20, use_cache=True)
    _, log_fp = greedy_steps(ref, torch.cat([idx], 1), 1, use_cache=True)
    assert log_bf.dtype == torch.float32
    torch.testing.assert_close(log_bf[:, 0], log_fp[:, 0], atol=0.1, rtol=0.05)
    # and the row kernel computes what nn.Linear computes
    x = torch.randn(1, 1, 32, dtype=torch.bfloat16)
    lin = model.transformer.h[0].mlp.c_fc
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=2e-2, rtol=2e-2)
    # fp32 models are left alone
    same = prepare_for_sampling(tiny_model(), torch.float32)
    assert type(same.lm_head) is torch.nn.Linear


def test_generate_uses_eval_mode_and_restores_training():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=20, n_layer=1, n_head=1, n_embd=8, dropout=0.5)).train()
    idx = torch.zeros(1, 1, dtype=torch.long)
    a = generate(model, idx, 10, temperature=0.0)
    b = generate(model, idx, 10, temperature=0.0, use_cache=False)
    assert torch.equal(a, b)  # dropout would make these differ
    assert model.training


def test_sampling_follows_the_distribution_and_never_picks_a_filtered_token():
    from nanogpt.generate import sample_next_token

    probs = torch.tensor([0.5, 0.0, 0.3, 0.0, 0.15, 0.05])
    logits = probs.log().expand(4000, -1)  # 4000 rows of the same distribution (zeros: -inf)
    g = torch.Generator().manual_seed(0)
    drawn = sample_next_token(logits, 1.0, generator=g)
    freq = torch.bincount(drawn, minlength=6).float() / 4000
    assert freq[1] == 0 and freq[3] == 0  # impossible tokens never drawn
    assert torch.allclose(freq, probs, atol=0.025)  # 4000 draws: within ~3 standard deviations
    top2 = sample_next_token(logits, 1.0, top_k=2, generator=g)
    assert set(top2.tolist()) <= {0, 2}
    again = sample_next_token(logits, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, drawn)  # the same seed, the same tokens
