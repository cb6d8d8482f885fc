"""What every task LightningModule shares: hyperparameters that rebuild it, optimizers from injected callables."""
from __future__ import annotations

import inspect
from typing import Callable, Iterable, Optional, Union

import lightning as L
import torch
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
LRSchedulerCallable = Callable[[torch.optim.Optimizer], Union[torch.optim.lr_scheduler.LRScheduler,
                                                              torch.optim.lr_scheduler.ReduceLROnPlateau]]


def _plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


class Task(L.LightningModule):
    """Base of recot's task modules.

    A subclass sets ``monitor`` / ``monitor_mode`` (the validation metric that selects the best checkpoint) and
    calls :meth:`save_task_hyperparameters` in ``__init__``.
    """

    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def save_task_hyperparameters(self) -> None:
        """Save the constructor arguments so that a checkpoint alone rebuilds the module.

        Under ``recot``'s CLI the arguments are the config (injected modules and optimizers as
        ``class_path``/``init_args``), which is what Lightning stores. Built in Python, arguments that are not plain
        data (modules, classes, callables) are left out: they would pickle code or weights into the checkpoint and break
        ``torch.load(weights_only=True)``; such a module is rebuilt by passing them again.
        """
        frame = inspect.currentframe().f_back
        if _given_hyperparameters.get() is not None:
            self.save_hyperparameters(frame=frame)
            return
        args = inspect.getargvalues(frame).locals
        ignore = [k for k, v in args.items() if k not in ("self", "__class__") and not _plain(v)]
        self.save_hyperparameters(ignore=ignore, frame=frame)

    def build_optimizers(self, optimizer: OptimizerCallable, scheduler: Optional[LRSchedulerCallable],
                         param_groups: list[dict]):
        opt = optimizer(param_groups)
        if scheduler is None:
            return opt
        sched = scheduler(opt)
        config = {"scheduler": sched}
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.monitor
        return {"optimizer": opt, "lr_scheduler": config}


class SizedTask(Task):
    """A task whose model is built from the data module's ``num_features`` and ``num_classes`` in ``setup``; the two
    sizes go into checkpoints, so that loading one builds the layers at the right size before the weights arrive."""

    data_requirement = "a data module with num_features and num_classes"

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "num_classes"):
            raise RuntimeError(f"{type(self).__name__} needs {self.data_requirement}")
        self._build(datamodule.num_features, datamodule.num_classes)

    def _build(self, num_features: int, num_classes: int) -> None:
        self.model.build(num_features, num_classes)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        num_features, num_classes = self.model.sizes
        checkpoint["recot_sizes"] = {"num_features": num_features, "num_classes": num_classes}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        sizes = checkpoint.get("recot_sizes")
        if sizes is not None:
            self._build(sizes["num_features"], sizes["num_classes"])


class UserItemTask(Task):
    """A task whose ``self.model`` is built for ``num_users x num_items`` (``build``): the sizes travel in the
    checkpoint, so ``load_from_checkpoint`` (``recot test --ckpt_path``) creates the tables at the right size before
    the weights are loaded."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["recot_sizes"] = {"num_users": self.model.num_users, "num_items": self.model.num_items}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        sizes = checkpoint.get("recot_sizes")
        if sizes is not None:
            self.model.build(sizes["num_users"], sizes["num_items"])
