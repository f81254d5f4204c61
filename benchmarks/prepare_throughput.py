"""GPT-2 BPE `nanogpt prepare` throughput on the built-in Shakespeare corpus: one process vs all cores.

Throughput = UTF-8 bytes of corpus text / wall-clock seconds of the whole ``prepare()`` call
(reading, tokenizing, writing; with ``--copies 1`` also the Markdown -> text conversion of the
built-in corpus). ``--copies K`` (K > 1) writes K copies of the corpus to one temporary text
file first, to show where extra processes start to pay for their start-up (each spawned worker
imports tiktoken and builds the GPT-2 ranks, about half a second). Every worker count must give
byte-identical token files; the script checks that.

    python benchmarks/prepare_throughput.py                      # copies 1 and 4, best of 3
    python benchmarks/prepare_throughput.py --copies 1 --repeats 1   # quick smoke run

Prints a table and writes benchmarks/results/prepare_throughput.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from nanogpt import data as D
from nanogpt.tokenizer import get_gpt2_tokenizer


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("train.bin", "val.bin"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()


def measure(source: str, nbytes: int, workers: int, repeats: int, tmp: Path) -> dict:
    """Best-of-``repeats`` seconds of prepare(source, gpt2, workers) and the token files' digest."""
    best, meta, digest = float("inf"), None, None
    for r in range(repeats):
        out = tmp / f"out-w{workers}-r{r}"
        t0 = time.perf_counter()
        meta = D.prepare([source], str(out), tokenizer="gpt2", workers=workers, progress=False, overwrite=True)
        best = min(best, time.perf_counter() - t0)
        digest = _digest(out)
    tokens = meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"]
    return {"workers": workers, "seconds": round(best, 3), "mb_per_s": round(nbytes / 1e6 / best, 3),
            "tokens": tokens, "tokens_per_s": round(tokens / best), "digest": digest}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, nargs="+", default=[1, 4], help="corpus sizes, in copies of Shakespeare")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting; the fastest counts")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="worker counts to compare (default: 1 and all cores)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "prepare_throughput.json"))
    args = p.parse_args(argv)

    cores = os.cpu_count() or 1
    worker_counts = sorted(set(args.workers or [1, cores]))
    get_gpt2_tokenizer()  # built once in this process, outside the timings
    text = D.shakespeare_text()
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for copies in args.copies:
            if copies == 1:
                source, nbytes = "shakespeare", len(text.encode("utf-8"))
            else:
                path = tmp / f"shakespeare-x{copies}.txt"
                path.write_text(text * copies, encoding="utf-8")
                source, nbytes = str(path), path.stat().st_size
            results = [measure(source, nbytes, w, args.repeats, tmp) for w in worker_counts]
            identical = len({r["digest"] for r in results}) == 1
            if not identical:
                print(f"error: token files differ between worker counts for {copies} copies", file=sys.stderr)
                return 1
            base = results[0]["seconds"]
            for r in results:
                rows.append({"copies": copies, "mb": round(nbytes / 1e6, 2), **r,
                             "speedup_vs_1": round(base / r["seconds"], 2), "identical_tokens": identical})

    print(f"GPT-2 BPE prepare throughput, built-in Shakespeare ({cores} cores, best of {args.repeats})")
    print(f"{'copies':>6} {'MB':>7} {'workers':>7} {'seconds':>8} {'MB/s':>7} {'Mtok/s':>7} {'speedup':>8}")
    for r in rows:
        print(f"{r['copies']:>6} {r['mb']:>7.2f} {r['workers']:>7} {r['seconds']:>8.2f} {r['mb_per_s']:>7.2f} "
              f"{r['tokens_per_s'] / 1e6:>7.2f} {r['speedup_vs_1']:>7.2f}x")
    result = {
        "benchmark": "prepare_throughput",
        "what": "UTF-8 MB of corpus text per second of nanogpt prepare --tokenizer gpt2, whole call",
        "machine": {"cpu_count": cores, "platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version()},
        "repeats": args.repeats,
        "rows": [{k: v for k, v in r.items() if k != "digest"} for r in rows],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
