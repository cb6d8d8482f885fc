"""`recot plot`: learning curves of a real shrunk run (several overlaid), extra logged quantities, an OT plan."""
from __future__ import annotations

import pytest

from recot.plot import panels_for
from tests.conftest import QUICK, run_cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    for name, model in (("lightgcn", "recot.nn.LightGCN"), ("mf", "recot.nn.MF")):
        run_cli("fit", *QUICK, "--run_root", root, "--name", name, "--trainer.max_epochs", "2",
                "--model.init_args.model", model, "--test_after_fit", "false")
    return root / "lightgcn", root / "mf"


def test_plot_writes_learning_curves_of_real_runs(two_runs, tmp_path, capsys):
    lightgcn, mf = two_runs
    run_cli("plot", lightgcn)
    one = lightgcn / "curves.png"
    assert one.read_bytes()[:8] == PNG and one.stat().st_size > 10_000
    run_cli("plot", lightgcn, mf, "--out", tmp_path / "both.png", "--title", "ML")
    both = tmp_path / "both.png"
    assert both.read_bytes()[:8] == PNG and both.stat().st_size > one.stat().st_size // 2
    assert f"wrote {both}" in capsys.readouterr().out


def test_panels_hold_the_main_curves_then_every_extra_quantity():
    runs = {"gotnet": {"train/loss": {0: 1.0}, "val/recall@20": {0: 0.1}, "val/ndcg@20": {0: 0.1},
                       "train/bpr": {0: 0.9}, "train/l2": {0: 3.0}, "train/uot": {0: 0.2}, "time/epoch_s": {0: 1.0},
                       "gotnet/mass_0": {0: 0.5}, "gotnet/mass_1": {0: 0.5}},
            "ltocf": {"train/loss": {0: 1.0}, "ltocf/t1": {0: 1.0}, "ltocf/t2": {0: 2.0}, "ltocf/t3": {0: 3.0}}}
    panels = panels_for(runs)
    assert panels[:3] == [("train/loss", ["train/loss"]), ("val/recall@20", ["val/recall@20"]),
                          ("val/ndcg@20", ["val/ndcg@20"])]
    assert dict(panels[3:]) == {"gotnet/mass_*": ["gotnet/mass_0", "gotnet/mass_1"],
                                "ltocf/t*": ["ltocf/t1", "ltocf/t2", "ltocf/t3"], "train/bpr": ["train/bpr"],
                                "train/l2": ["train/l2"], "train/uot": ["train/uot"]}
    # a task without ranking metrics: its validation metrics instead
    assert [t for t, _ in panels_for({"g": {"val/acc": {0: 0.5}, "train/loss": {0: 1.0}}})] == ["train/loss", "val/acc"]


def test_plot_of_a_transport_plan(tmp_path):
    run_cli("plot", "--ot_example", "--out", tmp_path / "plan.png")
    assert (tmp_path / "plan.png").read_bytes()[:8] == PNG


def test_plot_errors_name_the_missing_log(tmp_path):
    with pytest.raises(SystemExit, match=r"logs/csv/metrics.csv not found"):
        run_cli("plot", tmp_path)
