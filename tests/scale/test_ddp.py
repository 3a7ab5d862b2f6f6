"""Scale-out, PyTorch: the model is a plain nn.Module that trains under DDP (gloo, 2 processes
on one machine); one step gives the same gradients as one process on the whole batch."""

import os
import socket
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from tests.conftest import make_batch

pytestmark = pytest.mark.slow  # DDP: two processes (gloo)

GRAD_ATOL = 1e-5  # same fp32 math split over two processes; only the reduction order differs


def _batch():
    b = make_batch(seed=4, batch=4)
    return {k: torch.from_numpy(b[k]) for k in ("input_ids", "attention_mask", "labels")}


def _grads(model) -> dict[str, np.ndarray]:
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, directory: str, port: int, out: str) -> None:
    sys.path.insert(0, os.getcwd())
    from encdec.pt import EncoderDecoderModel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    # the encoder's pooler takes no part in the loss (as in the reference): tell DDP
    model = DistributedDataParallel(EncoderDecoderModel.from_pretrained(directory),
                                    find_unused_parameters=True)
    batch = {k: v[rank * 2:(rank + 1) * 2] for k, v in _batch().items()}
    model(**batch).loss.backward()  # DDP averages the two halves' gradients
    if rank == 0:
        np.savez(out, **{n.removeprefix("module."): g for n, g in _grads(model).items()})
    dist.destroy_process_group()


def test_ddp_two_processes_match_one(reference_dir, tmp_path):
    from encdec.pt import EncoderDecoderModel

    directory = reference_dir("bert2gpt2")
    with socket.socket() as sock:  # a free loopback port for the process group
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_worker, args=(str(directory), port, str(tmp_path / "ddp.npz")),
                       nprocs=2, join=True, start_method="spawn")
    ddp = dict(np.load(tmp_path / "ddp.npz"))
    model = EncoderDecoderModel.from_pretrained(directory)
    # the reference loss is a mean over all label tokens; DDP averages per-process means, so
    # compare against the average of the two halves' gradients
    halves = []
    for rank in range(2):
        model.zero_grad()
        batch = {k: v[rank * 2:(rank + 1) * 2] for k, v in _batch().items()}
        model(**batch).loss.backward()
        halves.append(_grads(model))
    assert ddp.keys() == halves[0].keys() and len(ddp) > 50
    for n, g in ddp.items():
        want = (halves[0][n] + halves[1][n]) / 2
        assert np.abs(g - want).max() <= GRAD_ATOL, n

