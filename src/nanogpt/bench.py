"""``nanogpt bench``: training and sampling speed, achieved FLOP/s, MFU and memory on this device.

What is measured, so that a sceptic can rerun it:

* Training: ``warmup`` steps (compilation, allocator and oneDNN/cuBLAS warm-up), then ``steps``
  full optimizer steps of the real training step (``nanogpt.trainer.train_step``: forward,
  backward, gradient clipping, AdamW from ``nanogpt.optim.configure_optimizer``) on one fixed batch of random
  tokens, so data loading is not part of it. ms/step is the wall time of the measured window
  (ended by a CUDA synchronize; steps are not synchronized one by one, which would idle the GPU)
  divided by the steps, with the median and fastest single step beside it.
* FLOPs: ``nanogpt.flops.flops_per_token`` (matmuls only, ``6N + 12 L C T``); MFU divides the
  achieved FLOP/s by the device's dense peak in the compute dtype, and is "unknown" on a GPU
  that is not in the table.
* Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` over model, optimizer and
  steps. On CPU the growth of the process's peak resident memory (``ru_maxrss``) over the
  resident memory before the model was built: it includes allocator caches and the Python
  objects made on the way, and only means something in a fresh process (what the CLI is).
* Sampling: new tokens per second of ``nanogpt.generate.generate`` from a short prompt, with
  and without the KV cache, on the uncompiled model prepared as ``nanogpt sample`` does (eval
  mode, weights cast to the compute dtype), after the training measurement.
* CPU threads (``--threads``): a fixed count, or with ``auto`` the fastest of a few counts,
  timed on the warm-up steps (lengthened to time each count) and then fixed for the measured
  steps and the sampling, so that no trial runs inside the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from nanogpt.config import THREADS_HELP
from nanogpt.errors import NanoGPTError

# The Shakespeare character vocabulary; presets for char data leave the vocabulary to the dataset,
# which a benchmark on random tokens does not have.


@dataclass
class BenchConfig:
    """Options of ``nanogpt bench`` besides the model shape (``--model.*``)."""

    batch_size: int | None = field(default=None, metadata={"help": "sequences per step (default: the preset's data.batch_size, else 12)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    steps: int = field(default=10, metadata={"help": "measured training steps"})
    warmup: int = field(default=3, metadata={"help": "training steps run before measuring (compile, warm-up)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N | mps"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "autocast dtype; auto = bfloat16 where the hardware has it"}
    )
    compile: Literal["auto", "true", "false"] = field(
        default="auto", metadata={"help": "torch.compile the model for training; auto = on CUDA"}
    )
    sample_tokens: int = field(default=64, metadata={"help": "new tokens per sampling measurement (0 = skip sampling)"})
    prompt_tokens: int = field(default=16, metadata={"help": "prompt length for the sampling measurement"})
    seed: int = field(default=1337, metadata={"help": "seed for the model init and the random tokens"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar (it is drawn on a terminal only, on stderr)"})
    remeasure_peak: bool = field(
        default=False, metadata={"help": "CPU: probe the peak FLOP/s again (keeps the higher of new and cached)"}
    )
    threads: str = field(default="auto", metadata={"help": THREADS_HELP})

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size <= 0:
            raise NanoGPTError(f"--batch-size must be positive, got {self.batch_size}")
        if self.grad_accum <= 0:
            raise NanoGPTError(f"--grad-accum must be positive, got {self.grad_accum}")
        if self.steps <= 0:
            raise NanoGPTError(f"--steps must be positive, got {self.steps}")
        if self.warmup < 0:
            raise NanoGPTError(f"--warmup must be >= 0, got {self.warmup}")
        if self.sample_tokens < 0 or self.prompt_tokens <= 0:
            raise NanoGPTError("--sample-tokens must be >= 0 and --prompt-tokens positive")
        from nanogpt.config import check_seed, check_threads

        check_seed(self.seed, "--seed")
        check_threads(self.threads, "--threads")


def default_preset(device: torch.device) -> str:
    """GPT-2 124M on a GPU; the small CPU Shakespeare model elsewhere."""
    return "gpt2-124m" if device.type == "cuda" else "shakespeare-char-cpu"


def resolve_model(preset: str | None, overrides: dict[str, Any], device: torch.device) -> tuple[Any, int, str]:
    """(GPTConfig, batch size from the preset, preset name) from a preset and ``model.*`` flags."""
    import typing

    from nanogpt.config import coerce, get_preset
    from nanogpt.config import GPTConfig

    name = preset or default_preset(device)
    flat = get_preset(name)
    model_kw = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("model.")}
    if "vocab_size" not in model_kw and "model.vocab_size" not in overrides:
        from nanogpt.resolve import dataset_vocab

        model_kw["vocab_size"], _ = dataset_vocab(flat)  # what training on this preset's dataset would use
    hints = typing.get_type_hints(GPTConfig)
    for key, value in overrides.items():
        field_name = key.split(".", 1)[1]
        if field_name not in hints:
            raise NanoGPTError(f"unknown option --{key}")
        model_kw[field_name] = coerce(value, hints[field_name], key)  # command-line strings -> int/float/bool
    try:
        config = GPTConfig(**model_kw)
    except (TypeError, ValueError) as e:
        raise NanoGPTError(str(e)) from None
    return config, int(flat.get("data.batch_size", 12)), name


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class Timing:
    """Wall time of a window of calls and of each call in it (seconds)."""

    window: float
    per_call: list[float]
    results: list[Any]

    @property
    def mean(self) -> float:
        return self.window / len(self.per_call)


def time_calls(fn: Callable[[], Any], warmup: int, steps: int, device: torch.device) -> Timing:
    """Run ``fn`` ``warmup`` times, then time ``steps`` calls as one window.

    On CUDA the host does not wait between calls (a sync per call would leave the GPU idle while
    the next step is launched); the window ends with one synchronize, and per-call times come
    from CUDA events. Elsewhere each call is timed on the host (CPU work is synchronous).
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    results: list[Any] = []
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        t0 = time.perf_counter()
        events[0].record()
        for i in range(steps):
            results.append(fn())
            events[i + 1].record()
        _sync(device)
        window = time.perf_counter() - t0
        per_call = [events[i].elapsed_time(events[i + 1]) / 1000 for i in range(steps)]
        return Timing(window, per_call, results)
    per_call = []
    t_start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        results.append(fn())
        _sync(device)
        per_call.append(time.perf_counter() - t0)
    return Timing(time.perf_counter() - t_start, per_call, results)


