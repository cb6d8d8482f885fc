"""SLURM auto-requeue without SLURM: the SLURM variables, a fake ``scontrol`` and SIGUSR1, and exact mid-epoch resume."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import QUICK, REPO, results, run_cli, run_cli_subprocess

# 7,806 training triples in batches of 256: 31 batches per epoch
SMALL = [*QUICK, "--data.init_args.batch_size", "256", "--trainer.max_epochs", "3"]
JOB_ID = "4242"


def _slurm_env(tmp_path: Path) -> dict[str, str]:
    """What `srun` sets for a one-task batch job, and a fake `scontrol` first on PATH that records its arguments
    and then ends the job, as SLURM does to a requeued job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    # like SLURM, whose requeue ends the running job: the caller (the recot process) is killed
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\nkill -9 $PPID\n')
    scontrol.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": "recot",
            "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "OMP_NUM_THREADS": "1"}


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"recot exited ({proc.returncode}) before {what}:\n{out[-4000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _val_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "csv" / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k.startswith("val/") or k == "epoch"} for r in csv.DictReader(fh)
                if r.get("val/recall@20")]


def test_requeued_job_resumes_and_ends_like_an_uninterrupted_run(tmp_path):
    env = _slurm_env(tmp_path)
    args = ["fit", *SMALL, "--run_root", tmp_path / "runs"]
    # the uninterrupted reference, submitted as scripts/slurm/fit.sbatch runs it (a fake srun starts the one task)
    sbatch = subprocess.run(["bash", "scripts/slurm/fit.sbatch", *map(str, args[2:]), "--name", "straight"],
                            cwd=REPO, env=_fake_srun(tmp_path, 'exec "$@"'), capture_output=True, text=True,
                            timeout=600)
    assert sbatch.returncode == 0, sbatch.stdout[-3000:] + sbatch.stderr[-3000:]
    assert f"[sbatch] job {JOB_ID}" in sbatch.stdout and "[recot] test recall@20=" in sbatch.stdout

    # the job: SLURM sends SIGUSR1 near the time limit (here once the first epoch is checkpointed)
    run_dir = tmp_path / "runs" / "job"
    log = tmp_path / "scontrol.log"
    proc = subprocess.Popen([sys.executable, "-m", "recot.cli", *map(str, args), "--name", "job"], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: (run_dir / "last.ckpt").is_file(), proc, "the first checkpoint")
        proc.send_signal(signal.SIGUSR1)
        out = proc.communicate(timeout=240)[0]  # ended by the requeue
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, out[-3000:]  # ended by the requeue, not by finishing
    assert log.read_text().split() == ["requeue", JOB_ID]
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file()
    saved = torch.load(hpc, map_location="cpu", weights_only=True)
    assert saved["global_step"] > 0
    assert "[recot] requeue signal: saving at" in out

    # the requeued job runs the same command and continues from the hpc checkpoint on its own
    resumed = run_cli_subprocess(*args, "--name", "job", env=env)
    line = next(ln for ln in resumed.stdout.splitlines() if ln.startswith("[recot] resumed from"))
    assert "hpc_ckpt_1.ckpt" in line and f"global step {saved['global_step']}" in line
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))  # superseded once the run finished

    straight, job = results(tmp_path / "runs" / "straight"), results(run_dir)
    assert job["val"] == straight["val"] and job["test"] == straight["test"]
    assert job["global_step"] == straight["global_step"]
    a = torch.load(tmp_path / "runs" / "straight" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    for name, weight in a["state_dict"].items():
        assert torch.equal(weight, b["state_dict"][name]), name
    # the CSV log holds the whole run, the part before the requeue included
    assert _val_rows(run_dir) == _val_rows(tmp_path / "runs" / "straight")


def test_a_mid_epoch_checkpoint_resumes_exactly(tmp_path):
    """Step checkpoints (here every 40 steps: batch 9 of epoch 1) resume to the same run: the sampler redraws the
    epoch and skips the batches already trained, and the global RNG, optimizer and loops are restored."""
    common = [*SMALL, "--trainer.max_epochs", "2", "--run_root", tmp_path, "--test_after_fit", "false",
              "--model.init_args.model", "recot.nn.MF"]  # the sampler is what resumes mid-epoch: any model will do
    run_cli("fit", *common, "--name", "full", "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", tmp_path / "steps", "--trainer.callbacks.every_n_train_steps", "40",
            "--trainer.callbacks.save_top_k", "-1")
    mid = tmp_path / "steps" / "epoch=1-step=40.ckpt"
    assert torch.load(mid, map_location="cpu", weights_only=True)["loops"]["fit_loop"]["epoch_loop.batch_progress"][
        "current"]["processed"] == 9
    run_cli("fit", *common, "--name", "resumed", "--ckpt_path", mid)
    a = torch.load(tmp_path / "full" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for name, weight in a["state_dict"].items():
        assert torch.equal(weight, b["state_dict"][name]), name
    assert results(tmp_path / "full")["val"] == results(tmp_path / "resumed")["val"]


def test_an_hpc_checkpoint_outside_slurm_is_not_resumed_silently(tmp_path, monkeypatch):
    for var in [v for v in os.environ if v.startswith("SLURM_")]:
        monkeypatch.delenv(var)
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "last.ckpt").touch()
    (run_dir / "hpc_ckpt_1.ckpt").touch()
    with pytest.raises(SystemExit, match=r"(?s)already holds a run.*--ckpt_path hpc"):
        run_cli("fit", *QUICK, "--run_root", tmp_path, "--name", "r")


def _fake_srun(tmp_path: Path, body: str) -> dict[str, str]:
    env = _slurm_env(tmp_path)
    srun = tmp_path / "bin" / "srun"  # after _slurm_env made bin/ (and the fake scontrol in it)
    srun.write_text(f"#!/bin/sh\n{body}\n")
    srun.chmod(0o755)
    return {**os.environ, **env, "ACCELERATOR": "cpu", "RECOT_VENV": str(Path(sys.executable).parents[1])}


def test_array_sbatch_maps_the_task_id_to_a_config_and_seed(tmp_path):
    env = _fake_srun(tmp_path, f'echo "$@" > {tmp_path / "srun.args"}')
    proc = subprocess.run(["bash", "scripts/slurm/array.sbatch"], cwd=REPO, capture_output=True, text=True,
                          env={**env, "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "4"})
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "srun.args").read_text().split()
    assert args[:8] == ["recot", "fit", "--config", "configs/lightgcn/ml-100k.yaml", "--seed_everything", "2",
                        "--name", "lightgcn-ml-100k-s2"]
    proc = subprocess.run(["bash", "scripts/slurm/array.sbatch"], cwd=REPO, capture_output=True, text=True,
                          env={**env, "SLURM_ARRAY_TASK_ID": "9"})
    assert proc.returncode == 1 and "out of range" in proc.stderr
