"""GTN (recot/nn/gtn.py) and its BP matrix (recot/ot/bp.py): exact GED special case, padding, solvers, gradients."""
import math

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from datamodules.ged import RawGraph, SyntheticGED, encode
from recot.nn.gtn import GTN
from recot.ot.bp import bp_sinkhorn


def random_graphs(k, seed, labels=3, max_nodes=5):
    rng = np.random.default_rng(seed)
    spec = SyntheticGED(min_nodes=1, max_nodes=max_nodes, num_labels=labels)
    return [spec._random(rng) for _ in range(k)]


def node_ged(a: RawGraph, b: RawGraph) -> float:
    """networkx's exact GED with GTN's node costs and free edge operations: then GED is a linear assignment."""
    def g(r):
        h = nx.Graph()
        h.add_nodes_from((i, {"l": int(v)}) for i, v in enumerate(r.labels))
        h.add_edges_from(map(tuple, r.edges.T.tolist()))
        return h

    return nx.graph_edit_distance(g(a), g(b), node_subst_cost=lambda u, v: float(u["l"] != v["l"]),
                                  node_del_cost=lambda u: 2.0, node_ins_cost=lambda u: 2.0,
                                  edge_del_cost=lambda e: 0.0, edge_ins_cost=lambda e: 0.0,
                                  edge_subst_cost=lambda e, f: 0.0)


class OneHot(nn.Module):
    """Encoder stand-in: the one-hot node labels themselves are the embeddings."""

    def forward(self, data):
        return data.x


def one_hot_gtn(cost: str, solver: str = "full") -> GTN:
    """A GTN whose embeddings are one-hot labels scaled so that the node cost is 1 between different labels and the
    deletion cost is 2: its BP matrix is GED's node-cost BP matrix."""
    model = GTN(cost=cost, solver=solver, sinkhorn_reg=2e-3, max_iter=3000, tol=1e-9, landmarks=4, n_clusters=2)
    model.build(num_node_features=3, num_edge_features=0, dist_scale=1.0, avg_degree=1.0)
    model.encoder = OneHot()
    model.emb_scale = 1 / math.sqrt(2)  # |e_a - e_b| = 1 (and its square)
    model.alpha = nn.Parameter(torch.full((3,), 2 * math.sqrt(2) if cost == "euclidean" else 2.0))  # deletion: 2
    return model


@pytest.mark.parametrize("cost", ["euclidean", "sq_euclidean"])
def test_bp_matrix_gives_the_exact_ged_of_tiny_graphs(cost):
    graphs = random_graphs(8, seed=1)
    pairs = [(i, j) for i in range(8) for j in range(i + 1, 8)][:12]
    data = [encode(g, 3, 0) for g in graphs]
    g1 = Batch.from_data_list([data[i] for i, _ in pairs])
    g2 = Batch.from_data_list([data[j] for _, j in pairs])
    pred = one_hot_gtn(cost)(g1, g2)
    exact = torch.tensor([node_ged(graphs[i], graphs[j]) for i, j in pairs], dtype=pred.dtype)
    assert exact.max() > 2  # nontrivial pairs
    torch.testing.assert_close(pred.detach(), exact, atol=0.05, rtol=0)


def _model(solver, heads=1, **kw):
    torch.manual_seed(0)
    cost = "euclidean" if solver in ("full", "sparse") else "sq_euclidean"
    model = GTN(num_heads=heads, head_reg_basis=2.0, solver=solver, cost=cost, max_iter=50, landmarks=3,
                n_clusters=2, sinkhorn_reg=0.5, **kw)
    model.build(num_node_features=3, num_edge_features=2, dist_scale=2.0, avg_degree=1.5)
    return model.double()


def _labelled(graphs, seed):
    rng = np.random.default_rng(seed)
    for g in graphs:
        g.edge_labels = rng.integers(0, 2, g.edges.shape[1])
    return [encode(g, 3, 2) for g in graphs]


@pytest.mark.parametrize("solver,heads", [("full", 1), ("full", 8), ("lcn", 1), ("sparse", 1)])
def test_padded_pairs_give_the_distances_of_one_pair_at_a_time(solver, heads):
    data = _labelled(random_graphs(6, seed=2, max_nodes=8), seed=3)
    for d in data:
        d.x, d.edge_attr = d.x.double(), d.edge_attr.double()
    pairs = [(0, 1), (2, 3), (4, 5), (1, 4)]
    model = _model(solver, heads).eval()
    batch = model(Batch.from_data_list([data[i] for i, _ in pairs]), Batch.from_data_list([data[j] for _, j in pairs]))
    alone = torch.cat([model(Batch.from_data_list([data[i]]), Batch.from_data_list([data[j]])) for i, j in pairs])
    torch.testing.assert_close(batch, alone, rtol=1e-9, atol=1e-9)


