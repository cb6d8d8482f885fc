import warnings

import pytest
import torch

from recot.nn.ode import GraphODEFunc, ODEBlock
from recot.nn.sparse import SparseOperator


@pytest.fixture(scope="module")
def graph():
    """A random symmetric normalised adjacency (float64) on 30 nodes and its dense copy."""
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(30, 30, generator=g) < 0.2).double()
    a = torch.triu(a, 1)
    a = a + a.T
    deg = a.sum(1).clamp_min(1)
    a = a / deg.sqrt()[:, None] / deg.sqrt()[None, :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return SparseOperator(a.to_sparse_csr(), symmetric=True), a


def _relative_error(graph, solver, **options) -> float:
    """Max error of the states at 0, 0.8, 2, 3.2, 4 against ``expm(t A) x``, relative to the largest entry."""
    op, a = graph
    x = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    times = torch.tensor([0.0, 0.8, 2.0, 3.2, 4.0], dtype=torch.float64)
    states = ODEBlock(GraphODEFunc(op), solver, **options)(x, times)
    assert states.shape == (5, 30, 4)
    expected = torch.stack([torch.linalg.matrix_exp(t * a) @ x for t in times])
    return ((states - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("solver, step, order", [("euler", 0.1, 1), ("rk4", 0.2, 4)])
def test_fixed_step_solvers_converge_at_their_order(graph, solver, step, order):
    coarse = _relative_error(graph, solver, step_size=step)
    fine = _relative_error(graph, solver, step_size=step / 2)
    assert 0.8 * 2 ** order < coarse / fine < 1.25 * 2 ** order


def test_implicit_adams_and_dopri5_reach_the_matrix_exponential(graph):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Functional iteration did not converge" would fail the test
        assert _relative_error(graph, "implicit_adams", step_size=0.05, rtol=1e-6, atol=1e-8) < 1e-6
    assert _relative_error(graph, "dopri5", rtol=1e-8, atol=1e-10) < 1e-7


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_polynomial_steps_equal_torchdiffeq_steps(graph, solver):
    """Euler / RK4 on dx/dt = A x as polynomials in A: torchdiffeq's states and gradients, with the same products."""
    op, _ = graph
    x = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = []
    for polynomial in (True, False):
        x0 = x.clone().requires_grad_(True)
        t = torch.tensor([0.0, 0.9, 2.2, 4.0], dtype=torch.float64, requires_grad=True)
        func = GraphODEFunc(op)
        block = ODEBlock(func, solver, polynomial_steps=polynomial)
        assert block.uses_polynomial_steps == polynomial
        out = block(x0, t)
        (out[1:] ** 3).sum().backward()
        results.append((out.detach(), x0.grad, t.grad, func.nfe))
    for ours, theirs in zip(results[0][:3], results[1][:3]):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert results[0][3] == results[1][3] == 3 * {"euler": 1, "rk4": 4}[solver]
    # step_size and adjoint go through torchdiffeq
    assert not ODEBlock(GraphODEFunc(op), solver, step_size=0.5).uses_polynomial_steps
    assert not ODEBlock(GraphODEFunc(op), solver, adjoint=True).uses_polynomial_steps


def test_one_euler_step_is_one_propagation(graph):
    op, a = graph
    x = torch.randn(30, 4, dtype=torch.float64)
    func = GraphODEFunc(op)
    out = ODEBlock(func, "euler")(x, torch.tensor([2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(out[1], x + a @ x)
    assert func.nfe == 1


def test_adjoint_gradients_match_backpropagation(graph):
    op, _ = graph
    x = torch.randn(30, 4, dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        x0 = x.clone().requires_grad_(True)
        t = torch.tensor([0.0, 1.3, 4.0], dtype=torch.float64, requires_grad=True)
        out = ODEBlock(GraphODEFunc(op), "dopri5", rtol=1e-7, atol=1e-9, adjoint=adjoint)(x0, t)
        (out[1:] ** 2).sum().backward()
        grads.append((x0.grad, t.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-7)
    assert grads[0][1][1:].abs().min() > 0  # the output times receive gradients


def test_bad_arguments_are_explained(graph):
    func = GraphODEFunc()
    with pytest.raises(ValueError, match="solver must be one of euler, rk4, implicit_adams, dopri5; got 'rk45'"):
        ODEBlock(func, "rk45")
    with pytest.raises(ValueError, match="dopri5 chooses its own steps"):
        ODEBlock(func, "dopri5", step_size=0.1)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        ODEBlock(func, "rk4", step_size=0.0)
    with pytest.raises(ValueError, match="rtol and atol must be > 0"):
        ODEBlock(func, "dopri5", rtol=0.0)
    with pytest.raises(RuntimeError, match="has no operator"):
        ODEBlock(func, "euler")(torch.zeros(3, 2), torch.tensor([0.0, 1.0]))
