"""Device, dtype, autocast, compile and distributed set-up: decided once, explained once.

Every entry point (train, sample, eval, bench) calls :func:`setup_runtime` or the smaller
helpers here, so the rules below live in one place:

* device: cuda > mps > cpu, unless asked.
* dtype: bfloat16 autocast on CUDA GPUs with bf16, and on CPUs with AVX-512 BF16 or AMX, where
  the matrix units make bf16 steps several times faster; float16 + GradScaler only on CUDA
  without bf16; float32 otherwise.
* compile: on by default on CUDA; off on CPU/MPS unless asked (on CPUs it gained little and
  takes longer to compile than a short training budget).
* kernels: which of ``nanogpt.ops`` replace the model's plain pieces (:func:`choose_kernels`),
  installed from outside by :func:`prepare_model` and ``generate.prepare_for_sampling``.
* memory allocator (CPU, glibc): keep freed memory for reuse (:func:`keep_freed_memory`).

The measurements behind these choices are in ``benchmarks/README.md`` ("Runtime choices").
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from nanogpt import cpu
from nanogpt.errors import NanoGPTError

from nanogpt.threads import ThreadTuner, make_tuner

if TYPE_CHECKING:
    from nanogpt.ops import Kernels

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_runtime_args(parser: Any, dtype_help: str) -> None:
    """The --device, --dtype and --threads flags shared by the inference commands (sample, eval, serve)."""
    from nanogpt.config import THREADS_HELP

    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *_DTYPES], help=dtype_help)
    parser.add_argument("--threads", default="auto", help=THREADS_HELP + " (default: auto)")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda, then mps, then cpu. Explicit names are checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise NanoGPTError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NanoGPTError("device 'cuda' was asked for but no CUDA GPU is available; use --run.device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise NanoGPTError("device 'mps' was asked for but MPS is not available; use --run.device cpu")
    return dev


def resolve_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The compute dtype for ``device`` and the reason it was chosen."""
    if name != "auto":
        if name not in _DTYPES:
            raise NanoGPTError(f"unknown dtype '{name}'; use auto, float32, bfloat16 or float16")
        dt = _DTYPES[name]
        if dt is torch.float16 and device.type == "cpu":
            raise NanoGPTError("float16 is not supported on CPU; use --dtype bfloat16 or float32")
        return dt, "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA GPU with bf16"
        return torch.float16, "CUDA GPU without bf16: float16 with loss scaling"
    if device.type == "cpu":
        features = cpu.matmul_features()
        if cpu.has_fast_bf16():
            return torch.bfloat16, f"CPU has {' and '.join(f for f in features if 'BF16' in f or f == 'AMX')}"
        return torch.float32, f"CPU has no native bf16 matmul ({', '.join(features) or 'no SIMD features found'})"
    return torch.float32, f"{device.type}: float32"


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast for bf16/fp16, a no-op for fp32."""
    if dtype is torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_compile(choice: str, device: torch.device) -> tuple[bool, str]:
    """Whether to torch.compile, and why."""
    if choice == "true":
        return True, "asked for"
    if choice == "false":
        return False, "turned off (--run.compile false)"
    if device.type == "cuda":
        return True, "default on CUDA"
    if os.name == "nt":
        return False, "off: torch.compile is not supported on Windows"
    return False, f"off by default on {device.type}: it was no faster than eager here and takes a minute to compile"


def choose_kernels(device: torch.device, dtype: torch.dtype, seq_len: int, vocab_size: int, compiled: bool,
                   decode: bool = False) -> "Kernels":
    """The kernels (``nanogpt.ops``) that pay for this device, precision and shape.

    * Attention as explicit matmuls on CPUs in bf16 up to 256 positions, where torch's fused
      CPU kernel is slower; from 512 on the fused kernel wins.
    * The chunked head + loss on CPUs with vocabularies of 4096 and more, where the passes
      over the full float32 logits cost more than the head's matmul. Compiled models fuse the
      loss themselves; GPUs keep the plain path.
    * Matrix-vector products for batch-1 decode steps on CPUs with bf16/fp16 weights.
    * RMSNorm (the modern block) with a hand-written backward on CPUs when training.
    * The residual stream in bf16 on CPUs when training under bf16 autocast: eager PyTorch
      would otherwise cast it to and from float32 around every sublayer.
    * Hand-written C kernels (causal softmax, GELU, LayerNorm) on CPUs when training
      in bf16, where they build (``nanogpt.native``: AVX-512 BF16 and a C compiler).
    Measurements: ``benchmarks/README.md``.
    """
    from nanogpt import native
    from nanogpt.ops import Kernels

    cpu = device.type == "cpu"
    train_bf16 = cpu and not decode and not compiled and dtype is torch.bfloat16
    return Kernels(
        attention="matmul" if cpu and not decode and dtype is torch.bfloat16 and seq_len <= 256 else "sdpa",
        loss_rows=256 if cpu and not decode and vocab_size >= 4096 and not compiled else 0,
        row_linear=cpu and decode and dtype in (torch.bfloat16, torch.float16),
        rms_norm=cpu and not decode and not compiled,
        low_precision_stream=train_bf16,
        native=train_bf16 and native.available(),
    )


def describe_kernels(kernels: "Kernels") -> str:
    """One line for the log: which kernels run."""
    parts = [f"attention {kernels.attention}"]
    parts.append(f"loss in blocks of {kernels.loss_rows} rows" if kernels.loss_rows else "loss on full logits")
    if kernels.row_linear:
        parts.append("matrix-vector decode")
    if kernels.rms_norm:
        parts.append("fused RMSNorm backward")
    if kernels.low_precision_stream:
        parts.append("low-precision residual stream")
    if kernels.native:
        parts.append("C kernels (causal softmax, GELU, LayerNorm)")
    return "kernels: " + ", ".join(parts)


def prepare_model(model: Any, runtime: "Runtime", seq_len: int, log: Any = print) -> torch.nn.Module:
    """Install this runtime's training kernels on ``model`` and compile it if asked; returns what to call.

    Shared by training, ``nanogpt bench`` and the benchmarks, so they measure the same thing.
    """
    from nanogpt.ops import apply_kernels, kernels_of

    kernels = choose_kernels(runtime.device, runtime.dtype, seq_len, model.config.vocab_size, runtime.compile)
    apply_kernels(model, kernels)
    log(describe_kernels(kernels_of(model)))  # what was installed: a GPT-2 block has no RMSNorm to replace
    return maybe_compile(model, runtime.compile, log=log)


def maybe_compile(model: torch.nn.Module, enabled: bool, log=print) -> torch.nn.Module:
    """Compile ``model``, falling back to eager with a printed reason if compiling fails."""
    if not enabled:
        return model
    try:
        return torch.compile(model)  # type: ignore[return-value]
    except Exception as e:  # noqa: BLE001 - any backend failure: run eager instead
        log(f"torch.compile failed ({type(e).__name__}: {e}); running eager")
        return model


@dataclass
class Dist:
    """The process's place in a (possibly one-process) distributed job."""

    enabled: bool = False
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one (RANK/WORLD_SIZE set); pick this rank's device.

    One process and ``torchrun`` take the same path; with one process this does nothing.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(), resolve_device(device_name)
    import torch.distributed as tdist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    base = resolve_device(device_name)
    if base.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = base
        backend = "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend)
    return Dist(True, rank, local_rank, world), device


