"""GraphDistanceTask + GTN + GEDDataModule through the CLI: synthetic pairs and AIDS30, shrunk."""
import csv
import shutil

import pytest
import torch

from datamodules.ged import GEDDataModule, SyntheticGED
from tests.conftest import CONFIGS, needs_data, results, run_cli

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SMALL_SYNTHETIC = ["--data.init_args.synthetic.base_graphs", "2", "--data.init_args.synthetic.copies", "2",
                   "--data.init_args.synthetic.max_nodes", "5", "--data.init_args.batch_size", "8",
                   "--model.init_args.model.init_args.max_iter", "50"]


def val_rmse_by_epoch(run):
    with open(run / "logs" / "csv" / "metrics.csv") as fh:
        return [float(r["val/rmse"]) for r in csv.DictReader(fh) if r.get("val/rmse")]


def test_gtn_learns_synthetic_ged_through_the_cli(tmp_path):
    run_cli("fit", "--config", CONFIGS / "gtn" / "synthetic.yaml", *QUIET, *SMALL_SYNTHETIC, "--run_root", tmp_path,
            "--name", "syn", "--trainer.max_epochs", "10")
    out = results(tmp_path / "syn")
    curve = val_rmse_by_epoch(tmp_path / "syn")
    assert out["task"] == "GraphDistanceTask" and out["method"] == "GTN"
    # the distance is learnt, not just its scale (GTN calibrates the scale on the first batch): well below the RMSE
    # of predicting the mean training distance
    dm = GEDDataModule("synthetic", synthetic=SyntheticGED(base_graphs=2, copies=2, min_nodes=3, max_nodes=5))
    dm.setup("fit")
    mean = dm.splits["train"].targets.double().mean()
    const = {s: float(((dm.splits[s].targets.double() - mean) ** 2).mean().sqrt()) for s in ("val", "test")}
    assert min(curve) < 0.7 * const["val"], (curve, const)
    assert 0 < out["test"]["test/rmse"] < const["test"], const
    # the first training batch calibrated the embedding scale (GTN.calibrate_scale), saved with the weights
    best = out["best_checkpoint"]
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    assert bool(state["model.calibrated"]) and float(state["model.emb_gain"]) != 1.0
    # a checkpoint alone rebuilds the model (sizes stored in it) and reproduces the test metrics
    (tmp_path / "syn" / "results.json").unlink()
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(best, alone / "model.ckpt")
    run_cli("test", "--ckpt_path", alone / "model.ckpt", *QUIET)
    assert results(alone)["test"]["test/rmse"] == pytest.approx(out["test"]["test/rmse"], rel=1e-5)


@pytest.mark.parametrize("solver", ["lcn"])  # the full solver's AIDS30 run: tests/test_cli.py (shipped configs)
def test_gtn_trains_on_aids30_shrunk(tmp_path, solver):
    data = needs_data("ged")
    args = ["fit", "--config", CONFIGS / "gtn" / "aids30.yaml", *QUIET, "--data.init_args.data_dir", data.parent,
            "--data.init_args.max_pairs", "60", "--data.init_args.batch_size", "20", "--run_root", tmp_path,
            "--name", solver, "--trainer.max_epochs", "1", "--model.init_args.model.init_args.max_iter", "30"]
    if solver != "full":
        args += ["--model.init_args.model.init_args.solver", solver, "--model.init_args.model.init_args.cost",
                 "sq_euclidean"]
    run_cli(*args)
    out = results(tmp_path / solver)
    assert out["dataset"] == "aids30" and out["epochs"] == 1
    assert 0 < out["test"]["test/rmse"] < 200


@pytest.mark.parametrize("warmup", [0, 4])
def test_warmup_scales_the_first_adam_steps(tmp_path, warmup):
    """Adam's first step moves every parameter with a gradient by about lr; with a warm-up over 4 steps by lr / 4."""
    from recot.tasks import GraphDistanceTask
    run_cli("fit", "--config", CONFIGS / "gtn" / "synthetic.yaml", *QUIET, *SMALL_SYNTHETIC, "--run_root", tmp_path,
            "--name", "w", "--trainer.max_steps", "1", "--model.init_args.warmup_steps", str(warmup),
            "--model.init_args.weight_decay", "0", "--trainer.limit_val_batches", "0")
    ckpt = torch.load(tmp_path / "w" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["warmup_steps"] == warmup
    lin = ckpt["state_dict"]["model.output.weight"]  # 1 head: Linear(1, 1) starts at weight 1
    step = float((lin - 1).abs().max())
    expected = 0.01 / (warmup or 1)
    assert step == pytest.approx(expected, rel=0.05), (step, expected)
    with pytest.raises(ValueError, match="warmup_steps"):
        GraphDistanceTask(torch.nn.Linear(1, 1), warmup_steps=-1)
