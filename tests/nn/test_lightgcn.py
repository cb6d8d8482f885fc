import pytest
import torch

from datamodules import SyntheticSpec, load_interactions
from recot.nn import MF, LightGCN, MostPop


@pytest.fixture(scope="module")
def data():
    return load_interactions("synthetic", synthetic=SyntheticSpec(num_users=25, num_items=18, max_items_per_user=12))


def test_lightgcn_is_the_mean_of_powers_of_the_adjacency(data):
    torch.manual_seed(0)
    model = LightGCN(embedding_dim=8, num_layers=3)
    model.bind(data)
    u, i = model.embed()
    a = data.adjacency.to_dense()
    e = torch.cat(model.initial())
    expected = (e + a @ e + a @ a @ e + a @ a @ a @ e) / 4
    torch.testing.assert_close(torch.cat([u, i]), expected, rtol=1e-5, atol=1e-6)


def test_lightgcn_layer_weights_and_zero_layers_is_mf(data):
    torch.manual_seed(0)
    mf = MF(embedding_dim=8)
    mf.bind(data)
    lg = LightGCN(embedding_dim=8, num_layers=2, layer_weights=[1.0, 0.0, 0.0])
    lg.bind(data)
    lg.load_state_dict(mf.state_dict())
    for a, b in zip(lg.embed(), mf.embed()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="num_layers \\+ 1 = 3"):
        LightGCN(num_layers=2, layer_weights=[0.5, 0.5])


def test_initialisation_and_rebinding(data):
    torch.manual_seed(0)
    model = LightGCN(embedding_dim=64, init_std=0.1)
    model.bind(data)
    assert model.user_embedding.weight.shape == (25, 64)
    assert model.user_embedding.weight.std().item() == pytest.approx(0.1, rel=0.15)
    before = model.user_embedding.weight.clone()
    model.bind(data)  # idempotent: fit then test bind twice
    assert torch.equal(before, model.user_embedding.weight)
    with pytest.raises(ValueError, match="built for 25 users x 18 items"):
        model.build(30, 18)


def test_unbound_graph_model_explains_itself():
    model = LightGCN(num_layers=1)
    model.build(3, 4)
    with pytest.raises(RuntimeError, match="call bind"):
        model.embed()


def test_most_popular_scores(data):
    model = MostPop()
    model.bind(data)
    users = torch.tensor([0, 3])
    u, i = model.embed()
    scores = model.score(users, u[users], i)
    expected = torch.from_numpy(data.train.toarray()).sum(0)
    assert torch.equal(scores[0], expected) and torch.equal(scores[1], expected)


def test_fast_embed_equals_the_generic_layer_loop(data):
    # wrappers such as GOTNet re-run initial/propagate/combine; LightGCN's own embed() must give the same result
    from recot.nn.base import Recommender
    torch.manual_seed(0)
    model = LightGCN(embedding_dim=8, num_layers=3, layer_weights=[0.1, 0.2, 0.3, 0.4])
    model.bind(data)
    for fast, loop in zip(model.embed(), Recommender.embed(model)):
        torch.testing.assert_close(fast, loop, rtol=1e-6, atol=1e-7)
