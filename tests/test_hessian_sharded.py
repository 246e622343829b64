"""FSDP2 (fully_shard) with 2 gloo processes: the engine's products and sharded solver vectors."""

import importlib
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_shortcut.callbacks import HessianEigenvalueMonitor
from lightning_shortcut.callbacks._strategies import check_sharded_model
from lightning_shortcut.hessian import HessianSettings, hessian_eigenvalues, hessian_trace

# the module (the package re-exports the function of the same name)
lanczos_module = importlib.import_module("lightning_shortcut.hessian.solvers.lanczos")


def _model() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 3)]
    return nn.Sequential(*layers).double()


def _data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(30, 6, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, 3, (30,), generator=generator)


def _record_buffers(sizes: list[int]):
    """Wrap LanczosProcess so that the bytes of each basis buffer it gets are recorded."""
    original = lanczos_module.LanczosProcess.__init__

    def init(self, operator, start, buffer, locked):
        sizes.append(buffer.nbytes)
        original(self, operator, start, buffer, locked)

    lanczos_module.LanczosProcess.__init__ = init


def _settings(model):
    from lightning_shortcut.hessian.sharded import _param_groups

    return [
        (g.post_forward_mesh_info, g.reshard_after_backward, g.reduce_grads, g.is_unsharded)
        for module in model.modules()
        if hasattr(module, "unshard")
        for g in _param_groups(module)
    ]


