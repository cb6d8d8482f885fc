"""What the recommendation data modules share: seeded loading, a generator for the training order saved in checkpoints,
DDP rank / world, and training batch streams that resume mid-epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


class ResumableEpochs:
    """Base of training batch iterators whose epoch is drawn from ``generator`` (Lightning's stateful-loader interface).

    The state is the generator state the current epoch was drawn from and the number of its batches already trained,
    so a resumed ``iter()`` redraws the same epoch and skips those batches. The number trained comes from ``position``
    (a callable returning ``(batches trained in this epoch, batches per epoch)``, from the trainer), not from the
    batches yielded: Lightning fetches one batch ahead of the one being trained. A subclass's ``__iter__`` calls
    :meth:`start_epoch` before drawing its epoch.
    """

    def __init__(self, generator: torch.Generator, position: Optional[Callable[[], tuple[int, int]]] = None):
        self.generator, self.position = generator, position
        self._epoch_start: Optional[torch.Tensor] = None  # generator state before the current epoch's draw
        self._resume: Optional[dict] = None

    def start_epoch(self) -> int:
        """Apply a loaded state, remember the generator state this epoch is drawn from; returns batches to skip."""
        skip = 0
        if self._resume is not None:
            state, self._resume = self._resume, None
            self.generator.set_state(state["generator"])
            skip = int(state["batches_done"])
        self._epoch_start = self.generator.get_state()
        return skip

    def state_dict(self) -> dict:
        """Where the next ``iter()`` continues: mid-epoch, the epoch's draw and the batches already trained."""
        done, per_epoch = self.position() if self.position is not None else (0, 0)
        if self._epoch_start is None or done >= per_epoch > 0:
            # no epoch under way (or it is finished): the next iter() draws a fresh epoch from the current state
            return {"generator": self.generator.get_state(), "batches_done": 0}
        return {"generator": self._epoch_start, "batches_done": done}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = dict(state_dict)


class SeededDataModule(L.LightningDataModule):
    """A data module whose data are loaded (and split) from a seed, and whose training order comes from a generator
    saved in checkpoints (``sampler_generator``), so a resumed run continues the same stream.

    Subclasses set ``self.args`` (with ``dataset``, ``data_dir``, ``format``, ``download``) and ``self.seed`` in
    ``__init__`` and implement :meth:`load` and :meth:`describe`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.args: dict[str, Any] = {}
        self.seed: Optional[int] = None
        self.data: Any = None
        self.generator: Optional[torch.Generator] = None
        self._pending_state: Optional[dict] = None

    def load(self, seed: int) -> Any:
        """The loaded, split data for ``seed``."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line about the loaded data, printed once by rank zero."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return self.data.name if self.data is not None else Path(self.args["dataset"]).name

    def prepare_data(self) -> None:
        """Download a missing public data set: once per node (Lightning calls this on local rank 0 only)."""
        from datamodules.interactions import fetch_if_missing

        dataset = self.args["dataset"]
        if self.args["format"] != "synthetic" and dataset != "synthetic" and not Path(dataset).expanduser().exists():
            fetch_if_missing(dataset, self.args["data_dir"], self.args["download"])

    def setup(self, stage: Optional[str] = None) -> None:
        if self.data is not None:
            return
        seed = self.seed if self.seed is not None else torch.initial_seed() % 2**32
        self.data = self.load(seed)
        self.generator = torch.Generator().manual_seed(seed + 1)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)
        rank_zero_info(self.describe())

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _train_position(self) -> tuple[int, int]:
        """(batches trained so far in the current epoch, batches per epoch), from the trainer's fit loop."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return progress.processed, trainer.num_training_batches

    def state_dict(self) -> dict:
        # the training order's generator: a resumed run continues the same sample stream
        return {"sampler_generator": self.generator.get_state()} if self.generator is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.generator is None:
            self._pending_state = state_dict
        elif "sampler_generator" in state_dict:
            self.generator.set_state(state_dict["sampler_generator"])


class ShuffleState:
    """Mixin for data modules that shuffle their training items with ``self.generator`` and hold their loaded data in
    ``self.splits``: the generator state is part of the checkpoint, so a resumed run continues the same batch order. A
    state loaded before ``setup`` (``self.splits`` still None) waits in ``self._pending_state`` until ``setup`` applies
    it."""

    def state_dict(self) -> dict:
        return {"shuffle_generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.splits is None:
            self._pending_state = state_dict
        elif "shuffle_generator" in state_dict:
            self.generator.set_state(state_dict["shuffle_generator"])
