"""Hand-written C kernels for bf16 training on CPUs (``csrc/cpu_kernels.c``), built on first use.

The source is compiled with the system C compiler (``$CC``, else ``cc``) for AVX-512 BF16 into
the user's cache ($XDG_CACHE_HOME/nanogpt/kernels/, ~/.cache/... by default) in about a second,
once per source, flags and OpenMP runtime, and loaded with ctypes. It links against the OpenMP
runtime torch itself loaded, so the kernels run on torch's thread pool: a second pool would
spin against torch's on the same cores. Where any of this is missing (no compiler, another CPU,
a torch without libgomp, ``NANOGPT_NATIVE=0``) :func:`load` says why and nothing changes: the
runtime keeps PyTorch's kernels. ``nanogpt.ops`` holds the autograd functions that call these.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from nanogpt import cpu
from nanogpt.fsutil import user_cache_dir

SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_kernels.c"
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
COMPILE_FLAGS = ["-O3", "-std=c11", "-fPIC", "-fopenmp", "-fno-math-errno", "-mavx512f", "-mavx512bw", "-mavx512vl",
                 "-mavx512bf16", "-mfma"]


def cache_dir() -> Path:
    """Where the compiled kernels are kept."""
    return user_cache_dir() / "kernels"


def torch_openmp() -> Path | None:
    """The OpenMP runtime (libgomp) torch runs its threads on, if torch uses one we can link against."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    bundled = sorted((Path(torch.__file__).resolve().parent / "lib").glob("libgomp*.so*"))
    if bundled:
        return bundled[0]
    try:  # a torch linked against the system's libgomp
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = {line.split()[-1] for line in f if "libgomp" in line}
    except OSError:
        return None
    return Path(min(paths)) if paths else None


def _compile(compiler: str, openmp: Path, target: Path) -> str | None:
    """Build the library at ``target`` (atomically); None on success, else why it failed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        obj, lib = Path(tmp) / "cpu_kernels.o", Path(tmp) / "cpu_kernels.so"
        # compile and link apart: linking with -fopenmp would add the system's libgomp next to torch's
        steps = [[compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(obj)],
                 [compiler, "-shared", str(obj), str(openmp), "-lm", "-o", str(lib)]]
        for cmd in steps:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"{compiler} did not run: {e}"
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["no message"])[0]
                return f"{compiler} failed: {first}"
        os.replace(lib, target)
    return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    ptr, i64, f32, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.causal_softmax_fwd_bf16.argtypes = [ptr, ptr, i64, i64, i64, f32, c_int]
    lib.causal_softmax_bwd_bf16.argtypes = [ptr, ptr, ptr, i64, i64, i64, f32, c_int]
    lib.lookup_bf16.argtypes = [ptr, ptr, ptr, ptr, i64, c_int]
    lib.layer_norm_fwd_bf16.argtypes = [ptr, ptr, ptr, f32, ptr, ptr, ptr, i64, i64, c_int]
    lib.layer_norm_bwd_bf16.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, ptr, c_int]
    for fn in (lib.causal_softmax_fwd_bf16, lib.causal_softmax_bwd_bf16, lib.lookup_bf16, lib.layer_norm_fwd_bf16,
               lib.layer_norm_bwd_bf16):
        fn.restype = None
    return lib


@functools.lru_cache(maxsize=1)
def load() -> tuple[ctypes.CDLL | None, str]:
    """The compiled kernels and "ok", or None and why they cannot be used here (once per process)."""
    if os.environ.get("NANOGPT_NATIVE", "1") == "0":
        return None, "NANOGPT_NATIVE=0"
    missing = [f for f in CPU_FLAGS if f not in cpu.cpu_flags()]
    if missing:
        return None, f"the CPU lacks {', '.join(missing)}"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None, "no C compiler (set CC, or install gcc)"
    openmp = torch_openmp()
    if openmp is None:
        return None, "torch does not run on a libgomp OpenMP runtime"
    if not SOURCE.is_file():
        return None, f"{SOURCE} is missing from this installation"
    key = hashlib.sha256(SOURCE.read_bytes() + repr((compiler, COMPILE_FLAGS, str(openmp))).encode()).hexdigest()
    path = cache_dir() / f"cpu_kernels-{key[:16]}.so"
    if path.is_symlink():
        return None, f"{path} is a symbolic link, which is never loaded; remove it"
    if not path.exists():
        try:
            error = _compile(compiler, openmp, path)
        except OSError as e:  # an unwritable cache, a full disk: PyTorch's kernels still work
            error = f"could not build in {path.parent}: {e.strerror or e}"
        if error:
            return None, error
    try:
        return _declare(ctypes.CDLL(str(path))), "ok"
    except (OSError, AttributeError) as e:
        return None, f"could not load {path}: {e}"


def available() -> bool:
    """True if the kernels can run here (compiling them on the first call)."""
    return load()[0] is not None


def _lib() -> ctypes.CDLL:
    lib, why = load()
    if lib is None:
        raise RuntimeError(f"nanogpt's C kernels are not available: {why}")
    return lib


def _check(*tensors: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> None:
    if any(t.shape != tensors[0].shape for t in tensors):
        raise ValueError(f"C kernels take tensors of one shape, got {[tuple(t.shape) for t in tensors]}")
    for t in tensors:
        if t.dtype is not dtype or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"this C kernel takes contiguous {dtype} CPU tensors, got {t.dtype} on {t.device}")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def causal_softmax(scores: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale * scores) over the causally allowed keys, 0 elsewhere; scores (..., Tq, Tk), Tq <= Tk."""
    _check(scores)
    t_query, t_key = scores.shape[-2:]
    probs = torch.empty_like(scores)
    _lib().causal_softmax_fwd_bf16(scores.data_ptr(), probs.data_ptr(), scores.numel() // max(t_key, 1), t_query,
                                   t_key, scale, torch.get_num_threads())
    return probs


