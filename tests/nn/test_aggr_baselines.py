"""Pooling baselines PyG lacks: each against its formula or a known special case, plus the shared contract
(permutation invariance, padded == unpadded, defined output for empty sets, gradients)."""
import math

import pytest
import torch
from torch_geometric.nn.aggr import MaxAggregation, MeanAggregation, SumAggregation

from recot.nn.aggr import (AttentionPooling, DynamicPooling, GatedAttentionPooling, GatedMixedPooling, GNPPooling,
                           MixedPooling, OTKPooling, SWEPooling)

F64 = torch.float64
SIZES = (3, 1, 5, 4)


def batch(seed=0, d=6):
    g = torch.Generator().manual_seed(seed)
    index = torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES))
    return torch.rand(sum(SIZES), d, generator=g, dtype=F64), index


def sets(x, index):
    return [x[index == k] for k in range(len(SIZES))]


def make(name):
    torch.manual_seed(0)
    return {"mixed": MixedPooling, "gated-mixed": lambda: GatedMixedPooling(6), "attention": lambda: AttentionPooling(6),
            "gated-attention": lambda: GatedAttentionPooling(6), "dynamic": DynamicPooling, "gnp": GNPPooling,
            "otk": lambda: OTKPooling(6, num_references=3), "swe": lambda: SWEPooling(6, 4, 5)}[name]().double()


NAMES = ["mixed", "gated-mixed", "attention", "gated-attention", "dynamic", "gnp", "otk", "swe"]


@pytest.mark.parametrize("name", NAMES)
def test_contract_permutation_padding_empty_sets_gradients(name):
    pool = make(name)
    x, index = batch()
    x.requires_grad_()
    out = pool(x, index, dim_size=5)  # set 4 is empty
    assert torch.isfinite(out).all()
    g = torch.Generator().manual_seed(1)
    order = torch.cat([torch.nonzero(index == k).flatten()[torch.randperm(n, generator=g)] for k, n in
                       enumerate(SIZES)])
    torch.testing.assert_close(pool(x[order], index, dim_size=5), out)
    for k, members in enumerate(sets(x, index)):
        torch.testing.assert_close(pool(members, torch.zeros(len(members), dtype=torch.long))[0], out[k])
    out.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pool.parameters())


def test_mixed_and_gated_mixed_follow_eq11():
    x, index = batch()
    mean, top = MeanAggregation()(x, index), MaxAggregation()(x, index)
    pool = make("mixed")
    with torch.no_grad():
        pool.logit.fill_(0.3)
    w = torch.sigmoid(torch.tensor(0.3, dtype=F64))
    torch.testing.assert_close(pool(x, index), w * mean + (1 - w) * top)
    gated = make("gated-mixed")
    w = torch.sigmoid(SumAggregation()(gated.gate(x), index))
    torch.testing.assert_close(gated(x, index), w * mean + (1 - w) * top)


@pytest.mark.parametrize("gated", [False, True])
def test_attention_pooling_follows_ilse_et_al(gated):
    pool = make("gated-attention" if gated else "attention")
    x, index = batch()
    score = pool.gate_nn
    for k, members in enumerate(sets(x, index)):
        h = torch.tanh(members @ score.V.weight.T)
        if gated:
            h = h * torch.sigmoid(members @ score.U.weight.T)
        a = torch.softmax(h @ score.w.weight.T, 0)
        torch.testing.assert_close(pool(x, index)[k], (a * members).sum(0))


def test_dynamic_pooling_is_routing_and_starts_from_the_mean():
    x, index = batch()
    torch.testing.assert_close(DynamicPooling(iterations=0)(x, index), MeanAggregation()(x, index))
    out = DynamicPooling(iterations=2)(x, index)
    for k, members in enumerate(sets(x, index)):
        b = torch.zeros(len(members), dtype=F64)
        for _ in range(2):
            s = (torch.softmax(b, 0)[:, None] * members).sum(0)
            z = s.norm() ** 2 / (1 + s.norm() ** 2) * s / s.norm()
            b = b + members @ z
        torch.testing.assert_close(out[k], (torch.softmax(b, 0)[:, None] * members).sum(0))


def test_gnp_special_cases_mean_sum_max():
    x, index = batch()
    pool = GNPPooling(eps=0.0).double()

    def set_pq(p, q):
        with torch.no_grad():
            pool.raw_p.fill_(math.log(math.expm1(p - 1)) if p > 1 else -50.0)
            pool.q.fill_(q)

    set_pq(1.0, 1.0)
    torch.testing.assert_close(pool(x, index), MeanAggregation()(x, index))
    set_pq(1.0, 0.0)
    torch.testing.assert_close(pool(x, index), SumAggregation()(x, index))
    set_pq(400.0, 0.0)
    torch.testing.assert_close(pool(x, index), MaxAggregation()(x, index), atol=5e-3, rtol=0)
    signed = torch.tensor([[-2.0, 1.0], [1.0, -3.0]], dtype=F64)
    set_pq(1.0, 1.0)  # signed inputs: GNP(x+) - GNP(x-) = mean for p = q = 1
    torch.testing.assert_close(pool(signed, torch.zeros(2, dtype=torch.long)), signed.mean(0, keepdim=True))


def test_otk_with_one_reference_is_the_mean_and_splits_mass_evenly():
    x, index = batch()
    torch.testing.assert_close(OTKPooling(6, num_references=1).double()(x, index), MeanAggregation()(x, index))
    pool = make("otk")
    assert pool(x, index).shape == (4, 18)


def test_swe_reads_sorted_projections_for_sets_of_reference_size():
    pool = make("swe")  # 4 slices, 5 reference points
    x = torch.rand(2, 5, 6, dtype=F64)
    theta = torch.nn.functional.normalize(pool.slices, dim=0)
    expected = (x @ theta).sort(1).values - (pool.references @ theta).sort(0).values
    torch.testing.assert_close(pool.dense(x), expected.flatten(1))
    assert SWEPooling(6, 4, 5, out_channels=3).double().dense(x).shape == (2, 3)
