"""ROT pooling layers as PyG aggregations: Proposition 1 and 2 through the layers, permutation invariance,
padded == unpadded, empty sets, dense and image inputs, gradients to every weight."""
import math
import shutil

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


def test_size_buckets_minimise_padding_plus_overhead():
    from itertools import combinations

    from recot.nn.aggr.base import size_buckets
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 13, (30,), generator=g) * 3  # 0..36, at most 12 distinct sizes: brute force below
    sizes = sorted(set(counts.clamp_min(1).tolist()))
    assert 6 <= len(sizes) <= 12
    for overhead in (0.0, 10.0, 60.0, 400.0):
        bucket = size_buckets(counts, overhead)
        chosen = sum(int((bucket == b).sum()) * int(counts[bucket == b].clamp_min(1).max()) + overhead
                     for b in bucket.unique())
        # brute force over the cuts between distinct sizes (every bucket a range of sizes)
        best = math.inf
        for k in range(len(sizes)):
            for cuts in combinations(range(1, len(sizes)), k):
                edges = [0, *cuts, len(sizes)]
                cost = 0.0
                for lo, hi in zip(edges, edges[1:]):
                    inside = (counts.clamp_min(1) >= sizes[lo]) & (counts.clamp_min(1) <= sizes[hi - 1])
                    cost += int(inside.sum()) * sizes[hi - 1] + overhead
                best = min(best, cost)
        assert chosen == best
        # buckets are ranges of sizes, numbered by size
        for b in bucket.unique().tolist()[:-1]:
            assert counts[bucket == b].max() < counts[bucket == b + 1].min()
    assert bool((size_buckets(counts, math.inf) == 0).all())
    assert size_buckets(counts, 0.0).unique().numel() == len(sizes)
    # a PyG batch pooled with few or many buckets gives the same output
    layer = ROTPoolingBE().double()
    x, index = torch.rand(int(counts.sum()), 3, dtype=F64), torch.repeat_interleave(torch.arange(30), counts)
    out = layer(x, index, dim_size=30)
    layer.bucket_overhead = 0.0
    torch.testing.assert_close(layer(x, index, dim_size=30), out)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_solver_equals_eager_in_values_and_gradients():
    x, index = batch()
    eager = ROTPoolingBE(num_modules=2)
    compiled = ROTPoolingBE(num_modules=2, compile_solver=True)
    compiled.load_state_dict(eager.state_dict())
    outs = []
    for layer in (eager, compiled):
        xr = x.clone().requires_grad_()
        out = layer(xr, index, dim_size=5)  # set 4 is empty
        out.pow(2).sum().backward()
        outs.append((out.detach(), xr.grad, [p.grad for p in layer.parameters()]))
    from recot.nn.aggr import rot as rot_layers
    assert rot_layers._compiled.cache_info().currsize >= 1  # the compiled solver ran
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[1][2], outs[0][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
