"""Two gloo processes == one process with twice the gradient accumulation."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from nanogpt.checkpoint import load_checkpoint
from nanogpt.config import TrainConfig
from nanogpt.train import train

FLAT = {
    "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 16, "model.dropout": 0.0,
    "data.batch_size": 4, "optim.grad_accum_steps": 2, "optim.warmup_iters": 0, "optim.lr": 1e-2,
    "run.max_iters": 1, "run.eval_interval": 1, "run.eval_iters": 1, "run.device": "cpu", "run.dtype": "float32",
    "run.compile": "false", "run.sample_tokens": 0, "run.progress": False,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, flat: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = TrainConfig.from_flat(flat)
    result = train(cfg, set(flat), log=lambda s: None)
    torch.save(result.losses, os.path.join(out, f"losses{rank}.pt"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from nanogpt.data import prepare

    root = tmp_path_factory.mktemp("ddp")
    text = "".join(chr(97 + (i * 7 + i // 13) % 26) + (" " if i % 5 == 0 else "") for i in range(20000))
    (root / "t.txt").write_text(text)
    prepare([str(root / "t.txt")], str(root / "d"), tokenizer="char", progress=False)
    return root / "d"


def test_two_gloo_processes_equal_one_with_double_accumulation(tmp_path, data_dir):
    single = {**FLAT, "data.dataset": str(data_dir), "run.out_dir": str(tmp_path / "one")}
    one = train(TrainConfig.from_flat(single), set(single), log=lambda s: None)

    multi = {**FLAT, "data.dataset": str(data_dir), "run.out_dir": str(tmp_path / "two")}
    mp.start_processes(_worker, args=(2, _free_port(), multi, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    losses = torch.load(tmp_path / "losses0.pt")
    assert losses[0] == pytest.approx(one.losses[0], abs=1e-6)
    a = load_checkpoint(tmp_path / "one", "last").model_state
    b = load_checkpoint(tmp_path / "two", "last").model_state
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