def _worker(rank, world_size, port, out_dir):
    from torch.distributed.fsdp import fully_shard

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    model = _model()
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)  # the root holds the head's parameters
    model[2].set_reshard_after_forward(False)  # a user's setting, to be kept
    x, y = _data()
    share = (x[rank::world_size], y[rank::world_size])
    torch.nn.functional.cross_entropy(model(share[0]), share[1]).backward()  # gradients to keep
    weights = [p.to_local().clone() for p in model.parameters()]
    grads = [p.grad for p in model.parameters()]
    grad_values = [g.to_local().clone() for g in grads]
    settings = _settings(model)
    with torch.no_grad():
        model(share[0])  # leaves the root unsharded, as validation does
    calls = []

    def fail_on_the_third_forward(module, inputs, output):
        calls.append(1)
        if len(calls) == 3:  # in the second product, inside FSDP's forward
            raise RuntimeError("out of memory")

    handle = model[2].register_forward_hook(fail_on_the_third_forward)
    chunks = [(share[0][:8], share[1][:8]), (share[0][8:], share[1][8:])]
    with pytest.raises(RuntimeError, match="out of memory"):
        hessian_eigenvalues(model, chunks)
    handle.remove()
    buffers: list[int] = []
    _record_buffers(buffers)
    lanczos = hessian_eigenvalues(model, share, top_k=2, bottom_k=1, min_abs=True, tol=1e-10)
    power = hessian_eigenvalues(model, share, method="power", top_k=1, bottom_k=0, tol=1e-5)
    difference = hessian_eigenvalues(
        model, share, top_k=1, bottom_k=0, tol=1e-6, hvp="finite_difference"
    )
    assert all(
        torch.equal(w, p.to_local()) for w, p in zip(weights, model.parameters(), strict=True)
    )
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    assert all(torch.equal(v, g.to_local()) for v, g in zip(grad_values, grads, strict=True))
    assert _settings(model) == settings
    torch.save(
        {
            "lanczos": (lanczos.top, lanczos.bottom, lanczos.min_abs),
            "power": power.top,
            "difference": (difference.max, difference.top_errors[0], difference.hvp_error),
            "vectors": [v.numel() for v in lanczos.vectors],
            "buffer_bytes": buffers[0],
        },
        os.path.join(out_dir, f"{rank}.pt"),
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_products_agree_with_one_process_and_the_basis_is_sharded(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    assert ranks[0]["lanczos"] == ranks[1]["lanczos"]  # identical on every rank
    x, y = _data()
    buffers: list[int] = []
    original = lanczos_module.LanczosProcess.__init__
    try:
        _record_buffers(buffers)
        single = hessian_eigenvalues(_model(), (x, y), top_k=2, bottom_k=1, min_abs=True, tol=1e-10)
    finally:
        lanczos_module.LanczosProcess.__init__ = original
    top, bottom, min_abs = ranks[0]["lanczos"]
    scale = single.top[0]
    assert max(abs(a - b) for a, b in zip(top, single.top, strict=True)) < 1e-9 * scale
    assert abs(bottom[0] - single.bottom[0]) < 1e-9 * scale
    assert min_abs < 1e-9 * scale and single.min_abs < 1e-9 * scale  # a singular Hessian
    assert abs(ranks[0]["power"][0] - single.top[0]) < 1e-5 * scale
    # finite differences on the unsharded copies of the weights (restored, checked above)
    value, error, hvp_error = ranks[0]["difference"]
    assert 0 < hvp_error < 1e-8 and abs(value - single.top[0]) <= error
    # each rank holds its rows of the 213 parameters: the solver's memory per rank halves
    assert [rank["vectors"] for rank in ranks] == [[112] * 3, [101] * 3]
    assert max(rank["buffer_bytes"] for rank in ranks) <= 0.6 * buffers[0]


@pytest.fixture
def one_process_group():
    """A 1-rank gloo group in this process (fully_shard needs one), destroyed afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_shardings_the_engine_would_get_wrong_are_refused(one_process_group):
    from torch.distributed.fsdp import fully_shard

    partly = _model()
    fully_shard(partly[0])  # the other layers stay plain tensors
    x, y = _data()
    with pytest.raises(ValueError, match="'2.weight' is a plain tensor"):
        hessian_eigenvalues(partly, (x, y))
    with pytest.raises(ValueError, match="does not support models sharded"):
        hessian_trace(partly, (x, y))
    sharded = _model()
    fully_shard(sharded)
    with pytest.raises(ValueError, match="all_reduce` must be None"):
        hessian_eigenvalues(sharded, (x, y), all_reduce=lambda t: t)
    with pytest.raises(ValueError, match="pyhessian"):
        hessian_eigenvalues(sharded, (x, y), method="pyhessian")
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    tensor_parallel = _model()  # a DTensor parameter without fully_shard
    weight = distribute_tensor(
        tensor_parallel[0].weight.data, init_device_mesh("cpu", (1,)), [Shard(1)]
    )
    tensor_parallel[0].weight = nn.Parameter(weight)
    with pytest.raises(
        ValueError, match="'0.weight' is a DTensor but the model has no fully_shard"
    ):
        hessian_eigenvalues(tensor_parallel, (x, y))


def test_the_monitor_refuses_at_fit_start_what_it_cannot_measure(one_process_group):
    from torch.distributed.fsdp import fully_shard

    model = _model()
    fully_shard(model)
    trainer = SimpleNamespace(world_size=2)  # the model is sharded over 1 of 2 ranks
    with pytest.raises(MisconfigurationException, match="sharded over 1 of the 2 ranks"):
        check_sharded_model(trainer, model, HessianSettings())
    trainer = SimpleNamespace(world_size=1)
    with pytest.raises(MisconfigurationException, match="pyhessian"):
        check_sharded_model(trainer, model, HessianSettings(method="pyhessian"))
    partly = _model()
    fully_shard(partly[4])
    with pytest.raises(MisconfigurationException, match="partly sharded"):
        check_sharded_model(trainer, partly, HessianSettings())


def test_strategies_without_double_backward_are_refused_with_the_ways_forward():
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    for strategy in (FSDPStrategy, DeepSpeedStrategy):
        trainer = SimpleNamespace(strategy=strategy.__new__(strategy))
        with pytest.raises(MisconfigurationException) as error:
            HessianEigenvalueMonitor().setup(trainer, None, "fit")
        assert "ModelParallelStrategy" in str(error.value)
        assert "hvp='finite_difference'" in str(error.value)


def test_orthonormal_rows_span_the_finite_vectors_and_drop_the_rest():
    from lightning_shortcut.hessian import MatrixOperator
    from lightning_shortcut.hessian.solvers._vectors import orthonormal_rows, projection_norm

    space = MatrixOperator(torch.eye(6, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(6, generator=generator, dtype=torch.float64) for _ in range(2))
    nan = torch.full((6,), float("nan"), dtype=torch.float64)
    rows = orthonormal_rows(space, [a, nan, torch.zeros(6, dtype=torch.float64), b, a + 2 * b])
    assert rows.shape == (2, 6)  # the NaN, the zero and the dependent vector are dropped
    assert torch.allclose(rows @ rows.T, torch.eye(2, dtype=torch.float64), atol=1e-12)
    reference, _ = torch.linalg.qr(torch.stack([a, b]).T)
    assert torch.allclose(rows.T @ rows, reference @ reference.T, atol=1e-12)  # the same span
    assert abs(projection_norm(space, rows, a / a.norm()) - 1.0) < 1e-12
    assert orthonormal_rows(space, [nan]) is None
