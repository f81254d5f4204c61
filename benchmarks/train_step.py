"""Our training step against a plain fp32 eager loop of the same model, side by side, on CPU.

    python benchmarks/train_step.py                 # all three cases, results in benchmarks/results/
    python benchmarks/train_step.py --cases char --rounds 5

"ours" is exactly what ``nanogpt train`` runs: ``setup_runtime`` defaults (bfloat16 autocast
on CPUs with AVX-512 BF16/AMX, compile off on CPU), ``configure_optimizer`` (AdamW, decay on
matrices, the fused kernel) and ``train_step``. "plain fp32" is nanoGPT's CPU path: the same
model in float32 without autocast, ``torch.optim.AdamW`` with its defaults, and the standard
loop (forward, backward, clip, step, zero_grad). Both start from the same weights and train on
the same fixed batch of random tokens.

Two more contenders give the ceiling for the speedup: the matrix products our step runs
(recorded once, forward and backward, with their shapes and transposes) replayed alone, in our
dtype and in fp32. The rest of a step (norms, activations, softmax, casts, the optimizer) is
memory-bound and gains at most ~2x from bf16, so a whole step can hardly beat that ratio.

The contenders alternate in rounds (ours, plain, ours, plain, ...) so that load from other
processes hits all alike; each reports the median over its measured steps. The CPU's peak
matmul FLOP/s per dtype is measured in the same run (``nanogpt.flops.measure_cpu_peak``) and
MFU is against the peak of the dtype the matmuls ran in. Because a shared VM's speed drifts
(the same probe read 0.8 and 2.1 TFLOP/s minutes apart on the development machine), the probe
runs again after every round, and each round's MFU is taken against the peak measured in that
same round; the table gives the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from nanogpt import flops
from nanogpt.bench import time_calls
from nanogpt.config import OptimConfig
from nanogpt.device import device_label, setup_runtime
from nanogpt.model import GPT, GPTConfig
from nanogpt.device import prepare_model
from nanogpt.optim import configure_optimizer
from nanogpt.step import train_step

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Case:
    """A model shape and batch to time."""

    name: str
    config: GPTConfig
    batch_size: int
    steps_per_round: int


CASES = {
    # nanoGPT's Shakespeare char model exactly: 6 layers, 6 heads, 384 wide, block 256, vocab 65,
    # no biases and the exact (erf) GELU (nanoGPT's defaults), nanoGPT's default batch of 12; no
    # dropout (dropout forces the slower math attention on CPU).
    "char": lambda a: Case("char 6L/6H/384, block 256 (nanoGPT's model)", GPTConfig(
        n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.0, bias=False, activation="gelu"),
        a.char_batch, a.char_steps),
    # The same model with GPT-2's biases and tanh GELU. Torch's tanh-GELU CPU kernel is slow (7 ms
    # against 1.5 for the exact one on a 12x256x1536 tensor, in either dtype), and the biases add
    # memory-bound passes, so both contenders spend more time outside the matrix products.
    "char-gpt2": lambda a: Case("char 6L/6H/384, block 256, GPT-2 block (biases, tanh GELU)", GPTConfig(
        n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.0), a.char_batch, a.char_steps),
    # A toy model for checking the script itself (tests); its numbers mean nothing.
    "smoke": lambda a: Case("smoke 2L/2H/32, block 16", GPTConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, dropout=0.0), 2, 1),
    # GPT-2 small dims at nanoGPT's GPT-2 settings (vocab 50304, block 1024), a small batch to fit.
    "gpt2": lambda a: Case("GPT-2 small 12L/12H/768, block 1024", GPTConfig(
        n_layer=12, n_head=12, n_embd=768, block_size=a.gpt2_block, vocab_size=50304, dropout=0.0),
        a.gpt2_batch, a.gpt2_steps),
}


def plain_fp32_contender(config: GPTConfig, batch: tuple[torch.Tensor, torch.Tensor]) -> Callable[[], float]:
    """nanoGPT's CPU training loop: fp32, no autocast, default AdamW, clip 1.0."""
    torch.manual_seed(0)
    model = GPT(config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=6e-4, betas=(0.9, 0.95)
    )
    x, y = batch

    def step() -> float:
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def our_contender(config: GPTConfig, batch: tuple[torch.Tensor, torch.Tensor], runtime: Any) -> Callable[[], float]:
    """The step ``nanogpt train`` runs, with its default device/dtype/compile decisions."""
    torch.manual_seed(0)
    model = GPT(config)
    optimizer = configure_optimizer(model, OptimConfig(), runtime.device)
    fwd = prepare_model(model, runtime, config.block_size, log=lambda s: None)
    return lambda: train_step(fwd, optimizer, [batch], runtime, grad_clip=1.0)


