import math

import numpy as np
import pytest
import torch

from recot.ot import OTResult, sinkhorn, sq_euclidean

F64 = torch.float64
TIGHT = dict(tol=1e-13, max_iter=20000)


def _np(t):
    return t.detach().numpy()


# ----------------------------------------------------------------------------- agreement with POT


@pytest.mark.parametrize("eps", [0.05, 0.3, 2.0])
def test_balanced_matches_pot(pot, make, eps):
    cost, a, b = make(batch=(3,), n=6, m=7)
    res = sinkhorn(cost, a, b, eps=eps, **TIGHT)
    assert isinstance(res, OTResult)
    assert res.converged.all()
    for k in range(3):
        ref = pot.sinkhorn(_np(a[k]), _np(b[k]), _np(cost[k]), eps, stopThr=1e-15, numItermax=100000)
        np.testing.assert_allclose(_np(res.plan[k]), ref, atol=1e-10)
        assert res.value[k].item() == pytest.approx(float((ref * _np(cost[k])).sum()), abs=1e-10)


@pytest.mark.parametrize("reg_type", ["kl", "entropy"])
@pytest.mark.parametrize("reg_m", [0.5, (0.3, 2.0), (math.inf, 0.4)])
def test_unbalanced_matches_pot(pot, make, reg_type, reg_m):
    cost, a, b = make(batch=(2,), n=5, m=4)
    b = 1.7 * b  # unequal masses
    eps = 0.2
    res = sinkhorn(cost, a, b, eps=eps, reg_m=reg_m, reg_type=reg_type, **TIGHT)
    assert res.converged.all()
    for k in range(2):
        ref, log = pot.unbalanced.sinkhorn_unbalanced(
            _np(a[k]), _np(b[k]), _np(cost[k]), eps, reg_m, reg_type=reg_type, stopThr=1e-15, numItermax=100000,
            log=True,
        )
        np.testing.assert_allclose(_np(res.plan[k]), ref, atol=1e-10)
        # unbalanced potentials are unique: f = eps log u (+ eps log a for the KL reference)
        f_ref = eps * log["logu"] + (eps * np.log(_np(a[k])) if reg_type == "kl" else 0)
        np.testing.assert_allclose(_np(res.f[k]), f_ref, atol=1e-8)


def test_potential_convention(make):
    cost, a, b = make()
    eps = 0.3
    for reg_m in (None, 0.8):
        res = sinkhorn(cost, a, b, eps=eps, reg_m=reg_m, **TIGHT)
        plan = torch.exp((res.f[..., :, None] + res.g[..., None, :] - cost) / eps)
        torch.testing.assert_close(res.plan, plan)
        torch.testing.assert_close(res.value, (cost * res.plan).sum((-2, -1)))
    bal = sinkhorn(cost, a, b, eps=eps, **TIGHT)
    torch.testing.assert_close(bal.plan.sum(-1), a, atol=1e-12, rtol=0)
    torch.testing.assert_close(bal.plan.sum(-2), b, atol=1e-12, rtol=0)


def test_small_eps_approaches_emd(pot, make):
    cost, a, b = make(batch=(2,), n=6, m=6)
    res = sinkhorn(cost, a, b, eps=2e-3, eps_scaling=0.5, tol=1e-9, max_iter=20000)
    assert res.converged.all()
    for k in range(2):
        emd = pot.emd2(_np(a[k]), _np(b[k]), _np(cost[k]))
        assert res.value[k].item() == pytest.approx(emd, abs=5e-3)


