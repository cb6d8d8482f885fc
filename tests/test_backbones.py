"""Every recommender backbone through the ``recot`` command, with its shipped MovieLens-100K config on small synthetic
data: it learns and beats popularity; dropout (NGCF) and random-walk neighbourhoods (PinSage) resume exactly."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import CONFIGS, results, run_cli

# The shipped configs, on small synthetic data (planted preferences plus a popularity bias that makes MostPop a real
# baseline); one validation at the last epoch, so the selected model is the trained one.
SYNTHETIC = ["--data.init_args.dataset", "synthetic", "--data.init_args.split", "auto",
             "--data.init_args.synthetic.num_users", "300", "--data.init_args.synthetic.num_items", "200",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
             "--trainer.logger", "false"]


@pytest.fixture(autouse=True)
def one_thread():
    # graphs of a few hundred nodes: one thread is faster, and two would oversubscribe the cores under pytest -n 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(root, backbone: str, epochs: int, *extra: str, name: str | None = None) -> dict:
    name = name or backbone
    run_cli("fit", "--config", CONFIGS / backbone / "ml-100k.yaml", "--run_root", root, "--name", name, *SYNTHETIC,
            "--trainer.max_epochs", epochs, "--trainer.check_val_every_n_epoch", epochs, *extra)
    return results(root / name)


@pytest.fixture(scope="module")
def popularity(tmp_path_factory):
    torch.set_num_threads(1)
    return fit(tmp_path_factory.mktemp("pop"), "mostpop", 1)["test"]


# epochs and learning rate for a shrunk run: the configs' rates are for full runs on real data
LEARNS = {"mf": (20, "0.01"), "neumf": (10, "0.005"), "ngcf": (4, "0.01"), "pinsage": (20, "0.01"),
          "lightgcn": (10, "0.01")}


@pytest.mark.parametrize("backbone", sorted(LEARNS))
def test_backbone_learns_and_beats_popularity(backbone, tmp_path, popularity):
    epochs, lr = LEARNS[backbone]
    out = fit(tmp_path, backbone, epochs, "--model.init_args.optimizer.init_args.lr", lr)
    assert out["best_epoch"] == epochs - 1
    assert out["test"]["test/recall@20"] > popularity["test/recall@20"] + 0.02, (out["test"], popularity)
    assert out["test"]["test/ndcg@20"] > popularity["test/ndcg@20"] + 0.02
    assert out["method"] == {"mf": "MF", "neumf": "NeuMF", "ngcf": "NGCF", "pinsage": "PinSage",
                             "lightgcn": "LightGCN"}[backbone]


def test_neumf_config_trains_with_bce_and_four_negatives(tmp_path):
    from datamodules import InteractionDataModule
    import yaml
    spec = yaml.safe_load((CONFIGS / "neumf" / "ml-100k.yaml").read_text())
    assert spec["model"]["init_args"]["loss"] == "bce"
    dm = InteractionDataModule(**{**spec["data"]["init_args"], "dataset": "synthetic", "split": "auto"})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["neg"].shape == (256, 4)


@pytest.mark.parametrize("backbone", ["ngcf", "pinsage"])
def test_resume_continues_exactly(backbone, tmp_path):
    """NGCF draws its dropout masks from the global generator (restored by RNGState); PinSage's walks are rebuilt from
    their seed: a run killed after epoch 2 and resumed ends with the weights of the uninterrupted run."""
    common = ["--test_after_fit", "false", "--trainer.check_val_every_n_epoch", "1"]
    fit(tmp_path, backbone, 4, *common, name="straight")
    fit(tmp_path, backbone, 2, *common, name="resumed")
    fit(tmp_path, backbone, 4, *common, "--ckpt_path", "last", name="resumed")
    a = torch.load(tmp_path / "straight" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] > 0
    for name, weight in a["state_dict"].items():
        assert torch.equal(weight, b["state_dict"][name]), name
