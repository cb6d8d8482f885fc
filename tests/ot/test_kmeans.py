import pytest
import torch

from recot.ot import ot_kmeans, sq_euclidean

F64 = torch.float64
CENTERS = torch.tensor([[0.0, 0.0], [6.0, 6.0], [0.0, 6.0], [6.0, 0.0]], dtype=F64)


def blobs(per=15, seed=0, heads=2):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(per)
    xs, ls = [], []
    for _ in range(heads):  # each head sees the same clusters in a different order
        perm = torch.randperm(4 * per, generator=g)
        xs.append(CENTERS[labels[perm]] + 0.4 * torch.randn(4 * per, 2, generator=g, dtype=F64))
        ls.append(labels[perm])
    return torch.stack(xs), torch.stack(ls)


def purity(plan, labels):
    """Fraction of points whose hard assignment agrees with the majority cluster of their label."""
    assign = plan.argmax(-1)
    hits = 0
    for k in range(4):
        hits += torch.bincount(assign[labels == k], minlength=plan.shape[-1]).max().item()
    return hits / labels.numel()


@pytest.mark.parametrize("solver", ["sinkhorn", "greenkhorn"])
def test_recovers_separated_clusters_with_balanced_masses(solver):
    x, labels = blobs()
    g = torch.Generator().manual_seed(1)
    res = ot_kmeans(x, 4, eps=0.01, n_iter=5, solver=solver, generator=g, **({"block": 4} if solver == "greenkhorn" else {}))
    assert res.plan.shape == (2, 60, 4) and res.centroids.shape == (2, 4, 2) and res.loss.shape == (2,)
    assert res.ot.converged.all()
    torch.testing.assert_close(res.plan.sum(-2), torch.full((2, 4), 0.25, dtype=F64), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.plan.sum(-1), torch.full((2, 60), 1 / 60, dtype=F64), atol=1e-5, rtol=0)
    for h in range(2):
        assert purity(res.plan[h], labels[h]) == 1.0
        # every true center is matched by one centroid
        d = sq_euclidean(CENTERS, res.centroids[h]).sqrt()
        assert (d.min(-1).values < 0.5).all()


@pytest.mark.parametrize("grad", ["implicit", "envelope"])
@pytest.mark.parametrize("method", ["log", "scaling"])
def test_centroids_are_plan_weighted_means_and_loss_is_eq8(grad, method):
    """The envelope mode's entropy comes from the potentials (two sums, no log per entry): the same Eq. 8 value."""
    x, _ = blobs(heads=1)
    res = ot_kmeans(x, 4, eps=0.05, n_iter=3, generator=torch.Generator().manual_seed(0), grad=grad, method=method)
    p = res.plan
    torch.testing.assert_close(res.centroids, (p.transpose(-1, -2) @ x) / p.sum(-2)[..., None])
    eq8 = (p * res.cost).sum((-2, -1)) + 0.05 * (p * (p.log() - 1)).sum((-2, -1))
    torch.testing.assert_close(res.loss, eq8)


def test_heads_batched_equal_separate_runs():
    x, _ = blobs(heads=3)
    init = x[:, :4].clone()  # deterministic init per head
    both = ot_kmeans(x, 4, eps=0.05, n_iter=3, init=init, max_iter=200)
    for h in range(3):
        alone = ot_kmeans(x[h], 4, eps=0.05, n_iter=3, init=init[h], max_iter=200)
        torch.testing.assert_close(both.plan[h], alone.plan)
        torch.testing.assert_close(both.centroids[h], alone.centroids)


@pytest.mark.parametrize("grad", ["implicit", "unroll", "envelope"])
def test_differentiable_wrt_points(grad):
    x, _ = blobs(per=5, heads=1)
    x = x.clone().requires_grad_()
    res = ot_kmeans(x, 4, eps=0.1, n_iter=2, cost="dot", normalize="minmax", grad=grad, init=x[:, :4].detach())
    (res.loss.sum() + res.centroids.square().sum()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_loss_gradient_matches_finite_differences():
    x, _ = blobs(per=3, heads=1)
    x = x[:, :6].clone().requires_grad_()
    init = x[:, :3].detach().clone() + 0.1

    def loss(z):
        return ot_kmeans(z, 3, eps=20.0, n_iter=2, init=init, normalize=None, tol=1e-13, max_iter=10000).loss

    assert torch.autograd.gradcheck(loss, (x,))


def test_masked_points_and_cluster_weights():
    x, _ = blobs(per=10, heads=1)
    mask = torch.ones(1, 40, dtype=torch.bool)
    mask[:, 30:] = False
    xg = x.masked_fill(~mask[..., None], float("nan")).requires_grad_()
    w = torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=F64)
    res = ot_kmeans(xg, 4, eps=0.05, n_iter=3, mask=mask, cluster_weights=w, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.centroids).all()
    assert res.plan[:, 30:].sum() == 0
    torch.testing.assert_close(res.plan.sum(-2)[0], w / w.sum(), atol=1e-5, rtol=0)
    res.loss.sum().backward()
    assert torch.isfinite(xg.grad).all() and (xg.grad[:, 30:] == 0).all()