def _bp_problem(seed=1, n=8, m=9, real_a=5, real_b=6):
    """3 point-cloud pairs (n and m points in 3-D, float64); pair 1 pads x after real_a points, pair 2 y after real_b."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, n, 3, generator=g, dtype=torch.float64)
    y = torch.randn(3, m, 3, generator=g, dtype=torch.float64)
    ma, mb = torch.ones(3, n, dtype=torch.bool), torch.ones(3, m, dtype=torch.bool)
    ma[1, real_a:], mb[2, real_b:] = False, False
    return x, y, ma, mb


def test_dense_and_structured_bp_agree_and_small_eps_is_the_assignment():
    from scipy.optimize import linear_sum_assignment

    from recot.ot.bp import bp_cost_matrix
    x, y, ma, mb = _bp_problem(seed=0, n=5, m=7, real_a=3, real_b=4)
    dc, ic = x.norm(dim=-1), y.norm(dim=-1)
    kw = dict(mask_a=ma, mask_b=mb, cost="euclidean", max_iter=4000, tol=1e-10)
    dense = bp_sinkhorn(x, y, dc, ic, eps=torch.tensor([0.05, 0.1, 0.2]), dense_bp=True, **kw)
    struct = bp_sinkhorn(x, y, dc, ic, eps=torch.tensor([0.05, 0.1, 0.2]), **kw)
    torch.testing.assert_close(struct.value, dense.value, rtol=1e-9, atol=1e-9)
    sharp = bp_sinkhorn(x, y, dc, ic, eps=1e-3, **kw)
    for b in range(3):
        n, m = int(ma[b].sum()), int(mb[b].sum())
        c = torch.cdist(x[b, :n], y[b, :m])
        C = bp_cost_matrix(c[None], dc[b:b + 1, :n], ic[b:b + 1, :m], 1e9)[0].numpy()
        r, k = linear_sum_assignment(C)
        assert sharp.value[b].item() == pytest.approx(C[r, k].sum(), abs=5e-3)


@pytest.mark.parametrize("solver", ["full", "nystrom", "lcn"])
@pytest.mark.parametrize("unbalanced", ["bp", "kl", "balanced"])
def test_every_parameter_gets_a_finite_gradient(solver, unbalanced):
    if solver != "full" and unbalanced != "bp":
        with pytest.raises(ValueError, match="unbalanced='bp'"):
            _model(solver, unbalanced=unbalanced)
        return
    data = _labelled(random_graphs(4, seed=4, max_nodes=6), seed=5)
    for d in data:
        d.x, d.edge_attr = d.x.double(), d.edge_attr.double()
    model = _model(solver, heads=2, unbalanced=unbalanced)
    pred = model(Batch.from_data_list(data[:2]), Batch.from_data_list(data[2:]))
    pred.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items()
                                                                                   if g is None]
    if unbalanced == "bp":
        assert grads["alpha"].abs().sum() > 0  # the learnable deletion costs are used


def test_gtn_rejects_bad_settings():
    with pytest.raises(ValueError, match="cost must be one of"):
        GTN(solver="lcn", cost="cosine")
    with pytest.raises(ValueError, match="solver must be one of"):
        GTN(solver="dense")
    with pytest.raises(RuntimeError, match="build"):
        GTN()(None, None)


@pytest.mark.parametrize("heads,solver", [(1, "full"), (8, "full"), (1, "lcn")])
def test_calibration_starts_the_predictions_at_the_target_scale(heads, solver):
    """GTN's embedding scale (mean distance per node / sqrt(dim)) assumes embedding differences of norm sqrt(dim);
    a fresh GNN's are much smaller, so uncalibrated predictions start far below the targets. calibrate_scale
    rescales the embeddings on one batch; held-out pairs then start near their mean (one gain, saved as a buffer)."""
    data = _labelled(random_graphs(24, seed=6, max_nodes=8), seed=7)
    for d in data:
        d.x, d.edge_attr = d.x.double(), d.edge_attr.double()
    sizes = torch.tensor([float(d.num_nodes) for d in data], dtype=torch.float64)
    y = 2.0 * (sizes[:12] + sizes[12:]) / 2  # the model's dist_scale (2.0) per node
    g1, g2 = Batch.from_data_list(data[:12]), Batch.from_data_list(data[12:])
    model = _model(solver, heads)
    fit, held = slice(0, 6), slice(6, 12)
    with torch.no_grad():
        before = model(g1, g2)
        if heads > 1:  # the multi-head output starts as the mean of the heads' costs
            torch.testing.assert_close(before, model.transport_costs(g1, g2).mean(-1))
    assert before.mean() < 0.5 * y.mean()
    assert not model.calibrated
    gain = model.calibrate_scale(g1, g2, y, max_pairs=6)  # the first 6 pairs only
    assert model.calibrated and gain > 2 and float(model.emb_gain) == gain
    with torch.no_grad():
        after = model(g1, g2)
    assert 0.9 < float(after[fit].mean() / y[fit].mean()) < 1.1
    assert 0.6 < float(after[held].mean() / y[held].mean()) < 1.6
    assert not GTN(calibrate=False).calibrate


# ------------------------------------------------------------------ Euclidean cost (Laplacian kernel) for Nyström / LCN




def test_euclidean_nystrom_and_lcn_bp_converge_to_full():
    x, y, ma, mb = _bp_problem()
    dc, ic = x.norm(dim=-1), y.norm(dim=-1)
    kw = dict(eps=0.5, mask_a=ma, mask_b=mb, cost="euclidean", max_iter=3000, tol=1e-9)
    full = bp_sinkhorn(x, y, dc, ic, solver="full", **kw)
    err = lambda r: float(((r.value - full.value) / full.value).abs().max())  # noqa: E731
    nys = [err(bp_sinkhorn(x, y, dc, ic, solver="nystrom", landmarks=k, **kw)) for k in (2, 6, 17)]
    assert nys[0] > nys[1] > nys[2] and nys[2] < 1e-6, nys  # 17 landmarks: every point of a pair
    assert err(bp_sinkhorn(x, y, dc, ic, solver="lcn", landmarks=3, n_clusters=1, **kw)) < 1e-8  # all pairs exact


@pytest.mark.parametrize("solver", ["nystrom", "lcn"])
def test_euclidean_bp_value_and_envelope_gradient_match_dense(solver):
    """value = <C_BP, P> with the exact Euclidean node cost on the approximate plan; its envelope gradient is the
    gradient of <C_BP(x, y), P> at the fixed plan (node costs and norm-based deletion costs)."""
    from recot.ot.bp import bp_cost_matrix
    from recot.ot.cost import euclidean
    x, y, ma, mb = _bp_problem()
    x.requires_grad_(), y.requires_grad_()
    dc, ic = x.norm(dim=-1), y.norm(dim=-1)
    res = bp_sinkhorn(x, y, dc, ic, eps=0.5, mask_a=ma, mask_b=mb, solver=solver, cost="euclidean", landmarks=4,
                      n_clusters=2, max_iter=500, tol=1e-9, grad="envelope")
    plan = res.plan.to_dense().detach()
    real = torch.cat([ma, mb], 1)[..., :, None] & torch.cat([mb, ma], 1)[..., None, :]
    c_bp = bp_cost_matrix(euclidean(x * ma[..., None], y * mb[..., None]), dc * ma, ic * mb, 0.0)
    dense = (c_bp * plan * real).sum((-2, -1))
    torch.testing.assert_close(res.value, dense, rtol=1e-9, atol=1e-12)
    g = torch.autograd.grad(res.value.sum(), (x, y), retain_graph=True)  # the deletion costs are shared
    ref = torch.autograd.grad(dense.sum(), (x, y))
    for a, b in zip(g, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_gtn_lcn_with_the_euclidean_cost_trains_a_step():
    data = _labelled(random_graphs(8, seed=8, max_nodes=7), seed=9)
    for d in data:
        d.x, d.edge_attr = d.x.double(), d.edge_attr.double()
    g1, g2 = Batch.from_data_list(data[:4]), Batch.from_data_list(data[4:])
    y = torch.tensor([3.0, 5.0, 4.0, 6.0], dtype=torch.float64)
    torch.manual_seed(0)
    model = GTN(solver="lcn", cost="euclidean", max_iter=50, landmarks=3, n_clusters=2, sinkhorn_reg=0.5)
    model.build(num_node_features=3, num_edge_features=2, dist_scale=2.0, avg_degree=1.5)
    model = model.double()
    model.calibrate_scale(g1, g2, y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = ((model(g1, g2) - y) ** 2).mean()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
