import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recot.nn import ItemCosineCost


@pytest.fixture(scope="module")
def train():
    rng = np.random.default_rng(0)
    x = (rng.random((40, 15)) < 0.3).astype(np.float32)
    x[:, 14] = 0  # an item no training user has
    return sp.csr_matrix(x)


def cosine(train):
    x = train.toarray().astype(np.float64)
    norms = np.linalg.norm(x, axis=0)
    s = (x.T @ x) / np.maximum(np.outer(norms, norms), 1e-300)
    np.fill_diagonal(s, 1.0)
    return s


def test_dense_similarity_is_the_cosine_of_item_columns(train):
    cost = ItemCosineCost().fit(train)
    assert cost.is_dense
    rows = torch.tensor([[0, 3, 14], [5, 5, 2]])
    cols = torch.tensor([[1, 2, 3, 14], [0, 7, 9, 13]])
    expected = 1 - cosine(train)[rows.numpy()[:, :, None], cols.numpy()[:, None, :]]
    np.testing.assert_allclose(cost(rows, cols).numpy(), expected, atol=1e-6)
    assert cost(rows, None).shape == (2, 3, 15)  # all items as columns
    block = cost(torch.tensor([[14]]), None)[0, 0]
    assert block[14] == 0 and (block[:14] == 1).all()  # a cold item: free to itself, maximal cost to the others


def test_sparse_storage_gives_the_same_blocks_and_prunes_to_the_nearest_items(train):
    dense, sparse = ItemCosineCost().fit(train), ItemCosineCost(dense_limit=0, chunk_items=4).fit(train)
    assert not sparse.is_dense and sparse.keys.numel() < 15 * 15
    rows = torch.randint(15, (3, 5), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sparse(rows, None), dense(rows, None))
    pruned = ItemCosineCost(dense_limit=0, max_neighbours=2).fit(train)
    s = cosine(train)
    for item in (0, 6):
        kept = (1 - pruned(torch.tensor([[item]]), None))[0, 0].numpy()
        others = np.argsort(-np.where(np.arange(15) == item, -1, s[item]))[:2]
        np.testing.assert_allclose(kept[others], s[item, others], atol=1e-6)  # its 2 most similar items
        assert kept[item] == 1 and np.count_nonzero(kept) == 3  # and itself; the rest at cost 1


def test_unbuilt_and_bad_arguments():
    with pytest.raises(RuntimeError, match="fit"):
        ItemCosineCost()(torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="max_neighbours"):
        ItemCosineCost(max_neighbours=0)
