"""Sparse, Nyström and LCN-Sinkhorn (recot/ot/{factored,neighbours,sparse,nystrom,lcn}.py) against the dense solver."""
import pytest
import torch

from recot.ot import sinkhorn, sq_euclidean
from recot.ot.cost import euclidean
from recot.ot.factored import FactoredKernel, SparsePattern, factored_sinkhorn, sparse_matvec
from recot.ot.lcn import lcn_sinkhorn
from recot.ot.neighbours import kmeans, neighbour_pattern
from recot.ot.nystrom import landmarks_of, nystrom_sinkhorn
from recot.ot.sparse import sparse_sinkhorn

F64 = torch.float64


def clouds(batch=3, n=40, m=50, d=2, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, d, generator=g, dtype=dtype)
    y = torch.randn(batch, m, d, generator=g, dtype=dtype) + 0.3
    return x, y


def rel_err(res, ref):
    return ((res.value - ref.value) / ref.value).abs().mean().item()


def gen():
    return torch.Generator().manual_seed(0)


# ----------------------------------------------------------------------------------------- exactness


def test_sparse_with_all_pairs_equals_dense():
    x, y = clouds()
    mask_a = torch.ones(3, 40, dtype=torch.bool)
    mask_a[1, 30:] = False
    a = torch.rand(3, 40, dtype=F64, generator=gen()) + 0.1
    a = torch.where(mask_a, a, torch.zeros(()))
    a = a / a.sum(-1, keepdim=True)
    ref = sinkhorn(sq_euclidean(x, y), a, eps=0.3, mask_a=mask_a, tol=1e-11, max_iter=5000)
    res = sparse_sinkhorn(x, y, a, eps=0.3, mask_a=mask_a, method="all", tol=1e-11, max_iter=5000)
    assert res.converged.all() and ref.converged.all()
    torch.testing.assert_close(res.value, ref.value, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res.plan.to_dense(), ref.plan, rtol=1e-8, atol=1e-13)
    torch.testing.assert_close(res.n_iter, ref.n_iter)
    # same potentials up to the constant shift the balanced problem leaves free
    shift = (res.f - ref.f)[:, :1]
    torch.testing.assert_close(res.f - shift, ref.f, atol=1e-8, rtol=0)
    assert (res.f[1, 30:] == 0).all()


def test_absorption_threshold_does_not_change_the_result():
    x, y = clouds(n=30, m=30)
    a = lcn_sinkhorn(x, y, eps=1.0, landmarks=6, n_clusters=4, generator=gen(), absorb_threshold=0.0, tol=1e-10)
    b = lcn_sinkhorn(x, y, eps=1.0, landmarks=6, n_clusters=4, generator=gen(), absorb_threshold=20.0, tol=1e-10)
    torch.testing.assert_close(a.value, b.value, rtol=1e-8, atol=1e-10)


def test_float32_small_eps_is_stable():
    """eps at 1e-3 of the cost scale: exp(-C/eps) underflows float32 everywhere but near the diagonal."""
    x, y = clouds(batch=2, n=60, m=60, d=2, dtype=torch.float32)
    cost = sq_euclidean(x, y)
    eps = 1e-3 * float(cost.max())
    ref = sparse_sinkhorn(x.double(), y.double(), eps=eps, method="all", tol=1e-6, max_iter=4000)
    res = sparse_sinkhorn(x, y, eps=eps, method="all", tol=1e-4, max_iter=4000)
    assert torch.isfinite(res.value).all() and res.converged.all()
    torch.testing.assert_close(res.value.double(), ref.value, rtol=1e-3, atol=1e-4)
    lcn = lcn_sinkhorn(x, y, eps=eps, landmarks=8, n_clusters=4, generator=gen(), tol=1e-4, max_iter=2000)
    assert torch.isfinite(lcn.value).all() and torch.isfinite(lcn.f).all()


# ---------------------------------------------------------------------------- convergence to dense


