"""The ``recot`` command: Lightning's CLI with run folders, resume, results files and checkpoint-only evaluation.

    recot fit --config configs/lightgcn/gowalla.yaml            # run folder checkpoints/lightgcn-gowalla/
    recot fit --config configs/lightgcn/gowalla.yaml --ckpt_path last   # resume the killed run
    recot test --ckpt_path checkpoints/lightgcn-gowalla/last.ckpt      # config rebuilt from the run
    recot predict --ckpt_path checkpoints/lightgcn-gowalla/last.ckpt --top_k 50  # -> predictions.csv
    recot report checkpoints/*/ --paper         # results table (recot/report.py)
    recot plot checkpoints/lightgcn-gowalla     # learning curves (recot/plot.py)

Under SLURM (batch jobs) the trainer runs in Lightning's SLURM environment with auto-requeue (recot/slurm.py): on
the requeue signal the run saves ``hpc_ckpt_<n>.ckpt`` at a batch boundary and requeues the job, and the same command
in the requeued job continues from it.

A run folder ``<run_root>/<name>/`` holds ``config.yaml``, ``last.ckpt``, the best checkpoint by the task's
validation metric, ``logs/`` (TensorBoard and CSV) and ``results.json``. The name defaults to the config's path below
``configs/`` (``configs/lightgcn/gowalla.yaml`` -> ``lightgcn-gowalla``).
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import warnings
import tempfile
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch.loggers import TensorBoardLogger

from recot.callbacks import EpochTimer, RecommendationWriter, ResultsWriter, RNGState
from recot.loggers import ResumableCSVLogger, resume_log_step
from recot.slurm import BatchBoundaryRequeue, hpc_checkpoints, on_slurm, slurm_plugin
from recot.tasks.base import Task

EVAL_SUBCOMMANDS = ("validate", "test", "predict")

# Lightning notices that do not apply to recot: it owns its run folders (refusing a second fit in one, see
# before_instantiate_classes); its loaders are in-process by design; its logged metrics are already reduced over
# processes (torchmetrics sums); its prediction writer does not need batch indices; main(args) is the in-process entry point by design;
# and one internal deprecation.
for _pattern in (r"Checkpoint directory .* exists and is not empty", r".*isinstance\(treespec, LeafSpec\).*",
                 r".*does not have many workers.*", r".*when logging on epoch level in distributed setting.*",
                 r"Couldn't infer the batch indices fetched from your dataloader.*",
                 r"LightningCLI's args parameter is intended to run from within Python.*"):
    warnings.filterwarnings("ignore", message=_pattern)


class RunConfig(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the run folder (rank zero, every fit, overwriting)."""

    def __init__(self, parser, config, **kwargs):
        super().__init__(parser, config, overwrite=True, save_to_log_dir=False)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, run_dir / "config.yaml", skip_none=False, overwrite=True)


class _ProgressBar(RichProgressBar):
    """Rich progress bar without the logger's version number (meaningless for named run folders)."""

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


DESCRIPTION = ("recot: optimal transport for recommendation and graph learning. Also: `recot report RUN_DIR...` "
               "(results table) and `recot plot RUN_DIR...` (learning curves).")


