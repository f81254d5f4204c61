"""`--threads` in sample, eval, bench and serve: the count holds during the work, each token /
batch / decode step is one unit of the runtime's tuner, bad values are one error line.

The tuners here get a recording setter (and two pretend cores) instead of torch's, so that
auto's trials change nothing in the test process and nothing depends on the machine's speed.
"""

from __future__ import annotations

import json

import pytest
import torch

from nanogpt import bench, device, flops, threads
from nanogpt.cli import main
from nanogpt.config import GPTConfig
from nanogpt.generate import generate, generate_stream, sample_text
from nanogpt.model import GPT
from nanogpt.tokenizer import CharTokenizer

CHARS = sorted("\n !',.:;?abcdefghijklmnopqrstuvwxyz")


def tiny_model(vocab_size: int = len(CHARS), block_size: int = 16) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=1, n_head=2, n_embd=16)).eval()


class CountingTuner(threads.ThreadTuner):
    """A tuner that counts its units and knows whether one is running (setter: a list)."""

    def __init__(self, counts: list[int]) -> None:
        self.set_calls: list[int] = []
        super().__init__(counts, "test", set_threads=self.set_calls.append, clock=lambda: 0.0)
        self.units, self.inside = 0, False

    def unit(self):
        outer = super().unit()

        class _Unit:
            def __enter__(_):
                self.units += 1
                self.inside = True
                return outer.__enter__()

            def __exit__(_, *exc):
                self.inside = False
                return outer.__exit__(*exc)

        return _Unit()


@pytest.fixture
def keep_threads():
    """The process's thread count comes back after a test that sets it for real."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_dir(tmp_path):
    """A run folder with a tiny random char model."""
    from nanogpt.checkpoint import save_checkpoint

    tok = CharTokenizer(CHARS)
    model = tiny_model(tok.vocab_size)
    info = {"iter": 1, "config": {"model": model.config.to_dict()}, "tokenizer": tok.to_dict(), "val_loss": 3.0}
    save_checkpoint(tmp_path / "run", model, {}, info, is_best=True)
    return tmp_path / "run"


def two_pretend_cores(monkeypatch) -> list[threads.ThreadTuner]:
    """``--threads auto`` on a pretend 2-core machine with a recording setter; returns the tuners made."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    made: list[threads.ThreadTuner] = []

    def fake(setting, device_type="cpu"):
        tuner = threads.make_tuner(setting, device_type, environ={}, default=lambda: 2, set_threads=lambda n: None)
        made.append(tuner)
        return tuner

    monkeypatch.setattr(device, "make_tuner", fake)
    return made


