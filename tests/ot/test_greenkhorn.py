import numpy as np
import pytest
import torch

from recot.ot import greenkhorn, sinkhorn, sq_euclidean

F64 = torch.float64


@pytest.mark.parametrize("steps", [1, 2, 9, 40])
def test_reproduces_pot_step_by_step(pot, make, steps):
    cost, a, b = make(batch=(2,), n=6, m=5)
    res = greenkhorn(cost, a, b, eps=0.5, max_iter=steps, tol=0)
    assert (res.n_iter == steps).all()
    for k in range(2):
        ref = pot.bregman.greenkhorn(
            a[k].numpy(), b[k].numpy(), cost[k].numpy(), 0.5, numItermax=steps, stopThr=0, warn=False
        )
        np.testing.assert_allclose(res.plan[k].numpy(), ref, atol=1e-13)


@pytest.mark.parametrize("block", [1, 3])
def test_converges_to_pot_and_sinkhorn(pot, make, block):
    cost, a, b = make(batch=(2,), n=7, m=5)
    res = greenkhorn(cost, a, b, eps=0.3, max_iter=50000, tol=1e-11, block=block)
    assert res.converged.all() and (res.err <= 1e-11).all()
    ref = sinkhorn(cost, a, b, eps=0.3, tol=1e-13, max_iter=20000)
    torch.testing.assert_close(res.plan, ref.plan, atol=1e-10, rtol=0)
    for k in range(2):
        gk = pot.bregman.greenkhorn(a[k].numpy(), b[k].numpy(), cost[k].numpy(), 0.3, numItermax=100000, stopThr=1e-14)
        np.testing.assert_allclose(res.plan[k].numpy(), gk, atol=1e-10)
    # potentials follow the same convention as sinkhorn's
    plan = torch.exp((res.f[..., :, None] + res.g[..., None, :] - cost) / 0.3)
    torch.testing.assert_close(res.plan, plan)


def test_block_needs_fewer_steps(make):
    cost, a, b = make(batch=(1,), n=40, m=30)
    one = greenkhorn(cost, a, b, eps=0.1, max_iter=100000, tol=1e-8)
    blk = greenkhorn(cost, a, b, eps=0.1, max_iter=100000, tol=1e-8, block=8)
    assert one.converged.all() and blk.converged.all()
    assert blk.n_iter.item() < one.n_iter.item() / 3


def test_masked_ragged_batch_equals_each_problem_alone():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, 2, generator=g, dtype=F64)
    y = torch.randn(3, 4, 2, generator=g, dtype=F64)
    sizes = [(6, 4), (3, 2), (0, 4)]
    mask_a = torch.tensor([[True] * n + [False] * (6 - n) for n, _ in sizes])
    mask_b = torch.tensor([[True] * m + [False] * (4 - m) for _, m in sizes])
    cost = sq_euclidean(x, y).masked_fill(~(mask_a[..., :, None] & mask_b[..., None, :]), float("inf"))
    res = greenkhorn(cost, mask_a=mask_a, mask_b=mask_b, eps=0.5, max_iter=20000, tol=1e-11)
    assert torch.isfinite(res.plan).all() and torch.isfinite(res.f).all()
    for k, (n, m) in enumerate(sizes[:2]):
        alone = greenkhorn(sq_euclidean(x[k, :n], y[k, :m]), eps=0.5, max_iter=20000, tol=1e-11)
        torch.testing.assert_close(res.plan[k, :n, :m], alone.plan, atol=1e-10, rtol=0)
        assert res.plan[k, n:].sum() == 0 and res.plan[k, :, m:].sum() == 0
    assert res.plan[2].sum() == 0 and res.value[2] == 0


def test_implicit_gradient_equals_sinkhorns(make):
    cost, a, b = make(batch=(2,), n=5, m=4)
    grads = []
    for solver, kw in ((greenkhorn, dict(max_iter=50000)), (sinkhorn, dict(max_iter=20000))):
        c = cost.clone().requires_grad_()
        r = solver(c, a, b, eps=0.4, tol=1e-12, grad="implicit", **kw)
        (r.plan * torch.linspace(0, 1, 20, dtype=F64).reshape(5, 4)).sum().backward()
        grads.append(c.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-8, rtol=0)


def test_gradcheck_unroll_and_implicit():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 3, 4, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: greenkhorn(c, eps=0.5, max_iter=15, tol=0, grad="unroll").plan, (cost,))
    assert torch.autograd.gradcheck(
        lambda c: greenkhorn(c, eps=0.5, max_iter=20000, tol=1e-13, grad="implicit").plan, (cost,)
    )


def test_float32_small_eps_is_finite_and_reports_exact_error():
    g = torch.Generator().manual_seed(0)
    cost = sq_euclidean(torch.rand(2, 30, 3, generator=g), torch.rand(2, 10, 3, generator=g))
    cost = cost / cost.amax()
    res = greenkhorn(cost, eps=1e-3, max_iter=3000, tol=1e-3, block=4)
    assert torch.isfinite(res.plan).all() and torch.isfinite(res.err).all()
    p = res.plan.double()
    true = (p.sum(-1) - 1 / 30).abs().sum(-1) + (p.sum(-2) - 1 / 10).abs().sum(-1)
    torch.testing.assert_close(res.err.double(), true, atol=1e-5, rtol=0)