def causal_softmax_backward(probs: torch.Tensor, grad: torch.Tensor, scale: float) -> torch.Tensor:
    """The gradient of :func:`causal_softmax` with respect to its scores, from its output and output gradient."""
    _check(probs, grad)
    t_query, t_key = probs.shape[-2:]
    out = torch.empty_like(probs)
    _lib().causal_softmax_bwd_bf16(probs.data_ptr(), grad.data_ptr(), out.data_ptr(), probs.numel() // max(t_key, 1),
                                   t_query, t_key, scale, torch.get_num_threads())
    return out


@functools.lru_cache(maxsize=1)
def gelu_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """The exact GELU and its derivative at every bf16 value, indexed by the value's 16 bits (float32).

    Computed by PyTorch itself: the GELU by its bf16 kernel, the derivative by its float32
    backward, so the lookups below give PyTorch's bf16 results bit for bit.
    """
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.uint16).view(torch.bfloat16)  # (65536,)
    values = torch.nn.functional.gelu(every).float()
    slopes = torch.ops.aten.gelu_backward(torch.ones(every.shape), every.float())
    return values.contiguous(), slopes.contiguous()


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The exact (erf) GELU of bf16 ``x``, as ``torch.nn.functional.gelu(x)``, by table lookup."""
    _check(x)
    out = torch.empty_like(x)
    _lib().lookup_bf16(x.data_ptr(), None, out.data_ptr(), gelu_tables()[0].data_ptr(), x.numel(), torch.get_num_threads())
    return out


def gelu_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad * GELU'(x) for the exact (erf) GELU, as ``torch.ops.aten.gelu_backward(grad, x)``."""
    _check(grad, x)
    out = torch.empty_like(x)
    _lib().lookup_bf16(x.data_ptr(), grad.data_ptr(), out.data_ptr(), gelu_tables()[1].data_ptr(), x.numel(),
                       torch.get_num_threads())
    return out


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm over the last dimension of bf16 ``x`` with float32 ``weight`` (and ``bias``): (y, mean, rstd)."""
    _check(x)
    _check(weight, *([bias] if bias is not None else []), dtype=torch.float32)
    channels = x.size(-1)
    if weight.shape != (channels,):
        raise ValueError(f"LayerNorm weight of shape {tuple(weight.shape)} for {channels} channels")
    rows = x.numel() // max(channels, 1)
    y = torch.empty_like(x)
    mean, rstd = torch.empty(rows), torch.empty(rows)
    _lib().layer_norm_fwd_bf16(x.data_ptr(), weight.data_ptr(), _ptr(bias), eps, y.data_ptr(), mean.data_ptr(),
                               rstd.data_ptr(), rows, channels, torch.get_num_threads())
    return y, mean, rstd


def layer_norm_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                        rstd: torch.Tensor, with_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The gradients of :func:`layer_norm` for x, weight and (``with_bias``) bias."""
    _check(grad, x)
    channels = x.size(-1)
    rows = x.numel() // max(channels, 1)
    threads = torch.get_num_threads()
    dx = torch.empty_like(x)
    dw = torch.empty(channels)
    db = torch.empty(channels) if with_bias else None
    scratch = torch.empty(threads * 2 * channels)
    _lib().layer_norm_bwd_bf16(grad.data_ptr(), x.data_ptr(), weight.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                               dx.data_ptr(), dw.data_ptr(), _ptr(db), rows, channels, scratch.data_ptr(), threads)
    return dx, dw, db
