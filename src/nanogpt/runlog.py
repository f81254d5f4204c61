"""Where a training run's numbers go: ``metrics.jsonl``, the console, and TensorBoard or wandb when asked.

Only rank 0 logs; on the other ranks a :class:`Logger` is built disabled and every call does
nothing, so the training loop need not ask which rank it is on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from nanogpt.config import TrainConfig
from nanogpt.errors import NanoGPTError
from nanogpt.fsutil import open_append, os_error


class Logger:
    """metrics.jsonl + console (+ TensorBoard, wandb when asked), and the progress bar. Only rank 0 logs."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, enabled: bool, resume: bool) -> None:
        self.enabled = enabled
        self.tb = None
        self.wandb = None
        self.bar = None
        if not enabled:
            return
        # Always appended to: a new run starts in a folder without metrics.jsonl (train refuses or
        # moves an earlier run aside), and a symbolic link there is refused, never followed.
        path = self.path = run_dir / "metrics.jsonl"
        try:
            self.file = open_append(path)
        except OSError as e:
            raise os_error(e, "write", path, "make the run folder writable or pick another --out-dir") from None
        if cfg.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ModuleNotFoundError:
                raise NanoGPTError("--run.tensorboard needs tensorboard: pip install 'nanogpt[log]'") from None
            self.tb = SummaryWriter(str(run_dir / "tb"))
        if cfg.run.wandb:
            try:
                import wandb
            except ModuleNotFoundError:
                raise NanoGPTError("--run.wandb needs wandb: pip install wandb") from None
            self.wandb = wandb.init(project=cfg.run.wandb_project, name=run_dir.name, config=cfg.to_dict(), resume="allow")

    def start_bar(self, start: int, total: int, show: bool, seconds: tuple[float, float] | None = None) -> None:
        """Show a progress bar (on a terminal, when ``show``): of iterations from ``start`` to ``total``,
        or, for a time budget, of ``seconds`` = (training seconds done, budget), so its ETA is true."""
        if self.enabled and show:
            from tqdm import tqdm

            disable = not sys.stderr.isatty()
            if seconds is not None:
                self.bar = tqdm(total=round(seconds[1], 1), initial=round(seconds[0], 1), unit="s", dynamic_ncols=True,
                                leave=False, disable=disable, desc="training",
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
                self._by_time = True
            else:
                self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, leave=False, disable=disable)
                self._by_time = False

    def advance_bar(self, loss: float, seconds: float = 0.0, iteration: int = 0) -> None:
        """Move the progress bar on by one step (by its ``seconds`` of training on a time budget)."""
        if self.bar is not None:
            if getattr(self, "_by_time", False):
                left = self.bar.total - self.bar.n
                if seconds < left:
                    self.bar.update(seconds)
                else:  # the budget is spent: exactly full, never past it
                    self.bar.n = self.bar.total
                self.bar.set_postfix_str(f"iter {iteration}, loss {loss:.4f}")
            else:
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{loss:.4f}")

    def print(self, text: str) -> None:
        """One line on the console, above the progress bar if there is one."""
        if not self.enabled:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def record(self, row: dict[str, Any]) -> None:
        """Append ``row`` to metrics.jsonl and send its numbers to TensorBoard/wandb."""
        if not self.enabled:
            return
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as e:
            raise os_error(e, "append to", self.path, "free some space, then resume with --init-from resume") from None
        step = row.get("iter", 0)
        for k, v in row.items():
            if self.tb is not None and k != "iter" and isinstance(v, (int, float)):
                self.tb.add_scalar(f"{row.get('kind', 'train')}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{row.get('kind', 'train')}/{k}": v for k, v in row.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        """Close the bar, the file and the writers; a second call does nothing."""
        if not self.enabled:
            return
        self.enabled = False
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
