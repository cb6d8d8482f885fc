"""The ROT problem (Xu & Cheng, Eq. 3) and its solvers: oracles are a direct minimiser of Eq. 3 and the core's
unbalanced Sinkhorn; Proposition 1's special cases; masks, empty sets, gradients, float32 stability."""
import math

import pytest
import torch

from recot.ot import sinkhorn
from recot.ot.rot import ROTWeights, rot_badmm, rot_objective, rot_readout, rot_sinkhorn, similarity

F64 = torch.float64
INF = math.inf


def sets(b=2, n=6, d=4, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, d, generator=g, dtype=dtype)


def direct_minimiser(x, weights, reg_type="entropic", structure=None):
    """Eq. 3 minimised over P = softmax(theta) (mass 1) by L-BFGS: the oracle for both solvers."""
    b, n, d = x.shape
    theta = torch.zeros(b, d * n, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=2000, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        plan = torch.softmax(theta, -1).view(b, d, n)
        value = rot_objective(x, plan, weights=weights, reg_type=reg_type, structure=structure).sum()
        value.backward()
        return value

    opt.step(closure)
    return torch.softmax(theta, -1).view(b, d, n).detach()


@pytest.mark.parametrize("reg_type", ["entropic", "quadratic"])
def test_badmm_solves_the_kl_relaxed_rot_problem(reg_type):
    x = sets()
    w = ROTWeights(0.0, 0.5, 0.7, 0.3, 2.0)
    res = rot_badmm(x, weights=w, reg_type=reg_type, num_modules=2000)
    torch.testing.assert_close(res.plan, direct_minimiser(x, w, reg_type), atol=1e-6, rtol=0)
    assert res.converged.all()
    # the marginals are really relaxed: neither equals its (uniform) prior
    assert (res.plan.sum(-1) - 0.25).abs().max() > 1e-2 and (res.plan.sum(-2) - 1 / 6).abs().max() > 1e-2


def test_sinkhorn_layer_reaches_the_core_unbalanced_sinkhorn_plan():
    x = sets()
    w = ROTWeights(0.0, 0.5, 0.7, 0.3, 1.0)
    res = rot_sinkhorn(x, weights=w, num_modules=100, inner_iter=20)
    core = sinkhorn(-x.transpose(-1, -2), eps=0.5, reg_m=(0.7, 0.3), reg_type="entropy", tol=1e-13, max_iter=10000)
    torch.testing.assert_close(res.plan, core.plan / core.plan.sum((-2, -1), keepdim=True), atol=1e-8, rtol=0)


def test_structural_term_both_solvers_reach_the_same_minimiser():
    x = sets(n=5, d=4) * 3
    structure = similarity(x)
    w = ROTWeights(1.0, 0.5, 0.7, 0.3, 2.0)
    ref = direct_minimiser(x, w, structure=structure)
    plain = direct_minimiser(x, w._replace(alpha0=0.0))
    assert (ref - plain).abs().max() > 1e-2  # the structural term matters here
    badmm = rot_badmm(x, weights=w, structure=structure, num_modules=5000)
    torch.testing.assert_close(badmm.plan, ref, atol=1e-6, rtol=0)
    prox = rot_sinkhorn(x, weights=w._replace(step=1.0), structure=structure, num_modules=400, inner_iter=20)
    torch.testing.assert_close(prox.plan, ref, atol=1e-4, rtol=0)


def test_paper_marginals_ignore_the_prior_weights_relaxed_ones_do_not():
    x = sets()
    outs = {}
    for mode in ("paper", "relaxed"):
        for a3 in (0.01, 100.0):
            res = rot_badmm(x, weights=ROTWeights(0.0, 0.5, 1.0, a3, 1.0), marginals=mode, num_modules=8)
            outs[mode, a3] = res.plan
    torch.testing.assert_close(outs["paper", 0.01], outs["paper", 100.0])
    assert (outs["relaxed", 0.01] - outs["relaxed", 100.0]).abs().max() > 1e-3
    hard = rot_badmm(x, weights=ROTWeights(0.0, 0.5, INF, INF, 1.0), marginals="relaxed", num_modules=8).plan
    torch.testing.assert_close(hard, outs["paper", 0.01])


# --- Proposition 1 ----------------------------------------------------------------------------------------
def ragged(seed=0, dtype=F64):
    x = sets(3, 7, 5, dtype=dtype, seed=seed)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 2:] = False
    return x * mask[..., None], mask


