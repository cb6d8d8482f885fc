"""The paper's graph protocol: AD-GCL pre-training (ContrastiveTask + ADGCL) and the torch linear SVM evaluation."""
import csv

import pytest
import torch
from torch_geometric.data import Batch, Data

from recot.nn.aggr import ROTPoolingBE
from recot.nn.contrastive import ADGCL
from recot.svm import LinearSVM, svm_cross_val
from tests.conftest import CONFIGS, needs_data, results, run_cli

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def blobs(seed: int, classes: int = 3, per_class: int = 30, dim: int = 6, gap: float = 6.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.rand(per_class, dim, generator=g) + gap * torch.eye(dim)[c] for c in range(classes)])
    return x, torch.arange(classes).repeat_interleave(per_class)


def test_svm_separates_linearly_separable_data():
    x, y = blobs(0)
    assert torch.equal(LinearSVM(C=1.0).fit(x, y).predict(x), y)  # separable: every training point right
    out = svm_cross_val(x, y, num_folds=5, inner_folds=3)
    assert out["acc"] == 1.0 and out["num_folds"] == 5 and len(out["fold_acc"]) == 5
    # two classes through the +-1 path, unseen points
    x2, y2 = blobs(1, classes=2)
    xt, yt = blobs(2, classes=2)
    assert torch.equal(LinearSVM(C=10.0).fit(x2, y2).predict(xt), yt)


def test_svm_is_at_chance_on_random_labels():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 20, generator=g), torch.randint(0, 2, (120,), generator=g)
    assert svm_cross_val(x, y, num_folds=5, inner_folds=3)["acc"] < 0.7


def random_graphs(n: int = 12, features: int = 4, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for i in range(n):
        nodes = 4 + i % 5
        edges = torch.randint(0, nodes, (2, 3 * nodes), generator=g)
        graphs.append(Data(x=torch.rand(nodes, features, generator=g), edge_index=edges, y=torch.tensor([i % 2])))
    return Batch.from_data_list(graphs)


def test_augmenter_receives_gradients_through_the_weighted_view():
    torch.manual_seed(0)
    model = ADGCL(ROTPoolingBE(num_modules=2), hidden_channels=8, num_layers=3)
    model.build(4, 2)
    batch = random_graphs()
    weight = model.augmenter(batch)
    assert weight.shape == (batch.edge_index.shape[1],) and bool(((weight > 0) & (weight < 1)).all())
    view_loss = model.nt_xent(model(batch), model(batch, weight)) - 5.0 * model.drop_ratio(batch, weight)
    (-view_loss).backward()
    for name, p in model.augmenter.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if "norms" not in name:  # batch norm shifts before a ReLU may see no gradient; weights must
            assert p.grad.abs().sum() > 0, name
    # the ROT pooling of every readout layer is trained too
    for pool in model.encoder.pools:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pool.parameters())
    # without the edge weights the augmented view equals the plain one: the InfoNCE sees the augmentation
    model.eval()
    z = model(batch)
    assert not torch.allclose(z, model(batch, torch.full_like(weight, 0.5)))


def test_nt_xent_is_small_for_matching_views():
    model = ADGCL(ROTPoolingBE(), temperature=0.2)
    z = torch.eye(8)
    assert model.nt_xent(z, z) < 0.01 < model.nt_xent(z, z.roll(1, 0))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    data = needs_data("TU", "MUTAG", "raw")
    root = tmp_path_factory.mktemp("adgcl")
    run_cli("fit", "--config", CONFIGS / "rotp" / "adgcl" / "mutag.yaml", *QUIET, "--run_root", root, "--name", "sum",
            "--data.init_args.data_dir", data.parents[2], "--trainer.max_epochs", "3",
            "--model.init_args.model.init_args.pooling", "torch_geometric.nn.aggr.SumAggregation",
            "--model.init_args.svm_every", "3", "--model.init_args.svm_C", "[0.01, 1.0, 100.0]")
    return root / "sum"


def test_contrastive_pretraining_through_the_cli(pretrained):
    with open(pretrained / "logs" / "csv" / "metrics.csv") as f:
        every = list(csv.DictReader(f))
    rows = [r for r in every if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in rows]
    assert len(losses) == 3 and losses[-1] < losses[0]  # the encoder's InfoNCE decreases
    drops = [float(r["train/drop_ratio"]) for r in rows]
    assert len(set(drops)) == 3 and all(0 < d < 1 for d in drops)  # the augmenter learns (its drop ratio moves)
    out = results(pretrained)
    assert out["task"] == "ContrastiveTask" and out["method"] == "ADGCL"
    # the SVM ran at the last validation (svm_every) and at test, on all 188 graphs, 10 folds
    assert any(r.get("val/acc") for r in every)
    assert out["test"]["test/svm_folds"] == 10
    assert out["test"]["test/acc"] > 0.75  # MUTAG's majority class is 66.5 %