def test_sparse_error_decreases_as_neighbours_grow():
    x, y = clouds(batch=4, n=60, m=60)
    ref = sinkhorn(sq_euclidean(x, y), eps=2.0, tol=1e-9, max_iter=3000)
    errs = []
    for clusters in (12, 6, 3, 1):
        res = sparse_sinkhorn(x, y, eps=2.0, n_clusters=clusters, n_hashes=2, generator=gen(), tol=1e-8,
                              max_iter=1500)
        errs.append(rel_err(res, ref))
    assert errs[0] > errs[1] > errs[2] > errs[3], errs
    assert errs[3] < 1e-6  # one cluster = every pair = the dense problem


def test_nystrom_error_decreases_as_landmarks_grow():
    x, y = clouds(batch=4, n=60, m=60)
    ref = sinkhorn(sq_euclidean(x, y), eps=2.0, tol=1e-9, max_iter=3000)
    errs = []
    for landmarks in (4, 16, 32, 64):
        res = nystrom_sinkhorn(x, y, eps=2.0, landmarks=landmarks, generator=gen(), tol=1e-8, max_iter=1500)
        errs.append(rel_err(res, ref))
    assert errs[0] > errs[1] > errs[2] > errs[3], errs
    assert errs[3] < 1e-3


def test_lcn_error_decreases_and_beats_nystrom():
    """Where Nyström is usable (here from 16 landmarks at eps=2; below it has negative entries and breaks down, see
    the next tests), the sparse correction improves it, more with more neighbours and with more landmarks."""
    x, y = clouds(batch=4, n=60, m=60)
    ref = sinkhorn(sq_euclidean(x, y), eps=2.0, tol=1e-9, max_iter=3000)
    kw = lambda: dict(eps=2.0, generator=gen(), tol=1e-8, max_iter=1500)  # noqa: E731  (same clusterings)
    nys = rel_err(nystrom_sinkhorn(x, y, landmarks=16, **kw()), ref)
    by_neighbours = [rel_err(lcn_sinkhorn(x, y, landmarks=16, n_clusters=k, **kw()), ref) for k in (8, 4, 2)]
    assert nys > by_neighbours[0] > by_neighbours[1] > by_neighbours[2], (nys, by_neighbours)
    by_landmarks = [rel_err(lcn_sinkhorn(x, y, landmarks=l, n_clusters=2, **kw()), ref) for l in (16, 24, 32)]
    assert by_landmarks[0] > by_landmarks[1] > by_landmarks[2], by_landmarks
    assert by_landmarks[2] < 1e-3


# ------------------------------------------------------------------------------------------ gradients


def _fixed_structure(x, y):
    z = landmarks_of(x, y, 5, init="farthest")
    pattern = neighbour_pattern(x, y, n_clusters=2, init="farthest")
    return z, pattern


@pytest.mark.parametrize("solver", ["sparse", "nystrom", "lcn"])
def test_unrolled_gradients_match_finite_differences(solver):
    x, y = clouds(batch=2, n=6, m=5, d=2, seed=3)
    z, pattern = _fixed_structure(x, y)
    kwargs = dict(eps=4.0, max_iter=30, tol=0.0, grad="unroll")  # a regime where Nyström has no negative sums
    if solver == "sparse":
        fn = lambda x, y: sparse_sinkhorn(x, y, pattern=pattern, **kwargs).value  # noqa: E731
    elif solver == "nystrom":
        fn = lambda x, y: nystrom_sinkhorn(x, y, landmarks=z, **kwargs).value  # noqa: E731
    else:
        fn = lambda x, y: lcn_sinkhorn(x, y, landmarks=z, pattern=pattern, **kwargs).value  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), y.requires_grad_()), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("solver", ["sparse", "nystrom", "lcn"])
