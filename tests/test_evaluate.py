"""`nanogpt eval`: loss, perplexity and bits-per-byte over strided windows."""

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from nanogpt.cli import main
from nanogpt.scoring import score_tokens, windows
from nanogpt.config import GPTConfig
from nanogpt.model import GPT


def tiny_model(block_size=16, vocab_size=40, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    return model.eval()


def direct_token_loss(model, tokens, start, j):
    """-log p(tokens[j] | tokens[start:j]) from one forward pass over exactly that context."""
    with torch.no_grad():
        logits, _ = model(torch.tensor(tokens[start:j]).unsqueeze(0))
    return F.cross_entropy(logits[0, -1:], torch.tensor([tokens[j]])).item()


@pytest.mark.parametrize("n,ctx,stride", [(100, 16, 16), (100, 16, 5), (37, 16, 1), (10, 16, 16), (33, 8, 3)])
def test_windows_score_every_target_once(n, ctx, stride):
    seen = []
    for s, e, k in windows(n, ctx, stride):
        assert 0 <= s < e and e - s <= ctx and 1 <= k <= e - s
        seen += list(range(e - k + 1, e + 1))  # target indices this window scores
    assert seen == list(range(1, n))


def test_loss_equals_mean_of_direct_per_token_losses_no_overlap():
    # stride = context: target j is predicted from its block of 16 targets, whose window ends at
    # the block's last target (the final, partial block's window is the 16 tokens before token 69)
    model = tiny_model()
    tokens = np.random.default_rng(0).integers(0, 40, size=70)
    nats, n = score_tokens(model, tokens, context=16, stride=16, batch_size=3)
    ends = [min(((j - 1) // 16 + 1) * 16, 69) for j in range(1, 70)]
    direct = [direct_token_loss(model, tokens, max(0, e - 16), j) for j, e in zip(range(1, 70), ends)]
    assert n == 69
    assert nats / n == pytest.approx(float(np.mean(direct)), abs=1e-5)


def test_loss_equals_mean_of_direct_per_token_losses_sliding():
    # stride 1: every target sees the full context of the last ctx tokens (or all before it)
    model = tiny_model()
    tokens = np.random.default_rng(1).integers(0, 40, size=45)
    nats, n = score_tokens(model, tokens, context=16, stride=1, batch_size=4)
    direct = [direct_token_loss(model, tokens, max(0, j - 16), j) for j in range(1, 45)]
    assert n == 44
    assert nats / n == pytest.approx(float(np.mean(direct)), abs=1e-5)


def test_smaller_stride_gives_context_and_batching_does_not_matter():
    model = tiny_model()
    tokens = np.random.default_rng(2).integers(0, 40, size=90)
    a = score_tokens(model, tokens, 16, 7, batch_size=1)
    b = score_tokens(model, tokens, 16, 7, batch_size=64)
    assert a[1] == b[1] == 89
    assert a[0] == pytest.approx(b[0], rel=1e-6)


# --------------------------------------------------------------------------------------------
# the command


TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 6


@pytest.fixture
def char_run(tmp_path):
    from nanogpt.checkpoint import save_checkpoint
    from nanogpt.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text(TEXT)
    model = tiny_model(block_size=32, vocab_size=tok.vocab_size)
    info = {"iter": 1, "config": {"model": model.config.to_dict()}, "tokenizer": tok.to_dict()}
    save_checkpoint(tmp_path / "run", model, {}, info, is_best=True)
    return tmp_path / "run", model, tok


def test_eval_text_file_bits_per_byte(char_run, tmp_path, capsys):
    run, model, tok = char_run
    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    code = main(["eval", str(run), "--data", str(f), "--json", "--dtype", "float32", "--stride", "8"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    ids = tok.encode(TEXT)
    nats, n = score_tokens(model, np.array(ids), 32, 8)
    assert r["tokens"] == n == len(ids) - 1
    assert r["loss"] == pytest.approx(nats / n, rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-9)
    # char tokens are 1 byte here; the first character is context only
    assert r["bytes"] == len(TEXT.encode("utf-8")) - 1
    assert r["bits_per_byte"] == pytest.approx(nats / math.log(2) / r["bytes"], rel=1e-5)


def test_eval_prepared_folder_and_text_output(char_run, tmp_path, capsys):
    from nanogpt.data import load_prepared, prepare

    run, model, tok = char_run
    src = tmp_path / "corpus.txt"
    src.write_text(TEXT, encoding="utf-8")
    prepare([str(src)], str(tmp_path / "ds"), tokenizer="char", val_fraction=0.3, progress=False)
    # the dataset's char vocabulary equals the model's (same text)
    data = load_prepared(tmp_path / "ds")
    code = main(["eval", str(run), "--data", str(tmp_path / "ds"), "--dtype", "float32", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    val = data.split("val")
    nats, n = score_tokens(model, val, 32, 32)
    assert r["split"] == "val" and r["tokens"] == len(val) - 1
    assert r["loss"] == pytest.approx(nats / n, rel=1e-5)
    assert r["bits_per_byte"] == pytest.approx(r["loss"] / math.log(2) / data.bytes_per_token("val"), rel=1e-6)
    code = main(["eval", str(run), "--data", str(tmp_path / "ds"), "--split", "train", "--dtype", "bfloat16"])
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("loss ") and "perplexity" in out and "bits/byte" in out


def test_eval_gpt2_folder_on_text_scores_every_token(tmp_path, capsys):
    model = tiny_model(block_size=32, vocab_size=50257)
    model.save_pretrained(str(tmp_path / "hf"))
    text = "Hello wörld, this is a small test of the evaluation.\n" * 3
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    code = main(["eval", str(tmp_path / "hf"), "--data", str(tmp_path / "t.txt"), "--json", "--dtype", "float32"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    from nanogpt.tokenizer import get_gpt2_tokenizer

    assert r["tokens"] == len(get_gpt2_tokenizer().encode(text))  # led by end-of-text: all scored
    assert r["bytes"] == len(text.encode("utf-8"))


@pytest.mark.parametrize(
    "extra,msg",
    [
        (["--stride", "0"], "--stride must be in 1..32"),
        (["--stride", "33"], "--stride must be in 1..32"),
        (["--context", "64"], "--context must be in 1..32"),
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--max-tokens", "1"], "--max-tokens must be at least 2"),
    ],
)
def test_eval_bad_input_one_line(char_run, tmp_path, capsys, extra, msg):
    run, _, _ = char_run
    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    code = main(["eval", str(run), "--data", str(f), "--dtype", "float32", *extra])
    _, err = capsys.readouterr()
    assert code == 2 and msg in err and err.count("\n") == 1


def test_eval_missing_data_and_foreign_characters(char_run, tmp_path, capsys):
    run, _, _ = char_run
    assert main(["eval", str(run), "--data", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr()[1]
    f = tmp_path / "u.txt"
    f.write_text("Zebra ü", encoding="utf-8")
    assert main(["eval", str(run), "--data", str(f)]) == 2
    err = capsys.readouterr()[1]
    assert "outside" in err and "ü" in err and err.count("\n") == 1


def test_the_progress_bar_changes_nothing_and_counts_every_scored_token(monkeypatch, capsys):
    import tqdm.auto

    counted = []
    real = tqdm.auto.tqdm

    class Counting(real):
        def update(self, n=1):
            counted.append(n)
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Counting)
    model = tiny_model()
    tokens = torch.randint(0, 40, (100,))
    plain = score_tokens(model, tokens, context=16, stride=8, batch_size=3)
    counted.clear()
    with_bar = score_tokens(model, tokens, context=16, stride=8, batch_size=3, progress=True)
    assert with_bar == plain and sum(counted) == plain[1] == 99


def _eval_config(block_size, batch_size, eval_iters):
    from nanogpt.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.block_size, cfg.data.batch_size, cfg.run.eval_iters = block_size, batch_size, eval_iters
    return cfg


def test_training_evaluation_scores_a_small_split_whole():
    from nanogpt.device import setup_runtime
    from nanogpt.step import WHOLE_SPLIT_FACTOR, estimate_loss

    model = tiny_model(block_size=8, vocab_size=40)
    tokens = np.random.default_rng(3).integers(0, 40, size=5 * 8 + 1).astype(np.uint16)  # 5 windows of 8
    cfg = _eval_config(block_size=8, batch_size=2, eval_iters=2)  # 32 sampled tokens; 41 <= 4 x 32
    assert len(tokens) <= WHOLE_SPLIT_FACTOR * 2 * 2 * 8
    model.train()
    got = estimate_loss(model, {"val": tokens}, cfg, setup_runtime("cpu", dtype="float32", threads="1"), seed=0)
    assert model.training  # the caller's mode comes back
    t = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():  # every target once: the mean over the five consecutive windows
        logits, _ = model.eval()(t[:-1].view(5, 8))
    want = F.cross_entropy(logits.reshape(-1, 40), t[1:]).item()
    assert got["val"] == pytest.approx(want, rel=1e-5)
    # the same whatever the seed: nothing is sampled
    again = estimate_loss(model, {"val": tokens}, cfg, setup_runtime("cpu", dtype="float32", threads="1"), seed=7)
    assert again == got


def test_training_evaluation_samples_a_large_split():
    from nanogpt.data.loader import BatchLoader
    from nanogpt.device import setup_runtime
    from nanogpt.step import estimate_loss

    model = tiny_model(block_size=8, vocab_size=40)
    tokens = np.random.default_rng(4).integers(0, 40, size=1000).astype(np.uint16)  # > 4 x 2 x 2 x 8
    cfg = _eval_config(block_size=8, batch_size=2, eval_iters=2)
    got = estimate_loss(model, {"train": tokens}, cfg, setup_runtime("cpu", dtype="float32", threads="1"), seed=5)
    loader = BatchLoader(tokens, 8, 2, seed=5)
    with torch.no_grad():
        want = sum(model(*loader.next_batch())[1].item() for _ in range(2)) / 2
    assert got["train"] == pytest.approx(want, rel=1e-5)
