"""Validation loss of the `shakespeare-char-cpu` preset within fixed training-time budgets.

Trains the preset on tiny Shakespeare (character level, nanoGPT's 90/10 tail split) with
``--run.max_seconds`` budgets (default 20 s and 300 s: the learning-rate schedule follows
the budget), then reads the final validation loss and the training time from each run's
metrics.jsonl (training time excludes evaluation). Also trains nanoGPT's published CPU recipe
(4 layers x 128, block 64, batch 12, fp32, 2000 iterations) through the same code, as the
plain baseline measured in the same run. Writes JSON + Markdown to benchmarks/results/.

    python benchmarks/shakespeare_cpu.py --input ../shared/data/tinyshakespeare/input.txt
    python benchmarks/shakespeare_cpu.py --budgets 20 --skip-baseline   # quick
    python benchmarks/shakespeare_cpu.py --budgets 20,20,20,300          # repeat a budget: the machine drifts
    python benchmarks/shakespeare_cpu.py --budgets fifth,fifth,fifth     # a fifth of the recipe's measured time
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# nanoGPT README's CPU recipe for shakespeare_char (fp32, no compile, AdamW); every setting
# that the preset changes is spelled out, so the baseline stays nanoGPT's whatever the preset says
NANOGPT_CPU = [
    "--model.n_layer=4", "--model.n_head=4", "--model.n_embd=128", "--model.block_size=64", "--model.dropout=0.0",
    "--model.activation=gelu_tanh", "--model.bias=true", "--run.max_seconds=0",
    "--optim.name=adamw", "--optim.schedule=cosine", "--optim.weight_decay=0.1",
    "--data.batch_size=12", "--optim.lr=1e-3", "--optim.min_lr=1e-4", "--optim.warmup_iters=100", "--optim.beta1=0.9",
    "--optim.beta2=0.99",
    "--run.max_iters=2000", "--optim.lr_decay_iters=2000", "--run.dtype=float32", "--run.eval_interval=2000",
    "--run.eval_iters=50",
]


def prepare_data(input_txt: str, prefix: str) -> tuple[Path, Path]:
    """A fresh work folder and tiny Shakespeare in it, character level with nanoGPT's 90/10 split."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    data = work / "tinyshakespeare-char"
    subprocess.run([sys.executable, "-m", "nanogpt", "prepare", "tinyshakespeare", "--input", input_txt,
                    "--tokenizer", "char", "--out", str(data)], check=True, stdout=subprocess.DEVNULL)
    return work, data


def run(name: str, data: Path, out: Path, extra: list[str], preset: str = "shakespeare-char-cpu") -> dict:
    cmd = [sys.executable, "-m", "nanogpt", "train", "--preset", preset, f"--data.dataset={data}",
           f"--run.out_dir={out / name}", "--run.sample_tokens=0", "--run.progress=false", *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    last = evals[-1]
    return {
        "name": name, "iters": last["iter"], "train_time_s": last["train_time"], "val_loss": last["val_loss"],
        "train_loss": last["train_loss"], "tokens": last["tokens"],
        "tokens_per_s": last["tokens"] / last["train_time"] if last["train_time"] else None,
        "curve": [(r["train_time"], r["val_loss"]) for r in evals],
    }


def _cpu_signature() -> str:
    from nanogpt import cpu

    return cpu.signature()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default="../shared/data/tinyshakespeare/input.txt", help="tiny Shakespeare input.txt")
    ap.add_argument("--budgets", default="20,300",
                    help="comma-separated training-time budgets in seconds; 'fifth' is a fifth of the recipe's "
                         "training time measured in the same run (its target)")
    ap.add_argument("--skip-baseline", action="store_true", help="do not train nanoGPT's CPU recipe")
    ap.add_argument("--preset", default="shakespeare-char-cpu",
                    help="the preset(s) timed at each budget, comma-separated (they alternate, budget by budget)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for the budgeted runs, e.g. --set model.arch=modern (repeatable)")
    ap.add_argument("--eval-every", type=int, default=500,
                    help="evaluation interval of budgets over 60 s; smaller gives a finer time to the recipe's loss")
    ap.add_argument("--out", default=str(RESULTS / "shakespeare_cpu"), help="output path stem (.json and .md)")
    args = ap.parse_args()
    work, data = prepare_data(args.input, "nanogpt-bench-")
    results = []
    if not args.skip_baseline:
        results.append({**run("nanogpt-cpu-recipe", data, work, NANOGPT_CPU), "budget_s": None})
    presets = args.preset.split(",")
    if "fifth" in args.budgets and args.skip_baseline:
        ap.error("a 'fifth' budget needs the recipe's time: drop --skip-baseline")
    # a run stops after the step that crosses its budget: leave room for that last step (~0.1 s)
    fifth = math.floor(results[0]["train_time_s"] / 5 * 10) / 10 - 0.2 if "fifth" in args.budgets else 0.0
    budgets = [fifth if x == "fifth" else float(x) for x in args.budgets.split(",")]
    for i, b in enumerate(budgets):
        interval = ["--run.eval_interval=1000000"] if b <= 60 else [f"--run.eval_interval={args.eval_every}"]
        for preset in presets:
            name = (f"{preset}-{b:g}s" if len(presets) > 1 else f"preset-{b:g}s") + (
                f"-run{i + 1}" if budgets.count(b) > 1 else "")
            flags = [f"--run.max_seconds={b:g}", *interval, *(f"--{kv}" for kv in args.extra)]
            results.append({**run(name, data, work, flags, preset), "budget_s": b, "preset": preset,
                            "settings": args.extra})
    if not args.skip_baseline:
        target = results[0]["val_loss"]
        for r in results[1:]:  # the first evaluation at or below the recipe's final loss (an upper bound)
            r["time_to_recipe_val_s"] = next((t for t, v in r["curve"] if v <= target), None)
    import torch

    meta = {
        "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "cpu": _cpu_signature(),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
        "command": "python benchmarks/shakespeare_cpu.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    lines = [
        f"Recorded {meta['date']} on {meta['cpu']}, torch {meta['torch']}, {meta['cpu_threads']} cores' threads "
        f"(--run.threads auto). Command: `{meta['command']}`",
        "",
        "| run | budget | iterations | training time (s) | tokens/s | train loss | val loss | reached the recipe's "
        "val after (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        budget = f"{r['budget_s']:g} s" if r["budget_s"] else "2000 iters"
        reach = r.get("time_to_recipe_val_s")
        reach = "-" if "time_to_recipe_val_s" not in r else (f"{reach:.1f}" if reach is not None else "not reached")
        lines.append(f"| {r['name']} | {budget} | {r['iters']} | {r['train_time_s']:.1f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['train_loss']:.4f} | {r['val_loss']:.4f} | {reach} |")
    lines += ["", "Val loss: the whole validation split, every character scored once in windows of the run's "
              "block size (training scores a split this small whole); train loss: the runs' `eval_iters` random "
              "batches."]
    if fifth:
        lines += ["", f"A fifth of the recipe's training time: {results[0]['train_time_s'] / 5:.2f} s."]
    table = "\n".join(lines)
    Path(args.out + ".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
