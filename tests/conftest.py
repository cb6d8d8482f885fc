"""Shared fixtures: the real data folder beside the repo (tests skip without it) and CLI runners."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECOT_SHARED_DATA", REPO.parent / "shared" / "data"))
CONFIGS = REPO / "configs"

# One torch thread per test process: the suite runs as `pytest -n 2` on 2 cores, and two threads per worker there
# oversubscribe the CPU (measured: tests/ot took 155 s instead of 26 s).
torch.set_num_threads(1)
# Tests never reach the internet: a data set that is absent must fail with the missing-file error, not download.
# The download tests serve files from 127.0.0.1 and lift this themselves.
os.environ.setdefault("RECOT_OFFLINE", "1")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set RECOT_SHARED_DATA)")
    return SHARED_DATA


def needs_data(*parts: str) -> Path:
    """Path of a real data file/folder, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


def run_cli(*args: str) -> None:
    """Run ``recot ARGS`` in this process (the same entry point as the console script)."""
    from recot.cli import main
    main([str(a) for a in args])


def run_cli_subprocess(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``recot ARGS`` as a separate process, as a user's shell would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "recot.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(f"recot {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


# Shrunk quickstart: small synthetic data, few epochs, quiet trainer.
QUICK = ["--config", CONFIGS / "quickstart.yaml", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--data.init_args.synthetic.num_users", "300",
         "--data.init_args.synthetic.num_items", "200"]
