import math

import numpy as np
import pytest
import torch

from recot.ot import badmm, badmm_init, badmm_step, sinkhorn, sq_euclidean
from recot.ot.utils import masked_log

F64 = torch.float64


def test_entropic_badmm_reaches_the_sinkhorn_plan(make):
    cost, a, b = make(batch=(2,), n=6, m=5)
    ref = sinkhorn(cost, a, b, eps=0.1, tol=1e-13, max_iter=20000)
    res = badmm(cost, a, b, reg=0.1, rho=3.0, max_iter=3000, tol=0)
    torch.testing.assert_close(res.plan, ref.plan, atol=2e-4, rtol=0)
    torch.testing.assert_close(res.plan.sum(-1), a)  # Eq. 23 imposes the rows exactly
    assert (res.n_iter == 3000).all()


def test_quadratic_badmm_matches_pot_smooth_ot(pot, make):
    cost, a, b = make(batch=(2,), n=6, m=5)
    lam = 0.05
    res = badmm(cost, a, b, reg=lam, reg_type="quadratic", max_iter=2000, tol=0)
    for k in range(2):  # POT's l2 regularizer is (reg / 2) ||P||^2, BADMM's lam ||P||^2
        ref = pot.smooth.smooth_ot_dual(
            a[k].numpy(), b[k].numpy(), cost[k].numpy(), 2 * lam, reg_type="l2", stopThr=1e-12, numItermax=10000
        )
        np.testing.assert_allclose(res.plan[k].numpy(), ref, atol=5e-4)


@pytest.mark.parametrize("reg_type", ["entropic", "quadratic"])
def test_small_regularizer_approaches_emd(pot, make, reg_type):
    cost, a, b = make(batch=(2,), n=6, m=5)
    res = badmm(cost, a, b, reg=1e-4, reg_type=reg_type, rho=0.1, max_iter=5000, tol=1e-8)
    assert (res.err < 1e-6).all()
    for k in range(2):
        emd = pot.emd2(a[k].numpy(), b[k].numpy(), cost[k].numpy())
        assert res.value[k].item() == pytest.approx(emd, abs=1e-4)


def test_converged_problems_stop_and_n_iter_is_exact(make):
    cost, a, b = make(batch=(2,), n=6, m=5)
    res = badmm(cost, a, b, reg=0.0, rho=0.1, max_iter=5000, tol=1e-8, check_every=10)
    assert res.converged.all() and res.n_iter[0] != res.n_iter[1]
    for k in range(2):
        fixed = badmm(cost[k], a[k], b[k], reg=0.0, rho=0.1, max_iter=int(res.n_iter[k]), tol=0)
        torch.testing.assert_close(res.plan[k], fixed.plan)


def test_masked_ragged_batch_equals_each_problem_alone():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 5, 2, generator=g, dtype=F64), torch.randn(3, 4, 2, generator=g, dtype=F64)
    sizes = [(5, 4), (2, 3), (0, 0)]
    mask_a = torch.tensor([[True] * n + [False] * (5 - n) for n, _ in sizes])
    mask_b = torch.tensor([[True] * m + [False] * (4 - m) for _, m in sizes])
    cost = sq_euclidean(x, y).masked_fill(~(mask_a[..., :, None] & mask_b[..., None, :]), float("nan"))
    res = badmm(cost, mask_a=mask_a, mask_b=mask_b, reg=0.1, rho=2.0, max_iter=300, tol=0)
    assert torch.isfinite(res.plan).all() and torch.isfinite(res.value).all()
    for k, (n, m) in enumerate(sizes[:2]):
        alone = badmm(sq_euclidean(x[k, :n], y[k, :m]), reg=0.1, rho=2.0, max_iter=300, tol=0)
        torch.testing.assert_close(res.plan[k, :n, :m], alone.plan, atol=1e-12, rtol=0)
        assert res.plan[k, n:].sum() == 0 and res.plan[k, :, m:].sum() == 0
    assert res.plan[2].sum() == 0 and res.value[2] == 0


def test_float32_tiny_regularizer_stays_finite_where_kernel_underflows(pot):
    g = torch.Generator().manual_seed(0)
    cost = sq_euclidean(torch.rand(16, 2, generator=g), torch.rand(12, 2, generator=g))
    cost = cost / cost.max() * 1e3
    with np.errstate(all="ignore"), pytest.warns(UserWarning):  # the kernel exp(-C/reg) underflows to 0 in POT
        naive = pot.sinkhorn(np.full(16, 1 / 16, np.float32), np.full(12, 1 / 12, np.float32), cost.numpy(), 1e-1)
    assert not np.isfinite(naive).all() or abs(naive.sum() - 1) > 1e-2
    res = badmm(cost, reg=1e-1, max_iter=500, tol=0)
    assert torch.isfinite(res.plan).all()
    torch.testing.assert_close(res.plan.sum(-1), torch.full((16,), 1 / 16))
    assert res.plan.sum(-2).sub(1 / 12).abs().sum() < 1e-2


def test_gradients_unroll_gradcheck_and_envelope():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 3, 4, generator=g, dtype=F64, requires_grad=True)
    for reg_type in ("entropic", "quadratic"):
        fn = lambda c: badmm(c, reg=0.2, rho=1.0, reg_type=reg_type, max_iter=8, tol=0).plan  # noqa: E731
        assert torch.autograd.gradcheck(fn, (cost,))
    env = badmm(cost, reg=0.2, max_iter=50, tol=0, grad="envelope")
    assert not env.plan.requires_grad and env.f is None
    (g_env,) = torch.autograd.grad(env.value.sum(), cost)
    torch.testing.assert_close(g_env, env.plan)


def test_step_with_marginal_priors_follows_the_paper():
    """Alg. 2 as published: mu/eta never see the cost, so from mu0 = p0 they stay at the priors."""
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(4, 3, generator=g, dtype=F64)
    a = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    b = torch.tensor([0.5, 0.25, 0.25], dtype=F64)
    la, lb = masked_log(a, None), masked_log(b, None)
    state = badmm_init(la, lb)
    for _ in range(50):
        state = badmm_step(state, cost, reg=0.1, rho=1.0, log_a=la, log_b=lb, reg_m=(0.3, 0.2))
    torch.testing.assert_close(state.log_mu.exp(), a)
    torch.testing.assert_close(state.log_eta.exp(), b)
    fixed = badmm_init(la, lb)
    for _ in range(50):
        fixed = badmm_step(fixed, cost, reg=0.1, rho=1.0, log_a=la, log_b=lb, reg_m=(math.inf, math.inf))
    torch.testing.assert_close(state.log_p, fixed.log_p)