def test_batch_dims_and_broadcast_weights(make):
    cost, _, _ = make(batch=(2, 3), n=4, m=5)
    a = torch.full((4,), 0.25, dtype=F64)
    res = sinkhorn(cost, a, None, eps=0.5, **TIGHT)
    assert res.plan.shape == (2, 3, 4, 5)
    for t in (res.value, res.n_iter, res.err, res.converged):
        assert t.shape == (2, 3)
    assert res.f.shape == (2, 3, 4) and res.g.shape == (2, 3, 5)
    flat = sinkhorn(cost.reshape(6, 4, 5), eps=0.5, **TIGHT)
    torch.testing.assert_close(res.plan.reshape(6, 4, 5), flat.plan)


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("reg_m", [None, 1.0])
@pytest.mark.parametrize("grad", ["unroll", "envelope", "implicit"])
def test_masked_ragged_batch_equals_each_problem_alone(grad, reg_m):
    g = torch.Generator().manual_seed(1)
    sizes = [(4, 3), (6, 2), (1, 5), (0, 5)]  # the last problem is empty
    x = torch.randn(4, 6, 2, generator=g, dtype=F64)
    y = torch.randn(4, 5, 2, generator=g, dtype=F64)
    mask_a = torch.zeros(4, 6, dtype=torch.bool)
    mask_b = torch.zeros(4, 5, dtype=torch.bool)
    for k, (n, m) in enumerate(sizes):
        mask_a[k, :n], mask_b[k, :m] = True, True
    x_garbage = x.masked_fill(~mask_a[..., None], 1e3).requires_grad_()
    cost = sq_euclidean(x_garbage, y).masked_fill(~(mask_a[..., :, None] & mask_b[..., None, :]), float("nan"))
    res = sinkhorn(cost, mask_a=mask_a, mask_b=mask_b, eps=0.5, reg_m=reg_m, grad=grad, **TIGHT)
    for t in (res.plan, res.value, res.f, res.g, res.err):
        assert torch.isfinite(t).all()
    for k, (n, m) in enumerate(sizes[:3]):
        alone = sinkhorn(sq_euclidean(x[k, :n], y[k, :m]), eps=0.5, reg_m=reg_m, **TIGHT)
        torch.testing.assert_close(res.plan[k, :n, :m], alone.plan, atol=1e-10, rtol=0)
        torch.testing.assert_close(res.value[k], alone.value, atol=1e-10, rtol=0)
        torch.testing.assert_close(res.f[k, :n], alone.f, atol=1e-8, rtol=0)
        assert res.plan[k, n:].abs().sum() == 0 and res.plan[k, :, m:].abs().sum() == 0
        assert (res.f[k, n:] == 0).all() and (res.g[k, m:] == 0).all()
    assert res.plan[3].abs().sum() == 0 and res.value[3] == 0 and res.converged[3]
    (res.value.sum() + (res.plan**2).sum()).backward()
    grad_x = x_garbage.grad
    assert torch.isfinite(grad_x).all()
    assert (grad_x[~mask_a] == 0).all()
    assert grad_x[mask_a].abs().sum() > 0


def test_zero_weight_is_padding():
    cost = torch.rand(4, 3, dtype=F64)
    a = torch.tensor([0.5, 0.0, 0.25, 0.25], dtype=F64, requires_grad=True)
    res = sinkhorn(cost, a, eps=0.5, grad="implicit", **TIGHT)
    assert res.plan[1].abs().sum() == 0
    res.value.backward()
    assert torch.isfinite(a.grad).all()


# ----------------------------------------------------------------------------- gradients


def _simplex(t):
    return t.softmax(-1)


def test_gradcheck_implicit_balanced():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 3, 4, generator=g, dtype=F64, requires_grad=True)
    ta = torch.randn(2, 3, generator=g, dtype=F64, requires_grad=True)
    tb = torch.randn(2, 4, generator=g, dtype=F64, requires_grad=True)

    def fn(c, ta, tb):  # weights on the simplex: balanced gradients live in its tangent space
        r = sinkhorn(c, _simplex(ta), _simplex(tb), eps=0.5, grad="implicit", **TIGHT)
        return r.plan, r.value, (_simplex(ta) * r.f).sum(-1) + (_simplex(tb) * r.g).sum(-1)

    assert torch.autograd.gradcheck(fn, (cost, ta, tb))


@pytest.mark.parametrize("reg_type", ["kl", "entropy"])
def test_gradcheck_implicit_unbalanced(reg_type):
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 3, 4, generator=g, dtype=F64, requires_grad=True)
    a = (torch.rand(2, 3, generator=g, dtype=F64) + 0.5).requires_grad_()
    b = (torch.rand(2, 4, generator=g, dtype=F64) + 0.5).requires_grad_()

    def fn(c, a, b):
        r = sinkhorn(c, a, b, eps=0.5, reg_m=(0.7, 2.0), reg_type=reg_type, grad="implicit", **TIGHT)
        return r.plan, r.value, r.f, r.g

    assert torch.autograd.gradcheck(fn, (cost, a, b))