def _rss_bytes() -> int | None:
    """Current resident memory of this process (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _max_rss_bytes() -> int | None:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def measure_sampling(model: torch.nn.Module, runtime: Any, vocab: int, prompt_len: int, new_tokens: int, seed: int) -> dict[str, Any]:
    """Tokens/s of ``nanogpt.generate.generate`` with and without the KV cache (batch of 1).

    The model is prepared as ``nanogpt sample`` prepares it (eval mode, weights cast to the
    compute dtype, in place), so call this after training measurements.
    """
    from nanogpt.generate import generate, prepare_for_sampling

    device = runtime.device
    model = prepare_for_sampling(model, runtime.dtype)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (1, prompt_len), generator=g).to(device)  # (1, prompt)
    out: dict[str, Any] = {"prompt_tokens": prompt_len, "new_tokens": new_tokens, "batch": 1}
    with torch.no_grad():
        for use_cache in (True, False):
            run = lambda: generate(model, idx, new_tokens, temperature=1.0, use_cache=use_cache)  # noqa: E731
            # one warm-up call, then the best of two: sampling runs are short and noisy
            best = min(time_calls(run, 1, 2, device).per_call)
            out["cached_tokens_per_second" if use_cache else "uncached_tokens_per_second"] = new_tokens / best
    out["cache_speedup"] = out["cached_tokens_per_second"] / out["uncached_tokens_per_second"]
    return out


def _random_batches(vocab: int, B: int, T: int, n: int, seed: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` fixed micro-batches of random tokens: inputs (B, T) and their next-token targets (B, T)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        seq = torch.randint(0, vocab, (B, T + 1), generator=g)  # (B, T+1)
        batches.append((seq[:, :-1].contiguous().to(device), seq[:, 1:].contiguous().to(device)))
    return batches


def _peak_memory(device: torch.device, rss_before: int | None) -> tuple[int | None, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    max_rss = _max_rss_bytes()
    # ru_maxrss and /proc's current RSS are sampled differently: a small negative difference means no growth
    growth = max(0, max_rss - rss_before) if max_rss is not None and rss_before is not None else None
    return growth, "peak RSS growth of the process"


def _time_training(model: torch.nn.Module, opts: BenchConfig, runtime: Any, B: int, optim: Any,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """Warm-up and measured training steps of ``model`` on fixed random batches, with ``optim``'s optimizer."""
    from nanogpt.device import prepare_model
    from nanogpt.optim import configure_optimizer
    from nanogpt.step import train_step

    device, T = runtime.device, model.config.block_size
    optimizer = configure_optimizer(model, optim, device)
    scaler = torch.amp.GradScaler(device.type) if runtime.dtype is torch.float16 else None
    fwd = prepare_model(model, runtime, T, log=log)
    batches = _random_batches(model.config.vocab_size, B, T, opts.grad_accum, opts.seed, device)
    tuner = runtime.threads
    warmup = max(opts.warmup, tuning_steps(tuner)) if tuner.tuning else opts.warmup
    log(f"model: {model.num_params():,} parameters; batch {B} x {T} tokens x {opts.grad_accum} micro-steps")
    trying = f" (timing {'/'.join(map(str, tuner.counts))} threads)" if tuner.tuning else ""
    log(f"training: {warmup} warm-up{trying} + {opts.steps} measured steps ...")

    from tqdm.auto import tqdm

    bar = tqdm(total=warmup + opts.steps, desc="bench", unit="step", leave=False,
               disable=True if opts.quiet else None)  # None: only on a terminal

    def step() -> torch.Tensor:
        loss = train_step(fwd, optimizer, batches, runtime, grad_clip=optim.grad_clip, scaler=scaler)
        bar.update(1)
        return loss

    t0 = time.perf_counter()
    for _ in range(warmup):
        with tuner.unit():  # auto: the warm-up steps are the trial
            step()
    _sync(device)
    warmup_s = time.perf_counter() - t0
    tuner.apply()  # the chosen count, fixed: the measured steps and the sampling run at it
    timing = time_calls(step, 0, opts.steps, device)
    bar.close()
    return {"warmup_steps": warmup, "warmup_seconds": warmup_s, "timing": timing}