def test_envelope_gradient_is_the_fixed_plan_gradient(solver):
    """Prop. 1 in point form: d<C, P>/dx = 2 (diag(P 1) x - P y) with P fixed, from two factored products."""
    x, y = clouds(batch=2, n=7, m=6, d=3, seed=4)
    z, pattern = _fixed_structure(x, y)
    x.requires_grad_(), y.requires_grad_()
    kw = dict(eps=1.0, tol=1e-10, max_iter=3000, grad="envelope")
    res = {"sparse": lambda: sparse_sinkhorn(x, y, pattern=pattern, **kw),
           "nystrom": lambda: nystrom_sinkhorn(x, y, landmarks=z, **kw),
           "lcn": lambda: lcn_sinkhorn(x, y, landmarks=z, pattern=pattern, **kw)}[solver]()
    gx, gy = torch.autograd.grad(res.value.sum(), (x, y))
    plan = res.plan.to_dense().detach()
    ex = 2 * (plan.sum(-1, keepdim=True) * x - plan @ y)
    ey = 2 * (plan.sum(-2)[..., None] * y - plan.transpose(-1, -2) @ x)
    torch.testing.assert_close(gx, ex.detach(), rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(gy, ey.detach(), rtol=1e-7, atol=1e-10)


def test_sparse_envelope_gradient_is_the_gradient_of_the_regularised_cost():
    """For the exact kernel on a pattern the envelope gradient is that of OT_eps = <f, a> + <g, b> - eps."""
    x, y = clouds(batch=1, n=6, m=7, d=2, seed=5)
    keep = torch.rand(6, 7, generator=gen()) < 0.7  # a connected pattern: the restricted problem is feasible
    keep[torch.arange(6), torch.arange(6)] = True
    i, j = keep.nonzero(as_tuple=True)
    pattern = SparsePattern.from_pairs(torch.zeros_like(i), i, j, (1, 6, 7))
    kw = dict(eps=1.0, tol=1e-13, max_iter=5000, pattern=pattern)
    xg = x.clone().requires_grad_()
    res = sparse_sinkhorn(xg, y, grad="envelope", **kw)
    assert res.converged.all()
    gx, = torch.autograd.grad(res.value.sum(), xg)

    def dual(x):
        r = sparse_sinkhorn(x, y, **kw)
        return (r.f.mean(-1) + r.g.mean(-1)).sum()

    h = 1e-6
    for i, k in ((0, 0), (3, 1), (5, 0)):
        xp, xm = x.clone(), x.clone()
        xp[0, i, k] += h
        xm[0, i, k] -= h
        assert gx[0, i, k].item() == pytest.approx(((dual(xp) - dual(xm)) / (2 * h)).item(), rel=1e-5, abs=1e-8)


def test_sparse_all_pairs_envelope_gradient_equals_dense():
    x, y = clouds(batch=2, n=8, m=9)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = sinkhorn(sq_euclidean(x1, y), eps=0.5, tol=1e-12, max_iter=5000, grad="envelope")
    res = sparse_sinkhorn(x2, y, eps=0.5, method="all", tol=1e-12, max_iter=5000, grad="envelope")
    g1, = torch.autograd.grad(ref.value.sum(), x1)
    g2, = torch.autograd.grad(res.value.sum(), x2)
    torch.testing.assert_close(g2, g1, rtol=1e-7, atol=1e-10)


# ------------------------------------------------------------------------------------------ structures


@pytest.mark.parametrize("method", ["kmeans", "crosspolytope", "hyperplane"])
def test_every_real_point_has_a_neighbour(method):
    x, y = clouds(batch=2, n=30, m=20, d=4)
    mask_y = torch.ones(2, 20, dtype=torch.bool)
    mask_y[0, 12:] = False
    p = neighbour_pattern(x, y, method=method, n_clusters=8, mask_y=mask_y, generator=gen())
    b, i, j = p.local()
    assert mask_y[b, j].all()
    rows = torch.zeros(2, 30, dtype=torch.bool)
    rows[b, i] = True
    cols = torch.zeros(2, 20, dtype=torch.bool)
    cols[b, j] = True
    assert rows.all() and (cols == mask_y).all()
    assert p.nnz < 2 * 30 * 20  # sparse: far from every pair
    key = p.rows * 40 + p.cols
    assert (key[1:] > key[:-1]).all()  # CSR order, no duplicates


def test_kmeans_finds_separated_clusters():
    g = gen()
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=F64)
    pts = centers[torch.arange(60) % 3] + 0.1 * torch.randn(60, 2, generator=g, dtype=F64)
    for init in ("kmeans++", "farthest"):
        cent, assign = kmeans(pts[None], 3, init=init, generator=gen())
        assert len(set(assign[0, :3].tolist())) == 3
        assert (assign[0] == assign[0, torch.arange(60) % 3]).all()


