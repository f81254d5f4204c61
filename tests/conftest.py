"""Shared test set-up: deterministic, single-threaded-friendly torch on CPU."""

import os

import pytest
import torch

# Tests are many tiny models: two intra-op threads is the machine's size, more only adds overhead.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
