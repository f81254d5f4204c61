"""``nanogpt serve SOURCE``: the completion server and the playground page, over uvicorn."""

from __future__ import annotations

import argparse
import sys

from nanogpt.errors import NanoGPTError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a run folder (its best checkpoint), a Hugging Face folder, a nanoGPT ckpt.pt, or a hub name (gpt2, ...)")
    g = parser.add_argument_group("network")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    g.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 and /api")
    g.add_argument("--name", default=None, help="the model's id in /v1/models (default: the source's folder name)")
    g = parser.add_argument_group("limits")
    g.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default: 8)")
    g.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a free row (default: 64)")
    g.add_argument("--max-tokens", type=int, default=1024, help="the largest max_tokens a request may ask (default: 1024)")
    g.add_argument("--max-n", type=int, default=8, help="the most completions one request may ask (n x prompts, default: 8)")
    g.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt (default: the model's context)")
    g = parser.add_argument_group("runtime")
    from nanogpt.device import add_runtime_args

    add_runtime_args(g, "weights' dtype while serving (auto: bfloat16 where the hardware has fast bf16, else float32)")


def cli_main(args: argparse.Namespace) -> int:
    from nanogpt.config import check_threads
    from nanogpt.threads import say_changes

    try:
        import uvicorn

        from nanogpt.serve.api import Limits, create_app, load_server
    except ModuleNotFoundError as e:
        raise NanoGPTError(f"nanogpt serve needs the 'serve' extra ({e.name} is missing): pip install 'nanogpt[serve]'") from None
    for flag in ("max_batch", "max_tokens", "max_n", "port"):
        if getattr(args, flag) < 1:
            raise NanoGPTError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.max_queue < 0:
        raise NanoGPTError(f"--max-queue must be >= 0, got {args.max_queue}")
    check_threads(args.threads, "--threads")
    if args.host not in LOOPBACK and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it may use it", file=sys.stderr)
    server = load_server(args.source, args.device, args.dtype, args.name, api_key=args.api_key,
                         max_batch=args.max_batch, max_queue=args.max_queue, threads=args.threads)
    server.engine.threads.on_decision = say_changes(lambda line: print(line, file=sys.stderr, flush=True))
    block = server.engine.block_size
    prompt_limit = min(args.max_prompt_tokens or block, block)
    server.limits = Limits(prompt_limit, args.max_tokens, args.max_n)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    threads = f", {server.engine.threads.describe()}" if server.meta.get("device") == "cpu" else ""
    print(f"serving {server.model_name} ({server.meta.get('device')}, {server.meta.get('dtype')}{threads}) "
          f"on http://{shown}:{args.port}/  (API: /v1, playground: /)", file=sys.stderr, flush=True)
    uvicorn.run(create_app(server), host=args.host, port=args.port, log_level="warning")
    return 0
