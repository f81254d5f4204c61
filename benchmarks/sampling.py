"""Sampling speed: our generate() with and without the KV cache against Hugging Face's generate.

    python benchmarks/sampling.py                       # GPT-2 small shape, 500 new tokens
    python benchmarks/sampling.py --quick               # 40 new tokens, 1 round (smoke run)
    python benchmarks/sampling.py --trained runs/shakespeare-char-cpu   # + bf16 vs fp32 greedy agreement

All contenders decode greedily, batch 1, from the same 10-token prompt, on the same random
GPT-2-small weights (124M; random weights are fine for speed): ours is saved with
``save_pretrained`` and loaded by ``transformers.GPT2LMHeadModel.from_pretrained``.

* ours fp32: ``generate(use_cache=True)`` on the float32 model;
* ours <dtype>: the same after ``prepare_for_sampling`` with the dtype ``nanogpt sample`` picks
  by default on this machine (``--dtype auto``: bfloat16 on CPUs with AVX-512 BF16 / AMX);
* HF fp32: ``GPT2LMHeadModel.generate`` with its KV cache (``min_new_tokens`` = ``max_new_tokens``
  so that it cannot stop early);
* ours fp32, no cache: the reference path, whole context every step (run once: it is slow).

The cached contenders alternate in rounds (order rotated each round) so load from other
processes hits all alike; we report each one's best and median tokens/s over the rounds and
the ratios to HF from the same statistic. ``--trained`` also measures how often greedy text
from bf16 weights equals fp32's on a trained model, per prompt (random weights have nearly
flat next-token distributions, where any rounding flips the argmax, so they say nothing about it).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from nanogpt.device import device_label, dtype_name, resolve_dtype
from nanogpt.generate import generate, prepare_for_sampling
from nanogpt.model import GPT, GPTConfig

RESULTS = Path(__file__).resolve().parent / "results"


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """Index of the first differing token of two (1, T) sequences, None if equal."""
    diff = (a != b).flatten().nonzero()
    return int(diff[0]) if diff.numel() else None


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def trained_agreement(source: str, n_tokens: int) -> dict[str, Any]:
    """Greedy continuations of a few prompts with fp32 and with default-dtype weights."""
    from nanogpt.checkpoint import load_model
    from nanogpt.generate import encode_prompt

    loaded = load_model(source, "cpu")
    fp32 = loaded.model.eval()
    dtype, _ = resolve_dtype("auto", torch.device("cpu"))
    low = prepare_for_sampling(copy.deepcopy(fp32), dtype)
    tok = loaded.tokenizer
    if getattr(tok, "name", "") == "char":
        prompts = ["", "ROMEO:\n", "First Citizen:\nWe are", "KING RICHARD III:\nNow is the", "To be, or not to be"]
    else:
        prompts = ["", "The", "Once upon a time", "In 1905, Albert Einstein", "def fibonacci(n):"]
    rows = []
    for p in prompts:
        ids, _ = encode_prompt(tok, p)
        idx = torch.tensor([ids[-fp32.config.block_size :]])
        a = generate(fp32, idx, n_tokens, temperature=0.0)[:, idx.size(1) :]
        b = generate(low, idx, n_tokens, temperature=0.0)[:, idx.size(1) :]
        d = first_difference(a, b)
        rows.append({"prompt": p, "identical": d is None, "first_difference": d})
    return {
        "source": source,
        "dtype": dtype_name(dtype),
        "new_tokens": n_tokens,
        "identical": sum(r["identical"] for r in rows),
        "prompts": len(rows),
        "per_prompt": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 new tokens, 1 round, no-cache 20 tokens")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens to generate (default: 500)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of the cached contenders (default: 3)")
    ap.add_argument("--no-cache-tokens", type=int, default=None, help="tokens for the no-cache run (default: --new-tokens)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--trained", default=None, help="run folder or HF folder of a trained model for the agreement check")
    ap.add_argument("--out", default=None, help="JSON output (default: benchmarks/results/sampling.json, sampling-quick.json with --quick)")
    args = ap.parse_args(argv)
    n_new = args.new_tokens or (40 if args.quick else 500)
    rounds = args.rounds or (1 if args.quick else 3)
    n_nocache = args.no_cache_tokens or (20 if args.quick else n_new)
    out_path = Path(args.out) if args.out else RESULTS / ("sampling-quick.json" if args.quick else "sampling.json")
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    torch.manual_seed(0)
    cfg = GPTConfig.from_name("gpt2")
    ours32 = GPT(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        ours32.save_pretrained(d)
        hf = transformers.GPT2LMHeadModel.from_pretrained(d, dtype=torch.float32).eval()
    dtype, dtype_reason = resolve_dtype("auto", torch.device("cpu"))
    ours_low = prepare_for_sampling(copy.deepcopy(ours32), dtype)
    prompt = torch.randint(0, cfg.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))
    low_name = f"ours {dtype_name(dtype)}"

    def hf_generate(n: int) -> torch.Tensor:
        with torch.inference_mode():
            return hf.generate(
                prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=50256
            )

    contenders: dict[str, Callable[[int], torch.Tensor]] = {
        "ours fp32": lambda n: generate(ours32, prompt, n, temperature=0.0),
        low_name: lambda n: generate(ours_low, prompt, n, temperature=0.0),
        "HF fp32": hf_generate,
    }
    for fn in contenders.values():  # warm-up: allocator, kernels, HF's generation config
        fn(4)
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    outputs: dict[str, torch.Tensor] = {}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            secs, out = timed(lambda: contenders[name](n_new))
            assert out.shape == (1, 10 + n_new), (name, out.shape)
            rates[name].append(n_new / secs)
            outputs[name] = out
            print(f"round {r + 1}/{rounds}  {name:<16} {n_new / secs:7.1f} tokens/s", file=sys.stderr, flush=True)
    secs, out_nc = timed(lambda: generate(ours32, prompt, n_nocache, temperature=0.0, use_cache=False))
    rates["ours fp32, no cache"] = [n_nocache / secs]
    print(f"no cache          {n_nocache / secs:7.1f} tokens/s", file=sys.stderr, flush=True)

    hf_best, hf_med = max(rates["HF fp32"]), statistics.median(rates["HF fp32"])
    table = []
    for name, rs in rates.items():
        best, med = max(rs), statistics.median(rs)
        table.append(
            {
                "contender": name,
                "new_tokens": n_nocache if "no cache" in name else n_new,
                "tokens_per_s_best": round(best, 2),
                "tokens_per_s_median": round(med, 2),
                "vs_hf_best": round(best / hf_best, 3),
                "vs_hf_median": round(med / hf_med, 3),
                "rounds": len(rs),
            }
        )
    agreement = {
        "ours_fp32_vs_hf_fp32_first_difference": first_difference(outputs["ours fp32"], outputs["HF fp32"]),
        "ours_fp32_cache_vs_no_cache_first_difference": first_difference(
            outputs["ours fp32"][:, : 10 + n_nocache], out_nc
        ),
        f"ours_{dtype_name(dtype)}_vs_fp32_first_difference_random_weights": first_difference(
            outputs["ours fp32"], outputs[low_name]
        ),
    }
    result: dict[str, Any] = {
        "benchmark": "sampling",
        "model": "GPT-2 small shape (124M), random weights",
        "batch_size": 1,
        "prompt_tokens": 10,
        "greedy": True,
        "default_sampling_dtype": dtype_name(dtype),
        "dtype_reason": dtype_reason,
        "device": device_label(torch.device("cpu")),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "results": table,
        "greedy_agreement": agreement,
        "note": "first_difference: index of the first differing token (prompt included), null = identical",
    }
    if args.trained:
        result["trained_agreement"] = trained_agreement(args.trained, 200 if not args.quick else 50)

    print(f"\nGPT-2 small (random weights), batch 1, 10-token prompt, greedy, {result['device']}")
    print(f"{'contender':<22} {'tokens':>6} {'tok/s best':>11} {'tok/s median':>13} {'vs HF best':>11} {'vs HF median':>13}")
    for row in table:
        print(
            f"{row['contender']:<22} {row['new_tokens']:>6} {row['tokens_per_s_best']:>11.1f} "
            f"{row['tokens_per_s_median']:>13.1f} {row['vs_hf_best']:>10.2f}x {row['vs_hf_median']:>12.2f}x"
        )
    for k, v in agreement.items():
        print(f"{k}: {v}")
    if "trained_agreement" in result:
        t = result["trained_agreement"]
        print(f"trained model {t['source']}: {t['dtype']} greedy == fp32 for {t['identical']}/{t['prompts']} prompts "
              f"({t['new_tokens']} tokens each); first differences: {[r['first_difference'] for r in t['per_prompt']]}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
