"""The CPU preset's 300 s budget on an idle machine and with another process holding one core.

Trains `shakespeare-char-cpu` on tiny Shakespeare (character level) for its time budget
(a) on an idle machine and (b) while a competing CPU-bound process, pinned to core 0, runs
for the whole run (this script starts it and stops it; it also stops itself after the budget
plus a margin), each with a `--run.threads` setting (default: auto idle and busy, and busy with
the fixed count of all cores, which is what torch does without nanogpt's choice). Reads
the iterations, final validation loss and the thread decisions from each run's metrics.jsonl.
Writes JSON + Markdown to benchmarks/results/.

    python benchmarks/under_load.py --input ../shared/data/tinyshakespeare/input.txt
    python benchmarks/under_load.py --budget 30 --cases busy:auto    # quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

from shakespeare_cpu import RESULTS, prepare_data, run

# A busy loop pinned to one core that ends by itself: the benchmark cannot leave it behind.
COMPETITOR = ("import os, sys, time\n"
              "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
              "end = time.monotonic() + float(sys.argv[2])\n"
              "while time.monotonic() < end:\n"
              "    pass\n")


def one_case(load: str, threads: str, budget: float, data: Path, work: Path) -> dict:
    env_threads = os.environ.pop("OMP_NUM_THREADS", None)  # auto must see the machine, not a fixed count
    competitor = None
    if load == "busy":
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR, "0", str(budget * 3 + 300)])
    try:
        name = f"{load}-threads-{threads}"
        result = run(name, data, work, [f"--run.max_seconds={budget:g}", "--run.eval_interval=500",
                                        f"--run.threads={threads}"])
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
        if env_threads is not None:
            os.environ["OMP_NUM_THREADS"] = env_threads
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    decisions = [{"iter": r["iter"], "threads": r["threads"], "ms": r["ms"], "why": r["why"]}
                 for r in rows if r["kind"] == "threads"]
    return {**result, "load": load, "threads_setting": threads, "decisions": decisions}


def table(meta: dict, results: list[dict]) -> str:
    idle = {r["threads_setting"]: r for r in results if r["load"] == "idle"}
    lines = [
        f"Recorded {meta['date']} on {meta['cpu']} ({meta['cores']} cores), torch {meta['torch']}. "
        f"Command: `{meta['command']}`",
        "",
        "| load | --run.threads | iterations | of idle | tokens/s | val loss | thread choices (iter: count) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        base = idle.get(r["threads_setting"]) or idle.get("auto")
        share = f"{r['iters'] / base['iters']:.0%}" if base else "-"
        choices = ", ".join(f"{d['iter']}: {d['threads']}" for d in r["decisions"]) or "fixed"
        lines.append(f"| {r['load']} | {r['threads_setting']} | {r['iters']} | {share} | {r['tokens_per_s']:,.0f} | "
                     f"{r['val_loss']:.4f} | {choices} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default="../shared/data/tinyshakespeare/input.txt", help="tiny Shakespeare input.txt")
    ap.add_argument("--budget", type=float, default=300.0, help="training-time budget of each run in seconds")
    ap.add_argument("--cases", default=f"idle:auto,busy:auto,busy:{os.cpu_count()}",
                    help="comma-separated LOAD:THREADS; LOAD is idle or busy (one core held), THREADS a --run.threads "
                         "setting (a fixed count of all cores is what torch does without nanogpt's choice)")
    ap.add_argument("--out", default=str(RESULTS / "under_load"), help="output path stem (.json and .md)")
    args = ap.parse_args()
    from nanogpt import cpu

    work, data = prepare_data(args.input, "nanogpt-load-")
    results = [one_case(*case.split(":"), args.budget, data, work) for case in args.cases.split(",")]
    import torch

    meta = {"date": datetime.date.today().isoformat(), "cpu": cpu.signature(), "cores": os.cpu_count(),
            "torch": torch.__version__, "command": "python benchmarks/under_load.py " + " ".join(sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    text = table(meta, results)
    Path(args.out + ".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