# The matrix-product kernels a training step runs (the linear layers' addmm/mm, attention's bmm).
_MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm")


@dataclass(frozen=True)
class Operand:
    """A recorded tensor argument: its shape and strides (a transposed view stays transposed)."""

    size: tuple[int, ...]
    stride: tuple[int, ...]


def record_matmuls(step: Callable[[], Any]) -> list[tuple[Any, list[Any], dict[str, Any]]]:
    """The matrix products one call of ``step`` runs, forward and backward: (op, args, kwargs),
    with tensor arguments recorded as ``Operand``s."""
    from torch.utils._python_dispatch import TorchDispatchMode

    # a product written into a given tensor (``out=``) is replayed as the plain op: same shapes, same work
    ops = {getattr(torch.ops.aten, name).default: getattr(torch.ops.aten, name).default for name in _MATMUL_OPS}
    ops.update({getattr(torch.ops.aten, name).out: getattr(torch.ops.aten, name).default for name in _MATMUL_OPS})
    calls: list[tuple[Any, list[Any], dict[str, Any]]] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            if func in ops:
                spec = [Operand(tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor) else a for a in args]
                calls.append((ops[func], spec, {k: v for k, v in kwargs.items() if k != "out"}))
            return func(*args, **kwargs)

    with Recorder():
        step()
    return calls


def matmul_replay(calls: list[tuple[Any, list[Any], dict[str, Any]]], dtype: torch.dtype) -> tuple[Callable[[], None], float]:
    """A step of only the recorded products, in ``dtype``, on fresh operands; and its FLOPs.

    Timed in both dtypes in the same rounds as the full steps, the ratio says how much faster
    this CPU's bf16 matrix units make the products alone: a whole step, whose remaining
    (memory-bound) work gains less from bf16, can hardly beat that ratio.
    """
    g = torch.Generator().manual_seed(0)

    def tensor(op: Operand) -> torch.Tensor:
        extent = 1 + sum((n - 1) * st for n, st in zip(op.size, op.stride))  # storage the view spans
        return torch.randn(extent, generator=g).to(dtype).as_strided(op.size, op.stride)

    prepared = []
    total_flops = 0.0
    for func, spec, kwargs in calls:
        args = [tensor(a) if isinstance(a, Operand) else a for a in spec]
        prepared.append((func, args, kwargs))
        a, b = [t for t in args if isinstance(t, torch.Tensor)][-2:]  # the two factors (after any bias)
        total_flops += 2 * a.numel() * b.shape[-1]  # 2 * (batch * m * k) * n

    def run() -> None:
        for func, args, kwargs in prepared:
            func(*args, **kwargs)

    return run, total_flops


def measure_peaks(seconds: float) -> dict[str, float]:
    """This moment's peak matmul FLOP/s per dtype key ("bf16", "fp32")."""
    return {k: flops.measure_cpu_peak(dt, seconds_per_shape=seconds) for k, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32))}


