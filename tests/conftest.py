import os

import pytest
import torch

os.environ.setdefault("PYTHONHASHSEED", "0")

# Under pytest-xdist each worker is a process of its own: one thread each (and for the processes
# the tests start) keeps the workers from oversubscribing the cores, which slows PyTorch's CPU
# kernels by an order of magnitude where threads outnumber cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    # The slow tests first (the multi-process ones, the study): under pytest-xdist they then start
    # at once and run beside the many short tests, instead of being left for last on one worker.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
