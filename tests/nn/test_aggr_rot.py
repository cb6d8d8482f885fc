"""ROT pooling layers as PyG aggregations: Proposition 1 and 2 through the layers, permutation invariance,
padded == unpadded, empty sets, dense and image inputs, gradients to every weight."""
import math

import pytest
import torch
from torch_geometric.nn.aggr import MaxAggregation, MeanAggregation

from recot.nn.aggr import (AttentionPooling, MixedPooling, MixedROTPooling, ROTPooling, ROTPoolingBE, ROTPoolingBQ,
                           ROTPoolingS, SetFusion)

INF = math.inf
F64 = torch.float64
LAYERS = {"S": ROTPoolingS, "B-E": ROTPoolingBE, "B-Q": ROTPoolingBQ}


def batch(seed=0, sizes=(3, 1, 5, 4), d=6):
    g = torch.Generator().manual_seed(seed)
    index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return torch.rand(int(sum(sizes)), d, generator=g, dtype=F64), index


def fixed(cls, **weights):
    """A layer with all weights fixed (no learnable one)."""
    return cls(learn=(), **weights).double()


MEAN = {"S": dict(alpha0=0.0, alpha1=1e6, alpha2=INF, alpha3=INF, step=1.0),
        "B-E": dict(alpha0=0.0, alpha1=1e6, alpha2=INF, alpha3=INF, step=1e3),
        "B-Q": dict(alpha0=0.0, alpha1=1e5, alpha2=INF, alpha3=INF, step=1e4, num_modules=300)}
MAX = {"S": dict(alpha0=0.0, alpha1=0.0, alpha2=INF, alpha3=0.0, step=1e-3),
       "B-E": dict(alpha0=0.0, alpha1=0.0, alpha2=INF, alpha3=0.0, step=1e-2, num_modules=20),
       "B-Q": dict(alpha0=0.0, alpha1=0.0, alpha2=INF, alpha3=0.0, step=1e-2, num_modules=20)}


@pytest.mark.parametrize("name", LAYERS)
def test_proposition1_layers_reproduce_mean_max_and_attention_pooling(name):
    x, index = batch()
    mean = MeanAggregation()(x, index)
    torch.testing.assert_close(fixed(LAYERS[name], **MEAN[name])(x, index), mean, atol=2e-4, rtol=0)
    torch.testing.assert_close(fixed(LAYERS[name], **MAX[name])(x, index), MaxAggregation()(x, index), atol=1e-6,
                               rtol=0)
    rot = LAYERS[name](in_channels=6, q0="attention", learn=(), **MEAN[name]).double()
    att = AttentionPooling(6, hidden_channels=6).double()
    att.gate_nn.load_state_dict(rot.q0_net.state_dict())
    torch.testing.assert_close(rot(x, index), att(x, index), atol=2e-4, rtol=0)


def test_proposition2_hierarchical_rot_is_mixed_mean_max_pooling():
    x, index = batch()
    mixed = MixedPooling().double()
    with torch.no_grad():
        mixed.logit.fill_(0.7)
    heads = [fixed(ROTPoolingS, **MEAN["S"]), fixed(ROTPoolingS, **MAX["S"])]
    top = ROTPoolingS(q0="param", num_elements=2, learn=(), **MEAN["S"]).double()
    with torch.no_grad():  # q0 = [w, 1 - w] with w = sigmoid(0.7)
        top.q0_logits.copy_(torch.tensor([0.7, 0.0]))
    torch.testing.assert_close(MixedROTPooling(heads, top)(x, index), mixed(x, index), atol=1e-6, rtol=0)


def permute_within_sets(x, index, seed=1):
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.nonzero(index == k).flatten()[torch.randperm(int((index == k).sum()), generator=g)]
                       for k in range(int(index.max()) + 1)])
    return x[order], index


@pytest.mark.parametrize("name", LAYERS)
def test_permutation_invariance_padding_and_empty_sets(name):
    torch.manual_seed(0)
    layer = LAYERS[name](in_channels=6, p0="learned", q0="attention", per_module=True).double()
    x, index = batch()
    out = layer(x, index, dim_size=6)  # sets 4 and 5 are empty
    torch.testing.assert_close(layer(*permute_within_sets(x, index), dim_size=6), out)
    assert torch.isfinite(out).all() and (out[4:] == 0).all()
    for k in range(4):  # each set alone, no padding
        alone = layer(x[index == k], torch.zeros(int((index == k).sum()), dtype=torch.long))
        torch.testing.assert_close(alone[0], out[k])
    # dense sets with a mask, and the CSR (ptr) form, give the same
    dense = torch.zeros(4, 5, 6, dtype=F64)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    for k, n in enumerate((3, 1, 5, 4)):
        dense[k, :n], mask[k, :n] = x[index == k], True
    torch.testing.assert_close(layer.dense(dense, mask), out[:4])
    torch.testing.assert_close(layer(x, ptr=torch.tensor([0, 3, 4, 9, 13])), out[:4])


def test_image_pooling_treats_positions_as_samples():
    layer = ROTPoolingBE().double()
    maps = torch.rand(2, 6, 3, 4, dtype=F64)
    torch.testing.assert_close(layer.image(maps), layer.dense(maps.flatten(2).transpose(1, 2)))
    mean = fixed(ROTPoolingBE, **MEAN["B-E"]).image(maps)
    torch.testing.assert_close(mean, maps.mean((2, 3)), atol=2e-4, rtol=0)


@pytest.mark.parametrize("name", LAYERS)
def test_gradients_reach_every_learnable_weight(name):
    x, index = batch()
    for per_module in (False, True):
        layer = LAYERS[name](in_channels=6, learn=("alpha0", "alpha1", "alpha2", "alpha3", "step"), alpha0=0.5,
                             per_module=per_module).double()
        layer(x * 3, index).pow(2).sum().backward()
        for weight, param in layer.raw.items():
            # per module: BADMM's last S-update does not reach P^(T) (Alg. 2 returns P), so some entry moves
            moved = (param.grad.abs() > 0).any() if per_module else (param.grad.abs() > 0).all()
            assert param.grad is not None and moved, (weight, param.grad)
    assert set(layer.log_values()) == {"alpha0", "alpha1", "alpha2", "alpha3", "step"}


def test_set_fusion_pools_members_then_sets():
    x, member = batch(sizes=(3, 1, 5, 4, 2))
    set_index = torch.tensor([0, 0, 1, 1, 1])
    fusion = SetFusion(MeanAggregation(), MaxAggregation(), g=torch.nn.Tanh())
    expected = MaxAggregation()(torch.tanh(MeanAggregation()(x, member)), set_index)
    torch.testing.assert_close(fusion(x, member, set_index), expected)
    hrot = SetFusion(ROTPoolingS(), ROTPoolingBE()).double()
    assert hrot(x, member, set_index, num_members=5, num_sets=3).shape == (3, 6)


def test_bad_arguments_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="needs in_channels"):
        ROTPooling(q0="attention")
    with pytest.raises(ValueError, match="unknown weights"):
        ROTPooling(learn=("alpha5",))
    with pytest.raises(ValueError, match="finite initial value"):
        ROTPooling(alpha2=INF)
    with pytest.raises(ValueError, match="built for sets of 2 elements"):
        ROTPooling(q0="param", num_elements=2).dense(torch.rand(1, 3, 4))
