"""BPRBatches as a stateful loader: a state saved mid-epoch continues the same sample stream."""
from __future__ import annotations

import torch

from datamodules import SyntheticSpec, load_interactions
from datamodules.interactions import BPRBatches


def _batches(position=None, seed=3):
    data = load_interactions("synthetic", synthetic=SyntheticSpec(num_users=60, num_items=80), seed=0)
    return BPRBatches(data.train, 32, 2, torch.Generator().manual_seed(seed), position=position)


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in ("users", "pos", "neg"))


def test_state_mid_epoch_resumes_after_the_trained_batches():
    done = {"n": 0}
    loader = _batches(position=lambda: (done["n"], len(loader)))
    epoch0 = list(loader)
    epoch1 = list(loader)
    assert len(epoch0) > 4 and not _same(epoch0[0], epoch1[0])
    it = iter(loader)  # epoch 2 under way; Lightning has fetched one batch ahead of the 3 it trained
    stream = [next(it) for _ in range(4)]
    done["n"] = 3
    state = loader.state_dict()

    fresh = _batches(seed=99)  # another generator: everything comes from the state
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert len(rest) == len(epoch0) - 3
    assert _same(rest[0], stream[3])
    next_epoch = list(fresh)  # and the epochs after it continue the stream
    reference = _batches(seed=3)
    for _ in range(3):
        list(reference)
    assert all(_same(a, b) for a, b in zip(next_epoch, list(reference)))


def test_state_after_a_finished_epoch_starts_the_next_one():
    loader = _batches(position=lambda: (len(loader), len(loader)))
    list(loader)
    state = loader.state_dict()
    expected = list(loader)
    fresh = _batches(seed=99)
    fresh.load_state_dict(state)
    assert all(_same(a, b) for a, b in zip(list(fresh), expected))
