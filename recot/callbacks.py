"""Callbacks the ``recot`` CLI adds to every run: exact-resume RNG state, epoch timing, results.json, predictions."""
from __future__ import annotations

import csv
import json
import os
import random
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback


class RNGState(Callback):
    """Saves the global torch / numpy / Python RNG states in checkpoints and restores them when training resumes.

    Lightning restores weights, optimizers and loops, but not the global generators; models that draw from them
    (dropout) would otherwise continue on a different stream after a resume. States are stored as tensors and plain
    lists so that checkpoints load with ``torch.load(weights_only=True)``.
    """

    def __init__(self) -> None:
        self._to_restore: Optional[dict] = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        version, py_state, gauss = random.getstate()
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
                "python": [version, list(py_state), gauss]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # the run's seed_everything value: `recot test --ckpt_path` rebuilds the same data split from it
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is not None:
            checkpoint["recot_seed"] = int(seed)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # applied after the sanity check, which runs between checkpoint loading and the first training batch
        state, self._to_restore = self._to_restore, None
        if not state:
            return
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        version, py_state, gauss = state["python"]
        random.setstate((version, tuple(py_state), gauss))


class EpochTimer(Callback):
    """Wall-clock seconds of each training epoch (training batches only, validation excluded); logs ``time/epoch_s``.

    The list survives resumes (it is part of the checkpoint), so seconds per epoch describe the whole run.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start: Optional[float] = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def _stop(self, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None
            pl_module.log("time/epoch_s", self.seconds[-1], on_step=False, on_epoch=True, rank_zero_only=True)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training:
            self._stop(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(pl_module)

    @property
    def mean(self) -> Optional[float]:
        return float(np.mean(self.seconds)) if self.seconds else None

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": list(self.seconds)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = list(state_dict.get("seconds", []))


class ResultsWriter(Callback):
    """Writes ``results.json`` in the run folder: what ran (method, dataset, seed), how long, and its metrics.

    ``val`` holds every validation metric at the epoch with the best monitored value; ``test`` the last test run.
    """

    def __init__(self, run_dir: Path, monitor: str, mode: str, info: dict[str, Any], timer: EpochTimer):
        self.run_dir = Path(run_dir)
        self.monitor, self.mode, self.info, self.timer = monitor, mode, info, timer
        self.best: Optional[dict[str, float]] = None
        self.best_epoch: Optional[int] = None

    @property
    def path(self) -> Path:
        return self.run_dir / "results.json"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        value = metrics.get(self.monitor)
        if value is None:
            return
        best = None if self.best is None else self.best[self.monitor]
        if best is None or (value > best if self.mode == "max" else value < best):
            self.best, self.best_epoch = metrics, trainer.current_epoch

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        self._write(trainer, {"epochs": trainer.current_epoch, "global_step": trainer.global_step,
                              "best_epoch": self.best_epoch, "val": self.best or {},
                              "best_checkpoint": getattr(ckpt, "best_model_path", None) or None})

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, {"test": {k: float(v) for k, v in trainer.callback_metrics.items()
                                       if k.startswith("test/")},
                              "tested_checkpoint": trainer.ckpt_path})

    def _write(self, trainer: L.Trainer, update: dict[str, Any]) -> None:
        if not trainer.is_global_zero:
            return
        results = json.loads(self.path.read_text()) if self.path.is_file() else {}
        for key, value in self.info.items():  # a later test/predict run does not rewrite what the fit recorded
            if trainer.state.fn == "fit" or key not in results:
                results[key] = value
        if self.timer.seconds:
            results["seconds_per_epoch"] = self.timer.mean
        results.update(update)
        results["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)  # never leave a half-written results file

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = state_dict.get("best"), state_dict.get("best_epoch")


class RecommendationWriter(BasePredictionWriter):
    """Writes ``recot predict`` output as CSV rows ``user,rank,item,score`` (original ids where the data has them).

    Under DDP every rank writes its own ``<stem>.rank<r>.csv`` (ranks hold disjoint users).
    """

    def __init__(self, path: Path):
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self._file = None
        self._writer = None

    def _target(self, trainer: L.Trainer) -> Path:
        if trainer.world_size == 1:
            return self.path
        return self.path.with_name(f"{self.path.stem}.rank{trainer.global_rank}{self.path.suffix}")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        target = self._target(trainer)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._file = target.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["user", "rank", "item", "score"])

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        data = getattr(trainer.datamodule, "data", None)
        user_ids = getattr(data, "user_ids", None)
        item_ids = getattr(data, "item_ids", None)
        users = prediction["users"].cpu().numpy()
        items = prediction["items"].cpu().numpy()
        scores = prediction["scores"].cpu().numpy()
        for row, user in enumerate(users):
            u = user_ids[user] if user_ids is not None else user
            for rank, (item, score) in enumerate(zip(items[row], scores[row]), start=1):
                if not np.isfinite(score):
                    break  # fewer candidate items than k: the rest were excluded
                self._writer.writerow([u, rank, item_ids[item] if item_ids is not None else item, f"{score:.6g}"])

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
