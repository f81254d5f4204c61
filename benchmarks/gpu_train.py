"""GPT-2 124M training speed and MFU on one CUDA GPU, in one short command.

    python benchmarks/gpu_train.py            # ~1-2 minutes on an H100, most of it compiling

GPT-2 small (12 layers, 12 heads, 768 wide, vocab 50304, block 1024), bfloat16 autocast,
torch.compile, fused AdamW and flash attention (SDPA), on one fixed batch of random tokens:
the training step is ``nanogpt.trainer.train_step`` with ``nanogpt.optim.configure_optimizer``, exactly what
``nanogpt train`` runs. It times an eager window and then a compiled window of the same model,
and reports ms/step, tokens/s, achieved TFLOP/s and MFU against the card's dense bf16 peak
(``nanogpt.flops``). Results go to benchmarks/results/gpu_train.json and .md.

``--smoke`` runs a tiny model on whatever device there is (CPU included) to check the script
itself; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def check_flash(model: torch.nn.Module, runtime: Any, vocab: int, T: int) -> tuple[bool, str]:
    """Whether SDPA can run the flash kernel for this model's attention (one eager forward)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if runtime.device.type != "cuda":
        return False, f"no flash kernel on {runtime.device.type}"
    idx = torch.randint(0, vocab, (1, T), device=runtime.device)
    try:
        with torch.no_grad(), runtime.autocast(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            model(idx)
    except RuntimeError as e:
        return False, f"flash attention not usable here: {str(e).splitlines()[0]}"
    return True, "flash attention (SDPA) checked with an eager forward pass"


def measure(step: Callable[[], Any], warmup: int, steps: int, device: torch.device, tokens: int, fpt: float,
            cfg: Any, dtype: torch.dtype) -> dict[str, Any]:
    """Warm up, time a window of ``step`` calls, and turn it into ms/step, tokens/s and MFU."""
    from nanogpt import flops
    from nanogpt.bench import time_calls

    t0 = time.perf_counter()
    timing = time_calls(step, warmup, steps, device)  # warm-up (incl. compiling) + timed window
    total = time.perf_counter() - t0
    tok_s = tokens / timing.mean
    value = flops.mfu(tok_s, cfg, cfg.block_size, device, dtype)
    return {
        "warmup_and_compile_seconds": total - timing.window,
        "ms_per_step": 1000 * timing.mean,
        "ms_per_step_median": 1000 * sorted(timing.per_call)[len(timing.per_call) // 2],
        "tokens_per_second": tok_s,
        "achieved_tflops": tok_s * fpt / 1e12,
        "mfu": value,
        "mfu_text": flops.format_mfu(value),
        "loss_last": float(timing.results[-1]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=16, help="sequences of 1024 tokens per step (default: 16)")
    p.add_argument("--more-batch-sizes", default="", metavar="B,B",
                   help="also time the compiled step at these batch sizes (each compiled afresh), e.g. 32,64")
    p.add_argument("--steps", type=int, default=30, help="timed steps per window (default: 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first; compiling happens here (default: 5)")
    p.add_argument("--no-eager", action="store_true", help="skip the eager (uncompiled) window")
    p.add_argument("--smoke", action="store_true", help="tiny model on any device: checks the script, not the GPU")
    p.add_argument("--out", default=str(RESULTS / "gpu_train"), help="output path without extension")
    a = p.parse_args(argv)

    if not a.smoke and not torch.cuda.is_available():
        print("gpu_train.py needs a CUDA GPU and none is available here (torch "
              f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); run it on a GPU machine, "
              "or use 'nanogpt bench' / benchmarks/train_step.py on a CPU.", file=sys.stderr)
        return 1

    from nanogpt import flops
    from nanogpt.config import OptimConfig
    from nanogpt.device import device_label, dtype_name, maybe_compile, setup_runtime
    from nanogpt.model import GPT, GPTConfig
    from nanogpt.optim import configure_optimizer
    from nanogpt.step import train_step

    if a.smoke:
        cfg = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512, dropout=0.0)
        runtime = setup_runtime("auto", "auto", "false")
        batch_size, steps, warmup = 2, 2, 1
    else:
        cfg = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, dropout=0.0)
        runtime = setup_runtime("cuda", "bfloat16", "true")  # also turns on TF32 for the fp32 rest
        batch_size, steps, warmup = a.batch_size, a.steps, a.warmup
    device = runtime.device
    print(runtime.describe(), file=sys.stderr)

    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    optimizer = configure_optimizer(model, OptimConfig(), device)  # fused AdamW on CUDA
    flash, flash_note = check_flash(model, runtime, cfg.vocab_size, cfg.block_size)
    print(flash_note, file=sys.stderr)

    def make_batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        seq = torch.randint(0, cfg.vocab_size, (b, cfg.block_size + 1), generator=g)
        return seq[:, :-1].contiguous().to(device), seq[:, 1:].contiguous().to(device)  # (B, T) each

    batch = make_batch(batch_size)
    tokens = batch_size * cfg.block_size
    fpt = flops.flops_per_token(cfg, cfg.block_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    windows: dict[str, dict[str, Any]] = {}
    if not a.no_eager:
        print(f"eager: {min(2, warmup)} warm-up + {steps} timed steps ...", file=sys.stderr)
        step = lambda: train_step(model, optimizer, [batch], runtime, grad_clip=1.0)  # noqa: E731
        windows["eager"] = measure(step, min(2, warmup), steps, device, tokens, fpt, cfg, runtime.dtype)
        windows["eager"]["batch_size"] = batch_size
        if device.type == "cuda":
            windows["eager"]["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)  # each window reports its own peak
    compiled = maybe_compile(model, runtime.compile, log=lambda s: print(s, file=sys.stderr))
    name = "compiled" if compiled is not model else "eager"
    if name not in windows:
        print(f"{name}: {warmup} warm-up (compiling) + {steps} timed steps ...", file=sys.stderr)
        step = lambda: train_step(compiled, optimizer, [batch], runtime, grad_clip=1.0)  # noqa: E731
        windows[name] = measure(step, warmup, steps, device, tokens, fpt, cfg, runtime.dtype)
        windows[name]["batch_size"] = batch_size
    if device.type == "cuda":
        windows[name]["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    for b in [int(x) for x in a.more_batch_sizes.split(",") if x.strip()]:
        # A fresh compile per batch size: a recompile of the same graph would turn on dynamic
        # shapes, which is not what a training run at that batch size gets.
        torch._dynamo.reset()
        big = make_batch(b)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        recompiled = maybe_compile(model, runtime.compile, log=lambda s: print(s, file=sys.stderr))
        label = f"{name}, batch {b}"
        print(f"{label}: {warmup} warm-up + {steps} timed steps ...", file=sys.stderr)
        try:
            step = lambda: train_step(recompiled, optimizer, [big], runtime, grad_clip=1.0)  # noqa: E731
            windows[label] = measure(step, warmup, steps, device, b * cfg.block_size, fpt, cfg, runtime.dtype)
        except torch.OutOfMemoryError:
            print(f"{label}: out of memory, skipped", file=sys.stderr)
            optimizer.zero_grad(set_to_none=True)
            continue
        windows[label]["batch_size"] = b
        if device.type == "cuda":
            windows[label]["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)

    peak = flops.peak_flops(device, runtime.dtype)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": device_label(device) or str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "smoke": a.smoke,
        "command": "python benchmarks/gpu_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": cfg.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "batch_size": batch_size,
        "tokens_per_step": tokens,
        "dtype": dtype_name(runtime.dtype),
        "flash_attention": flash,
        "fused_adamw": bool(optimizer.defaults.get("fused")),
        "flops_per_token": fpt,
        "peak_tflops": peak / 1e12 if peak else None,
        "windows": windows,
    }
    if "eager" in windows and "compiled" in windows:
        report["compiled_speedup"] = windows["eager"]["ms_per_step"] / windows["compiled"]["ms_per_step"]
    title = "tiny smoke-test model (numbers mean nothing)" if a.smoke else "GPT-2 124M"

    lines = [
        f"{title} training on {report['device']} — {report['date']}, torch {report['torch']}, CUDA {report['cuda']}",
        "",
        f"Batch {batch_size} x {cfg.block_size} tokens (unless the mode says otherwise), {report['dtype']} autocast, "
        f"{'fused' if report['fused_adamw'] else 'foreach'} AdamW, "
        f"{'flash attention' if flash else 'SDPA without flash'}; peak "
        + (f"{report['peak_tflops']:.1f} TFLOP/s (dense {report['dtype']})" if peak else "unknown") + ".",
        f"Command: `{report['command']}`",
        "",
        "| mode | ms/step | tokens/s | TFLOP/s | MFU | peak memory |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, w in windows.items():
        mfu_cell = "unknown peak" if w["mfu"] is None else f"{100 * w['mfu']:.1f}%"
        mem = w.get("peak_memory_bytes")
        mem_cell = f"{mem / 2**30:.1f} GiB" if mem else "-"
        lines.append(f"| {mode} | {w['ms_per_step']:.1f} | {w['tokens_per_second']:,.0f} | "
                     f"{w['achieved_tflops']:.1f} | {mfu_cell} | {mem_cell} |")
    md = "\n".join(lines) + "\n"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(md, encoding="utf-8")
    print(md)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