def reference_pools(x, mask):
    mean = x.sum(1) / mask.sum(1, keepdim=True)
    top = x.masked_fill(~mask[..., None], -INF).max(1).values
    return mean, top


@pytest.mark.parametrize("solver,kwargs,mean_w,tol", [
    ("sinkhorn", {}, ROTWeights(0.0, 1e6, INF, INF, 1.0), 1e-6),
    ("badmm", {"reg_type": "entropic"}, ROTWeights(0.0, 1e6, INF, INF, 1e3), 2e-4),
    ("badmm", {"reg_type": "quadratic", "num_modules": 1000}, ROTWeights(0.0, 1e5, INF, INF, 1e4), 2e-4),
])
def test_proposition1_mean_and_attention(solver, kwargs, mean_w, tol):
    """alpha0 = 0, alpha1, alpha2, alpha3 -> inf: mean pooling (q0 uniform), attention pooling (q0 = a_X)."""
    x, mask = ragged()
    mean, _ = reference_pools(x, mask)
    solve = rot_sinkhorn if solver == "sinkhorn" else rot_badmm
    res = solve(x, mask, weights=mean_w, **kwargs)
    torch.testing.assert_close(rot_readout(x, res.log_plan, mask), mean, atol=tol, rtol=0)
    scores = torch.randn(3, 7, generator=torch.Generator().manual_seed(3), dtype=F64)
    att = torch.softmax(scores.masked_fill(~mask, -INF), -1)
    res = solve(x, mask, weights=mean_w, q0=att, **kwargs)
    torch.testing.assert_close(rot_readout(x, res.log_plan, mask), (att[..., None] * x).sum(1), atol=tol, rtol=0)


@pytest.mark.parametrize("solver,kwargs", [("sinkhorn", {"num_modules": 1}), ("badmm", {"reg_type": "entropic"}),
                                           ("badmm", {"reg_type": "quadratic"})])
def test_proposition1_max(solver, kwargs):
    """alpha0 = alpha1 = alpha3 = 0, alpha2 -> inf: max pooling (to 1e-6 with a sharp prox/Bregman step)."""
    x, mask = ragged()
    _, top = reference_pools(x, mask)
    if solver == "sinkhorn":
        res = rot_sinkhorn(x, mask, weights=ROTWeights(0.0, 0.0, INF, 0.0, 1e-3), **kwargs)
    else:
        res = rot_badmm(x, mask, weights=ROTWeights(0.0, 0.0, INF, 0.0, 0.01), num_modules=20, **kwargs)
    torch.testing.assert_close(rot_readout(x, res.log_plan, mask), top, atol=1e-6, rtol=0)


# --- batching, gradients, stability ------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["sinkhorn", "badmm"])
def test_padded_batch_equals_each_set_alone_and_empty_set_is_zero(solver):
    x, mask = ragged()
    mask[2] = False  # an empty set
    x = x * mask[..., None]
    padded = x.masked_fill(~mask[..., None], float("nan"))  # padding never leaks, even NaN
    w = ROTWeights(0.5, 0.3, 0.8, 0.4, 1.0)
    solve = rot_sinkhorn if solver == "sinkhorn" else rot_badmm
    res = solve(padded, mask, weights=w, structure=similarity(x, mask))
    out = rot_readout(x, res.log_plan, mask)
    assert torch.isfinite(res.plan).all() and torch.isfinite(out).all()
    for k in range(2):
        n = int(mask[k].sum())
        alone = solve(x[k:k + 1, :n], weights=w, structure=similarity(x[k:k + 1, :n]))
        torch.testing.assert_close(res.plan[k, :, :n], alone.plan[0], atol=1e-12, rtol=0)
        assert res.plan[k, :, n:].sum() == 0
    assert res.plan[2].sum() == 0 and (out[2] == 0).all()