class RecotCLI(LightningCLI):
    def __init__(self, args: Optional[list[str]] = None, run: bool = True):
        super().__init__(model_class=Task, datamodule_class=L.LightningDataModule, subclass_mode_model=True,
                         subclass_mode_data=True, save_config_callback=RunConfig, seed_everything_default=2020,
                         auto_configure_optimizers=False, args=args, run=run,
                         parser_kwargs={"description": DESCRIPTION})

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--name", type=Optional[str], default=None,
                            help="experiment name: the run folder is <run_root>/<name> (default: from the config path)")
        parser.add_argument("--run_root", type=str, default="checkpoints", help="folder holding the run folders")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="after fit, test the best checkpoint and print the test metrics")
        parser.add_argument("--top_k", type=int, default=20, help="predict: recommendations written per user")

    # --- run folder -------------------------------------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        name = cfg.get("name") or _name_from_configs(cfg.get("config") or [])
        self.run_dir = Path(cfg.run_root) / name
        cfg.name = name
        cfg.trainer.default_root_dir = str(self.run_dir)
        self.resume_from = None
        if self.subcommand != "fit":
            return
        hpc = hpc_checkpoints(self.run_dir)
        if cfg.get("ckpt_path") is None and hpc and on_slurm():
            # a requeued SLURM job, started with the same command: Lightning restores the newest hpc checkpoint
            self.resume_from = hpc[-1]
            print(f"[recot] SLURM job {os.environ.get('SLURM_JOB_ID', '?')}: continuing the run in {self.run_dir} "
                  f"from {hpc[-1].name}", flush=True)
        elif cfg.get("ckpt_path") is None and (self.run_dir / "last.ckpt").exists():
            raise SystemExit(
                f"recot: the run folder {self.run_dir} already holds a run (last.ckpt).\n"
                f"  resume it:        add --ckpt_path last"
                + (f"  (or --ckpt_path hpc: the requeue checkpoint {hpc[-1].name})" if hpc else "") + "\n"
                f"  start a new one:  add --name <another name>, or remove {self.run_dir}")
        elif cfg.get("ckpt_path") is not None:
            self.resume_from = self._resolve_ckpt(str(cfg.ckpt_path), hpc)

    def _resolve_ckpt(self, ckpt: str, hpc: list[Path]) -> Optional[Path]:
        """The file behind ``--ckpt_path`` (``last``, ``hpc`` or a path), for the CSV log to continue from."""
        if ckpt == "last":
            path = self.run_dir / "last.ckpt"
        elif ckpt == "hpc":
            path = hpc[-1] if hpc else None
        else:
            path = Path(ckpt)
        return path if path is not None and path.is_file() else None

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        task = self.model
        timer = EpochTimer()
        callbacks = [
            # the best by the task's validation metric, and the latest state for resuming (two callbacks: since
            # Lightning 2.5 save_last=True only refreshes last.ckpt in epochs that also saved a best checkpoint)
            ModelCheckpoint(dirpath=self.run_dir, filename="best-epoch{epoch:03d}", monitor=task.monitor,
                            mode=task.monitor_mode, save_top_k=1, auto_insert_metric_name=False),
            ModelCheckpoint(dirpath=self.run_dir, filename="last", monitor=None, save_top_k=1,
                            enable_version_counter=False),
            timer, RNGState(),
            ResultsWriter(self.run_dir, task.monitor, task.monitor_mode, self._run_info(), timer),
            BatchBoundaryRequeue(),  # SLURM: saves for requeue at a batch boundary (after the checkpoints above)
        ]
        plugins = trainer_config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if on_slurm() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
            trainer_config["plugins"] = [*plugins, slurm_plugin()]
        if self.subcommand == "predict":
            task.predict_k = self.config["predict"].top_k
            # a task may write its own kind of predictions (classification: one row per set)
            writer = getattr(task, "prediction_writer", RecommendationWriter)
            callbacks.append(writer(self.run_dir / "predictions.csv"))
        user_callbacks = trainer_config.get("callbacks") or []
        if not any(isinstance(c, ProgressBar) for c in user_callbacks) and trainer_config.get("enable_progress_bar",
                                                                                              True) is not False:
            callbacks.append(_ProgressBar())
        if trainer_config.get("logger") in (None, True):
            # test / validate / predict on a finished run log beside the fit's logs, never over them: Lightning's
            # CSV writer starts a version folder afresh, which would delete the fit's history
            suffix = "" if self.subcommand == "fit" else f"-{self.subcommand}"
            trainer_config["logger"] = [
                TensorBoardLogger(self.run_dir, name="logs", version=f"tensorboard{suffix}", default_hp_metric=False),
                ResumableCSVLogger(self.run_dir, name="logs", version=f"csv{suffix}",
                                   resume_step=resume_log_step(self.resume_from) if self.resume_from else None),
            ]
        if self.subcommand != "fit":
            self.save_config_callback = None  # config.yaml describes the fit
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        return self._instantiate_trainer(trainer_config, extra + callbacks)

    def _run_info(self) -> dict[str, Any]:
        cfg = self.config[self.subcommand]
        method = getattr(self.model, "model", None)
        backbone = getattr(method, "backbone", None)
        return {"name": cfg.name, "task": type(self.model).__name__,
                "method": type(method).__name__ if method is not None else type(self.model).__name__,
                "backbone": type(backbone).__name__ if backbone is not None else None,
                "dataset": getattr(self.datamodule, "name", None), "seed": cfg.get("seed_everything"),
                "config": [str(c) for c in (cfg.get("config") or [])]}

    # --- after fit: test the selected model ---------------------------------------------------------------
    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            for stale in hpc_checkpoints(self.run_dir):  # superseded by last.ckpt: never resume a finished run
                stale.unlink(missing_ok=True)
        if not self.config["fit"].get("test_after_fit", True):
            return
        ckpt = self.trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
        if self.trainer.is_global_zero and results:
            headline = {k: v for k, v in results[0].items() if k in ("test/recall@20", "test/ndcg@20")} or results[0]
            line = "  ".join(f"{k.removeprefix('test/')}={v:.4f}" for k, v in headline.items())
            print(f"[recot] test {line}  (run {self.run_dir}, checkpoint {best or 'final weights'})", flush=True)


