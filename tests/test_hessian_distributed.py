"""The all-reduce hook: two gloo processes get the spectrum of the union of their data."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.models import classification_data, mlp

from lightning_shortcut.hessian import hessian_eigenvalues


def _sum(tensor):
    dist.all_reduce(tensor)
    return tensor


def _worker(rank, world_size, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = mlp().double()
    x, y = classification_data((4,), num_samples=30)
    shares = [(x[:11], y[:11]), (x[11:], y[11:])]  # unequal shares
    spectrum = hessian_eigenvalues(
        model, shares[rank], top_k=2, bottom_k=1, min_abs=True, tol=1e-10, all_reduce=_sum
    )
    torch.save(
        {"top": spectrum.top, "bottom": spectrum.bottom, "min_abs": spectrum.min_abs},
        os.path.join(out_dir, f"{rank}.pt"),
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_agree_with_one_process_on_the_union(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert ranks[0] == ranks[1]  # identical on every rank, bit for bit
    torch.manual_seed(0)
    model = mlp().double()
    x, y = classification_data((4,), num_samples=30)
    single = hessian_eigenvalues(model, (x, y), top_k=2, bottom_k=1, min_abs=True, tol=1e-10)
    assert torch.allclose(torch.tensor(ranks[0]["top"]), torch.tensor(single.top), atol=1e-9)
    assert abs(ranks[0]["bottom"][0] - single.bottom[0]) < 1e-9
    assert abs(ranks[0]["min_abs"] - single.min_abs) < 1e-9