@pytest.mark.parametrize("solver", ["sinkhorn", "badmm-e", "badmm-q"])
def test_gradients_reach_every_weight_and_pass_gradcheck(solver):
    x, mask = ragged()
    x = x[:, :5, :3].clone().requires_grad_()
    mask = mask[:, :5]
    raw = torch.tensor([0.2, -0.3, 0.1, 0.4, 0.0], dtype=F64, requires_grad=True)

    def pooled(x, raw):
        w = ROTWeights(*torch.nn.functional.softplus(raw))
        st = similarity(x, mask)
        if solver == "sinkhorn":
            res = rot_sinkhorn(x, mask, weights=w, structure=st, num_modules=2, inner_iter=3)
        else:
            res = rot_badmm(x, mask, weights=w, structure=st, num_modules=3, reg_type="entropic"
                            if solver == "badmm-e" else "quadratic")
        return rot_readout(x, res.log_plan, mask)

    (grad,) = torch.autograd.grad(pooled(x, raw).pow(2).sum(), raw)
    assert (grad.abs() > 1e-8).all(), grad  # alpha0..alpha3 and the step weight all move the output
    assert torch.autograd.gradcheck(pooled, (x, raw))


@pytest.mark.parametrize("solver", ["sinkhorn", "badmm-e", "badmm-q"])
def test_float32_sweep_of_weights_gives_no_nan(solver):
    x, mask = ragged(dtype=torch.float32)
    x = (x * 10).requires_grad_()
    grid = [1e-5, 1e-2, 1.0, 1e2, 1e4]
    for a1 in grid:
        for a23 in grid:
            for a0 in (0.0, 1.0):
                w = ROTWeights(a0, a1, a23, a23, 1.0)
                st = similarity(x, mask)
                if solver == "sinkhorn":
                    res = rot_sinkhorn(x, mask, weights=w, structure=st)
                else:
                    res = rot_badmm(x, mask, weights=w, structure=st, reg_type="entropic" if solver == "badmm-e"
                                    else "quadratic")
                out = rot_readout(x, res.log_plan, mask)
                (g,) = torch.autograd.grad(out.sum(), x)
                assert torch.isfinite(out).all() and torch.isfinite(g).all(), (a0, a1, a23)
                torch.testing.assert_close(res.plan.sum((-2, -1)), torch.ones(3), atol=1e-4, rtol=0)


def test_similarities_masked_equal_unpadded_and_covariance_matches_the_formula():
    x, mask = ragged()
    for kind in ("covariance", "cosine", "rbf"):
        full = similarity(x, mask, kind)
        alone = similarity(x[1:2, :4], None, kind)
        plan = torch.rand(1, 5, 4, dtype=F64)
        padded_plan = torch.nn.functional.pad(plan, (0, 3))
        torch.testing.assert_close(full.apply(padded_plan)[1:2, :, :4], alone.apply(plan))
        base, weight = torch.randn(3, 5, 7, dtype=F64), torch.tensor(-0.7, dtype=F64)
        plan = torch.rand(3, 5, 7, dtype=F64)
        torch.testing.assert_close(full.add(base, plan, weight), base + weight * full.apply(plan))
        u, v = torch.rand(3, 5, dtype=F64), torch.rand(3, 7, dtype=F64)  # rank one, as the solvers' start
        torch.testing.assert_close(full.add_outer(base, u, v, weight),
                                   base + weight * full.apply(u[..., :, None] * v[..., None, :]))
    xs = x[0].T  # (D, N) as in the paper
    sigma1 = (xs - xs.mean(1, keepdim=True)) @ (xs - xs.mean(1, keepdim=True)).T / xs.shape[1]
    sigma2 = (xs - xs.mean(0, keepdim=True)).T @ (xs - xs.mean(0, keepdim=True)) / xs.shape[0]
    st = similarity(x[:1])
    torch.testing.assert_close(st.feature[0], sigma1)
    torch.testing.assert_close(st.sample[0] @ st.sample[0].T, sigma2)
    with pytest.raises(ValueError, match="similarity must be one of"):
        similarity(x, kind="gram")
