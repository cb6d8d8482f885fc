"""badmm_step's extensions for the ROT problem: KL-relaxed marginals solved for real, a structural S-cost that
depends on the new plan, learnable (tensor) weights."""
import torch

from recot.ot import badmm_init, badmm_step, sinkhorn

F64 = torch.float64


def priors(seed=1):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(2, 4, 6, generator=g, dtype=F64)
    a = torch.softmax(torch.randn(2, 4, generator=g, dtype=F64), -1)
    b = torch.softmax(torch.randn(2, 6, generator=g, dtype=F64), -1)
    return cost, a, b


def test_relaxed_marginals_reach_the_normalised_unbalanced_sinkhorn_plan():
    cost, a, b = priors()
    ref = sinkhorn(cost, a, b, eps=0.3, reg_m=(0.7, 0.2), reg_type="entropy", tol=1e-14, max_iter=20000).plan
    state = badmm_init(a.log(), b.log())
    for _ in range(3000):
        state = badmm_step(state, cost, reg=0.3, rho=1.0, log_a=a.log(), log_b=b.log(), reg_m=(0.7, 0.2),
                           relax_marginals=True)
    torch.testing.assert_close(state.log_p.exp(), ref / ref.sum((-2, -1), keepdim=True), atol=1e-6, rtol=0)
    assert (state.z1 == 0).all() and (state.z2 == 0).all()


def test_relaxed_with_infinite_weights_is_the_published_step():
    cost, a, b = priors()
    paper = relaxed = badmm_init(a.log(), b.log())
    for _ in range(20):
        kw = dict(reg=0.3, rho=1.0, log_a=a.log(), log_b=b.log(), reg_m=(float("inf"), float("inf")))
        paper = badmm_step(paper, cost, **kw)
        relaxed = badmm_step(relaxed, cost, relax_marginals=True, **kw)
    for u, v in zip(paper, relaxed):
        torch.testing.assert_close(u, v)


def test_callable_s_cost_sees_the_new_plan_and_tensor_weights_get_gradients():
    cost, a, b = priors()
    seen = []

    def dual_minus_cost_s(p, z):  # the callable form returns Z - C_S(P)
        seen.append(p)
        return z + 0.5 * p

    reg = torch.tensor(0.3, dtype=F64, requires_grad=True)
    alphas = torch.tensor([0.7, 0.2], dtype=F64, requires_grad=True)
    state = badmm_init(a.log(), b.log())
    kw = dict(reg=reg, rho=1.0, log_a=a.log(), log_b=b.log(), reg_m=(alphas[0], alphas[1]), relax_marginals=True)
    new = badmm_step(state, cost, cost_s=dual_minus_cost_s, **kw)
    torch.testing.assert_close(seen[0], new.log_p.exp())
    grads = torch.autograd.grad(new.log_s.exp().pow(2).sum(), (reg, alphas))
    assert all((g.abs() > 0).all() for g in grads)
    # the tensor form of the same S-cost gives the same step
    again = badmm_step(state, cost, cost_s=-0.5 * new.log_p.exp(), **kw)
    torch.testing.assert_close(again.log_s, new.log_s)


def test_update_s_false_stops_after_the_p_update():
    cost, a, b = priors()
    state = badmm_init(a.log(), b.log())
    kw = dict(reg=0.3, rho=1.0, log_a=a.log(), log_b=b.log(), reg_m=(0.7, 0.2), relax_marginals=True)
    for _ in range(2):
        full = badmm_step(state, cost, **kw)
        half = badmm_step(state, cost, update_s=False, **kw)
        torch.testing.assert_close(half.log_p, full.log_p)
        torch.testing.assert_close(half.log_mu, full.log_mu)
        assert half.log_s is state.log_s and half.z is state.z and half.s is state.s
        state = full