def run_case(case: Case, rounds: int, warmup: int, runtime: Any, probe_seconds: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Time both contenders on one model in alternating rounds; their medians, MFU and ratio.

    After each round the peak probe runs again, and MFU is computed round by round against the
    peak of that round, so a machine that slows down or speeds up mid-run moves both alike.
    """
    cfg = case.config
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, cfg.vocab_size, (case.batch_size, cfg.block_size + 1), generator=g)
    batch = (seq[:, :-1].contiguous(), seq[:, 1:].contiguous())  # (B, T) inputs, next-token targets
    calls = record_matmuls(our_contender(cfg, batch, runtime))  # on a copy: recording trains it a step
    mm_low, mm_flops = matmul_replay(calls, runtime.dtype)
    mm_fp32, _ = matmul_replay(calls, torch.float32)
    # each step timed right next to its own products alone (the ceiling, see matmul_replay), so
    # that the ratios of a round compare moments of the same machine speed
    contenders = {
        "ours": (our_contender(cfg, batch, runtime), runtime.dtype),
        "matmuls only, ours' dtype": (mm_low, runtime.dtype),
        "plain fp32": (plain_fp32_contender(cfg, batch), torch.float32),
        "matmuls only, fp32": (mm_fp32, torch.float32),
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    round_times: dict[str, list[float]] = {k: [] for k in contenders}  # median step time of each round
    losses: dict[str, list[float]] = {k: [] for k in contenders}
    round_peaks: list[dict[str, float]] = []
    for name, (step, _) in contenders.items():
        log(f"  warm-up {name} ({warmup} steps)")
        for _ in range(warmup):
            out = step()
            if out is not None:
                losses[name].append(float(out))
    for r in range(rounds):
        for name, (step, _) in contenders.items():
            timing = time_calls(step, 0, case.steps_per_round, torch.device("cpu"))
            times[name] += timing.per_call
            round_times[name].append(statistics.median(timing.per_call))
            losses[name] += [float(v) for v in timing.results if v is not None]
        round_peaks.append(measure_peaks(probe_seconds))
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {1000 * v[-1]:.0f} ms" for k, v in round_times.items())
            + f"; peak now bf16 {round_peaks[-1]['bf16'] / 1e12:.2f}, fp32 {round_peaks[-1]['fp32'] / 1e12:.2f} TFLOP/s")
    tokens = case.batch_size * cfg.block_size
    fpt = flops.flops_per_token(cfg, cfg.block_size)
    rows = {}
    matmuls_only = {}
    for name, (_, dtype) in contenders.items():
        t = sorted(times[name])
        median = t[len(t) // 2]
        key = flops.dtype_key(dtype)
        if name.startswith("matmuls only"):
            matmuls_only[name] = {
                "dtype": str(dtype).replace("torch.", ""),
                "ms_median": 1000 * median,
                "achieved_tflops": mm_flops / median / 1e12,
                "mfu_vs_own_dtype_peak": statistics.median(
                    [mm_flops / rt / pk[key] for rt, pk in zip(round_times[name], round_peaks)]),
                "round_ms": [1000 * v for v in round_times[name]],
            }
            continue
        tok_s = tokens / median
        # achieved FLOP/s of each round over the peak probed right after it
        mfu_own = statistics.median([tokens * fpt / rt / pk[key] for rt, pk in zip(round_times[name], round_peaks)])
        mfu_bf16 = statistics.median([tokens * fpt / rt / pk["bf16"] for rt, pk in zip(round_times[name], round_peaks)])
        rows[name] = {
            "dtype": str(dtype).replace("torch.", ""),
            "ms_per_step_median": 1000 * median,
            "ms_per_step_min": 1000 * t[0],
            "tokens_per_second": tok_s,
            "achieved_tflops": tok_s * fpt / 1e12,
            "round_ms_per_step": [1000 * v for v in round_times[name]],
            "mfu_vs_own_dtype_peak": mfu_own,
            "mfu_vs_bf16_peak": mfu_bf16,
            "loss_first": losses[name][0],
            "loss_last": losses[name][-1],
            "steps_timed": len(t),
        }
    return {
        "case": case.name,
        "model": cfg.to_dict(),
        "batch_size": case.batch_size,
        "tokens_per_step": tokens,
        "flops_per_token": fpt,
        "results": rows,
        "speedup_ours_vs_plain": rows["plain fp32"]["ms_per_step_median"] / rows["ours"]["ms_per_step_median"],
        "matmuls_only": {
            "products_per_step": len(calls),
            "flops_per_step": mm_flops,
            # < 1 where attention runs inside a fused SDPA kernel (not an aten matmul)
            "share_of_step_flops": mm_flops / (tokens * fpt),
            "results": matmuls_only,
            "speedup_vs_fp32": matmuls_only["matmuls only, fp32"]["ms_median"]
            / matmuls_only["matmuls only, ours' dtype"]["ms_median"],
        },
        "round_peak_tflops": [{k: v / 1e12 for k, v in pk.items()} for pk in round_peaks],
        "ceiling": ceiling(rows["ours"]["round_ms_per_step"], matmuls_only,
                           rows["plain fp32"]["ms_per_step_median"] / rows["ours"]["ms_per_step_median"]),
    }


# The targets: the step within 1.3x of its own products in the same dtype, on any CPU; and where those
# products alone are >= 4x faster in bf16 than fp32 (matrix units), the step >= 3x the plain fp32 loop.
STEP_OVER_PRODUCTS_MAX, PRODUCTS_SPEEDUP_FOR_3X, STEP_SPEEDUP_MIN = 1.3, 4.0, 3.0


def ceiling(ours_round_ms: list[float], matmuls_only: dict[str, Any], speedup: float) -> dict[str, Any]:
    """The step against its own matrix products, and which of the targets apply on this CPU.

    Ratios are taken round by round (the step and its products ran back to back) and their
    median reported, so a machine whose speed drifts between rounds moves both sides alike.
    """
    low = matmuls_only["matmuls only, ours' dtype"]["round_ms"]
    fp32 = matmuls_only["matmuls only, fp32"]["round_ms"]
    over = statistics.median(o / p for o, p in zip(ours_round_ms, low))
    products_speedup = statistics.median(f / p for f, p in zip(fp32, low))
    applies = products_speedup >= PRODUCTS_SPEEDUP_FOR_3X
    return {
        "step_over_products": over, "step_over_products_max": STEP_OVER_PRODUCTS_MAX,
        "step_over_products_met": over <= STEP_OVER_PRODUCTS_MAX,
        "products_speedup_bf16_vs_fp32": products_speedup, "speedup_target_applies": applies,
        "speedup_vs_plain": speedup, "speedup_met": (speedup >= STEP_SPEEDUP_MIN) if applies else None,
    }


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}" if round(lo, 2) == round(hi, 2) else f"{lo:.2f}-{hi:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table with the machine, peaks, date and command."""
    lines = [
        f"Training step, ours vs plain fp32 eager loop — {report['date']}",
        "",
        f"Machine: {report['machine']}; torch {report['torch']}. "
        "Peak matmul FLOP/s probed after every round (MFU is per round against that round's probe, median shown): "
        + "; ".join(f"{k} {_span([pk[k] for c in report['cases'] for pk in c['round_peak_tflops']])} TFLOP/s" for k in ("bf16", "fp32")) + ".",
        f"Command: `{report['command']}`",
        "",
        "| model | batch x block | contender | dtype | ms/step (median) | tokens/s | TFLOP/s | MFU (own dtype peak, same round) | MFU (bf16 peak, same round) | speedup |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["cases"]:
        for name, r in c["results"].items():
            speed = f"{c['speedup_ours_vs_plain']:.2f}x" if name == "ours" else "1.00x"
            lines.append(
                f"| {c['case']} | {c['batch_size']} x {c['model']['block_size']} | {name} | {r['dtype']} | "
                f"{r['ms_per_step_median']:.0f} | {r['tokens_per_second']:,.0f} | {r['achieved_tflops']:.3f} | "
                f"{100 * r['mfu_vs_own_dtype_peak']:.1f}% | {100 * r['mfu_vs_bf16_peak']:.1f}% | {speed} |"
            )
    lines += [
        "",
        "The same step's matrix products alone (recorded from our step, forward and backward, and "
        "replayed on fresh operands in each dtype, in the same rounds): the speedup a whole step can hardly exceed. "
        "Attention inside a fused SDPA kernel is not among them (the share column).",
        "",
        "| model | products per step | share of the step's FLOPs | ours' dtype: ms | TFLOP/s | fp32: ms | TFLOP/s | speedup |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["cases"]:
        mo = c["matmuls_only"]
        low, f32 = mo["results"]["matmuls only, ours' dtype"], mo["results"]["matmuls only, fp32"]
        lines.append(
            f"| {c['case']} | {mo['products_per_step']} | {100 * mo['share_of_step_flops']:.0f}% | {low['ms_median']:.0f} | {low['achieved_tflops']:.3f} | "
            f"{f32['ms_median']:.0f} | {f32['achieved_tflops']:.3f} | {mo['speedup_vs_fp32']:.2f}x |"
        )
    lines += [
        "",
        f"The step against its ceiling. Targets: step <= {STEP_OVER_PRODUCTS_MAX}x its own products in the same dtype; "
        f"where those products are >= {PRODUCTS_SPEEDUP_FOR_3X:g}x faster in bf16 than in fp32, the step >= "
        f"{STEP_SPEEDUP_MIN:g}x the plain fp32 loop.",
        "",
        "| model | step / its products | met | products bf16 vs fp32 | case | step vs plain fp32 | met |",
        "|---|---:|---|---:|---|---:|---|",
    ]
    for c in report["cases"]:
        ce = c["ceiling"]
        case = "matrix units: the 3x target applies" if ce["speedup_target_applies"] else "no 3x target here"
        met = {True: "yes", False: "no", None: "-"}
        lines.append(f"| {c['case']} | {ce['step_over_products']:.2f}x | {met[ce['step_over_products_met']]} | "
                     f"{ce['products_speedup_bf16_vs_fp32']:.2f}x | {case} | {ce['speedup_vs_plain']:.2f}x | "
                     f"{met[ce['speedup_met']]} |")
    lines += ["", "Round by round (each step ran right next to its products; on a shared VM both move, and not always "
              "together, so the median is what to read):", "",
              "| model | round | step (ms) | its products (ms) | step / products | bf16 probe after the round (TFLOP/s) |",
              "|---|---:|---:|---:|---:|---:|"]
    for c in report["cases"]:
        steps = c["results"]["ours"]["round_ms_per_step"]
        products = c["matmuls_only"]["results"]["matmuls only, ours' dtype"]["round_ms"]
        for i, (st, pr, pk) in enumerate(zip(steps, products, c["round_peak_tflops"]), 1):
            lines.append(f"| {c['case']} | {i} | {st:.0f} | {pr:.0f} | {st / pr:.2f}x | {pk['bf16']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="char,char-gpt2,gpt2", help="comma-separated: char, char-gpt2, gpt2, smoke (default: char,char-gpt2,gpt2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per contender first (default: 1)")
    p.add_argument("--char-batch", type=int, default=12)
    p.add_argument("--char-steps", type=int, default=3, help="timed steps per round, char model (default: 3)")
    p.add_argument("--gpt2-batch", type=int, default=2)
    p.add_argument("--gpt2-block", type=int, default=1024)
    p.add_argument("--gpt2-steps", type=int, default=1, help="timed steps per round, GPT-2 dims (default: 1)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--probe-seconds", type=float, default=0.5, help="seconds per shape of the peak FLOP/s probe")
    p.add_argument("--out", default=str(RESULTS / "train_step_cpu"), help="output path without extension")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    runtime = setup_runtime("cpu")  # our defaults on this CPU
    log(runtime.describe())

    cases = []
    for key in [c.strip() for c in a.cases.split(",") if c.strip()]:
        if key not in CASES:
            p.error(f"unknown case {key!r}; choose from {', '.join(CASES)}")
        case = CASES[key](a)
        log(f"{case.name}: batch {case.batch_size}, {a.rounds} rounds x {case.steps_per_round} steps")
        cases.append(run_case(case, a.rounds, a.warmup, runtime, a.probe_seconds, log))
        log(f"  speedup ours vs plain fp32: {cases[-1]['speedup_ours_vs_plain']:.2f}x; "
            f"the matrix products alone: {cases[-1]['matmuls_only']['speedup_vs_fp32']:.2f}x")
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": device_label(torch.device("cpu")),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "runtime": runtime.describe(),
        "command": "python benchmarks/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cases": cases,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
