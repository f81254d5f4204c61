"""``nanogpt plot RUN_DIR``: train/val loss against iterations and tokens, as a PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nanogpt.errors import NanoGPTError


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (a clear error if there are none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise NanoGPTError(f"{path} not found; is {run_dir} a training run folder?")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise NanoGPTError(f"{path}:{n} is not valid JSON") from None
    if not rows:
        raise NanoGPTError(f"{path} is empty: the run has not logged anything yet")
    return rows


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a two-panel PNG (loss vs iterations, loss vs tokens); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    out_path = Path(out) if out else Path(run_dir) / "loss.png"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, xkey, xlabel in ((axes[0], "iter", "iteration"), (axes[1], "tokens", "tokens seen")):
        if train:
            ax.plot([r[xkey] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.6, label="train (step)")
        if evals:
            ax.plot([r[xkey] for r in evals], [r["train_loss"] for r in evals], "o-", label="train (eval)")
            ax.plot([r[xkey] for r in evals], [r["val_loss"] for r in evals], "s-", label="val (eval)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cross-entropy loss (nats)")
        ax.grid(alpha=0.3)
        ax.legend()
    best = min((r["val_loss"] for r in evals), default=None)
    title = f"{Path(run_dir).name}" + (f" - best val loss {best:.4f}" if best is not None else "")
    fig.suptitle(title)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run folder (with metrics.jsonl)")
    parser.add_argument("--out", help="PNG path (default: RUN_DIR/loss.png)")


def cli_main(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise NanoGPTError("plotting needs matplotlib: pip install 'nanogpt[plot]'") from None
    path = plot_run(args.run_dir, args.out)
    print(f"wrote {path}")
    return 0
