"""AutoencoderTask through the CLI: Mult-VAE / SinkhornCF / the drop-in Sinkhorn loss on synthetic user vectors."""
import math

import numpy as np
import pytest
import torch

from datamodules import SyntheticSpec, UserVectorDataModule
from recot.metrics import RankingMetrics
from tests.conftest import CONFIGS, results, run_cli

SMALL = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--trainer.logger",
         "false", "--data.init_args.dataset", "synthetic", "--data.init_args.synthetic.num_users", "160",
         "--data.init_args.synthetic.num_items", "80", "--data.init_args.synthetic.max_items_per_user", "25",
         "--data.init_args.num_val_users", "30", "--data.init_args.num_test_users", "30",
         "--data.init_args.batch_size", "32"]


def fit(tmp_path, config, name, *extra):
    run_cli("fit", "--config", CONFIGS / config, "--run_root", tmp_path, "--name", name, *SMALL, *extra)
    return results(tmp_path / name)


def popularity_ndcg100():
    """Validation NDCG@100 of ranking by training popularity, on the split the CLI runs below use (seed 2020)."""
    dm = UserVectorDataModule("synthetic", synthetic=SyntheticSpec(num_users=160, num_items=80, max_items_per_user=25),
                              num_val_users=30, num_test_users=30, seed=2020)
    dm.setup()
    pop = torch.from_numpy(np.asarray(dm.data.train.sum(0)).ravel()).float()
    metric = RankingMetrics(k=(100,), metrics=("ndcg",))
    for batch in dm.val_dataloader():
        metric.update(pop.expand(batch["users"].numel(), -1), batch["target"], batch["x"] > 0)
    return float(metric.compute()["ndcg@100"])


def test_sinkhorncf_and_multvae_learn_and_log_the_min_recall(tmp_path):
    baseline = popularity_ndcg100()
    for config, name in (("sinkhorncf/ml-100k.yaml", "scf"), ("multvae/ml-100k.yaml", "vae")):
        out = fit(tmp_path, config, name, "--trainer.max_epochs", "5", "--model.init_args.model.init_args.dropout",
                  "0.2", "--model.init_args.optimizer.init_args.lr", "0.01")
        assert set(out["test"]) == {f"test/{m}@{k}" for m in ("recall_min", "ndcg") for k in (20, 50, 100)}
        assert out["val"]["val/ndcg@100"] > baseline + 0.04, (name, baseline)  # planted preferences are learnt
    assert out["method"] == "MultVAE" and out["task"] == "AutoencoderTask"


@pytest.mark.parametrize("config", ["mf/ml-100k-sinkhorn.yaml", "neumf/ml-100k-strong.yaml",
                                    "multvae/ml-100k-sinkhorn.yaml"])
def test_drop_in_losses_run_one_epoch(tmp_path, config):
    out = fit(tmp_path, config, "run", "--trainer.max_epochs", "1")
    assert all(math.isfinite(v) for v in out["test"].values())


def test_transductive_models_need_fold_in_training(tmp_path):
    with pytest.raises(ValueError, match="fold_in_training"):
        fit(tmp_path, "mf/ml-100k-strong.yaml", "run", "--trainer.max_epochs", "1", "--data.init_args.fold_in_training",
            "false")


def test_sinkhorn_every_needs_the_accelerated_loss():
    from recot.nn import MultVAE
    from recot.tasks import AutoencoderTask
    with pytest.raises(ValueError, match="sinkhorn_every"):
        AutoencoderTask(MultVAE(), loss="sinkhorn", sinkhorn_every=5)


def test_resume_continues_a_sinkhorncf_run_exactly(tmp_path):
    common = ["--test_after_fit", "false", "--data.init_args.synthetic.num_items", "40"]
    fit(tmp_path, "sinkhorncf/ml-100k.yaml", "straight", *common, "--trainer.max_epochs", "2")
    fit(tmp_path, "sinkhorncf/ml-100k.yaml", "resumed", *common, "--trainer.max_epochs", "1")
    fit(tmp_path, "sinkhorncf/ml-100k.yaml", "resumed", *common, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    a = torch.load(tmp_path / "straight" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] > 0
    for name, weight in a["state_dict"].items():
        assert torch.equal(weight, b["state_dict"][name]), name


def test_a_checkpoint_alone_reproduces_the_test_metrics_and_predicts(tmp_path):
    out = fit(tmp_path, "sinkhorncf/ml-100k.yaml", "run", "--trainer.max_epochs", "1")
    (tmp_path / "run" / "results.json").unlink()
    run_cli("test", "--ckpt_path", out["best_checkpoint"], "--trainer.enable_progress_bar", "false")
    assert results(tmp_path / "run")["test"] == out["test"]
    run_cli("predict", "--ckpt_path", out["best_checkpoint"], "--trainer.enable_progress_bar", "false", "--top_k", "3")
    rows = (tmp_path / "run" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "user,rank,item,score" and len(rows) == 1 + 3 * 60  # the 30 + 30 held-out users