def test_sparse_matvec_gradients():
    rows, cols = torch.tensor([0, 0, 1, 3, 5]), torch.tensor([1, 2, 0, 3, 1])
    p = SparsePattern.from_pairs(torch.zeros(5, dtype=torch.long), rows, cols, (1, 6, 4))
    vals = torch.rand(5, dtype=F64, requires_grad=True)
    vec = torch.rand(4, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, w: sparse_matvec(p, v, w), (vals, vec))
    vec_t = torch.rand(6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, w: sparse_matvec(p, v, w, transpose=True), (vals, vec_t))


def test_nonpositive_nystrom_rows_report_no_convergence():
    """Nyström at a tiny eps has negative kernel entries: the solver stays finite and says it did not converge."""
    x, y = clouds(batch=2, n=40, m=40)
    res = nystrom_sinkhorn(x, y, eps=0.05, landmarks=6, generator=gen(), max_iter=300)
    assert torch.isfinite(res.f).all() and torch.isfinite(res.g).all()
    assert not res.converged.any()


def test_factored_kernel_validates_its_parts():
    with pytest.raises(ValueError, match="low-rank part, a sparse part"):
        FactoredKernel((1, 2, 2))
    with pytest.raises(ValueError, match="grad must be one of"):
        sparse_sinkhorn(*clouds(batch=1, n=3, m=3), eps=1.0, grad="implicit")
    with pytest.raises(ValueError, match="eps must be a positive float"):
        sparse_sinkhorn(*clouds(batch=1, n=3, m=3), eps=0.0)
    kernel = FactoredKernel((1, 2, 2), log_u=torch.zeros(1, 2, 1), log_w=torch.zeros(1, 1, 2))
    plan, *_ = factored_sinkhorn(kernel, tol=1e-8)
    torch.testing.assert_close(plan.to_dense(), torch.full((1, 2, 2), 0.25))


# ------------------------------------------------------------------------------ LCN correction: block path


def _lcn_parts(dtype, eps, n_hashes, seed=0):
    from recot.ot.factored import pair_sq_dists
    from recot.ot.nystrom import nystrom_factors
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 120, 3, generator=g, dtype=dtype)
    y = torch.randn(2, 100, 3, generator=g, dtype=dtype) + 0.2
    mask_y = torch.ones(2, 100, dtype=torch.bool)
    mask_y[1, 80:] = False
    z = landmarks_of(x, y, 12, generator=g)
    p = neighbour_pattern(x, y, n_clusters=6, n_hashes=n_hashes, mask_y=mask_y, generator=g)
    return nystrom_factors(x, y, z, eps), pair_sq_dists(x, y, p) / (-eps), p


@pytest.mark.parametrize("dtype,eps", [(F64, 1.0), (F64, 0.01), (torch.float32, 0.05), (torch.float32, 0.002)])
@pytest.mark.parametrize("n_hashes", [1, 3])
def test_lcn_block_correction_equals_per_entry_sums(dtype, eps, n_hashes):
    """The block-GEMM path (k-means cluster blocks; the entries it does not cover, e.g. of a union of 3
    clusterings, go the per-entry way) gives the per-entry float64 max-shifted sums, down to small eps in float32."""
    from recot.ot.lcn import lcn_correction
    f, log_k, p = _lcn_parts(dtype, eps, n_hashes)
    ref_log, ref_sign = lcn_correction(*f, log_k, p, path="entries")
    log, sign = lcn_correction(*f, log_k, p, path="blocks")
    assert torch.isfinite(log).all() and (sign == ref_sign).all()
    torch.testing.assert_close(log, ref_log, rtol=0, atol=1e-9 if dtype == F64 else 1e-4)