def test_gradcheck_unroll_fixed_iterations():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 3, 4, generator=g, dtype=F64, requires_grad=True)
    a = (torch.rand(2, 3, generator=g, dtype=F64) + 0.5).requires_grad_()
    b = (torch.rand(2, 4, generator=g, dtype=F64) + 0.5).requires_grad_()

    def fn(c, a, b):
        r = sinkhorn(c, a, b, eps=0.3, tol=0, max_iter=12, grad="unroll")
        r2 = sinkhorn(c, a, b, eps=0.3, tol=0, max_iter=4, reg_m=0.5, grad="unroll")
        return r.plan, r.value, r2.plan

    assert torch.autograd.gradcheck(fn, (cost, a, b))


@pytest.mark.parametrize("reg_m", [None, 0.6])
def test_gradcheck_envelope_regularized_objective(reg_m):
    """Envelope theorem: d/dC [<C, P*> + eps * Omega(P*)] = P*, which envelope mode returns for ``value``."""
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 3, 4, generator=g, dtype=F64, requires_grad=True)
    eps = 0.4

    def fn(c):
        r = sinkhorn(c, eps=eps, reg_m=reg_m, reg_type="entropy", grad="envelope", **TIGHT)
        p = r.plan  # detached: its terms only shift the value
        reg = eps * (p * (p.log() - 1)).sum((-2, -1))
        if reg_m is not None:
            kl = lambda x, y: (x * (x / y).log() - x + y).sum(-1)  # noqa: E731
            u = torch.full((3,), 1 / 3, dtype=F64)
            reg = reg + reg_m * (kl(p.sum(-1), u) + kl(p.sum(-2), torch.full((4,), 0.25, dtype=F64)))
        return r.value + reg

    assert torch.autograd.gradcheck(fn, (cost,))


def test_grad_modes_agree_at_convergence_and_envelope_gradient_is_plan(make):
    cost, a, b = make(batch=(2,), n=5, m=4)
    eps = 0.3
    grads = {}
    for mode in ("unroll", "envelope", "implicit"):
        c = cost.clone().requires_grad_()
        r = sinkhorn(c, a, b, eps=eps, grad=mode, **TIGHT)
        ent = eps * (r.plan * (r.plan.log() - 1)).sum((-2, -1))
        (r.value + ent).sum().backward()
        torch.testing.assert_close(c.grad, r.plan.detach(), atol=1e-9, rtol=0)
        c2 = cost.clone().requires_grad_()
        sinkhorn(c2, a, b, eps=eps, grad=mode, **TIGHT).value.sum().backward()
        grads[mode] = c2.grad
    torch.testing.assert_close(grads["unroll"], grads["implicit"], atol=1e-8, rtol=0)
    # envelope's value gradient is the plan, not the gradient of <C, P(C)>
    assert not torch.allclose(grads["envelope"], grads["implicit"], atol=1e-3)


def test_envelope_and_implicit_graph_ownership(make):
    cost, a, b = make()
    c = cost.clone().requires_grad_()
    env = sinkhorn(c, a, b, eps=0.5, grad="envelope")
    assert env.value.requires_grad and not env.plan.requires_grad and not env.f.requires_grad
    imp = sinkhorn(c, a, b, eps=0.5, grad="implicit")
    assert imp.plan.requires_grad and imp.f.requires_grad


def test_implicit_float32_small_eps_gradient_is_finite():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 20, 3, generator=g, requires_grad=True)
    y = torch.rand(4, 25, 3, generator=g)
    c = sq_euclidean(x, y)
    r = sinkhorn(c / c.detach().amax(), eps=1e-3, eps_scaling=0.5, grad="implicit", tol=1e-3, max_iter=3000)
    assert r.converged.all()
    (r.plan * torch.rand_like(r.plan)).sum().backward()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- iterations and stopping


def test_tol_zero_runs_exactly_max_iter(make):
    cost, a, b = make()
    res = sinkhorn(cost, a, b, eps=1.0, tol=0, max_iter=37)
    assert (res.n_iter == 37).all()
    assert torch.isfinite(res.err).all()


def test_n_iter_is_per_problem_and_truthful(make):
    cost, a, b = make(batch=(3,), n=6, m=6)
    eps = torch.tensor([0.05, 0.5, 5.0])
    # three problems of very different difficulty: scale each cost instead of eps
    scaled = cost / eps[:, None, None].to(F64)
    res = sinkhorn(scaled, a, b, eps=1.0, tol=1e-9, max_iter=5000, check_every=5)
    assert len(set(res.n_iter.tolist())) == 3
    for k in range(3):
        alone = sinkhorn(scaled[k], a[k], b[k], eps=1.0, tol=1e-9, max_iter=5000, check_every=5)
        assert res.n_iter[k] == alone.n_iter
        torch.testing.assert_close(res.plan[k], alone.plan)  # frozen problems do not move on
        # truthful: the same number of fixed iterations reproduces the plan
        fixed = sinkhorn(scaled[k], a[k], b[k], eps=1.0, tol=0, max_iter=int(res.n_iter[k]))
        torch.testing.assert_close(res.plan[k], fixed.plan)


