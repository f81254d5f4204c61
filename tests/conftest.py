"""Shared test set-up: deterministic, single-threaded-friendly torch on CPU."""

import os

import pytest

# A fixed thread count: `--threads auto` would otherwise re-tune during the tests' training runs,
# and a different count changes results at the 1e-5 level (exact-resume tests compare bit for bit).
os.environ.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))

import torch  # noqa: E402

# Tests are many tiny models: two intra-op threads is the machine's size, more only adds overhead.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
