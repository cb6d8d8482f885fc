import torch

from recot.nn.sparse import SparseOperator, normalized_adjacency


def test_operator_matches_dense_forward_and_backward():
    torch.manual_seed(0)
    dense = torch.rand(6, 4) * (torch.rand(6, 4) < 0.5)
    op = SparseOperator(dense.to_sparse_csr())
    x = torch.randn(4, 3, requires_grad=True)
    y = op @ x
    (y * torch.arange(18.0).view(6, 3)).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    ((dense @ x2) * torch.arange(18.0).view(6, 3)).sum().backward()
    torch.testing.assert_close(y, dense @ x.detach())
    torch.testing.assert_close(x.grad, x2.grad)


def test_symmetric_operator_reuses_the_matrix_in_backward():
    adj = normalized_adjacency(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 0]), 3, 2)
    dense = adj.to_dense()
    torch.testing.assert_close(dense, dense.T)
    op = SparseOperator(adj, symmetric=True)
    x = torch.randn(5, 2, dtype=torch.float32, requires_grad=True)
    w = torch.randn(5, 2)
    ((op @ x) * w).sum().backward()
    torch.testing.assert_close(x.grad, dense.T @ w)


def test_isolated_nodes_get_zero_rows():
    adj = normalized_adjacency(torch.tensor([0]), torch.tensor([0]), 2, 2).to_dense()
    assert torch.isfinite(adj).all()
    assert adj[1].abs().sum() == 0 and adj[3].abs().sum() == 0
    assert adj[0, 2] == 1.0