def test_reported_err_is_the_marginal_error(make):
    cost, a, b = make(batch=(2,))
    res = sinkhorn(cost, a, b, eps=0.1, tol=0, max_iter=7)
    true = (res.plan.sum(-1) - a).abs().sum(-1) + (res.plan.sum(-2) - b).abs().sum(-1)
    torch.testing.assert_close(res.err, true, atol=1e-12, rtol=1e-9)


def test_unbalanced_err_is_potential_change_over_eps(make):
    cost, a, b = make()
    eps = 0.2
    r9 = sinkhorn(cost, a, b, eps=eps, reg_m=1.0, tol=0, max_iter=9)
    r10 = sinkhorn(cost, a, b, eps=eps, reg_m=1.0, tol=0, max_iter=10)
    change = ((r10.f - r9.f).abs().sum(-1) + (r10.g - r9.g).abs().sum(-1)) / eps
    torch.testing.assert_close(r10.err, change)


def test_eps_scaling_same_solution_and_counts_all_stages(make):
    cost, a, b = make()
    ref = sinkhorn(cost, a, b, eps=0.02, **TIGHT)
    ann = sinkhorn(cost, a, b, eps=0.02, eps_scaling=0.5, stage_iter=3, **TIGHT)
    torch.testing.assert_close(ann.plan, ref.plan, atol=1e-10, rtol=0)
    stages = math.ceil(math.log(0.02 / float(cost.max())) / math.log(0.5))  # eps values above 0.02
    fixed = sinkhorn(cost, a, b, eps=0.02, eps_scaling=0.5, stage_iter=3, tol=0, max_iter=5)
    assert (fixed.n_iter == 3 * stages + 5).all()


def test_warm_start_converges_faster(make):
    cost, a, b = make()
    cold = sinkhorn(cost, a, b, eps=0.05, tol=1e-10, max_iter=10000)
    warm = sinkhorn(cost * 1.01, a, b, eps=0.05, tol=1e-10, max_iter=10000, init=(cold.f, cold.g))
    again = sinkhorn(cost * 1.01, a, b, eps=0.05, tol=1e-10, max_iter=10000)
    assert (warm.n_iter < again.n_iter).all()
    torch.testing.assert_close(warm.plan, again.plan, atol=1e-9, rtol=0)


# ----------------------------------------------------------------------------- float32 stability


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
def test_float32_stability_sweep(scale):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 16, 3, generator=g), torch.rand(3, 20, 3, generator=g)
    cost = sq_euclidean(x, y)
    cost = cost / cost.amax() * scale
    for rel in (1e-3, 1e-2, 1e-1, 1.0, 10.0):
        for kw in (dict(), dict(eps_scaling=0.5), dict(reg_m=scale)):
            res = sinkhorn(cost, eps=rel * scale, tol=1e-3, max_iter=1500, **kw)
            for t in (res.plan, res.value, res.f, res.g, res.err):
                assert torch.isfinite(t).all(), (scale, rel, kw)
            if "reg_m" not in kw:
                p = res.plan.double()
                true = (p.sum(-1) - 1 / 16).abs().sum(-1) + (p.sum(-2) - 1 / 20).abs().sum(-1)
                assert torch.allclose(res.err.double(), true, atol=1e-5), (scale, rel, kw)
                assert (true[res.converged] <= 1e-3 + 1e-5).all()
                if rel >= 1e-2 or "eps_scaling" in kw:
                    assert res.converged.all(), (scale, rel, kw, res.err)


def test_invalid_arguments():
    cost = torch.rand(3, 4)
    with pytest.raises(ValueError):
        sinkhorn(cost, eps=0.0)
    with pytest.raises(ValueError):
        sinkhorn(cost, eps=0.1, grad="nope")
    with pytest.raises(ValueError):
        sinkhorn(cost, eps=0.1, eps_scaling=1.5)
    with pytest.raises(ValueError):
        sinkhorn(cost, eps=0.1, reg_type="l2")


# ----------------------------------------------------------------------------- method="scaling"


