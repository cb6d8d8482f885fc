import pytest
import torch

from datamodules import SyntheticSpec, load_interactions
from recot.nn import NeuMF


@pytest.fixture(scope="module")
def model():
    spec = SyntheticSpec(num_users=12, num_items=9, min_items_per_user=2, max_items_per_user=6)
    data = load_interactions("synthetic", synthetic=spec)
    torch.manual_seed(0)
    m = NeuMF(gmf_dim=3, mlp_layers=[8, 4, 2], init_std=0.5, max_pairs=10)  # 10 pairs per chunk: 1 user per chunk
    m.bind(data)
    return m


def test_tables_hold_gmf_and_mlp_embeddings(model):
    users, items = model.embed()
    assert users.shape == (12, 3 + 4) and items.shape == (9, 7)
    assert model.user_embedding.weight.std().item() == pytest.approx(0.5, rel=0.3)
    with pytest.raises(ValueError, match="even input size"):
        NeuMF(mlp_layers=[7, 4])


def test_pair_score_is_eq12(model):
    """y = h^T [p^G * q^G || MLP(p^M || q^M)] + b, written out layer by layer."""
    users, items = model.embed()
    p, q = users[4], items[7]
    x = torch.cat([p[3:], q[3:]])
    for lin in model.mlp:
        x = torch.relu(lin.weight @ x + lin.bias)
    expected = model.predict.weight[0] @ torch.cat([p[:3] * q[:3], x]) + model.predict.bias[0]
    torch.testing.assert_close(model.pair_score(p, q), expected)


def test_chunked_full_ranking_equals_pair_scores(model):
    users, items = model.embed()
    ids = torch.tensor([0, 3, 5, 11])
    full = model.score(ids, users[ids], items)  # chunks of one user (max_pairs=10 < 9 items * 2)
    pairs = model.pair_score(users[ids].unsqueeze(1), items.unsqueeze(0))  # broadcast (4, 1, D) x (1, 9, D)
    assert full.shape == (4, 9)
    torch.testing.assert_close(full, pairs)
    # negatives as the ranking task passes them: (B, 1, D) users against (B, n_neg, D) items
    neg = model.pair_score(users[ids].unsqueeze(1), items[torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]])])
    torch.testing.assert_close(neg, pairs.gather(1, torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]])))
