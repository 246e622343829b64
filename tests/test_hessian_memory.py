"""What a measurement holds: the basis, the vectors it returns and one product, nothing besides.

Memory is counted in parameter-sized vectors, not bytes: every tensor storage created during a call
is tracked (a dispatch mode sees each operation's outputs) until its last tensor is gone, and the
peak of those alive at once is divided by the size of one vector of the operator.
"""

import importlib
import weakref
from typing import ClassVar

import pytest
import torch
from helpers.models import ce_loss, classification_data, mlp
from helpers.reference import dense_eigenvalues
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lightning_shortcut.hessian import LambdaOperator, hessian_eigenvalues
from lightning_shortcut.hessian.linear_operator import NonFiniteProductError, check_finite
from lightning_shortcut.hessian.operator import HessianOperator
from lightning_shortcut.hessian.solvers import DEFAULT_MAX_BASIS, lanczos, power_iteration

lanczos_module = importlib.import_module("lightning_shortcut.hessian.solvers.lanczos")

# more entries than a restart rotates at once, so that its column blocks are not whole vectors
DIM = 200_000


class LiveStorages(TorchDispatchMode):
    """Counts the bytes of the tensor storages created inside, alive at once (peak and sizes);
    the storages whose pointers are in ``given`` (created before) are not counted."""

    def __init__(self, given: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.given = given
        self.references: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = self.peak = 0
        self.allocations: list[int] = []

    def _drop(self, key: int) -> None:
        self.references[key] -= 1
        if self.references[key] == 0:
            del self.references[key]
            self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(output)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in self.given:
                continue
            if key not in self.references:
                self.references[key], self.sizes[key] = 0, storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                self.allocations.append(storage.nbytes())
            self.references[key] += 1
            weakref.finalize(tensor, self._drop, key)
        return output


def _diagonal(dtype=torch.float32):
    """A diagonal operator with a dense spectrum in [-1, 2] and an outlier at 3: products allocate
    one vector (the product itself) and keep no graph."""
    diagonal = torch.linspace(-1.0, 2.0, DIM, dtype=dtype)
    diagonal[-1] = 3.0
    return LambdaOperator(lambda vector: diagonal * vector, DIM, diagonal.new_zeros(0))


def _lanczos(operator, **kwargs):
    options = dict(top_k=1, bottom_k=1, min_abs=False, tol=1e-3, max_iter=300) | kwargs
    return lanczos(operator, generator=torch.Generator().manual_seed(0), **options)


@pytest.mark.parametrize("max_basis", [8, 20])
@pytest.mark.parametrize("bottom_k", [1, 0])
def test_a_call_holds_its_basis_and_the_vectors_it_returns_and_nothing_more(max_basis, bottom_k):
    """Both ends: the two eigenvectors and the four neighbours kept for warm starts beside the
    basis; top only: one and two. No start vector, residual or normalized copy is held twice."""
    operator = _diagonal()
    with LiveStorages() as storages:
        result = _lanczos(operator, bottom_k=bottom_k, max_basis=max_basis)
    assert operator.num_products > max_basis  # the basis was restarted
    returned = len(result.top_vectors) + len(result.bottom_vectors) + len(result.neighbours)
    assert returned == (6 if bottom_k else 3)
    vector = DIM * 4
    # a restart rotates the basis a column block at a time: at most a fifth of a vector here
    assert storages.peak / vector <= max_basis + returned + 0.2
    assert storages.live / vector == pytest.approx(returned, abs=0.05)  # all that stays


def test_restarts_rotate_the_basis_in_place():
    """One basis-sized buffer per call, however many restarts (each rotates the basis within it)."""
    operator = _diagonal()
    max_basis = 8
    with LiveStorages() as storages:
        _lanczos(operator, max_basis=max_basis, tol=1e-6, max_iter=600)
    assert operator.num_products > 4 * max_basis
    half_basis = max_basis // 2 * DIM * 4
    assert sum(size >= half_basis for size in storages.allocations) == 1


def test_power_iteration_holds_the_vector_and_its_product():
    """Besides the top eigenvector found, the bottom's iteration holds its vector and product."""
    operator = _diagonal(torch.float64)  # random starts are drawn in float64: no second copy
    with LiveStorages() as storages:
        result = power_iteration(
            operator, generator=torch.Generator().manual_seed(0), top_k=1, bottom_k=1,
            tol=1e-3, max_iter=300,
        )  # fmt: skip
    assert result.top[0] == pytest.approx(3.0, abs=3e-3)
    assert storages.peak / (DIM * 8) <= 3.05


class _Recording(HessianOperator):
    """A Hessian operator that notes when its graph is freed and whether it is at a vector's
    forming."""

    events: ClassVar[list[tuple[str, int, bool]]] = []

    def free_graph(self) -> None:
        self.events.append(("free", self.num_products, bool(self._graphs)))
        super().free_graph()


@pytest.mark.parametrize("counts", [(1, 1), (2, 2)])
def test_the_graph_is_freed_after_the_last_product_before_the_vectors_are_formed(
    counts, monkeypatch
):
    model = mlp().double()
    x, y = classification_data((4,), num_samples=64)
    events = _Recording.events = []
    context = importlib.import_module("lightning_shortcut.hessian.context")
    monkeypatch.setattr(context, "HessianOperator", _Recording)
    forming = lanczos_module.LanczosProcess.ritz_vector

    def ritz_vector(self, *args, **kwargs):
        events.append(("vector", self.operator.num_products, bool(self.operator._graphs)))
        return forming(self, *args, **kwargs)

    monkeypatch.setattr(lanczos_module.LanczosProcess, "ritz_vector", ritz_vector)
    top_k, bottom_k = counts
    spectrum = hessian_eigenvalues(
        model, (x, y), top_k=top_k, bottom_k=bottom_k, tol=1e-3, vectors=True
    )
    frees = [event for event in events if event[0] == "free"]
    # freed once by the solver (graph held until then), once more on leaving (nothing left)
    assert frees[0] == ("free", spectrum.num_hvps, True)
    assert all(event[2] is False for event in frees[1:])
    last = events.index(frees[0])
    assert [event[0] for event in events[last + 1 :]].count("vector") >= 2  # top and bottom
    # the vectors of the last run are formed without the graph; those of earlier runs with it
    assert all(not held for kind, _, held in events[last:] if kind == "vector")


def test_the_basis_is_kept_in_host_memory_where_asked(monkeypatch):
    """``host_basis=True`` keeps the basis where host memory is (here: a float64 "host" beside a
    float32 model, so that every vector crossing between them is converted and checked); the values
    are the same to tol and the vectors come back in the model's space."""
    model = mlp()
    x, y = classification_data((4,), num_samples=64, dtype=torch.float32)
    reference = dense_eigenvalues(model.double(), ce_loss(x.double(), y))
    model.float()
    monkeypatch.setattr(
        lanczos_module, "_host_like", lambda like: torch.empty(0, dtype=torch.float64)
    )
    buffers = []
    process = lanczos_module.LanczosProcess.__init__

    def record(self, operator, start, buffer, locked):
        buffers.append(buffer.dtype)
        process(self, operator, start, buffer, locked)

    monkeypatch.setattr(lanczos_module.LanczosProcess, "__init__", record)
    tol = 1e-4
    spectrum = hessian_eigenvalues(
        model, (x, y), top_k=2, bottom_k=2, tol=tol, solver_options={"host_basis": True}
    )
    assert buffers and set(buffers) == {torch.float64}
    scale = float(reference.abs().max())
    assert spectrum.converged
    for value, truth in zip(
        spectrum.top + spectrum.bottom, [*reference.flip(0)[:2], *reference[:2]], strict=True
    ):
        assert abs(value - float(truth)) <= tol * scale
    assert all(vector.dtype == torch.float32 for vector in spectrum.vectors + spectrum.neighbours)
    warm = hessian_eigenvalues(
        model,
        (x, y),
        top_k=2,
        bottom_k=2,
        tol=tol,
        start=spectrum,
        solver_options={"host_basis": True},
    )
    assert abs(warm.max - float(reference[-1])) <= tol * scale


def test_host_basis_is_a_bool_checked_where_it_enters():
    model = mlp()
    x, y = classification_data((4,), num_samples=8, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"`host_basis` must be True or False, got 'yes'"):
        hessian_eigenvalues(model, (x, y), solver_options={"host_basis": "yes"})


@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_the_default_basis_keeps_values_within_tol_of_dense_hessians(tol):
    """The default basis restarts on a 154-dimensional clustered spectrum and still returns every
    value within tol, with error bounds that hold."""
    generator = torch.Generator().manual_seed(0)
    eigenvalues = torch.cat(
        [torch.linspace(-2.0, 3.0, 150), torch.tensor([3.3, 3.15, -2.3, -2.15])]
    ).double()
    basis, _ = torch.linalg.qr(torch.randn(154, 154, generator=generator, dtype=torch.float64))
    matrix = basis @ torch.diag(eigenvalues) @ basis.T
    operator = LambdaOperator(lambda vector: matrix @ vector, 154, matrix.new_zeros(0))
    result = _lanczos(operator, top_k=2, bottom_k=2, tol=tol)
    assert operator.num_products > DEFAULT_MAX_BASIS
    assert result.converged
    exact = torch.sort(eigenvalues).values
    for values, errors, truth in (
        (result.top, result.top_errors, exact.flip(0)[:2]),
        (result.bottom, result.bottom_errors, exact[:2]),
    ):
        for value, error, true_value in zip(values, errors, truth.tolist(), strict=True):
            assert abs(value - true_value) <= tol * 3.3
            assert abs(value - true_value) <= error + 1e-12


def test_a_non_finite_product_is_caught_without_a_product_sized_copy():
    for bad in (float("nan"), float("inf"), -float("inf")):
        product = torch.ones(DIM)
        product[DIM // 2] = bad
        with pytest.raises(NonFiniteProductError):
            check_finite(product)
    product = torch.ones(DIM)
    with LiveStorages() as storages:
        assert check_finite(product) is product
    assert storages.peak < DIM  # a few scalars, not a vector of flags


@pytest.mark.parametrize("chunks", [1, 3])
def test_add_product_forms_the_sum_in_the_memory_it_is_given(chunks):
    """The values-only pass's product: ``out + H v`` in ``out``'s storage, each batch's pieces
    added as they come (no vector of the operator's size allocated), as a dense Hessian gives it."""
    from helpers.reference import dense_hessian

    from lightning_shortcut.hessian.context import hessian_operator
    from lightning_shortcut.hessian.settings import HessianSettings

    torch.manual_seed(0)  # parameters, not activations, the largest storages
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)
    ).double()
    x, y = classification_data((32,), num_samples=6)
    dense = dense_hessian(model, ce_loss(x, y))
    batches = list(zip(x.chunk(chunks), y.chunk(chunks), strict=True))
    with hessian_operator(model, batches, None, HessianSettings()) as operator:
        operator(torch.zeros(operator.dim, dtype=torch.float64))  # the graphs built
        vector, start = (torch.randn(operator.dim, dtype=torch.float64) for _ in range(2))
        out = start.clone()
        given = frozenset(t.untyped_storage().data_ptr() for t in (out, vector))
        with LiveStorages(given) as storages:
            result = operator.add_product(vector, out)
        assert not [size for size in storages.allocations if size >= operator.dim * 8]
        assert result.data_ptr() == out.data_ptr() and operator.num_products == 2
        torch.testing.assert_close(result, start + dense @ vector)
