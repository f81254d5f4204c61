"""nanogpt: train, fine-tune, inspect and sample GPT-2-style language models.

New here? Read ``nanogpt/model.py`` first: the whole Transformer, from token ids ``[B, T]`` to
logits ``[B, T, V]``, in one file of math. The README's *Layout* section maps the rest.

Importing the package does nothing heavy: ``from nanogpt import GPTConfig`` needs no torch,
``from nanogpt import GPT`` imports torch and the model on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "GPTConfig":
        from nanogpt.config import GPTConfig

        return GPTConfig
    if name == "GPT":
        from nanogpt.model import GPT

        return GPT
    raise AttributeError(f"module 'nanogpt' has no attribute {name!r}")
