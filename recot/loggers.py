"""Loggers of recot's run folders."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment


def resume_log_step(ckpt_path: Union[str, Path]) -> int:
    """The logging step a run resumed from ``ckpt_path`` continues at (Lightning's ``_batches_that_stepped``).

    A checkpoint saved at the end of a training batch (a step or requeue checkpoint) does not count that batch yet;
    Lightning adds it when it restarts, and so does this.
    """
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    loop = ckpt.get("loops", {}).get("fit_loop", {})
    step = int(loop.get("epoch_loop.state_dict", {}).get("_batches_that_stepped", ckpt.get("global_step", 0)))
    total = loop.get("epoch_loop.batch_progress", {}).get("total", {})
    saved_on_last = len({total.get(k) for k in ("ready", "started", "processed", "completed")}) == 1
    return step if saved_on_last else step + 1


class ResumableCSVLogger(CSVLogger):
    """A ``CSVLogger`` whose ``metrics.csv`` survives a resume.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts, so a resumed run (``--ckpt_path last``,
    a requeued SLURM job) would lose the history before the checkpoint. With ``resume_step`` set, the rows logged
    before that step are kept, and those logged after it (by the interrupted process, after its checkpoint) are
    dropped: the resumed run logs them again.
    """

    def __init__(self, *args: Any, resume_step: Optional[int] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        kept = self._rows_before_resume()  # read before the writer removes the file
        with warnings.catch_warnings():
            if kept:  # "previous log files will be deleted": they are written back just below
                warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
            writer = super().experiment
        if kept:
            writer.metrics = kept + writer.metrics
            writer.save()
        return writer

    def _rows_before_resume(self) -> list[dict[str, Any]]:
        path = Path(self.log_dir) / "metrics.csv"
        if self.resume_step is None or not path.is_file():
            return []
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        kept = []
        for row in rows:
            try:
                step = int(float(row.get("step") or "nan"))
            except ValueError:
                continue
            if step < self.resume_step:
                kept.append({k: v for k, v in row.items() if v not in (None, "")})
        return kept