def teardown_distributed(dist: Dist, finished: bool = False) -> None:
    """Leave the process group. ``finished`` (every rank got here normally) first waits for all
    ranks, so that none tears its connections down while another still talks to it; after an
    error there is no waiting, as a failed rank may never arrive."""
    if dist.enabled:
        import torch.distributed as tdist

        if tdist.is_initialized():
            if finished:
                tdist.barrier()
            tdist.destroy_process_group()


@dataclass
class Runtime:
    """What an entry point needs to run the model: where, in what precision, compiled or not."""

    device: torch.device
    dtype: torch.dtype
    dtype_reason: str
    compile: bool
    compile_reason: str
    dist: Dist = field(default_factory=Dist)
    allocator: str = ""  # what keep_freed_memory() did (CPU runs)
    threads: ThreadTuner = field(default_factory=lambda: ThreadTuner([torch.get_num_threads()], "torch's default"))

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.dtype)

    def describe(self) -> str:
        name = dtype_name(self.dtype)
        return (
            f"device {self.device}{' (' + device_label(self.device) + ')' if device_label(self.device) else ''}, "
            f"dtype {name} ({self.dtype_reason}), compile {'on' if self.compile else 'off'} ({self.compile_reason})"
            + (f", {self.allocator}" if self.allocator else "")
            + (f", {self.threads.describe()}" if self.device.type == "cpu" else "")
            + (f", rank {self.dist.rank}/{self.dist.world_size}" if self.dist.enabled else "")
        )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def device_label(device: torch.device) -> str:
    """Human name of the device ('NVIDIA H100 80GB HBM3', the CPU model, ...)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        features = cpu.matmul_features()[:2]  # the two most capable: 'AMX, AVX-512 BF16'
        return f"{cpu.cpu_name()}{' (' + ', '.join(features) + ')' if features else ''}"
    return ""


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_allocator_note: str | None = None


def keep_freed_memory() -> str:
    """Make glibc's malloc keep freed memory for reuse; returns a note saying what was done.

    A training step on a CPU allocates and frees the same activation-sized blocks every
    iteration. glibc serves blocks above its mmap threshold with fresh pages from the kernel and
    trims the heap's free top after frees, so each step page-faults and zeroes those megabytes
    again. Raising the mmap threshold to glibc's maximum (32 MiB) and the trim threshold to
    1 GiB keeps the blocks in the heap. The cost: the process keeps its peak heap until it
    exits, which a training process does anyway. Process-wide and idempotent; set NANOGPT_KEEP_FREED_MEMORY=0
    to leave the allocator alone. No-op on other C libraries (macOS, musl, Windows).
    """
    global _allocator_note
    if _allocator_note is not None:
        return _allocator_note
    import platform

    if os.environ.get("NANOGPT_KEEP_FREED_MEMORY", "1") == "0":
        _allocator_note = "default malloc (NANOGPT_KEEP_FREED_MEMORY=0)"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _allocator_note = "default malloc"
    else:
        import ctypes

        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = (libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
                  and libc.mallopt(_M_TOP_PAD, 64 << 20) == 1)
        except (OSError, AttributeError):
            ok = False
        _allocator_note = "malloc keeps freed memory" if ok else "default malloc (mallopt refused)"
    return _allocator_note


def setup_runtime(device: str = "auto", dtype: str = "auto", compile: str = "auto", distributed: bool = False,
                  threads: str = "auto") -> Runtime:
    """Resolve device, dtype, compile choice and CPU threads (and join torchrun when ``distributed``)."""
    if distributed:
        dist, dev = setup_distributed(device)
    else:
        dist, dev = Dist(), resolve_device(device)
    dt, dt_reason = resolve_dtype(dtype, dev)
    comp, comp_reason = resolve_compile(compile, dev)
    allocator = keep_freed_memory() if dev.type == "cpu" else ""
    if dev.type == "cuda":
        # TF32 matmuls: ~8x the fp32 throughput on Ampere+ for the fp32 parts that remain.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(dev, dt, dt_reason, comp, comp_reason, dist, allocator, make_tuner(threads, dev.type))


def unwrap(model: Any) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers (no '_orig_mod.'/'module.' keys)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