def test_lcn_block_path_covers_kmeans_blocks_and_keeps_gradients():
    from recot.ot.lcn import _correction_blocks, lcn_correction
    (lu, lw, sw), log_k, p = _lcn_parts(F64, 0.5, 1)
    B, n, m = p.shape
    flat = lambda t: t.transpose(-1, -2).reshape(B * m, -1)  # noqa: E731
    *_, todo = _correction_blocks(lu.reshape(B * n, -1), flat(lw), flat(sw), log_k, p)
    assert todo.float().mean() < 0.05  # one k-means clustering: (nearly) every entry lies in a dense block
    lu, lw = lu.clone().requires_grad_(), lw.clone().requires_grad_()
    for path in ("entries", "blocks"):
        g = torch.autograd.grad(lcn_correction(lu, lw, sw, log_k, p, path=path)[0].sum(), (lu, lw))
        if path == "entries":
            ref = g
    torch.testing.assert_close(g, ref, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ Euclidean cost (Laplacian kernel)


def _euclidean_solvers(x, y, structure=None, **kw):
    """Sparse, Nyström and LCN with the Euclidean cost on the same (deterministic) landmarks and clusters."""
    z, pattern = structure or _fixed_structure(x.detach(), y.detach())
    return {"sparse": lambda: sparse_sinkhorn(x, y, cost="euclidean", pattern=pattern, **kw),
            "nystrom": lambda: nystrom_sinkhorn(x, y, cost="euclidean", landmarks=z, **kw),
            "lcn": lambda: lcn_sinkhorn(x, y, cost="euclidean", landmarks=z, pattern=pattern, **kw)}


def test_euclidean_sparse_with_all_pairs_equals_dense():
    x, y = clouds()
    mask_b = torch.ones(3, 50, dtype=torch.bool)
    mask_b[2, 35:] = False
    ref = sinkhorn(euclidean(x, y), eps=0.3, mask_b=mask_b, tol=1e-11, max_iter=5000)
    res = sparse_sinkhorn(x, y, eps=0.3, cost="euclidean", mask_b=mask_b, method="all", tol=1e-11, max_iter=5000)
    assert res.converged.all() and ref.converged.all()
    torch.testing.assert_close(res.value, ref.value, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res.plan.to_dense(), ref.plan, rtol=1e-8, atol=1e-13)
    with pytest.raises(ValueError, match="cost must be one of"):
        sparse_sinkhorn(x, y, eps=0.3, cost="cosine")


def test_euclidean_nystrom_and_lcn_converge_to_dense():
    """The Laplacian kernel exp(-|x - y| / eps): the error decreases with the landmarks, LCN is below Nyström, and
    LCN with one cluster (every pair corrected) is the dense solution."""
    x, y = clouds(batch=3, n=60, m=60)
    ref = sinkhorn(euclidean(x, y), eps=0.3, tol=1e-10, max_iter=3000)
    kw = lambda: dict(eps=0.3, cost="euclidean", generator=gen(), tol=1e-9, max_iter=3000)  # noqa: E731
    nys = [rel_err(nystrom_sinkhorn(x, y, landmarks=l, **kw()), ref) for l in (4, 16, 32, 64)]
    lcn = [rel_err(lcn_sinkhorn(x, y, landmarks=l, n_clusters=4, **kw()), ref) for l in (4, 16, 32, 64)]
    assert nys[0] > nys[1] > nys[2] > nys[3], nys
    assert lcn[0] > lcn[1] > lcn[2] > lcn[3], lcn
    assert all(e_l < e_n for e_l, e_n in zip(lcn, nys)), (lcn, nys)
    assert nys[3] < 1e-2 and lcn[3] < 1e-3
    assert rel_err(lcn_sinkhorn(x, y, landmarks=8, n_clusters=1, **kw()), ref) < 1e-8


def test_euclidean_float32_small_eps_is_finite():
    """eps at 1e-2 of the largest cost: exp(-C/eps) reaches e^-100, below float32's smallest normal number."""
    x, y = clouds(batch=2, n=60, m=60, d=2, dtype=torch.float32)
    eps = 1e-2 * float(euclidean(x, y).max())
    ref = sparse_sinkhorn(x.double(), y.double(), eps=eps, cost="euclidean", method="all", tol=1e-6, max_iter=4000)
    res = sparse_sinkhorn(x, y, eps=eps, cost="euclidean", method="all", tol=1e-4, max_iter=4000)
    assert torch.isfinite(res.value).all() and res.converged.all()
    torch.testing.assert_close(res.value.double(), ref.value, rtol=1e-3, atol=1e-4)
    for solver in (nystrom_sinkhorn, lcn_sinkhorn):
        r = solver(x, y, eps=eps, cost="euclidean", landmarks=8, generator=gen(), tol=1e-4, max_iter=500)
        assert torch.isfinite(r.value).all() and torch.isfinite(r.f).all() and torch.isfinite(r.g).all()


@pytest.mark.parametrize("solver", ["sparse", "nystrom", "lcn"])
def test_euclidean_value_and_envelope_gradient_match_dense(solver):
    """value = <C, P> with the exact Euclidean cost on every entry of the approximate plan (dense check), and the
    envelope gradient is that of <C(x, y), P> at the fixed plan: sum_j P_ij (x_i - y_j) / |x_i - y_j|."""
    x, y = clouds(batch=2, n=7, m=6, d=3, seed=4)
    x.requires_grad_(), y.requires_grad_()
    res = _euclidean_solvers(x, y, eps=0.8, tol=1e-10, max_iter=3000, grad="envelope")[solver]()
    plan = res.plan.to_dense().detach()
    dense = (euclidean(x, y) * plan).sum((-2, -1))
    torch.testing.assert_close(res.value, dense, rtol=1e-10, atol=1e-12)
    g = torch.autograd.grad(res.value.sum(), (x, y))
    ref = torch.autograd.grad(dense.sum(), (x, y))
    for a, b in zip(g, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solver", ["nystrom", "lcn"])
def test_euclidean_unrolled_gradients_match_finite_differences(solver):
    x, y = clouds(batch=2, n=6, m=5, d=2, seed=3)
    # landmarks and clusters must not move with the finite differences; k-means can put a landmark on a point,
    # where |y - z| has a kink: shift them off the points
    z, pattern = _fixed_structure(x, y)
    fixed = (z + 0.05, pattern)
    kw = dict(eps=2.0, max_iter=30, tol=0.0, grad="unroll")
    fn = lambda x, y: _euclidean_solvers(x, y, fixed, **kw)[solver]().value  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), y.requires_grad_()), atol=1e-6, rtol=1e-4)


def test_lowrank_point_cost_chunks_and_gradients():
    from recot.ot.factored import lowrank_point_cost
    g = gen()
    x, y = torch.randn(2, 7, 3, generator=g, dtype=F64), torch.randn(2, 5, 3, generator=g, dtype=F64)
    q, r = torch.rand(2, 7, 4, generator=g, dtype=F64), torch.randn(2, 4, 5, generator=g, dtype=F64)
    ref = (euclidean(x, y) * (q @ r)).sum((-2, -1))
    for cost, c in (("euclidean", euclidean(x, y)), ("sq_euclidean", sq_euclidean(x, y))):
        one = lowrank_point_cost(q, r, x, y, cost)
        chunked = lowrank_point_cost(q, r, x, y, cost, max_entries=10)  # one row per chunk
        torch.testing.assert_close(one, (c * (q @ r)).sum((-2, -1)))
        torch.testing.assert_close(chunked, one)
        args = tuple(t.clone().requires_grad_() for t in (q, r, x, y))
        assert torch.autograd.gradcheck(lambda *a: lowrank_point_cost(*a, cost, max_entries=10), args)
    assert ref.shape == (2,)
