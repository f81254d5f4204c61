"""What this CPU is and has, read once from /proc/cpuinfo: shared by the runtime's choices and the peak probe.

No torch here, so the facts can be read before torch is imported.
"""

from __future__ import annotations

import functools
import platform

# Features that decide how fast matmuls can run, most capable first.
MATMUL_FEATURES = {
    "amx_bf16": "AMX",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "avx512f": "AVX-512",
    "avx2": "AVX2",
    "fma": "FMA",
    "bf16": "BF16",  # Arm (Apple silicon, Graviton 3+): BF16 dot products
    "asimd": "NEON",
}


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:  # x86 | Arm
                    flags = frozenset(value.split())
    except OSError:
        pass
    return name or platform.processor() or platform.machine() or "unknown CPU", flags


def cpu_name() -> str:
    """The CPU's model name ('Intel(R) Xeon(R) Processor', ...)."""
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    return _cpuinfo()[1]


def matmul_features() -> list[str]:
    """Human names of the matmul features this CPU has, most capable first (['AMX', 'AVX-512 BF16', ...])."""
    flags = cpu_flags()
    return [label for flag, label in MATMUL_FEATURES.items() if flag in flags]


def has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matmul (AMX, AVX-512 BF16, Arm BF16), where bf16 autocast pays."""
    flags = cpu_flags()
    return bool({"amx_bf16", "avx512_bf16"} & flags) or {"bf16", "asimd"} <= flags


def signature() -> str:
    """Model name and matmul features: one string that tells two CPUs apart when their names agree.

    Cloud VMs often report the same 'Intel(R) Xeon(R) Processor' for CPUs with and without AMX.
    """
    features = "+".join(f for f in MATMUL_FEATURES if f in cpu_flags()) or "no matmul features"
    return f"{cpu_name()} [{features}]"
