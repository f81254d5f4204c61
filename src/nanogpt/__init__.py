"""nanogpt: train, fine-tune, inspect and sample GPT-2-style language models.

Importing the package does nothing heavy; ``from nanogpt import GPT, GPTConfig`` imports torch
and the model on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("GPT", "GPTConfig"):
        from nanogpt import model

        return getattr(model, name)
    raise AttributeError(f"module 'nanogpt' has no attribute {name!r}")
