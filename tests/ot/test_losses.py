import pytest
import torch

from recot.ot import entropic_ot, entropy_term, sinkhorn, sinkhorn_divergence, sinkhorn_loss, sq_euclidean

F64 = torch.float64
TIGHT = dict(tol=1e-12, max_iter=20000)


def points(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 7, 2, generator=g, dtype=F64), torch.randn(3, 9, 2, generator=g, dtype=F64) + 0.5


@pytest.mark.parametrize("debias", [True, False])
def test_divergence_matches_geomloss(debias):
    geomloss = pytest.importorskip("geomloss")
    x, y = points()
    blur = 0.7
    ref_loss = geomloss.SamplesLoss("sinkhorn", p=2, blur=blur, scaling=0.999, debias=debias, backend="tensorized")
    xg = x.clone().requires_grad_()
    ref = ref_loss(xg, y)
    ref.sum().backward()
    xr = x.clone().requires_grad_()
    out = sinkhorn_divergence(xr, y, eps=blur**2, debias=debias, **TIGHT)
    out.sum().backward()
    torch.testing.assert_close(out, ref.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(xr.grad, xg.grad, atol=1e-3, rtol=1e-3)


def test_divergence_properties():
    x, y = points()
    assert sinkhorn_divergence(x, x, eps=1.0, **TIGHT).abs().max() < 1e-10
    near = sinkhorn_divergence(x, y, eps=1.0, **TIGHT)
    assert (near > 0).all()
    assert (sinkhorn_divergence(x, y + 1.0, eps=1.0, **TIGHT) > near).all()


def test_entropic_ot_is_the_primal_with_product_reference():
    x, y = points()
    cost = sq_euclidean(x, y)
    eps = 0.4
    res = sinkhorn(cost, eps=eps, **TIGHT)
    p = res.plan
    ab = torch.full((7, 1), 1 / 7, dtype=F64) * torch.full((1, 9), 1 / 9, dtype=F64)
    kl = (p * (p / ab).log() - p + ab).sum((-2, -1))
    torch.testing.assert_close(entropic_ot(cost, eps=eps, **TIGHT), res.value + eps * kl)


@pytest.mark.parametrize("grad", ["unroll", "implicit"])
def test_entropic_ot_envelope_gradients_match_exact_ones(grad):
    x, y = points()
    cost = sq_euclidean(x, y)
    ta = torch.randn(3, 7, dtype=F64)
    grads = {}
    for mode in ("envelope", grad):
        c = cost.clone().requires_grad_()
        t = ta.clone().requires_grad_()
        entropic_ot(c, t.softmax(-1), None, eps=0.5, grad=mode, **TIGHT).sum().backward()
        grads[mode] = (c.grad, t.grad)
    torch.testing.assert_close(grads["envelope"][0], grads[grad][0], atol=1e-8, rtol=0)
    torch.testing.assert_close(grads["envelope"][1], grads[grad][1], atol=1e-8, rtol=0)


def test_divergence_masked_equals_unpadded():
    x, y = points()
    mask_x = torch.ones(3, 7, dtype=torch.bool)
    mask_x[0, 4:] = False
    xg = x.masked_fill(~mask_x[..., None], float("nan")).requires_grad_()
    out = sinkhorn_divergence(xg, y, eps=0.5, mask_x=mask_x, **TIGHT)
    alone = sinkhorn_divergence(x[0, :4], y[0], eps=0.5, **TIGHT)
    torch.testing.assert_close(out[0], alone)
    out.sum().backward()
    assert torch.isfinite(xg.grad).all() and (xg.grad[0, 4:] == 0).all()


def test_sinkhorn_loss_is_sinkhorncf_algorithm_1():
    """L steps of a <- mu / (K b), b <- nu / (K^T a), P = diag(a) K diag(b), loss <C, P> (linear domain)."""
    g = torch.Generator().manual_seed(0)
    c = 1 - torch.rand(4, 6, generator=g, dtype=F64)  # 1 - similarity
    mu = torch.rand(4, generator=g, dtype=F64)  # user's observed items (unnormalized)
    nu = torch.rand(6, generator=g, dtype=F64)  # top-k predicted masses
    eps, L = 1.0, 5
    K = torch.exp(-c / eps)
    b = torch.ones(6, dtype=F64)
    for _ in range(L):
        a = mu / (K @ b)
        b = nu / (K.T @ a)
    ref = (c * (a[:, None] * K * b[None, :])).sum()
    torch.testing.assert_close(sinkhorn_loss(c, mu, nu, eps=eps, n_iter=L), ref)


def test_entropy_term_is_safe_at_zero():
    p = torch.tensor([[0.5, 0.0], [0.25, 0.25]], dtype=F64, requires_grad=True)
    val = entropy_term(p)
    torch.testing.assert_close(val, (0.5 * (torch.log(torch.tensor(0.5, dtype=F64)) - 1) + 0.5 * (torch.log(torch.tensor(0.25, dtype=F64)) - 1)))
    val.backward()
    assert torch.isfinite(p.grad).all() and p.grad[0, 1] == 0
