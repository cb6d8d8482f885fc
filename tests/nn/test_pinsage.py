import numpy as np
import pytest
import scipy.sparse as sp
import torch

from datamodules import InteractionData, SyntheticSpec, load_interactions
from recot.nn import PinSage
from recot.nn.pinsage import bipartite_csr, importance_neighborhoods


@pytest.fixture(scope="module")
def data():
    return load_interactions("synthetic", synthetic=SyntheticSpec(num_users=40, num_items=30, max_items_per_user=12))


def walks(train, seed, num_walks=30, walk_length=3, num_neighbors=8):
    return importance_neighborhoods(train, num_walks, walk_length, num_neighbors, torch.Generator().manual_seed(seed))


def test_neighbourhoods_are_deterministic_for_a_seed(data):
    a, b, c = walks(data.train, 7), walks(data.train, 7), walks(data.train, 8)
    assert torch.equal(a.crow_indices(), b.crow_indices()) and torch.equal(a.col_indices(), b.col_indices())
    assert torch.equal(a.values(), b.values())
    assert not torch.equal(a.to_dense(), c.to_dense())
    # through the model: the same walk_seed gives the same aggregation operator
    m1, m2 = PinSage(embedding_dim=4, walk_seed=3), PinSage(embedding_dim=4, walk_seed=3)
    m1.bind(data)
    m2.bind(data)
    assert torch.equal(m1.neighborhoods.matrix.to_dense(), m2.neighborhoods.matrix.to_dense())


def test_top_t_of_the_other_node_type_with_weights_summing_to_one(data):
    u, n_i = data.num_users, data.num_items
    dense = walks(data.train, 0, num_neighbors=5).to_dense()
    sizes = (dense > 0).sum(1)
    assert sizes.max() <= 5 and (sizes[: u] > 0).all()
    assert (dense[:u, :u] == 0).all() and (dense[u:, u:] == 0).all()  # users pool items, items pool users
    has = sizes > 0
    torch.testing.assert_close(dense[has].sum(1), torch.ones(int(has.sum())))
    # the kept T are the T most visited: the same walks without truncation rank them first
    full = walks(data.train, 0, num_neighbors=u + n_i).to_dense()
    for v in range(u + n_i):
        kept = dense[v] > 0
        if kept.any():
            assert full[v][kept].min() >= full[v][~kept].max()


def test_visit_frequencies_are_those_of_a_uniform_random_walk():
    """Odd-hop visit frequencies of 3-hop walks converge to rows of P + P^3 (P the random-walk matrix)."""
    rng = np.random.default_rng(0)
    dense = (rng.random((6, 5)) < 0.5).astype(np.float32)
    dense[np.arange(6), np.arange(6) % 5] = 1.0  # no isolated user or item
    train = sp.csr_matrix(dense)
    n = 11
    got = walks(train, 0, num_walks=20000, walk_length=3, num_neighbors=n).to_dense().numpy()
    adj = np.zeros((n, n))
    adj[:6, 6:] = train.toarray()
    adj[6:, :6] = train.toarray().T
    p = adj / adj.sum(1, keepdims=True)
    expected = p + p @ p @ p
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=0.01)


def test_one_hop_neighbourhood_is_the_direct_neighbours():
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]], dtype=np.float32))
    dense = walks(train, 1, num_walks=4000, walk_length=1, num_neighbors=10).to_dense()
    assert (dense[0, 3:5] > 0.45).all() and dense[0].count_nonzero() == 2
    assert (dense[1, 4:7] > 0.3).all() and dense[1].count_nonzero() == 3
    assert dense[2].count_nonzero() == 0  # a user without training items has an empty neighbourhood
    assert dense[3 + 1, :3].count_nonzero() == 2  # item 1 pools users 0 and 1
    indptr, indices = bipartite_csr(train)
    assert indptr.tolist() == [0, 2, 5, 5, 6, 8, 9, 10] and indices[:5].tolist() == [3, 4, 4, 5, 6]


def test_convolution_is_algorithm_1_and_readout_is_dense():
    train = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1]], dtype=np.float32))
    data = InteractionData("tiny", train, sp.csr_matrix((2, 3)), sp.csr_matrix((2, 3)))
    torch.manual_seed(0)
    model = PinSage(embedding_dim=3, layer_sizes=[4], hidden_dim=2, num_walks=50, num_neighbors=2, walk_seed=0)
    model.bind(data)
    h = torch.cat(model.initial())
    alpha = model.neighborhoods.matrix.to_dense()
    pooled = alpha @ torch.relu(h @ model.q[0].weight.T + model.q[0].bias)
    z = torch.relu(torch.cat([h, pooled], 1) @ model.w[0].weight.T + model.w[0].bias)
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    u1, i1 = model.propagate(0, *model.initial())
    torch.testing.assert_close(torch.cat([u1, i1]), z)
    assert torch.allclose(z.norm(dim=1)[z.norm(dim=1) > 0], torch.ones(1))
    users, items = model.embed()
    torch.testing.assert_close(users, model.g2(torch.relu(model.g1(u1))))
    assert users.shape == (2, 4) and items.shape == (3, 4)


def test_bad_walk_settings_are_refused(data):
    with pytest.raises(ValueError, match="must be >= 1"):
        walks(data.train, 0, num_walks=0)
