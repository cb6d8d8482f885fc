"""SinkhornCF's losses (recot.ot.losses): accelerated (top-k) Sinkhorn loss, concentration term."""
import math

import pytest
import torch

from recot.ot import accelerated_sinkhorn_loss, concentration_loss, topk_sinkhorn_loss

F64 = torch.float64


def item_problem(users=5, items=12, seed=0):
    """A cost 1 - S from the cosine similarity of random item vectors, ragged observed sets (1 to 7 items, one user
    with none) and a random predicted distribution."""
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(items, 6, generator=g, dtype=F64)
    v = v / v.norm(dim=1, keepdim=True)
    cost = (1 - v @ v.T).clamp_min(0).fill_diagonal_(0)
    observed = torch.zeros(users, items, dtype=torch.bool)
    for u, n in enumerate([3, 1, 7, 0, 5][:users]):
        observed[u, torch.randperm(items, generator=g)[:n]] = True
    log_probs = torch.randn(users, items, generator=g, dtype=F64).log_softmax(1)
    return cost, observed, log_probs


def dense_block(cost):
    def block(rows, cols):
        full = cost[rows]  # (b, n, I)
        return full if cols is None else full.gather(2, cols.unsqueeze(1).expand(-1, rows.shape[1], -1))
    return block


def test_all_items_as_top_k_equals_the_dense_sinkhorn_loss_and_pot(pot):
    cost, observed, log_probs = item_problem()
    items = cost.shape[0]
    block = dense_block(cost)
    for n_iter in (5, 3000):  # the paper's L = 5, and L large (converged)
        topk = topk_sinkhorn_loss(log_probs, observed, block, k=items, eps=0.5, n_iter=n_iter)
        dense = topk_sinkhorn_loss(log_probs, observed, block, k=None, eps=0.5, n_iter=n_iter)
        torch.testing.assert_close(topk, dense, atol=1e-12, rtol=1e-10)  # the column order does not matter
    for u in range(observed.shape[0]):
        rows = observed[u].nonzero().flatten()
        if rows.numel() == 0:
            assert dense[u] == 0  # no observed item: nothing to transport
            continue
        a = torch.full((rows.numel(),), 1 / rows.numel(), dtype=F64)
        plan = pot.sinkhorn(a.numpy(), log_probs[u].exp().numpy(), cost[rows].numpy(), 0.5, numItermax=100000,
                            stopThr=1e-13)
        assert float(dense[u]) == pytest.approx(float((plan * cost[rows].numpy()).sum()), abs=1e-9)


def test_paper_example_prefers_the_output_on_similar_items():
    """Sec. 2.3: x = [1, 0, 0, 0]; W_1 = 0.1 for x_hat = [.5, .5, 0, 0] and 0.45 for [.5, 0, .5, 0]."""
    s = torch.tensor([[1.0, 0.8, 0.1, 0.1], [0.8, 1.0, 0.1, 0.1], [0.1, 0.1, 1.0, 0.8], [0.1, 0.1, 0.8, 1.0]], dtype=F64)
    observed = torch.tensor([[True, False, False, False]] * 2)
    half, none = math.log(0.5), -math.inf
    log_probs = torch.tensor([[half, half, none, none], [half, none, half, none]], dtype=F64)
    loss = topk_sinkhorn_loss(log_probs, observed, dense_block(1 - s), k=2, eps=0.01, n_iter=200)
    torch.testing.assert_close(loss, torch.tensor([0.1, 0.45], dtype=F64), atol=1e-9, rtol=0)


def test_l1_reaches_only_the_top_k_and_l2_reaches_every_item():
    cost, observed, log_probs = item_problem()
    k = 4
    lp = log_probs.clone().requires_grad_()
    l1, l2 = accelerated_sinkhorn_loss(lp, observed, dense_block(cost), k=k, alpha=0.03, eps=1.0, n_iter=5)
    (g1,) = torch.autograd.grad(l1.sum(), lp, retain_graph=True)
    (g2,) = torch.autograd.grad(l2.sum(), lp)
    top = torch.zeros_like(observed).scatter_(1, log_probs.topk(k, dim=1).indices, True)
    has_items = observed.any(1)
    assert (g1[~top] == 0).all()  # the partial gradient of Sec. 2.4
    # every selected item that moves mass at a positive cost gets a gradient (an observed item can reach itself at 0)
    assert (g1[top & has_items[:, None] & ~observed] != 0).all()
    assert (g1[~has_items] == 0).all()
    assert (g2 != 0).all()  # observed items with weight 1, the others with alpha


def test_concentration_term_by_hand():
    log_probs = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]], dtype=F64))
    observed = torch.tensor([[True, False, True, False]])
    expected = -(math.log(0.5) + math.log(0.125)) - 0.1 * (math.log(0.25) + math.log(0.125))
    assert float(concentration_loss(log_probs, observed, 0.1)) == pytest.approx(expected)
    # alpha = 0: Mult-VAE's multinomial log-likelihood (Eq. 9)
    assert float(concentration_loss(log_probs, observed, 0.0)) == pytest.approx(-(math.log(0.5) + math.log(0.125)))


def test_user_batching_by_size_changes_nothing():
    cost, observed, log_probs = item_problem(seed=3)
    block = dense_block(cost)
    grads = []
    values = []
    for max_elements in (1, 1 << 20):  # one user per masked batch, or all users in one
        lp = log_probs.clone().requires_grad_()
        value = topk_sinkhorn_loss(lp, observed, block, k=5, eps=1.0, n_iter=5, max_elements=max_elements)
        value.sum().backward()
        values.append(value.detach())
        grads.append(lp.grad)
    torch.testing.assert_close(values[0], values[1], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-12)


def test_bad_shapes_and_k():
    cost, observed, log_probs = item_problem()
    with pytest.raises(ValueError, match=r"\(B, I\)"):
        topk_sinkhorn_loss(log_probs[:, :3], observed, dense_block(cost))
    with pytest.raises(ValueError, match="k must be"):
        topk_sinkhorn_loss(log_probs, observed, dense_block(cost), k=0)
