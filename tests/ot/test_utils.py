import torch

from recot.ot.utils import (iterate, logsumexp, lse_cols, lse_rows, masked_log, neg, prepare_weights, setup_problem,
                            softmax)

F64 = torch.float64


def test_lse_steps_match_torch_and_pass_gradcheck():
    g = torch.Generator().manual_seed(0)
    logk = torch.randn(2, 4, 5, generator=g, dtype=F64, requires_grad=True)
    u = torch.randn(2, 4, generator=g, dtype=F64, requires_grad=True)
    v = torch.randn(2, 5, generator=g, dtype=F64, requires_grad=True)
    torch.testing.assert_close(lse_rows(logk, v), torch.logsumexp(logk + v[:, None, :], -1))
    torch.testing.assert_close(lse_cols(logk, u), torch.logsumexp(logk + u[:, :, None], -2))
    for keep in (False, True):  # keep: the exponentials are saved and backward is one pass
        assert torch.autograd.gradcheck(lambda k, p: lse_rows(k, p, keep), (logk, v))
        assert torch.autograd.gradcheck(lambda k, p: lse_cols(k, p, keep), (logk, u))
    shared = logk[0].detach().clone().requires_grad_()  # a kernel broadcast over the batch
    assert torch.autograd.gradcheck(lambda k, p: lse_rows(k, p, True), (shared, v))


def test_logsumexp_and_softmax_match_torch_gradcheck_and_padding():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(3, 4, 5, generator=g, dtype=F64, requires_grad=True)
    for dim in (-1, -2):
        torch.testing.assert_close(logsumexp(t, dim), torch.logsumexp(t, dim))
        torch.testing.assert_close(softmax(t, dim), torch.softmax(t, dim))
        assert torch.autograd.gradcheck(lambda x: logsumexp(x, dim), (t,))
        assert torch.autograd.gradcheck(lambda x: softmax(x, dim), (t,))
    padded = torch.cat([torch.randn(2, 3), torch.full((2, 2), neg(torch.float32))], -1).requires_grad_()
    w = softmax(padded, -1)
    assert (w[:, 3:] == 0).all() and torch.allclose(w.sum(-1), torch.ones(2))
    (w * torch.randn(2, 5)).sum().backward()
    assert torch.isfinite(padded.grad).all() and (padded.grad[:, 3:] == 0).all()


def test_lse_is_finite_on_fully_padded_rows():
    logk = torch.full((1, 2, 3), neg(torch.float32), requires_grad=True)
    pot = torch.zeros(1, 3, requires_grad=True)
    out = lse_rows(logk, pot)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(logk.grad).all() and torch.isfinite(pot.grad).all()


def test_prepare_weights_uniform_masks_and_zero_weights():
    like = torch.zeros(1, dtype=F64)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    w, m = prepare_weights(None, mask, (2, 3), like)
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], dtype=F64))
    w, m = prepare_weights(torch.tensor([0.5, 0.0, 0.5]), None, (2, 3), like)
    assert m.tolist() == [[True, False, True]] * 2


def test_setup_problem_empties_and_sanitizes():
    cost = torch.full((2, 2, 2), float("nan"))
    cost[0] = 1.0
    mask_a = torch.tensor([[True, True], [True, True]])
    mask_b = torch.tensor([[True, False], [False, False]])
    prob = setup_problem(cost, mask_a=mask_a, mask_b=mask_b)
    assert torch.isfinite(prob.cost).all()
    assert not prob.mask_a[1].any()  # no real column: the whole problem is empty
    assert prob.b[0].tolist() == [1.0, 0.0]


def test_masked_log_gradient_is_finite_at_padding():
    w = torch.tensor([0.0, 0.5], requires_grad=True)
    masked_log(w, torch.tensor([False, True])).sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad[0] == 0


def test_iterate_freezes_converged_problems_and_counts_exactly():
    # x_{t+1} = x_t / 2 per problem; error = |x|; problems start at different values
    x0 = torch.tensor([1.0, 100.0, 1e6], dtype=F64)

    def step(state, active):
        (x,) = state
        return (x / 2 if active is None else torch.where(active, x / 2, x),)

    def error(state, prev):
        return state[0].abs(), state

    (x,), n_iter, err = iterate(step, (x0,), max_iter=100, tol=1e-3, check_every=5, batch_shape=(3,),
                                device="cpu", dtype=F64, error=error)
    assert (err <= 1e-3).all()
    torch.testing.assert_close(x, x0 / 2.0 ** n_iter.to(F64))
    assert n_iter.tolist() == [10, 20, 30]
    (_,), n_fixed, _ = iterate(step, (x0,), max_iter=7, tol=0, check_every=5, batch_shape=(3,), device="cpu",
                               dtype=F64, error=error)
    assert n_fixed.tolist() == [7, 7, 7]
