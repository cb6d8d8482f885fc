import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from datamodules import InteractionData
from recot.nn import NGCF


def six_cycle() -> InteractionData:
    """3 users, 3 items on a 6-cycle u0-i0-u2-i2-u1-i1-u0: every node has degree 2, so L = A / 2."""
    train = sp.csr_matrix(np.array([[1, 1, 0],
                                    [0, 1, 1],
                                    [1, 0, 1]], dtype=np.float32))
    return InteractionData("cycle", train, sp.csr_matrix((3, 3)), sp.csr_matrix((3, 3)))


def hand_model() -> NGCF:
    model = NGCF(embedding_dim=2, layer_sizes=[2], node_dropout=0.0, message_dropout=0.0, negative_slope=0.2)
    model.bind(six_cycle())
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model.item_embedding.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, -1.0]]))
        model.w1[0].weight.copy_(torch.eye(2))  # x W1^T: identity
        model.w1[0].bias.zero_()
        model.w2[0].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # x W2^T swaps the two columns
        model.w2[0].bias.copy_(torch.tensor([0.5, -1.0]))
    return model


def test_one_layer_without_dropout_matches_the_hand_computed_eq7():
    # Neighbour messages L E (each neighbour weighted 1/sqrt(2 * 2) = 1/2):
    #   u0 = (i0 + i1)/2 = (1, 1)      u1 = (i1 + i2)/2 = (.5, .5)   u2 = (i0 + i2)/2 = (1.5, -.5)
    #   i0 = (u0 + u2)/2 = (1, .5)     i1 = (u0 + u1)/2 = (.5, .5)   i2 = (u1 + u2)/2 = (.5, 1)
    # sum message (L + I) E W1 + b1 = side + ego:
    #   u0 (2, 1)  u1 (.5, 1.5)  u2 (2.5, .5)  i0 (3, .5)  i1 (.5, 2.5)  i2 (1.5, 0)
    # bi-interaction (L E * E) W2 + b2, i.e. swap(side * ego) + (.5, -1):
    #   u0 swap(1, 0) = (0, 1) -> (.5, 0)        u1 swap(0, .5) = (.5, 0) -> (1, -1)
    #   u2 swap(1.5, -.5) = (-.5, 1.5) -> (0, .5)  i0 swap(2, 0) = (0, 2) -> (.5, 1)
    #   i1 swap(0, 1) = (1, 0) -> (1.5, -1)      i2 swap(.5, -1) = (-1, .5) -> (-.5, -.5)
    # sum, then LeakyReLU(0.2): only i2's second entry is negative: -0.5 -> -0.1
    model = hand_model()
    u0, i0 = model.initial()
    u1, i1 = model.propagate(0, u0, i0)
    torch.testing.assert_close(u1, torch.tensor([[2.5, 1.0], [1.5, 0.5], [2.5, 1.0]]))
    torch.testing.assert_close(i1, torch.tensor([[3.5, 1.5], [2.0, 1.5], [1.0, -0.1]]))

    # readout (Eq. 9): [e0 || e1 / |e1|]; score = dot product of the concatenations
    users, items = model.embed()
    n = math.sqrt
    torch.testing.assert_close(users, torch.tensor([[1.0, 0.0, 2.5 / n(7.25), 1.0 / n(7.25)],
                                                    [0.0, 1.0, 1.5 / n(2.5), 0.5 / n(2.5)],
                                                    [1.0, 1.0, 2.5 / n(7.25), 1.0 / n(7.25)]]))
    torch.testing.assert_close(items[2], torch.tensor([1.0, -1.0, 1.0 / n(1.01), -0.1 / n(1.01)]))
    score = model.score(torch.tensor([1]), users[1:2], items)[0, 2]
    expected = (0 * 1 + 1 * -1) + (1.5 * 1.0 + 0.5 * -0.1) / (n(2.5) * n(1.01))
    assert score.item() == pytest.approx(expected, rel=1e-5)


def test_sizes_grow_by_concatenation():
    model = NGCF(embedding_dim=4, layer_sizes=[3, 5], node_dropout=0.0, message_dropout=0.0)
    model.bind(six_cycle())
    users, items = model.embed()
    assert users.shape == (3, 4 + 3 + 5) and items.shape == (3, 12)
    assert model.num_layers == 2


def test_dropout_follows_the_global_generator_and_is_off_in_eval():
    model = NGCF(embedding_dim=4, layer_sizes=[4, 4], node_dropout=0.3, message_dropout=0.3)
    model.bind(six_cycle())
    model.train()
    torch.manual_seed(5)
    a = torch.cat(model.embed())
    torch.manual_seed(5)
    b = torch.cat(model.embed())
    c = torch.cat(model.embed())
    torch.testing.assert_close(a, b)  # the same draws from the same global state: exact resume holds
    assert not torch.allclose(b, c)
    model.eval()
    torch.testing.assert_close(torch.cat(model.embed()), torch.cat(model.embed()))
    with pytest.raises(ValueError, match="node_dropout must be in"):
        NGCF(node_dropout=1.0)


def test_node_dropout_silences_a_node_s_messages_but_not_its_own():
    """With message dropout off, a dropped node keeps its self message; at p -> 1 every neighbour message vanishes."""
    model = hand_model()
    model.node_dropout = 0.999999
    model.train()
    torch.manual_seed(0)
    u1, i1 = model.propagate(0, *model.initial())
    # every node dropped (rand >= 0.999999 has probability ~1e-6 per node): side = 0, so E' = LeakyReLU(E W1 + b1 + b2)
    ego = torch.cat(model.initial())
    expected = torch.nn.functional.leaky_relu(ego + torch.tensor([0.5, -1.0]), 0.2)
    torch.testing.assert_close(torch.cat([u1, i1]), expected)
