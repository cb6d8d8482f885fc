"""Running under SLURM: Lightning's auto-requeue, with checkpoints that resume exactly.

Lightning does the cluster side itself: with the SLURM variables present (``SLURM_NTASKS`` set and a job name other
than ``bash``/``interactive``) the trainer runs in :class:`~lightning.fabric.plugins.environments.SLURMEnvironment`;
with ``auto_requeue=True`` its handler of the requeue signal (``#SBATCH --signal=SIGUSR1@90``) saves
``hpc_ckpt_<n>.ckpt`` in the run folder (``default_root_dir``) and calls ``scontrol requeue <job id>``; the requeued
job, started with the same command, restores the newest hpc checkpoint on its own (``ckpt_path=None`` under SLURM).

What recot adds is *when* the state is saved. Python runs a signal handler between any two bytecodes, so Lightning's
handler can save while an optimizer step is half applied, or while a validation's metric sums are half accumulated;
such a checkpoint resumes to a different run. :class:`BatchBoundaryRequeue` takes the signal instead and runs
Lightning's own handler at the next point where the state is whole:

- after a training batch, except an epoch's last (Lightning's restart logic replays an epoch saved there);
- at the end of a training epoch, after validation and after the checkpoint callbacks (this class is a ``Checkpoint``,
  which Lightning orders after the others);
- at the end of training.

Under DDP the ranks agree on the batch (one boolean all-reduce per batch), so that they save together.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint

HPC_PATTERN = "hpc_ckpt_*.ckpt"


def on_slurm() -> bool:
    """Whether Lightning will run this process as a SLURM task (its own detection: batch jobs, not ``bash`` shells)."""
    return SLURMEnvironment.detect()


def hpc_checkpoints(run_dir: Path) -> list[Path]:
    """Lightning's requeue checkpoints in a run folder, oldest first (``hpc_ckpt_1.ckpt``, ``hpc_ckpt_2.ckpt``, ...)."""
    found = []
    for path in Path(run_dir).glob(HPC_PATTERN):
        suffix = path.stem.removeprefix("hpc_ckpt_")
        if suffix.isdigit():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def slurm_plugin() -> SLURMEnvironment:
    """Lightning's SLURM environment with auto-requeue on SIGUSR1 (what ``#SBATCH --signal=SIGUSR1@90`` sends)."""
    return SLURMEnvironment(auto_requeue=True)


class BatchBoundaryRequeue(Checkpoint):
    """Defers Lightning's SLURM requeue (save ``hpc_ckpt_<n>.ckpt``, ``scontrol requeue``) to a batch boundary.

    Active only in ``fit`` under a :class:`SLURMEnvironment` with ``auto_requeue``; elsewhere it only reports resumes.
    It installs its handler before Lightning registers its own (Lightning leaves a signal alone when it already has a
    handler) and restores the previous handler at teardown. Outside ``fit`` (the test after fit) nothing changes while
    the model, and Lightning's immediate handler applies.
    """

    def __init__(self) -> None:
        self._signum: Optional[int] = None
        self._pending = False
        self._previous: Any = None
        self._installed = False

    # --- signal ------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        env = getattr(trainer._accelerator_connector, "cluster_environment", None)
        if stage != "fit" or not isinstance(env, SLURMEnvironment) or not env.auto_requeue:
            return
        if env.requeue_signal is None or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(env.requeue_signal)
        if previous not in (None, signal.SIG_DFL):
            return  # the user's own handler: Lightning leaves it alone, and so does recot
        self._signum, self._previous, self._pending = env.requeue_signal, previous, False
        signal.signal(self._signum, self._on_signal)
        self._installed = True

    def _on_signal(self, signum: int, frame: Any) -> None:
        # only a flag: no I/O here (the signal may have interrupted anything, including logging or a file write)
        self._pending = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._installed:
            signal.signal(self._signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    # --- the points where the state is whole ----------------------------------------------------------------
    def _due(self, trainer: L.Trainer) -> bool:
        if not self._installed:
            return False
        pending = self._pending
        if trainer.world_size > 1:  # every rank reaches the same hooks in the same order: agree on one of them
            pending = bool(trainer.strategy.reduce_boolean_decision(pending, all=False))
        return pending

    def _requeue(self, trainer: L.Trainer, where: str) -> None:
        self._pending = False
        if trainer.is_global_zero:
            print(f"[recot] requeue signal: saving at {where} (epoch {trainer.current_epoch}, global step "
                  f"{trainer.global_step}) and requeueing the job", flush=True)
        # Lightning's own handler: logger flush, hpc_ckpt_<n>.ckpt in default_root_dir, `scontrol requeue <job id>`
        trainer._signal_connector._slurm_sigusr_handler_fn(self._signum, None)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch's last batch: wait for the end of the epoch (validation, checkpoints)
        if self._due(trainer):
            self._requeue(trainer, f"the end of training batch {batch_idx}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._due(trainer):
            self._requeue(trainer, "the end of the epoch")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._due(trainer):
            self._requeue(trainer, "the end of training")

    # --- report where a run resumed ----------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path and trainer.is_global_zero:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            print(f"[recot] resumed from {trainer.ckpt_path}: epoch {trainer.current_epoch} with {done} of its "
                  f"batches done, global step {trainer.global_step}", flush=True)
