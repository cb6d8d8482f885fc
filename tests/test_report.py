"""`recot report` on fabricated run folders: grouping, mean +- std over seeds, the papers' numbers, CSV."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from tests.conftest import run_cli


def fake_run(root, name, method, dataset, seed, recall, ndcg, epochs, seconds, backbone=None, lr=1e-3):
    run = root / name
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "name": name, "task": "RankingTask", "method": method, "backbone": backbone, "dataset": dataset,
        "seed": seed, "epochs": epochs, "seconds_per_epoch": seconds,
        "val": {"val/recall@20": recall + 0.01, "val/ndcg@20": ndcg + 0.01},
        "test": {"test/recall@20": recall, "test/ndcg@20": ndcg}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"seed_everything": seed, "model": {"init_args": {
        "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": lr}}}}}))
    return run


@pytest.fixture
def runs(tmp_path):
    return [fake_run(tmp_path / "runs", "mf-1", "MF", "ml-100k", 1, 0.20, 0.30, 10, 1.0),
            fake_run(tmp_path / "runs", "mf-2", "MF", "ml-100k", 2, 0.24, 0.34, 20, 3.0),
            fake_run(tmp_path / "runs", "lgcn", "LightGCN", "gowalla", 7, 0.18, 0.15, 5, 2.5)]


def _table(text):
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def test_report_groups_runs_by_method_and_dataset_with_mean_and_std(runs, tmp_path, capsys):
    run_cli("report", *runs, "--markdown", tmp_path / "t.md", "--csv", tmp_path / "t.csv", "--runs_csv",
            tmp_path / "runs.csv")
    out = capsys.readouterr().out
    rows = _table(out)
    assert [(r["method"], r["dataset"]) for r in rows] == [("LightGCN", "gowalla"), ("MF", "ml-100k")]
    mf = rows[1]
    # mean and sample std of (0.20, 0.24) and (0.30, 0.34): 0.22 / 0.32 +- 0.02 * sqrt(2) = 0.0283
    assert mf["recall@20"] == "0.2200 ± 0.0283" and mf["ndcg@20"] == "0.3200 ± 0.0283"
    assert (mf["runs"], mf["seeds"], mf["epochs"], mf["s/epoch"]) == ("2", "1,2", "15", "2.00")
    assert rows[0]["recall@20"] == "0.1800"  # one run: no std
    assert (tmp_path / "t.md").read_text() == out
    with open(tmp_path / "t.csv", newline="") as fh:
        summary = {r["method"]: r for r in csv.DictReader(fh)}
    assert float(summary["MF"]["test/recall@20_mean"]) == pytest.approx(0.22)
    assert float(summary["MF"]["test/recall@20_std"]) == pytest.approx(0.02 * 2 ** 0.5)
    assert summary["LightGCN"]["test/recall@20_std"] == ""
    with open(tmp_path / "runs.csv", newline="") as fh:
        per_run = list(csv.DictReader(fh))
    assert len(per_run) == 3 and {r["lr"] for r in per_run} == {"0.001"}
    assert float(next(r for r in per_run if r["name"] == "mf-2")["val/ndcg@20"]) == pytest.approx(0.35)


def test_report_puts_the_papers_numbers_and_the_gap_beside_each_row(runs, capsys):
    run_cli("report", runs[0].parent, "--paper", "--metrics", "test/recall@20", "test/ndcg@20")
    rows = _table(capsys.readouterr().out)
    lightgcn = [r for r in rows if r["method"] == "LightGCN"]
    # LightGCN on Gowalla is in two papers' tables: GOTNet Table 1 (0.1826 / 0.1549), LT-OCF Table 3 (0.1830 / 0.1554)
    assert [(r["paper recall@20"], r["gap recall@20"]) for r in lightgcn] == [
        ("0.1826", "-0.0026 (-1.4%)"), ("0.1830", "-0.0030 (-1.6%)")]
    assert [r["paper ndcg@20"] for r in lightgcn] == ["0.1549", "0.1554"]
    assert "gotnet-table1 (Table 1" in lightgcn[0]["paper source"]
    mf = [r for r in rows if r["method"] == "MF"]
    assert len(mf) == 1 and mf[0]["paper recall@20"] == "-"  # no paper reports ML-100k


def test_report_errors_name_the_folder(tmp_path):
    with pytest.raises(SystemExit, match="no results.json"):
        run_cli("report", tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"bad/results.json has no method, dataset"):
        run_cli("report", bad)


def test_paper_results_file_is_well_formed():
    from recot.report import load_paper_results
    rows = load_paper_results()
    assert len(rows) == 59
    assert all(0 < v < 1 for r in rows for v in r.metrics.values())