def _name_from_configs(configs: list) -> str:
    """``configs/lightgcn/gowalla.yaml`` -> ``lightgcn-gowalla``; other paths -> file stem; no config -> ``default``."""
    if not configs:
        return "default"
    path = Path(str(configs[-1]))
    parts = path.with_suffix("").parts
    if "configs" in parts:
        parts = parts[len(parts) - parts[::-1].index("configs"):]
        return "-".join(parts)
    return path.stem


def _value_of(argv: list[str], flag: str) -> Optional[str]:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def config_from_checkpoint(argv: list[str]) -> list[str]:
    """Make ``recot test|validate|predict --ckpt_path PATH`` work without ``--config``.

    The config comes from ``config.yaml`` beside the checkpoint (the run's own), else from the hyperparameters stored
    in the checkpoint. The run folder defaults to the checkpoint's folder, so results land beside it.
    """
    if not argv or argv[0] not in EVAL_SUBCOMMANDS or any(a in ("-c", "--config") or a.startswith("--config=")
                                                          for a in argv):
        return argv
    ckpt = _value_of(argv, "--ckpt_path")
    if ckpt is None or ckpt in ("last", "best"):
        return argv
    ckpt_path = Path(ckpt)
    if not ckpt_path.is_file():
        raise SystemExit(f"recot: checkpoint not found: {ckpt_path}")
    config = ckpt_path.parent / "config.yaml"
    if not config.is_file():
        config = _write_config_from_hparams(ckpt_path)
    extra = ["--config", str(config)]
    if _value_of(argv, "--name") is None and _value_of(argv, "--run_root") is None:
        extra += ["--run_root", str(ckpt_path.resolve().parent.parent), "--name", ckpt_path.resolve().parent.name]
    return [argv[0], *extra, *argv[1:]]


def _write_config_from_hparams(ckpt_path: Path) -> Path:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    config: dict[str, Any] = {}
    for key, hp_key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
        hparams = dict(ckpt.get(hp_key) or {})
        class_path = hparams.pop("_class_path", None)
        hparams.pop("_instantiator", None)
        if class_path is None:
            raise SystemExit(f"recot: {ckpt_path} has no {key} class path in its hyperparameters and no config.yaml "
                             f"beside it; pass --config <the run's config>")
        config[key] = {"class_path": class_path, "init_args": hparams}
    seed = ckpt.get("recot_seed")
    if seed is not None:
        config["seed_everything"] = seed
    digest = hashlib.sha1(str(ckpt_path.resolve()).encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"recot-{digest}.yaml"
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.replace(out)
    return out


# `recot report` and `recot plot` read run folders: small argparse programs of their own, dispatched before
# LightningCLI parses the command line (so that fit/validate/test/predict stay exactly Lightning's).
EXTRA_SUBCOMMANDS = {"report": "recot.report", "plot": "recot.plot"}


def main(args: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if args is None else [str(a) for a in args]
    if argv and argv[0] in EXTRA_SUBCOMMANDS:
        importlib.import_module(EXTRA_SUBCOMMANDS[argv[0]]).main(argv[1:])
        return
    if args is not None:
        RecotCLI(args=config_from_checkpoint(list(args)))
        return
    # rewrite sys.argv itself: DDP re-launches the command from sys.argv in each child process
    sys.argv[1:] = config_from_checkpoint(sys.argv[1:])
    RecotCLI()


if __name__ == "__main__":
    main()
