"""Runtime set-up that changes how the process runs: the CPU allocator setting."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# A few training steps of a tiny model; prints the allocator note and the page faults of the
# last five steps (after three warm-up steps).
_STEPS = """
import resource, torch
from nanogpt.device import setup_runtime
from nanogpt.config import GPTConfig
from nanogpt.model import GPT
rt = setup_runtime("cpu", "float32", "false")
torch.manual_seed(0)
m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=128, block_size=64, vocab_size=65, dropout=0.0, bias=False))
opt = torch.optim.AdamW(m.parameters())
x = torch.randint(0, 65, (16, 64))
def step():
    _, loss = m(x, x); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(rt.allocator)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run_steps(keep: str) -> tuple[str, int]:
    env = dict(os.environ, NANOGPT_KEEP_FREED_MEMORY=keep, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _STEPS], env=env, capture_output=True, text=True, timeout=120, check=True)
    note, faults = out.stdout.strip().splitlines()[-2:]
    return note, int(faults)


_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _GLIBC, reason="glibc malloc only")
@pytest.mark.parametrize("keep, note", [("0", "default malloc (NANOGPT_KEEP_FREED_MEMORY=0)"),
                                        ("1", "malloc keeps freed memory")])
def test_keep_freed_memory_follows_the_environment(keep, note):
    script = 'from nanogpt.device import setup_runtime; print(setup_runtime("cpu", "float32", "false").allocator)'
    env = dict(os.environ, NANOGPT_KEEP_FREED_MEMORY=keep, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == note


# Page-fault counts move with the kernel's memory settings and the machine's memory pressure.
@pytest.mark.perf
@pytest.mark.skipif(not _GLIBC, reason="glibc malloc only")
def test_keep_freed_memory_stops_page_faults_in_the_training_loop():
    default_note, default_faults = _run_steps("0")
    kept_note, kept_faults = _run_steps("1")
    assert default_note == "default malloc (NANOGPT_KEEP_FREED_MEMORY=0)"
    assert kept_note == "malloc keeps freed memory"
    # glibc's defaults hand activation-sized blocks back to the kernel and fault them in again
    # each step (thousands of faults here); kept, the steps reuse the heap.
    assert default_faults > 1000
    assert kept_faults * 4 < default_faults


def test_allocator_note_in_the_runtime_description():
    from nanogpt.device import keep_freed_memory, setup_runtime

    runtime = setup_runtime("cpu", "float32", "false")
    assert runtime.allocator == keep_freed_memory()  # idempotent: the same note every call
    assert f", {runtime.allocator}, {runtime.threads.describe()}" in runtime.describe()
    assert runtime.describe().endswith(runtime.threads.describe())