def threads_in_forward(monkeypatch) -> list[int]:
    """torch's thread count at every forward pass of a GPT from now on."""
    seen: list[int] = []
    forward = GPT.forward

    def recording(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", recording)
    return seen


# --------------------------------------------------------------------------------------------
# The generation loop


@pytest.mark.parametrize("use_cache", [True, False])
def test_one_unit_per_generated_token_outside_the_consumer(use_cache):
    model = tiny_model(block_size=8)  # 20 tokens after 3: the window re-fills on the way
    idx = torch.tensor([[1, 2, 3]])
    reference = torch.stack(list(generate_stream(model, idx, 20, generator=torch.Generator().manual_seed(1),
                                                 use_cache=use_cache)), 1)
    tuner = CountingTuner([3])
    tokens = []
    for tok in generate_stream(model, idx, 20, generator=torch.Generator().manual_seed(1), use_cache=use_cache,
                               threads=tuner):
        assert not tuner.inside  # the consumer's time is not in a unit
        tokens.append(tok)
    assert tuner.units == 20 and tuner.set_calls == [3]
    assert torch.equal(torch.stack(tokens, 1), reference)  # the same tokens as without a tuner


def test_a_trial_is_one_token_per_unit():
    # two candidates, 1 discarded + 3 timed units each: the first decision comes with token 8, not 7
    model, idx = tiny_model(), torch.tensor([[1, 2]])
    for n, decisions in ((7, 0), (8, 1)):
        tuner = CountingTuner([2, 1])
        generate(model, idx, n, generator=torch.Generator().manual_seed(0), threads=tuner)
        assert tuner.units == n and len(tuner.decisions) == decisions
        assert tuner.set_calls[:2] == [1, 2]  # the other count first, the current one last


def test_generate_stops_early_and_counts_only_the_tokens_made():
    model, idx = tiny_model(), torch.tensor([[1, 2]])
    free = generate(model, idx, 12, temperature=0.0)
    stop = int(free[0, 5])  # greedy: the 4th new token is a stop id
    tuner = CountingTuner([1])
    out = generate(model, idx, 12, temperature=0.0, stop_ids=[stop], threads=tuner)
    first = next(i for i in range(2, 14) if int(free[0, i]) == stop)
    assert out.size(1) == first + 1 and tuner.units == first - 1


def test_sample_text_passes_the_tuner():
    tok = CharTokenizer(CHARS)
    tuner = CountingTuner([1])
    text = sample_text(tiny_model(), tok, tok.encode("ab"), max_new_tokens=9, generator=torch.Generator().manual_seed(0),
                       threads=tuner)
    assert tuner.units == 9 and len(text[0]) == 9


def test_say_changes_says_only_changes():
    said: list[str] = []
    on_decision = threads.say_changes(said.append)
    on_decision({"threads": 2, "ms": {2: 10.0, 1: 20.0}, "why": "periodic check", "changed": False})
    on_decision({"threads": 1, "ms": {2: 30.0, 1: 20.0}, "why": "periodic check", "changed": True})
    assert said == ["threads: 1 (auto, periodic check: 20.0 ms per step at 1, 30.0 at 2)"]


# --------------------------------------------------------------------------------------------
# The commands


def test_sample_threads_1_holds_during_the_work(run_dir, monkeypatch, capsys, keep_threads):
    torch.set_num_threads(2)
    seen = threads_in_forward(monkeypatch)
    assert main(["sample", str(run_dir), "--max-new-tokens", "5", "--threads", "1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert seen == [1] * 5  # the prefill and four decode steps
    assert "1 thread (asked for)" in err and "threads: " not in err  # a fixed count: no decision lines


def test_sample_auto_says_its_choice_once(run_dir, monkeypatch, capsys):
    made = two_pretend_cores(monkeypatch)
    assert main(["sample", str(run_dir), "--max-new-tokens", "12", "--device", "cpu", "--dtype", "float32"]) == 0
    err = capsys.readouterr().err
    (tuner,) = made
    assert "threads auto (2 cores; trying 2/1)" in err
    chosen = [line for line in err.splitlines() if line.startswith("threads: ")]
    assert len(tuner.decisions) == 1 and chosen == [threads.describe_decision(tuner.decisions[0])]


def test_eval_threads_1_holds_for_every_batch(run_dir, tmp_path, monkeypatch, capsys, keep_threads):
    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog. " * 4)
    torch.set_num_threads(2)
    seen = threads_in_forward(monkeypatch)
    argv = ["eval", str(run_dir), "--data", str(tmp_path / "t.txt"), "--batch-size", "2", "--threads", "1",
            "--device", "cpu", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 179
    assert seen == [1] * 6  # 179 targets in windows of 16: 12 windows, 6 batches


def test_eval_auto_times_each_batch(run_dir, tmp_path, monkeypatch, capsys):
    from nanogpt import evaluate

    (tmp_path / "t.txt").write_text("abc " * 100)
    made = two_pretend_cores(monkeypatch)
    said: list[str] = []
    r = evaluate.evaluate(str(run_dir), str(tmp_path / "t.txt"), context=4, batch_size=1, device="cpu", log=said.append)
    (tuner,) = made
    assert r.tokens == 399 and len(tuner.decisions) >= 1  # 100 batches: the trial of 8 ended
    assert said == [threads.describe_decision(d) for d in tuner.decisions if d["changed"]]


@pytest.mark.parametrize("command", [
    ["sample", "gpt2"], ["eval", "gpt2", "--data", "nothing"], ["bench", "--device", "cpu"], ["serve", "gpt2"],
])
@pytest.mark.parametrize("value", ["0", "x", "-1", "1.5"])
def test_bad_threads_is_one_line(command, value, capsys):
    if command[0] == "serve":
        pytest.importorskip("uvicorn")
        pytest.importorskip("fastapi")
    assert main([*command, "--threads", value]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"nanogpt {command[0]}: error: --threads must be 'auto' or a positive number of threads, got '{value}'"]


# --------------------------------------------------------------------------------------------
# bench

TINY = ["--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "16", "--model.vocab_size", "37",
        "--block-size", "16", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--device", "cpu",
        "--dtype", "float32"]


@pytest.fixture
def known_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(flops, "_cpu_peak_memory", {})
    monkeypatch.setattr(flops, "measure_cpu_peak", lambda dtype, seconds_per_shape=0.0, shapes=(): 1e11)


def test_bench_fixed_threads_in_json_and_table(known_peak, capsys, keep_threads):
    assert main(["bench", *TINY, "--sample-tokens", "0", "--threads", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["threads"], r["threads_choice"], r["warmup_steps"]) == (1, "asked for", 1)
    assert torch.get_num_threads() == 1
    assert main(["bench", *TINY, "--sample-tokens", "0", "--threads", "1"]) == 0
    assert any(line.split() == ["threads", "1", "(asked", "for)"] for line in capsys.readouterr().out.splitlines())


def test_bench_auto_tunes_in_the_warm_up_then_fixes_the_count(known_peak, monkeypatch, capsys):
    made = two_pretend_cores(monkeypatch)
    units = []
    real_unit = threads.ThreadTuner.unit
    monkeypatch.setattr(threads.ThreadTuner, "unit", lambda self: units.append(1) or real_unit(self))
    sampled_units = []
    real_sampling = bench.measure_sampling
    monkeypatch.setattr(bench, "measure_sampling",
                        lambda *a, **k: sampled_units.append(len(units)) or real_sampling(*a, **k))
    assert main(["bench", *TINY, "--sample-tokens", "4", "--prompt-tokens", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    (tuner,) = made
    # one trial of 2 counts x (1 discarded + 3 timed) steps, plus one: all in the warm-up
    assert bench.tuning_steps(tuner) == 9 and r["warmup_steps"] == 9 and len(units) == 9
    assert sampled_units == [9]  # neither the measured steps nor the sampling are units
    (decision,) = tuner.decisions
    assert r["threads"] == decision["threads"] == tuner.current
    ms = decision["ms"]
    assert r["threads_choice"] == f"auto, the fastest of 2/1 in the warm-up: {ms[1]:.1f} ms at 1, {ms[2]:.1f} ms at 2 per step"


def test_bench_warm_up_longer_than_a_trial_is_kept(known_peak, monkeypatch, capsys):
    two_pretend_cores(monkeypatch)
    argv = [*TINY, "--sample-tokens", "0", "--json"]
    argv[argv.index("--warmup") + 1] = "11"
    assert main(["bench", *argv]) == 0
    assert json.loads(capsys.readouterr().out)["warmup_steps"] == 11


# --------------------------------------------------------------------------------------------
# serve


def test_engine_one_unit_per_decode_step():
    pytest.importorskip("fastapi")
    from nanogpt.generate import SamplingParams
    from nanogpt.serve.engine import CompletionSpec, Engine, Finish, Token

    tok = CharTokenizer(CHARS)
    specs = [CompletionSpec(tuple(tok.encode("ab")), 6, SamplingParams(0.0)),
             CompletionSpec(tuple(tok.encode("the")), 9, SamplingParams(0.0))]

    def tokens(engine):  # both requests admitted at the first step; the steps run here, not in a thread
        boxes = [[] for _ in specs]
        for spec, box in zip(specs, boxes):
            engine.submit(spec, box.append)
        while not all(box and isinstance(box[-1], Finish) for box in boxes):
            engine.step()
        return [[e.id for e in box if isinstance(e, Token)] for box in boxes]

    tuner = CountingTuner([1])
    engine = Engine(tiny_model(), tok, max_batch=2, threads=tuner)
    got = tokens(engine)
    assert got == tokens(Engine(tiny_model(), tok, max_batch=2)) and [len(t) for t in got] == [6, 9]
    assert tuner.units == engine.steps == 9  # one per step: the longer completion's tokens
    assert tuner.set_calls == [1]


def test_load_server_passes_the_setting(run_dir, keep_threads):
    pytest.importorskip("fastapi")
    from nanogpt.serve.api import load_server

    server = load_server(str(run_dir), "cpu", "float32", threads="1")
    assert server.engine.threads.counts == [1] and server.engine.threads.reason == "asked for"
    assert torch.get_num_threads() == 1
