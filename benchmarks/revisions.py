"""The same `nanogpt bench` on two git revisions, alternating in one run: did a change make it slower?

Each revision is checked out into a temporary git worktree (the newer one may be the working
tree itself) and `python -m nanogpt bench --json` runs from its ``src/`` with the same flags,
the revisions taking turns each round (order rotated) so that load from other processes hits
both alike. Reported per revision: the median over rounds of the training step's median
ms/step and of sampling's cached and uncached tokens/s, and the ratios new / base.

    python benchmarks/revisions.py 138badb                          # base commit vs the working tree
    python benchmarks/revisions.py 138badb HEAD --rounds 5 -- --preset shakespeare-char-cpu --steps 20
    python benchmarks/revisions.py HEAD~1 --name sampling-gpt2 -- --preset gpt2-124m --model.n_layer 2 --batch-size 1

Writes ``results/revisions[-NAME].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
WORKTREE = "worktree"  # the revision name that means "the files as they are now"


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def checkout(rev: str, where: Path) -> tuple[Path, str]:
    """The source folder of ``rev`` and its commit (a worktree under ``where``; none for WORKTREE)."""
    if rev == WORKTREE:
        dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
        return ROOT / "src", git("rev-parse", "--short", "HEAD") + dirty
    commit = git("rev-parse", "--short", rev)
    path = where / commit
    git("worktree", "add", "--detach", str(path), commit)
    return path / "src", commit


def bench_once(src: Path, flags: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-m", "nanogpt", "bench", "--json", *flags], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout)


def summary(records: list[dict]) -> dict:
    """Medians over rounds of what each record measured."""
    out = {"ms_per_step": statistics.median(r["ms_per_step_median"] for r in records)}
    sampled = [r["sampling"] for r in records if r.get("sampling")]
    if sampled:
        out["cached_tokens_per_second"] = statistics.median(s["cached_tokens_per_second"] for s in sampled)
        out["uncached_tokens_per_second"] = statistics.median(s["uncached_tokens_per_second"] for s in sampled)
    return out


def run(base: str, new: str, rounds: int, flags: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="nanogpt-revisions-") as tmp:
        revs = {}
        try:
            for rev in (base, new):
                revs[rev] = checkout(rev, Path(tmp))
            records: dict[str, list[dict]] = {base: [], new: []}
            for i in range(rounds):
                for rev in ([base, new] if i % 2 == 0 else [new, base]):
                    print(f"round {i + 1}/{rounds}: {rev}", file=sys.stderr, flush=True)
                    records[rev].append(bench_once(revs[rev][0], flags))
        finally:
            for rev, (src, _) in revs.items():
                if rev != WORKTREE:
                    git("worktree", "remove", "--force", str(src.parent))
    first = records[base][0]
    result = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/revisions.py " + " ".join(sys.argv[1:]),
        "device": first["device"], "device_name": first["device_name"], "threads": first["threads"],
        "torch": first["torch"], "python": platform.python_version(), "preset": first.get("preset"),
        "rounds": rounds, "flags": flags,
        "base": {"rev": base, "commit": revs[base][1], **summary(records[base]), "records": records[base]},
        "new": {"rev": new, "commit": revs[new][1], **summary(records[new]), "records": records[new]},
    }
    result["ratios"] = {k: result["new"][k] / result["base"][k] for k in summary(records[base]) if k in result["new"]}
    return result


def markdown(r: dict) -> str:
    names = {"ms_per_step": "training ms/step (lower is better)",
             "cached_tokens_per_second": "sampling tok/s, KV cache", "uncached_tokens_per_second": "sampling tok/s, no cache"}
    lines = [
        f"`nanogpt bench` on two revisions, alternating — {r['date']}, {r['device']} ({r['device_name']}), "
        f"torch {r['torch']}; preset {r['preset']}, {r['rounds']} rounds (medians over rounds).",
        f"Command: `{r['command']}`",
        "",
        f"| measure | base {r['base']['commit']} | new {r['new']['commit']} | new / base |",
        "|---|---:|---:|---:|",
    ]
    for key, ratio in r["ratios"].items():
        lines.append(f"| {names[key]} | {r['base'][key]:,.1f} | {r['new'][key]:,.1f} | {ratio:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="the earlier revision (commit, branch, tag)")
    ap.add_argument("new", nargs="?", default=WORKTREE, help=f"the later revision (default: {WORKTREE}, the files as they are)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each revision, alternating (default: 3)")
    ap.add_argument("--name", default="", help="suffix of the result files (results/revisions-NAME.*)")
    ap.epilog = "Flags after -- go to nanogpt bench (default: its defaults)."
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, flags = ap.parse_args(argv[:cut]), argv[cut + 1:]
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    result = run(args.base, args.new, args.rounds, flags)
    text = markdown(result)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = "revisions" + (f"-{args.name}" if args.name else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (RESULTS / f"{stem}.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
