"""``nanogpt sample``: text from a run folder, a Hugging Face GPT-2 folder or a hub name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from nanogpt.errors import NanoGPTError
from nanogpt.generate import (
    SamplingParams,
    check_context_keep,
    check_tokenizer_fits,
    encode_prompt,
    prepare_for_sampling,
    sample_text,
    unescape_stop,
)



def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a run folder (its best checkpoint), a Hugging Face folder, a nanoGPT ckpt.pt, or a hub name (gpt2, ...)")
    g = parser.add_argument_group("prompt")
    g.add_argument("--prompt", default=None, help="text to continue (default: empty = start from end-of-text or a newline)")
    g.add_argument("--prompt-file", default=None, help="read the prompt from this UTF-8 file instead")
    g = parser.add_argument_group("sampling")
    g.add_argument("--num-samples", type=int, default=1, help="samples to generate, together as one batch (default: 1)")
    g.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate per sample (default: 500)")
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; < 1 sharper, > 1 more random (default: 0.8)")
    g.add_argument("--top-k", type=_top_k_arg, default=200, help="keep only the k most likely tokens, k >= 1, or 'off' (default: 200)")
    g.add_argument("--top-p", type=float, default=None, help="keep the smallest set of tokens whose probability reaches p, in (0, 1]")
    g.add_argument("--seed", type=int, default=1337, help="random seed for sampling (default: 1337)")
    g.add_argument("--stop", nargs="+", default=[], metavar="TEXT", help="stop a sample when it produces any of these strings (cut there); "
                   "backslash escapes \\n, \\t, \\r and \\\\ are understood, so --stop '\\n\\n' stops at a blank line")
    g.add_argument(
        "--context-keep",
        type=int,
        default=None,
        help="tokens kept when a long sample fills the context (default: block_size / 2; block_size = slide one token at a time, slowest)",
    )
    g.add_argument("--no-cache", action="store_true", help="re-run the whole context every step (the slow reference path)")
    g = parser.add_argument_group("output and runtime")
    g.add_argument("--stream", action="store_true", help="print the text as it is generated (one sample)")
    from nanogpt.device import add_runtime_args

    add_runtime_args(g, "weights' dtype while sampling (auto: bfloat16 where the hardware has fast bf16, else float32)")


def _top_k_arg(text: str) -> int | None:
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'off', got {text!r}") from None


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt_file is not None:
        raise NanoGPTError("give either --prompt or --prompt-file, not both")
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise NanoGPTError(f"prompt file {path} does not exist")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise NanoGPTError(f"prompt file {path} is not UTF-8 text") from None
    return args.prompt or ""


def _check_args(args: argparse.Namespace) -> None:
    """The sampling flags, checked before anything is loaded; --stop's backslash escapes decoded."""
    from nanogpt.config import check_seed, check_threads

    if args.max_new_tokens <= 0:
        raise NanoGPTError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.num_samples <= 0:
        raise NanoGPTError(f"--num-samples must be positive, got {args.num_samples}")
    try:
        SamplingParams(args.temperature, args.top_k, args.top_p)
    except NanoGPTError as e:
        raise NanoGPTError(f"--{e}") from None
    check_seed(args.seed, "--seed")
    check_threads(args.threads, "--threads")
    if args.stream and args.num_samples != 1:
        raise NanoGPTError("--stream shows one sample; use --num-samples 1 with --stream")
    args.stop = [unescape_stop(s) for s in args.stop]


def _checked_source(args: argparse.Namespace, runtime: Any) -> Any:
    """The resolved model source, after checking that sampling it fits in memory (before any weight is read)."""
    from nanogpt.budget import check_inference_fits
    from nanogpt.resolve import LOADABLE, model_config, resolve_source

    src = resolve_source(args.source, LOADABLE)
    config, _ = model_config(src)
    check_inference_fits(config, args.num_samples, args.max_new_tokens, runtime.dtype, runtime.device)
    return src


def cli_main(args: argparse.Namespace) -> int:
    from nanogpt.checkpoint import load_model
    from nanogpt.device import dtype_name, setup_runtime
    from nanogpt.threads import say_changes

    def info(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    _check_args(args)
    top_k = args.top_k
    prompt = _read_prompt(args)

    runtime = setup_runtime(args.device, args.dtype, "false", threads=args.threads)
    if runtime.dtype is torch.float16 and runtime.device.type == "cpu":
        raise NanoGPTError("float16 is not supported on CPU; use --dtype bfloat16 or float32")
    loaded = load_model(_checked_source(args, runtime), runtime.device)
    if loaded.tokenizer is None:
        raise NanoGPTError(f"{args.source} does not say which tokenizer it was trained with, so its tokens cannot be read as text")
    check_tokenizer_fits(loaded.tokenizer, loaded.model.config.vocab_size, args.source)
    model = prepare_for_sampling(loaded.model, runtime.dtype)
    block_size = model.config.block_size
    keep = check_context_keep(args.context_keep, block_size) if args.context_keep is not None else None

    ids, note = encode_prompt(loaded.tokenizer, prompt)
    if note:
        info(f"note: {note}")
    if len(ids) > block_size:
        info(f"note: the prompt is {len(ids)} tokens, longer than the model's context of {block_size}; keeping its last {block_size} tokens")
        ids = ids[-block_size:]
    threads = f", {runtime.threads.describe()}" if runtime.device.type == "cpu" else ""
    info(f"sampling from {args.source} on {runtime.device}, weights in {dtype_name(runtime.dtype)} ({runtime.dtype_reason}){threads}")
    runtime.threads.on_decision = say_changes(info)

    gen = torch.Generator(device=runtime.device)
    gen.manual_seed(args.seed)
    common = dict(
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=top_k,
        top_p=args.top_p,
        generator=gen,
        stop=args.stop,
        use_cache=not args.no_cache,
        context_keep=keep,
        threads=runtime.threads,
    )
    if args.stream:
        sys.stdout.write(prompt)
        sys.stdout.flush()

        def show(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        sample_text(model, loaded.tokenizer, ids, on_text=show, **common)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return 0
    texts = sample_text(model, loaded.tokenizer, ids, **common)
    for i, text in enumerate(texts):
        if i:
            print("---------------")
        print(prompt + text)
    return 0
