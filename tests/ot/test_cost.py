import pytest
import torch

from recot.ot import cosine_cost, cost_scale, dot_cost, normalize_cost, pairwise_cost, sq_euclidean

F64 = torch.float64


def test_costs_match_definitions():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 5, 3, generator=g, dtype=F64), torch.randn(2, 4, 3, generator=g, dtype=F64)
    torch.testing.assert_close(sq_euclidean(x, y), torch.cdist(x, y) ** 2)
    cos = torch.nn.functional.cosine_similarity(x[..., :, None, :], y[..., None, :, :], dim=-1)
    torch.testing.assert_close(cosine_cost(x, y), 1 - cos)
    torch.testing.assert_close(dot_cost(x, y), -torch.einsum("bnd,bmd->bnm", x, y))
    torch.testing.assert_close(pairwise_cost(x, y, "half_sq_euclidean"), 0.5 * sq_euclidean(x, y))
    torch.testing.assert_close(pairwise_cost(x, y, lambda u, v: u @ v.transpose(-1, -2)), -dot_cost(x, y))
    with pytest.raises(ValueError):
        pairwise_cost(x, y, "l1")


def test_sq_euclidean_is_nonnegative_on_duplicates_and_broadcasts():
    x = torch.full((1, 3, 2), 1e4)
    c = sq_euclidean(x, x[0])
    assert c.shape == (1, 3, 3) and (c >= 0).all()


def test_normalize_cost_modes_use_real_entries_only():
    c = torch.tensor([[[1.0, 2.0, 100.0], [4.0, -8.0, 100.0]]], dtype=F64)
    mask_b = torch.tensor([[True, True, False]])
    assert cost_scale(c, "max", mask_b=mask_b).item() == 8.0
    assert cost_scale(c, "mean", mask_b=mask_b).item() == pytest.approx(15 / 4)
    torch.testing.assert_close(normalize_cost(c, "max", mask_b=mask_b)[..., :2], c[..., :2] / 8)
    mm = normalize_cost(c, "minmax", mask_b=mask_b)[..., :2]
    assert mm.min().item() == 0.0 and mm.max().item() == 1.0
    assert normalize_cost(c, None) is c
    assert cost_scale(torch.zeros(2, 2)).item() == 1.0  # degenerate cost: no division by zero


def test_normalize_cost_detaches_scale():
    c = torch.tensor([[1.0, 3.0]], requires_grad=True)
    normalize_cost(c, "max").sum().backward()
    torch.testing.assert_close(c.grad, torch.full((1, 2), 1 / 3))
    c.grad = None
    normalize_cost(c, "max", detach=False).sum().backward()
    torch.testing.assert_close(c.grad, torch.tensor([[1 / 3, -1 / 9]]))