def tuning_steps(tuner: Any) -> int:
    """Warm-up steps that hold one whole trial of ``tuner`` (each count's discarded and timed steps), plus one."""
    return (tuner.discard + tuner.trial_units) * len(tuner.counts) + 1


def threads_choice(tuner: Any) -> str:
    """How the thread count was chosen: the fixed count's reason, or the warm-up's times per count."""
    if not tuner.decisions:
        return tuner.reason
    times = ", ".join(f"{ms:.1f} ms at {c}" for c, ms in sorted(tuner.decisions[-1]["ms"].items()))
    return f"auto, the fastest of {'/'.join(map(str, tuner.counts))} in the warm-up: {times} per step"


def preset_optim(name: str) -> Any:
    """The optimizer settings of preset ``name`` (an OptimConfig): bench times the step its training runs."""
    from nanogpt.config import OptimConfig, get_preset

    return OptimConfig(**{k.split(".", 1)[1]: v for k, v in get_preset(name).items() if k.startswith("optim.")})


def run_bench(
    model_config: Any, opts: BenchConfig, batch_size: int, log: Callable[[str], None] = lambda s: None,
    optim: Any = None,
) -> dict[str, Any]:
    """Measure training (and sampling) speed of ``model_config``; returns the result record.

    ``optim`` (an OptimConfig; default: AdamW with its defaults) is the optimizer the steps run.
    """
    from nanogpt import flops
    from nanogpt.budget import check_training_fits
    from nanogpt.config import OptimConfig
    from nanogpt.device import device_label, dtype_name, setup_runtime, unwrap
    from nanogpt.model import GPT
    from nanogpt.threads import say_changes

    runtime = setup_runtime(opts.device, opts.dtype, opts.compile, threads=opts.threads)
    runtime.threads.on_decision = say_changes(log)
    device = runtime.device
    log(runtime.describe())
    B, T = batch_size, model_config.block_size
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    check_training_fits(model_config, B, opts.grad_accum, runtime.dtype, device,
                        lower="--batch-size, --model.block_size, --model.n_layer or --model.n_embd")
    rss_before = _rss_bytes()
    torch.manual_seed(opts.seed)
    model = GPT(model_config).to(device).train()
    optim = optim or OptimConfig()
    trained = _time_training(model, opts, runtime, B, optim, log)
    timing = trained["timing"]
    peak_mem, mem_kind = _peak_memory(device, rss_before)

    tokens_per_step = B * T * opts.grad_accum
    tok_s = tokens_per_step / timing.mean
    fpt = flops.flops_per_token(model_config, T)
    if device.type == "cpu":
        log("peak FLOP/s of this CPU: measured once per dtype (about a second), cached in " + str(flops.cache_path()))
        peak = flops.cpu_peak_flops(runtime.dtype, remeasure=opts.remeasure_peak)
    else:
        peak = flops.peak_flops(device, runtime.dtype)
    result: dict[str, Any] = {
        "device": str(device), "device_name": device_label(device), "dtype": dtype_name(runtime.dtype),
        "compile": runtime.compile, "model": model_config.to_dict(), "params": model.num_params(),
        "matmul_params": flops.matmul_params(model_config), "batch_size": B, "seq_len": T,
        "grad_accum": opts.grad_accum, "optimizer": optim.name, "tokens_per_step": tokens_per_step, "warmup_steps": trained["warmup_steps"],
        "warmup_seconds": trained["warmup_seconds"], "steps": opts.steps,
        "ms_per_step": 1000 * timing.mean, "ms_per_step_median": 1000 * _median(timing.per_call),
        "ms_per_step_min": 1000 * min(timing.per_call), "tokens_per_second": tok_s, "flops_per_token": fpt,
        "achieved_tflops": tok_s * fpt / 1e12, "peak_tflops": peak / 1e12 if peak else None,
        "mfu": flops.mfu(tok_s, model_config, T, device, runtime.dtype, peak=peak),
        "peak_memory_bytes": peak_mem, "memory_kind": mem_kind,
        "loss_first": float(timing.results[0]), "loss_last": float(timing.results[-1]), "sampling": None,
        "torch": torch.__version__, "threads": runtime.threads.current,
        "threads_choice": threads_choice(runtime.threads), "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if opts.sample_tokens > 0:
        prompt = min(opts.prompt_tokens, max(1, T - 1))
        new = min(opts.sample_tokens, T - prompt)
        if new > 0:
            log(f"sampling: {new} new tokens after a {prompt}-token prompt, with and without the KV cache ...")
            result["sampling"] = measure_sampling(unwrap(model), runtime, model_config.vocab_size, prompt, new, opts.seed)
    return result


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


OPTIMIZER_TEXT = {"adamw": "AdamW", "muon": "Muon for the blocks' matrices, AdamW for the rest"}


def format_table(r: dict[str, Any]) -> str:
    """The result record as a readable two-column table."""
    from nanogpt.flops import format_mfu

    m = r["model"]
    mfu_text = format_mfu(r["mfu"]).split(": ", 1)[1]
    rows = [
        ("device", f"{r['device']} ({r['device_name']})" if r["device_name"] else r["device"]),
        ("dtype / compile", f"{r['dtype']} / {'on' if r['compile'] else 'off'}"),
        ("model", f"{m['n_layer']} layers, {m['n_head']} heads, {m['n_embd']} wide, vocab {m['vocab_size']}; {r['params'] / 1e6:.2f}M params"),
        ("batch", f"{r['batch_size']} x {r['seq_len']} tokens x {r['grad_accum']} = {r['tokens_per_step']:,} tokens/step"),
        ("optimizer", OPTIMIZER_TEXT.get(r["optimizer"], r["optimizer"])),
        ("steps", f"{r['warmup_steps']} warm-up ({r['warmup_seconds']:.1f} s) + {r['steps']} measured"),
        ("threads", f"{r['threads']} ({r['threads_choice']})"),
        ("ms/step", f"{r['ms_per_step']:.1f} (median {r['ms_per_step_median']:.1f}, best {r['ms_per_step_min']:.1f})"),
        ("tokens/s", f"{r['tokens_per_second']:,.0f}"),
        ("FLOPs/token", f"{r['flops_per_token'] / 1e6:,.1f} M (6N + 12·L·C·T, matmuls only)"),
        ("achieved", f"{r['achieved_tflops']:.3f} TFLOP/s"),
        ("peak", "unknown" if r["peak_tflops"] is None else f"{r['peak_tflops']:.3f} TFLOP/s ({r['dtype']})"),
        ("MFU", mfu_text),
        ("peak memory", f"{_mib(r['peak_memory_bytes'])} ({r['memory_kind']})"),
        ("loss", f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} (random tokens)"),
    ]
    s = r.get("sampling")
    if s:
        rows += [
            ("sampling, KV cache", f"{s['cached_tokens_per_second']:,.1f} tokens/s"),
            ("sampling, no cache", f"{s['uncached_tokens_per_second']:,.1f} tokens/s"),
            ("cache speedup", f"{s['cache_speedup']:.2f}x ({s['new_tokens']} tokens after a {s['prompt_tokens']}-token prompt)"),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# --------------------------------------------------------------------------------------------
# CLI


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``nanogpt bench``: --preset, the BenchConfig fields, --json and --model.*."""
    import dataclasses
    import typing

    from nanogpt.config import add_dataclass_args, preset_names
    from nanogpt.config import GPTConfig

    parser.add_argument("--preset", help=f"model, batch size and optimizer of a named run: {', '.join(preset_names())} "
                        "(default: gpt2-124m on CUDA, shakespeare-char-cpu elsewhere)")
    parser.add_argument("--block-size", type=int, dest="model.block_size", default=argparse.SUPPRESS,
                        help="sequence length in tokens; shorthand for --model.block_size")
    # One flag per BenchConfig field (--batch-size, --steps, ...), documented once, in the field.
    hints = typing.get_type_hints(BenchConfig)
    for f in dataclasses.fields(BenchConfig):
        tp = hints[f.name]
        default_text = "" if f.default is None else f" (default: {f.default})"
        kw: dict[str, Any] = dict(default=f.default, help=f.metadata["help"] + default_text)
        if typing.get_origin(tp) is typing.Literal:
            kw["choices"] = list(typing.get_args(tp))
        elif tp in (int, int | None):
            kw["type"], kw["metavar"] = int, "N"
        elif tp is bool:
            kw["action"] = "store_true"
        parser.add_argument("--" + f.name.replace("_", "-"), **kw)
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout (progress goes to stderr)")
    add_dataclass_args(parser, GPTConfig, "model")


def cli_main(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table (or JSON on stdout with --json)."""
    from nanogpt.device import resolve_device

    import dataclasses

    opts = BenchConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)})
    overrides = {k: v for k, v in vars(args).items() if k.startswith("model.")}
    config, preset_batch, preset = resolve_model(args.preset, overrides, resolve_device(opts.device))
    batch = opts.batch_size or preset_batch
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    log(f"nanogpt bench: preset {preset}" + (f" with {', '.join(f'{k}={v}' for k, v in overrides.items())}" if overrides else ""))
    result = run_bench(config, opts, batch, log, optim=preset_optim(preset))
    result["preset"] = preset
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0
