"""``nanogpt plot RUN_DIR``: train/val loss against iterations and tokens, as a PNG."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

from nanogpt.errors import NanoGPTError
from nanogpt.fsutil import atomic_write_bytes, os_error


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _usable(row: dict[str, Any]) -> bool:
    """A row the plot can draw: a train step with its loss, or an evaluation with both losses."""
    keys = {"train": ("iter", "tokens", "loss"), "eval": ("iter", "tokens", "train_loss", "val_loss")}.get(row.get("kind"))
    return keys is not None and all(_number(row.get(k)) for k in keys)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl that are JSON objects (a clear error if there are none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise NanoGPTError(f"{path} not found; is {run_dir} a training run folder?")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise NanoGPTError(f"{path}:{n} is not valid JSON") from None
            if isinstance(row, dict):  # anything else is not a row of ours: skipped
                rows.append(row)
    if not rows:
        raise NanoGPTError(f"{path} holds no rows: the run has not logged anything yet")
    return rows


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a two-panel PNG (loss vs iterations, loss vs tokens); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(run_dir) if _usable(r)]
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    out_path = plot_path(run_dir, out)
    if not train and not evals:
        raise NanoGPTError(f"{Path(run_dir) / 'metrics.jsonl'} has no train or eval rows with losses to plot")
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
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    try:
        atomic_write_bytes(out_path, buf.getvalue())
    except OSError as e:
        raise os_error(e, "write", out_path, "make the folder writable or pass another --out") from None
    return out_path


def plot_path(run_dir: str | Path, out: str | Path | None) -> Path:
    """Where the PNG goes: ``--out`` (a folder gets loss.png inside, no suffix gets .png), else RUN_DIR/loss.png."""
    if not out:
        return Path(run_dir) / "loss.png"
    path = Path(out)
    if path.is_dir() and not path.is_symlink():
        return path / "loss.png"
    if path.suffix.lower() != ".png":
        if path.suffix:
            raise NanoGPTError(f"--out {out}: the plot is a PNG; give a name ending in .png (or a folder)")
        path = path.with_name(path.name + ".png")
    return path


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run folder (with metrics.jsonl)")
    parser.add_argument("--out", help="PNG path, or a folder to write loss.png into (default: RUN_DIR/loss.png)")


def cli_main(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise NanoGPTError("plotting needs matplotlib: pip install 'nanogpt[plot]'") from None
    path = plot_run(args.run_dir, args.out)
    print(f"wrote {path}")
    return 0