@pytest.mark.parametrize("reg_m", [None, 0.5, (0.3, 2.0)])
@pytest.mark.parametrize("reg_type", ["kl", "entropy"])
def test_scaling_method_matches_the_log_domain(make, reg_m, reg_type):
    cost, a, b = make(batch=(3,), n=6, m=7)
    if reg_m is not None:
        b = 1.7 * b
    for eps in (0.05, 0.3):
        ref = sinkhorn(cost, a, b, eps=eps, reg_m=reg_m, reg_type=reg_type, **TIGHT)
        res = sinkhorn(cost, a, b, eps=eps, reg_m=reg_m, reg_type=reg_type, method="scaling", **TIGHT)
        assert res.converged.all()
        torch.testing.assert_close(res.plan, ref.plan, atol=1e-11, rtol=0)
        torch.testing.assert_close(res.value, ref.value, atol=1e-11, rtol=0)
        # same potentials' convention: the plan is exp((f + g - C) / eps)
        torch.testing.assert_close(res.plan, torch.exp((res.f[..., :, None] + res.g[..., None, :] - cost) / eps))


@pytest.mark.parametrize("grad", ["unroll", "envelope", "implicit"])
def test_scaling_method_masked_ragged_batch_and_gradients(grad):
    g = torch.Generator().manual_seed(1)
    sizes = [(4, 3), (6, 2), (1, 5)]
    x = torch.randn(3, 6, 2, generator=g, dtype=F64, requires_grad=True)
    y = torch.randn(3, 5, 2, generator=g, dtype=F64)
    mask_a, mask_b = torch.zeros(3, 6, dtype=torch.bool), torch.zeros(3, 5, dtype=torch.bool)
    for k, (n, m) in enumerate(sizes):
        mask_a[k, :n], mask_b[k, :m] = True, True
    grads = []
    for method in ("log", "scaling"):
        res = sinkhorn(sq_euclidean(x, y), mask_a=mask_a, mask_b=mask_b, eps=0.5, grad=grad, method=method, **TIGHT)
        for k, (n, m) in enumerate(sizes):
            alone = sinkhorn(sq_euclidean(x[k, :n], y[k, :m]), eps=0.5, **TIGHT)
            torch.testing.assert_close(res.plan[k, :n, :m], alone.plan, atol=1e-10, rtol=0)
            assert res.plan[k, n:].abs().sum() == 0 and res.plan[k, :, m:].abs().sum() == 0
        (grad_x,) = torch.autograd.grad(res.value.sum() + (res.plan ** 2).sum(), x)
        grads.append(grad_x)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-8, rtol=0)


def test_scaling_method_float32_small_eps_cold_and_warm():
    """At eps = 1e-3 of the max cost most of exp(-C/eps) underflows in float32: the cold start re-centres in the log
    domain and absorbs, so it agrees with the log-domain solver; a warm start reaches it in fewer iterations."""
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 400, 8, generator=g), torch.randn(2, 12, 8, generator=g)
    cost = sq_euclidean(x, c)
    cost = cost / cost.amax()
    for eps in (1e-3, 1e-2):
        ref = sinkhorn(cost, eps=eps, tol=1e-4, max_iter=3000, check_every=1)
        res = sinkhorn(cost, eps=eps, tol=1e-4, max_iter=3000, check_every=1, method="scaling")
        for t in (res.plan, res.f, res.g, res.err):
            assert torch.isfinite(t).all()
        assert res.converged.all(), res.err
        true = (res.plan.double().sum(-1) - 1 / 400).abs().sum(-1) + (res.plan.double().sum(-2) - 1 / 12).abs().sum(-1)
        assert (true <= 1e-4 + 1e-5).all()
        assert torch.allclose(res.value, ref.value, rtol=1e-3)
        warm = sinkhorn(cost * 1.01, eps=eps, tol=1e-4, max_iter=3000, check_every=1, method="scaling",
                        init=(res.f, res.g))
        cold = sinkhorn(cost * 1.01, eps=eps, tol=1e-4, max_iter=3000, check_every=1, method="scaling")
        assert warm.converged.all() and (warm.n_iter < cold.n_iter).all()


def test_scaling_method_invalid_arguments():
    with pytest.raises(ValueError, match="method"):
        sinkhorn(torch.rand(3, 4), eps=0.1, method="nope")
    with pytest.raises(ValueError, match="eps_scaling"):
        sinkhorn(torch.rand(3, 4), eps=0.1, method="scaling", eps_scaling=0.5)
