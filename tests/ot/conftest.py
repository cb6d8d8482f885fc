import pytest
import torch

from recot.ot import sq_euclidean


def make_problem(batch=(2,), n=5, m=6, d=2, dtype=torch.float64, seed=0, uniform=False):
    """Normalized squared-Euclidean costs (max 1) and random positive weights of mass 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, n, d, generator=g, dtype=dtype)
    y = torch.randn(*batch, m, d, generator=g, dtype=dtype) + 0.5
    cost = sq_euclidean(x, y)
    cost = cost / cost.amax((-2, -1), keepdim=True)
    if uniform:
        return cost, None, None
    a = torch.rand(*batch, n, generator=g, dtype=dtype) + 0.2
    b = torch.rand(*batch, m, generator=g, dtype=dtype) + 0.2
    return cost, a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


@pytest.fixture(autouse=True)
def _one_thread():
    """These problems are tiny: intra-op threads only add OpenMP hand-offs, which become very slow when
    ``pytest -n 2`` already occupies both cores (measured: 155 s vs 26 s for this folder under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def pot():
    return pytest.importorskip("ot")


@pytest.fixture
def make():
    """Factory fixture: ``make(batch=(2,), n=5, m=6, ...) -> (cost, a, b)``."""
    return make_problem
