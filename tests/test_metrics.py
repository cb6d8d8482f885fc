import math

import pytest
import torch

from recot.metrics import RankingMetrics

L3, L5 = 1 / math.log2(3), 1 / math.log2(5)


def one_user(target_items, exclude_items=(), n=5):
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])[:, :n]
    target = torch.zeros(1, n, dtype=torch.bool)
    target[0, list(target_items)] = True
    exclude = torch.zeros(1, n, dtype=torch.bool)
    exclude[0, list(exclude_items)] = True
    return scores, target, exclude


def test_hand_computed_cutoffs():
    m = RankingMetrics(k=(2, 4))
    m.update(*one_user({1, 3}))
    r = m.compute()
    # ranked list 0,1,2,3,4; targets at ranks 2 and 4
    assert r["recall@2"] == pytest.approx(0.5)
    assert r["precision@2"] == pytest.approx(0.5)
    assert r["hit_rate@2"] == pytest.approx(1.0)
    assert r["ndcg@2"] == pytest.approx(L3 / (1 + L3))
    assert r["recall@4"] == pytest.approx(1.0)
    assert r["precision@4"] == pytest.approx(0.5)
    assert r["ndcg@4"] == pytest.approx((L3 + L5) / (1 + L3))


def test_ideal_dcg_uses_min_of_k_and_targets():
    m = RankingMetrics(k=(2,))
    m.update(*one_user({0, 1, 2, 3}))  # 4 targets, k = 2: ideal DCG has 2 hits, and both top items hit
    assert m.compute()["ndcg@2"] == pytest.approx(1.0)
    assert m.compute()["recall@2"] == pytest.approx(0.5)


def test_training_items_are_masked():
    m = RankingMetrics(k=(2,))
    m.update(*one_user({1, 3}, exclude_items={0}))  # item 0 was seen in training: list becomes 1, 2
    r = m.compute()
    assert r["recall@2"] == pytest.approx(0.5)
    assert r["ndcg@2"] == pytest.approx(1 / (1 + L3))
    unmasked = RankingMetrics(k=(2,))
    unmasked.update(*one_user({1, 3}))
    assert unmasked.compute()["ndcg@2"] < r["ndcg@2"]


def test_excluded_items_never_count_as_hits_even_when_the_list_runs_short():
    m = RankingMetrics(k=(4,))
    m.update(*one_user({4}, exclude_items={0, 1, 2}))  # only items 3, 4 remain; the list is padded with -inf items
    r = m.compute()
    assert r["recall@4"] == pytest.approx(1.0)
    assert r["precision@4"] == pytest.approx(0.25)


def test_users_without_targets_are_skipped():
    m = RankingMetrics(k=(2,))
    s, t, e = one_user({1, 3})
    s2, t2, e2 = one_user(set())
    m.update(torch.cat([s, s2]), torch.cat([t, t2]), torch.cat([e, e2]))
    assert int(m.num_users) == 1
    assert m.compute()["recall@2"] == pytest.approx(0.5)
    empty = RankingMetrics(k=(2,))
    empty.update(s2, t2, e2)
    assert empty.compute()["recall@2"] == 0.0  # nothing evaluated: zeros, not NaN


def test_states_are_sums_so_shards_merge_to_the_whole():
    torch.manual_seed(0)
    scores = torch.randn(40, 30)
    target = torch.rand(40, 30) < 0.1
    exclude = (torch.rand(40, 30) < 0.2) & ~target
    whole = RankingMetrics(k=(5, 10))
    whole.update(scores, target, exclude)
    a, b = RankingMetrics(k=(5, 10)), RankingMetrics(k=(5, 10))
    a.update(scores[::2], target[::2], exclude[::2])  # the UserBatches rank::world sharding
    b.update(scores[1::2], target[1::2], exclude[1::2])
    a.merge_state(b)
    for name, value in whole.compute().items():
        assert a.compute()[name] == pytest.approx(float(value), abs=1e-6), name


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown ranking metric"):
        RankingMetrics(metrics=("recall", "mrr"))
    m = RankingMetrics()
    with pytest.raises(ValueError, match="same"):
        m.update(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool))


def test_recall_denominators_target_vs_min_on_a_hand_case():
    """Targets {0, 1, 3, 4} of 5 items, ranked list 0, 1, 2, 3, 4: 2 hits in the top 2, 3 in the top 4."""
    target_conv = RankingMetrics(k=(2, 4, 5), metrics=("recall",))
    min_conv = RankingMetrics(k=(2, 4, 5), metrics=("recall",), recall_denominator="min")
    for m in (target_conv, min_conv):
        m.update(*one_user({0, 1, 3, 4}))
    a, b = target_conv.compute(), min_conv.compute()
    assert set(a) == {"recall@2", "recall@4", "recall@5"}  # the logged name says which convention
    assert set(b) == {"recall_min@2", "recall_min@4", "recall_min@5"}
    assert a["recall@2"] == pytest.approx(2 / 4)  # hits / |T|
    assert b["recall_min@2"] == pytest.approx(2 / 2)  # hits / min(k, |T|) = 2 / 2
    assert a["recall@4"] == pytest.approx(3 / 4)
    assert b["recall_min@4"] == pytest.approx(3 / 4)  # k = |T|: the conventions agree
    assert a["recall@5"] == pytest.approx(4 / 4) == b["recall_min@5"]
    with pytest.raises(ValueError, match="recall_denominator"):
        RankingMetrics(recall_denominator="k")
