"""nanogpt's C kernels (``nanogpt.native``) against PyTorch's, alone and inside the training step.

    python benchmarks/cpu_kernels.py                  # kernels and steps, results in benchmarks/results/
    python benchmarks/cpu_kernels.py --rounds 9 --cases char

Each kernel is timed on the shapes of nanoGPT's char model (6 x 384, batch 12 x 256) and of the
`shakespeare-char-cpu` preset (4 x 192, its batch of windows), in bf16, against what the training step
runs without it: for the causal softmax, the masked scores from one ``baddbmm`` plus torch's
softmax (``ops.MatmulAttention``); for the GELU, its backward and LayerNorm, torch's kernels on a
bf16 stream. Then the whole training step (``prepare_model``'s kernels, the case's optimizer) with and
without the C kernels, and the step's own matrix products replayed alone (its ceiling). The
contenders alternate within each round, so a VM's drift hits all alike; each ratio is taken round
by round and the median reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nanogpt import cpu, native
from nanogpt.bench import time_calls
from nanogpt.config import OptimConfig, resolve_train_config
from nanogpt.device import prepare_model, setup_runtime
from nanogpt.model import GPT, GPTConfig
from nanogpt.ops import apply_kernels, kernels_of
from nanogpt.optim import configure_optimizer
from nanogpt.step import train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import matmul_replay, record_matmuls

RESULTS = Path(__file__).resolve().parent / "results"


def shapes(case: str) -> dict[str, Any]:
    """Batch, heads, positions and widths of a case."""
    if case == "char":
        return {"B": 12, "nh": 6, "T": 256, "C": 384}
    if case == "smoke":  # for checking the script itself (tests); its numbers mean nothing
        return {"B": 2, "nh": 2, "T": 16, "C": 32}
    cfg = resolve_train_config("shakespeare-char-cpu", overrides={"model.vocab_size": 65})
    return {"B": cfg.data.batch_size, "nh": cfg.model.n_head, "T": cfg.model.block_size, "C": cfg.model.n_embd}


def kernel_pairs(case: str) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """name -> (PyTorch's way, the C kernel), on bf16 operands of the case's shapes."""
    s = shapes(case)
    B, nh, T, C = s["B"], s["nh"], s["T"], s["C"]
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B * nh, T, C // nh, generator=g).bfloat16() for _ in range(2))
    scale = 1.0 / math.sqrt(C // nh)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    bias = torch.zeros(T, T, dtype=torch.bfloat16).masked_fill_(~allowed, float("-inf"))
    scores = torch.bmm(q, k.transpose(1, 2))
    probs = native.causal_softmax(scores, scale)
    dprobs = torch.randn(probs.shape, generator=g).bfloat16()
    hidden = torch.randn(B, T, 4 * C, generator=g).bfloat16()
    dhidden = torch.randn(B, T, 4 * C, generator=g).bfloat16()
    stream = torch.randn(B, T, C, generator=g).bfloat16()
    dstream = torch.randn(B, T, C, generator=g).bfloat16()
    ln = torch.nn.LayerNorm(C, bias=False)
    _, mean, rstd = native.layer_norm(stream, ln.weight.detach(), None, 1e-5)
    rstd_t, mean_t = rstd.view(B, T, 1), mean.view(B, T, 1)

    def torch_ln_bwd() -> Any:
        return torch.ops.aten.native_layer_norm_backward(dstream, stream, [C], mean_t, rstd_t, ln.weight, None,
                                                         [True, True, False])

    return {
        "causal softmax forward (scores from q k^T)": (
            lambda: F.softmax(torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale), dim=-1),
            lambda: native.causal_softmax(torch.bmm(q, k.transpose(1, 2)), scale)),
        "causal softmax backward": (
            lambda: torch.ops.aten._softmax_backward_data(dprobs, probs, -1, torch.bfloat16),
            lambda: native.causal_softmax_backward(probs, dprobs, scale)),
        "GELU forward": (
            lambda: F.gelu(hidden),
            lambda: native.gelu(hidden)),
        "GELU backward": (
            lambda: torch.ops.aten.gelu_backward(dhidden, hidden),
            lambda: native.gelu_backward(dhidden, hidden)),
        "LayerNorm forward": (
            lambda: torch.ops.aten.native_layer_norm(stream, [C], ln.weight, None, 1e-5),
            lambda: native.layer_norm(stream, ln.weight.detach(), None, 1e-5)),
        "LayerNorm backward": (
            torch_ln_bwd,
            lambda: native.layer_norm_backward(dstream, stream, ln.weight.detach(), mean, rstd, False)),
    }


def step_contenders(case: str, runtime: Any) -> dict[str, Callable[[], Any]]:
    """The training step without and with the C kernels, and its matrix products alone (bf16)."""
    s = shapes(case)
    if case in ("char", "smoke"):
        config = GPTConfig(n_layer=6 if case == "char" else 2, n_head=s["nh"], n_embd=s["C"], block_size=s["T"],
                           vocab_size=65, dropout=0.0, bias=False, activation="gelu")
        optim, batch, clip = OptimConfig(), s["B"], 1.0
    else:
        cfg = resolve_train_config("shakespeare-char-cpu", overrides={"model.vocab_size": 65})
        config, optim, batch, clip = cfg.model, cfg.optim, cfg.data.batch_size, cfg.optim.grad_clip
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, config.vocab_size, (batch, config.block_size + 1), generator=g)
    x, y = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    def make(use_native: bool) -> Callable[[], Any]:
        torch.manual_seed(0)
        model = GPT(config)
        opt = configure_optimizer(model, optim, runtime.device)
        fwd = prepare_model(model, runtime, config.block_size, log=lambda s: None)
        apply_kernels(model, dataclasses.replace(kernels_of(model), native=use_native))
        return lambda: train_step(fwd, opt, [(x, y)], runtime, grad_clip=clip)

    torch_step, native_step = make(False), make(True)
    products, _ = matmul_replay(record_matmuls(make(True)), runtime.dtype)
    return {"PyTorch's kernels": torch_step, "C kernels": native_step, "products alone": products}


def timed(fn: Callable[[], Any], calls: int) -> float:
    """Median seconds per call over ``calls`` calls, after one untimed call."""
    return statistics.median(time_calls(fn, 1, calls, torch.device("cpu")).per_call)


def measure(case: str, rounds: int, runtime: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Kernel pairs and the step's contenders of one case, in alternating rounds."""
    kernels: dict[str, dict[str, list[float]]] = {}
    for name, (ref, ours) in kernel_pairs(case).items():
        runs: dict[str, list[float]] = {"torch": [], "c": []}
        for _ in range(rounds):
            runs["torch"].append(timed(ref, 20))
            runs["c"].append(timed(ours, 20))
        kernels[name] = runs
        log(f"  {case}: {name}: torch {1e3 * statistics.median(runs['torch']):.3f} ms, "
            f"C {1e3 * statistics.median(runs['c']):.3f} ms")
    steps = step_contenders(case, runtime)
    step_runs: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(rounds):
        for name, fn in steps.items():
            step_runs[name].append(timed(fn, 3 if case == "char" else 10))
        log(f"  {case} step round {r + 1}/{rounds}: " + ", ".join(f"{k} {1e3 * v[-1]:.1f} ms" for k, v in step_runs.items()))
    return {"kernels": kernels, "steps": step_runs}


def summarize(runs: dict[str, Any]) -> dict[str, Any]:
    """Medians and round-wise ratios."""
    out: dict[str, Any] = {"kernels": {}, "steps": {}}
    for name, r in runs["kernels"].items():
        out["kernels"][name] = {"torch_ms": 1e3 * statistics.median(r["torch"]), "c_ms": 1e3 * statistics.median(r["c"]),
                                "speedup": statistics.median(t / c for t, c in zip(r["torch"], r["c"])),
                                "round_ms": {k: [1e3 * v for v in r[k]] for k in ("torch", "c")}}
    s = runs["steps"]
    plain, c, products = s["PyTorch's kernels"], s["C kernels"], s["products alone"]
    out["steps"] = {
        "torch_ms": 1e3 * statistics.median(plain), "c_ms": 1e3 * statistics.median(c),
        "products_ms": 1e3 * statistics.median(products),
        "speedup": statistics.median(p / q for p, q in zip(plain, c)),
        "torch_over_products": statistics.median(p / m for p, m in zip(plain, products)),
        "c_over_products": statistics.median(q / m for q, m in zip(c, products)),
        "round_ms": {k: [1e3 * v for v in runs] for k, runs in s.items()},
    }
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [(f"Recorded {report['date']} on {report['cpu']}, torch {report['torch']}, {report['threads']} threads. "
              f"Command: `{report['command']}`"), ""]
    lines += ["| case | kernel | PyTorch ms | C ms | speedup (round-wise median) |", "|---|---|---:|---:|---:|"]
    for case, r in report["cases"].items():
        for name, k in r["kernels"].items():
            lines.append(f"| {case} | {name} | {k['torch_ms']:.3f} | {k['c_ms']:.3f} | {k['speedup']:.2f}x |")
    lines += ["", ("| case | step, PyTorch's kernels (ms) | step, C kernels (ms) | speedup | products alone (ms) | "
                   "step / products: PyTorch's | C |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for case, r in report["cases"].items():
        s = r["steps"]
        lines.append(f"| {case} | {s['torch_ms']:.1f} | {s['c_ms']:.1f} | {s['speedup']:.3f}x | {s['products_ms']:.1f} | "
                     f"{s['torch_over_products']:.3f} | {s['c_over_products']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="char,cpu-preset", help="comma-separated: char, cpu-preset, smoke")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (default: 7)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--out", default=str(RESULTS / "cpu_kernels"), help="output path without extension")
    args = p.parse_args(argv)
    lib, why = native.load()
    if lib is None:
        print(f"the C kernels cannot run here: {why}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    runtime = setup_runtime("cpu", threads=str(args.threads))
    if runtime.dtype is not torch.bfloat16:
        print("this CPU trains in float32: the C kernels (bf16) do not apply", file=sys.stderr)
        return 2
    cases = {}
    for case in args.cases.split(","):
        cases[case] = summarize(measure(case, args.rounds, runtime, log=lambda s: print(s, flush=True)))
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu.signature(), "torch": torch.__version__,
              "python": platform.python_version(), "threads": args.threads,
              "command": "python benchmarks/cpu_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cases": cases}
    text = markdown(report)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
