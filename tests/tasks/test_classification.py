"""ClassificationTask through the CLI on synthetic bags (no data needed): it learns, a checkpoint alone reproduces
the test accuracy, a killed run resumes exactly, the pooling is swapped by class path."""
import shutil

import pytest
import torch

from recot.nn.aggr import ROTPoolingS
from recot.nn.classifiers import BagClassifier
from tests.conftest import CONFIGS, results, run_cli

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
BAGS = ["--config", CONFIGS / "mil" / "musk1.yaml", *QUIET, "--data.init_args.dataset", "synthetic",
        "--data.init_args.synthetic.num_bags", "160", "--data.init_args.synthetic.dim", "8",
        "--data.init_args.synthetic.shift", "6",
        "--data.init_args.num_folds", "5", "--data.init_args.batch_size", "32",
        "--model.init_args.optimizer.init_args.lr", "0.005"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run_cli("fit", *BAGS, "--run_root", root, "--name", "rot", "--trainer.max_epochs", "8")
    return root / "rot", results(root / "rot")


def test_rot_pooling_learns_key_instance_bags(fitted):
    run, out = fitted
    assert out["test"]["test/acc"] >= 0.9 and out["val"]["val/acc"] >= 0.9
    assert out["dataset"] == "synthetic" and out["method"] == "BagClassifier"
    assert (run / "last.ckpt").is_file() and out["best_checkpoint"]


def test_checkpoint_alone_reproduces_the_test_accuracy(fitted, tmp_path):
    run, out = fitted
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out["best_checkpoint"], alone / "model.ckpt")
    run_cli("test", "--ckpt_path", alone / "model.ckpt", *QUIET)
    assert results(alone)["test"]["test/acc"] == out["test"]["test/acc"]


def test_resume_continues_exactly(tmp_path):
    common = [*BAGS, "--run_root", tmp_path, "--test_after_fit", "false"]
    run_cli("fit", *common, "--name", "straight", "--trainer.max_epochs", "4")
    run_cli("fit", *common, "--name", "resumed", "--trainer.max_epochs", "2")
    run_cli("fit", *common, "--name", "resumed", "--trainer.max_epochs", "4", "--ckpt_path", "last")
    a = torch.load(tmp_path / "straight" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)["state_dict"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_pooling_is_swapped_by_class_path(tmp_path):
    run_cli("fit", *BAGS, "--run_root", tmp_path, "--name", "mean", "--trainer.max_epochs", "1",
            "--model.init_args.model.init_args.pooling", "torch_geometric.nn.aggr.MeanAggregation")
    ckpt = torch.load(next((tmp_path / "mean").glob("best-*.ckpt")), weights_only=True)
    assert not any("raw." in k for k in ckpt["state_dict"])  # no ROT weights: the mean pooling ran
    assert "test/acc" in results(tmp_path / "mean")["test"]


def test_a_model_built_for_other_sizes_is_refused():
    model = BagClassifier(ROTPoolingS())
    model.build(8, 2)
    with pytest.raises(RuntimeError, match=r"was built for \(8, 2\)"):
        model.build(9, 2)


def test_predict_writes_one_row_per_test_set_matching_the_test_accuracy(fitted):
    import csv
    run, out = fitted
    run_cli("predict", "--ckpt_path", out["best_checkpoint"], *QUIET)
    with open(run / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 32  # the test fold: 160 bags / 5 folds
    acc = sum(r["label"] == r["pred"] for r in rows) / len(rows)
    assert acc == pytest.approx(out["test"]["test/acc"])
    assert all(abs(float(r["prob_0"]) + float(r["prob_1"]) - 1) < 1e-5 for r in rows)
