"""Bytes of the Lanczos solver's vectors per rank under fully_shard, 1 vs 2 processes (CPU, gloo).

The solver's vectors are its basis (``max_basis`` rows), the Ritz vectors it returns and the
warm-start vectors a monitor keeps; under FSDP2 each rank holds its rows of each. Also reported:
the two whole-length vectors a product needs transiently (the gathered vector and this rank's
product before the reduce-scatter), which do not shrink with the ranks.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_fsdp_memory.py``
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WIDTH = 256
LAYERS = 4
MAX_BASIS = 20


def _model() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(32, WIDTH), nn.Tanh()]
    for _ in range(LAYERS - 1):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(WIDTH, 10))


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    from torch.distributed.fsdp import fully_shard

    from lightning_shortcut.hessian import hessian_eigenvalues

    lanczos = importlib.import_module("lightning_shortcut.hessian.solvers.lanczos")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    model = _model()
    for module in model:
        if isinstance(module, nn.Linear):
            fully_shard(module)
    fully_shard(model)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=generator)
    y = torch.randint(0, 10, (64,), generator=generator)
    buffers: list[int] = []
    original = lanczos.LanczosProcess.__init__

    def record(self, operator, start, buffer, locked):
        buffers.append(buffer.nbytes)
        original(self, operator, start, buffer, locked)

    lanczos.LanczosProcess.__init__ = record
    share = (x[rank::world_size], y[rank::world_size])
    spectrum = hessian_eigenvalues(
        model, share, top_k=1, bottom_k=1, tol=1e-3, solver_options={"max_basis": MAX_BASIS}
    )
    vectors = sum(v.nbytes for v in spectrum.vectors)
    whole = sum(p.numel() for p in model.parameters()) * 4
    torch.save(
        {"basis": max(buffers), "vectors": vectors, "transient": 2 * whole, "max": spectrum.max},
        os.path.join(out, f"{world_size}_{rank}.pt"),
    )
    dist.destroy_process_group()


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as out:
        results = {}
        for world_size in (1, 2):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            mp.spawn(_worker, args=(world_size, port, out), nprocs=world_size, join=True)
            results[world_size] = [
                torch.load(os.path.join(out, f"{world_size}_{r}.pt")) for r in range(world_size)
            ]
    params = sum(p.numel() for p in _model().parameters())
    print(f"{params} parameters (float32), max_basis={MAX_BASIS}, top_k=bottom_k=1")
    single = results[1][0]["basis"] + results[1][0]["vectors"]
    for world_size, ranks in results.items():
        for rank, result in enumerate(ranks):
            solver = result["basis"] + result["vectors"]
            print(
                f"{world_size} process(es), rank {rank}: solver vectors {solver / 2**20:.2f} MiB "
                f"({solver / single:.2f}x of 1 process; basis {result['basis'] / 2**20:.2f} MiB, "
                f"Ritz {result['vectors'] / 2**20:.3f} MiB), transient per product "
                f"{result['transient'] / 2**20:.2f} MiB, max eigenvalue {result['max']:.6f}"
            )


if __name__ == "__main__":
    main()
