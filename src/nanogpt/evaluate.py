"""``nanogpt eval``: mean loss, perplexity and bits-per-byte of a model on a whole split or text.

Tokens are scored by :func:`nanogpt.scoring.score_tokens` (strided windows; see that module).

Text files are tokenized with the model's tokenizer; when it has an end-of-text token (GPT-2) the
stream starts with it, so every token of the text is scored.

bits per byte = total nats / ln 2 / UTF-8 bytes of the scored text. For a text file the bytes are
counted exactly. For a prepared split they are the split's bytes (from meta.json) times the
fraction of its tokens scored, i.e. ``loss / ln 2 / bytes_per_token``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nanogpt.errors import NanoGPTError
from nanogpt.scoring import score_tokens, windows_per_batch


@dataclass
class EvalResult:
    """What ``nanogpt eval`` reports (all losses in nats per token)."""

    source: str
    data: str
    split: str | None
    tokens: int  # targets scored
    bytes: float  # UTF-8 bytes of the scored text
    loss: float
    perplexity: float
    bits_per_byte: float
    context: int
    stride: int
    dtype: str
    seconds: float


def _tokens_of_text(path: Path, tokenizer: Any) -> np.ndarray:
    """The token stream of a text file, led by end-of-text when the tokenizer has one."""
    from nanogpt.data.corpora import read_text_file

    text = read_text_file(path)
    if not text:
        raise NanoGPTError(f"{path} is empty; nothing to evaluate")
    encode = getattr(tokenizer, "encode_array", None) or tokenizer.encode
    ids = np.asarray(encode(text), dtype=np.int64)
    if tokenizer.eot_id is not None:
        # start from end-of-text, as a document does in training: every token is then scored
        ids = np.concatenate([np.array([tokenizer.eot_id], dtype=np.int64), ids])
    return ids


def _utf8_bytes(tokenizer: Any, ids: np.ndarray) -> int:
    """UTF-8 bytes of the text of ``ids`` (exact even where the ids cut a character in two)."""
    as_bytes = getattr(tokenizer, "decode_bytes", None)
    if as_bytes is not None:
        return len(as_bytes(ids.tolist()))
    return len(tokenizer.decode(ids.tolist()).encode("utf-8"))


def _checked_source(source: str, runtime: Any, context: int | None, batch_size: int) -> Any:
    """The resolved model source, after checking --context, --batch-size and the memory they need (no weights read)."""
    from nanogpt.budget import check_inference_fits
    from nanogpt.resolve import LOADABLE, model_config, resolve_source

    src = resolve_source(source, LOADABLE)
    config, _ = model_config(src)
    ctx = config.block_size if context is None else context
    if not 1 <= ctx <= config.block_size:
        raise NanoGPTError(f"--context must be in 1..{config.block_size} (the model's block_size), got {ctx}")
    if batch_size <= 0:
        raise NanoGPTError(f"--batch-size must be positive, got {batch_size}")
    per_batch = windows_per_batch(batch_size, ctx, config.vocab_size)  # as score_tokens batches
    check_inference_fits(config, per_batch, 0, runtime.dtype, runtime.device, seq_len=ctx, all_logits=True)
    return src


def _split_tokens(path: Path, split: str, tok: Any, vocab_size: int, source: str) -> tuple[Any, np.ndarray]:
    """The prepared folder at ``path`` and the tokens of its ``split``, checked against the model's tokenizer and vocabulary."""
    from nanogpt.data.loader import load_prepared

    prepared = load_prepared(path)
    if tok is not None and tok.to_dict() != prepared.tokenizer.to_dict():
        raise NanoGPTError(
            f"{path} was tokenized with '{prepared.tokenizer.name}' but {source} uses '{tok.name}' "
            "(or a different character set); prepare the data with the model's tokenizer"
        )
    if prepared.vocab_size > vocab_size:
        raise NanoGPTError(f"{path} has a vocabulary of {prepared.vocab_size}, larger than the model's {vocab_size}")
    ids = prepared.split(split)
    if len(ids) < 2:
        raise NanoGPTError(f"split '{split}' of {path} has {len(ids)} token(s); at least 2 are needed")
    return prepared, ids


