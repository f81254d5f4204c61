"""Serving speed: ``nanogpt serve`` against ``nanogpt sample`` on the same model, and under concurrent load.

    python benchmarks/serve.py             # GPT-2 small dimensions (random weights), 200 new tokens a request
    python benchmarks/serve.py --quick     # a small model, 40 tokens (smoke run)

Measured, all on one model saved as a Hugging Face folder and loaded the way ``serve`` loads it:

* ``sample``: ``sample_text`` (what ``nanogpt sample`` runs), one sample, N new tokens: tokens/s;
* one streamed request to the server (server-sent events over HTTP): tokens/s, time to first token;
* time to first token for a 500-token prompt (``max_tokens`` 1, streamed);
* 1, 4 and 8 concurrent streamed requests of N tokens each: aggregate tokens/s, p50/p95 latency
  of a whole request, failures. The speed-up is aggregate tokens/s over the 1-request figure.

Load goes to 127.0.0.1 only, from a bounded number of threads and requests, each with a timeout;
the server stops at the end. Results go to ``benchmarks/results/serve.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def streamed(url: str, body: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """One streamed completion: tokens received, time to first token, total time."""
    import httpx

    t0 = time.perf_counter()
    first, tokens = None, 0
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=timeout) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk["choices"] and chunk["choices"][0]["finish_reason"] is None:
                tokens += 1
                first = first if first is not None else time.perf_counter() - t0
    return {"tokens": tokens, "ttft_s": first, "seconds": time.perf_counter() - t0}


def concurrent(url: str, body: dict[str, Any], clients: int) -> dict[str, Any]:
    """``clients`` streamed requests at once (one thread each): aggregate tokens/s and latencies."""
    results: list[dict[str, Any] | None] = [None] * clients
    failures: list[str] = []

    def one(i: int) -> None:
        try:
            results[i] = streamed(url, {**body, "seed": i})
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    wall = time.perf_counter() - t0
    done = [r for r in results if r is not None]
    lat = sorted(r["seconds"] for r in done)
    tokens = sum(r["tokens"] for r in done)
    return {
        "clients": clients, "tokens": tokens, "wall_s": wall, "aggregate_tokens_per_s": tokens / wall,
        "p50_latency_s": statistics.median(lat) if lat else None,
        "p95_latency_s": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))] if lat else None,
        "ttft_p50_s": statistics.median(r["ttft_s"] for r in done) if done else None,
        "failures": len(failures) + (clients - len(done) - len(failures)), "errors": failures[:3],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn

    from nanogpt.generate import sample_text
    from nanogpt.model import GPT, GPTConfig
    from nanogpt.serve.api import Limits, create_app, load_server

    dims = dict(n_layer=2, n_head=4, n_embd=128) if args.quick else dict(n_layer=12, n_head=12, n_embd=768)
    cfg = GPTConfig(block_size=1024, vocab_size=50257, **dims)
    folder = Path(tempfile.mkdtemp(prefix="nanogpt-serve-bench-")) / "model"
    torch.manual_seed(0)
    GPT(cfg).save_pretrained(str(folder))
    server = load_server(str(folder), "cpu", args.dtype, name="bench", max_batch=8, max_queue=16)
    server.limits = Limits(1024, max(args.tokens, 1), 8)
    model, tok = server.engine.model, server.engine.tokenizer
    prompt_ids = tok.encode("The meaning of life is")
    gen = torch.Generator().manual_seed(0)
    sample_text(model, tok, prompt_ids, max_new_tokens=8, generator=gen)  # warm-up
    t0 = time.perf_counter()
    sample_text(model, tok, prompt_ids, max_new_tokens=args.tokens, temperature=1.0, top_k=None, generator=gen)
    sample_tps = args.tokens / (time.perf_counter() - t0)

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    body = {"prompt": "The meaning of life is", "max_tokens": args.tokens, "temperature": 1.0, "seed": 0}
    try:
        streamed(url, {**body, "max_tokens": 8})  # warm-up
        single = streamed(url, body)
        long_prompt = torch.randint(0, 50000, (500,), generator=torch.Generator().manual_seed(1)).tolist()
        ttft_500 = min(streamed(url, {"prompt": long_prompt, "max_tokens": 1})["ttft_s"] for _ in range(3))
        loads = [concurrent(url, body, c) for c in (1, 4, 8)]
    finally:
        srv.should_exit = True
        thread.join(timeout=60)
    one = loads[0]["aggregate_tokens_per_s"]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                   f"torch {torch.__version__}, python {platform.python_version()}",
        "model": {**dims, "block_size": 1024, "vocab_size": 50257, "params": model.num_params(), "dtype": server.meta["dtype"]},
        "new_tokens": args.tokens,
        "sample_tokens_per_s": sample_tps,
        "served_single_tokens_per_s": single["tokens"] / single["seconds"],
        "served_single_ttft_s": single["ttft_s"],
        "served_vs_sample": single["tokens"] / single["seconds"] / sample_tps,
        "ttft_500_token_prompt_s": ttft_500,
        "concurrent": loads,
        "speedup_4": loads[1]["aggregate_tokens_per_s"] / one,
        "speedup_8": loads[2]["aggregate_tokens_per_s"] / one,
    }


def markdown(r: dict[str, Any]) -> str:
    m = r["model"]
    lines = [
        f"# nanogpt serve: speed ({r['date']})", "",
        f"Machine: {r['machine']}. Model: {m['n_layer']} layers, {m['n_head']} heads, C={m['n_embd']}, "
        f"{m['params'] / 1e6:.1f}M parameters, random weights, {m['dtype']}; {r['new_tokens']} new tokens per request.", "",
        "| measurement | value |", "| --- | --- |",
        f"| `nanogpt sample` (sample_text), tokens/s | {r['sample_tokens_per_s']:.1f} |",
        f"| one streamed request to the server, tokens/s | {r['served_single_tokens_per_s']:.1f} ({100 * r['served_vs_sample']:.0f}% of sample) |",
        f"| its time to first token | {1000 * r['served_single_ttft_s']:.0f} ms |",
        f"| time to first token, 500-token prompt (best of 3) | {1000 * r['ttft_500_token_prompt_s']:.0f} ms |", "",
        "| concurrent requests | aggregate tokens/s | speed-up | p50 latency | p95 latency | failures |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    one = r["concurrent"][0]["aggregate_tokens_per_s"]
    for c in r["concurrent"]:
        lines.append(f"| {c['clients']} | {c['aggregate_tokens_per_s']:.1f} | {c['aggregate_tokens_per_s'] / one:.2f}x | "
                     f"{c['p50_latency_s']:.2f} s | {c['p95_latency_s']:.2f} s | {c['failures']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model and 40 tokens (a smoke run)")
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per request (default: 200; --quick: 40)")
    parser.add_argument("--dtype", default="auto", help="weights' dtype, as for nanogpt serve (default: auto)")
    parser.add_argument("--out", default=None, help="results name in benchmarks/results (default: serve, or serve-quick)")
    args = parser.parse_args()
    args.tokens = args.tokens or (40 if args.quick else 200)
    result = run(args)
    name = args.out or ("serve-quick" if args.quick else "serve")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
