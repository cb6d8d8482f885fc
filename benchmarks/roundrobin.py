"""Round-robin timing of training steps, shared by the Gowalla speed benchmarks (GOTNet, LT-OCF).

The models take turns batch by batch over the same pre-sampled batches, so that load from other processes on a shared
machine falls on all of them alike; the first round is an untimed warm-up.
"""
from __future__ import annotations

import time


def train_batch(task, opt, batch) -> tuple[float, float]:
    """Seconds of one training step (forward, backward, optimizer step) and its loss."""
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = task.training_step(batch, 0)
    loss.backward()
    opt.step()
    return time.perf_counter() - start, loss.item()


def round_robin(models: dict, batches: list) -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
    """``models``: name -> ``(task, optimizer)``; ``batches``: warm-up batch + timed batches.

    Returns the seconds of each timed batch, the loss of the first (warm-up) batch and the loss of the last batch, per
    model name."""
    seconds: dict[str, list[float]] = {name: [] for name in models}
    first_loss: dict[str, float] = {}
    last_loss: dict[str, float] = {}
    for step, batch in enumerate(batches):
        for name, (task, opt) in models.items():
            elapsed, loss = train_batch(task, opt, batch)
            if step > 0:
                seconds[name].append(elapsed)
            else:
                first_loss[name] = loss
            last_loss[name] = loss
    return seconds, first_loss, last_loss