def evaluate(
    source: str,
    data: str,
    split: str = "val",
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = False,
    threads: str = "auto",
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """Load ``source`` and score ``data`` (a prepared folder's ``split`` or a UTF-8 text file).

    ``threads``: the ``--threads`` setting (see ``nanogpt.threads``); ``log`` receives its
    choices when ``auto`` sets or changes the count.
    """
    from nanogpt.checkpoint import load_model
    from nanogpt.device import dtype_name, setup_runtime

    if max_tokens is not None and max_tokens < 2:
        raise NanoGPTError(f"--max-tokens must be at least 2 (one target needs one token of context), got {max_tokens}")
    runtime = setup_runtime(device, dtype, "false", threads=threads)
    if log is not None:
        from nanogpt.threads import say_changes

        runtime.threads.on_decision = say_changes(log)
    path = Path(data)
    if not path.exists():
        raise NanoGPTError(f"--data {path} does not exist; pass a folder made by 'nanogpt prepare' or a UTF-8 text file")
    loaded = load_model(_checked_source(source, runtime, context, batch_size), runtime.device)
    model, tok = loaded.model, loaded.tokenizer
    if tok is not None:
        from nanogpt.generate import check_tokenizer_fits

        check_tokenizer_fits(tok, model.config.vocab_size, source)
    if path.is_dir():
        prepared, ids = _split_tokens(path, split, tok, model.config.vocab_size, source)
        ids = ids[:max_tokens]
        split_name: str | None = split
    else:
        if tok is None:
            raise NanoGPTError(f"{source} does not say which tokenizer it uses, so a text file cannot be tokenized for it")
        ids = _tokens_of_text(path, tok)[:max_tokens]
        if len(ids) < 2:
            raise NanoGPTError(f"{path} is a single token; nothing to evaluate")
        split_name = None
    ctx = model.config.block_size if context is None else context
    stride = ctx if stride is None else stride
    t0 = time.perf_counter()
    nats, n = score_tokens(model, ids, ctx, stride, batch_size, runtime.autocast, progress, runtime.threads)
    seconds = time.perf_counter() - t0
    if split_name is None:
        n_bytes = float(_utf8_bytes(tok, ids[1:]))  # the scored tokens: all but the first
    else:
        n_bytes = prepared.bytes_per_token(split) * n
    loss = nats / n
    return EvalResult(
        source=str(source),
        data=str(path),
        split=split_name,
        tokens=n,
        bytes=n_bytes,
        loss=loss,
        perplexity=math.exp(loss),
        bits_per_byte=nats / math.log(2) / n_bytes,
        context=ctx,
        stride=stride,
        dtype=dtype_name(runtime.dtype),
        seconds=seconds,
    )


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a run folder (its best checkpoint), a Hugging Face folder, a nanoGPT ckpt.pt, or a hub name (gpt2, ...)")
    parser.add_argument("--data", required=True, help="a folder made by 'nanogpt prepare', or a UTF-8 text file")
    parser.add_argument("--split", default="val", choices=["train", "val"], help="split of a prepared folder (default: val)")
    parser.add_argument("--context", type=int, default=None, help="tokens per window (default: the model's block_size)")
    parser.add_argument(
        "--stride", type=int, default=None, help="new tokens scored per window, 1..context (default: context = no overlap)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: 8)")
    parser.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens (default: all)")
    from nanogpt.device import add_runtime_args

    add_runtime_args(parser, "autocast dtype (auto: bfloat16 where the hardware has fast bf16, else float32)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (it is drawn on a terminal only)")


def cli_main(args: argparse.Namespace) -> int:
    from nanogpt.config import check_threads

    r = evaluate(
        args.source,
        args.data,
        split=args.split,
        context=args.context,
        stride=args.stride,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        device=args.device,
        dtype=args.dtype,
        progress=not args.quiet,
        threads=check_threads(args.threads, "--threads"),
        log=None if args.quiet else lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(asdict(r)))
        return 0
    where = f"{r.data} ({r.split})" if r.split else r.data
    print(
        f"{r.source} on {where}: {r.tokens:,} tokens scored, context {r.context}, stride {r.stride}, "
        f"{r.dtype}, {r.seconds:.1f} s",
        file=sys.stderr,
    )
    print(f"loss {r.loss:.4f}  perplexity {r.perplexity:.3f}  bits/byte {r.bits_per_byte:.4f}")
    return 0
