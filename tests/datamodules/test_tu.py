"""TU graphs: raw files linked into the cache (never written where they are read), node features, clear errors."""
import pytest
import torch

from datamodules import DataFormatError, TUGraphDataModule
from tests.conftest import needs_data


def write_tu(folder, name="TOY", node_labels=True, bad=False):
    """Three small graphs in raw TU format (a triangle, an edge, a path of three)."""
    folder.mkdir(parents=True)
    edges = [(1, 2), (2, 1), (2, 3), (3, 2), (1, 3), (3, 1), (4, 5), (5, 4), (6, 7), (7, 6), (7, 8), (8, 7)]
    (folder / f"{name}_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges) + ("x, y\n" if bad else ""))
    (folder / f"{name}_graph_indicator.txt").write_text("1\n1\n1\n2\n2\n3\n3\n3\n")
    (folder / f"{name}_graph_labels.txt").write_text("1\n-1\n1\n")
    if node_labels:
        (folder / f"{name}_node_labels.txt").write_text("0\n1\n0\n2\n0\n1\n1\n1\n")


def module(tmp_path, **kw):
    args = dict(dataset="toy", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", num_folds=2,
                val_fraction=0.0, batch_size=8) | kw
    return TUGraphDataModule(**args)


def test_raw_files_are_linked_into_the_cache_and_processed_there(tmp_path):
    raw = tmp_path / "data" / "TU" / "TOY" / "raw"
    write_tu(raw)
    before = sorted(p.name for p in raw.parent.rglob("*"))
    dm = module(tmp_path)
    dm.setup("fit")
    assert sorted(p.name for p in raw.parent.rglob("*")) == before  # nothing written beside the data
    assert (tmp_path / "cache" / "TU" / "TOY" / "processed").is_dir()
    assert (tmp_path / "cache" / "TU" / "TOY" / "raw" / "TOY_A.txt").is_symlink()
    assert dm.num_features == 3 and dm.num_classes == 2
    batch = next(iter(dm.test_dataloader()))
    assert batch.x.shape[1] == 3 and set(batch.y.tolist()) <= {0, 1}


def test_degree_features_when_the_data_has_no_node_labels(tmp_path):
    write_tu(tmp_path / "data" / "TU" / "TOY" / "raw", node_labels=False)
    dm = module(tmp_path)
    dm.setup("fit")
    assert dm.num_features == 3  # one-hot degree 0..2
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch.x.sum(1), torch.ones(batch.num_nodes))
    with pytest.raises(DataFormatError, match="no node labels"):
        module(tmp_path, node_features="labels").setup("fit")


def test_missing_and_malformed_files_fail_clearly(tmp_path):
    with pytest.raises(DataFormatError, match=r"TU/TOY/raw/TOY_A.txt: file not found"):
        module(tmp_path).setup("fit")
    write_tu(tmp_path / "data" / "TU" / "TOY" / "raw", bad=True)
    with pytest.raises(DataFormatError, match="could not read the TU files"):
        module(tmp_path).setup("fit")


def test_mutag_folds(tmp_path):
    data_dir = needs_data("TU", "MUTAG").parent.parent
    counts = []
    for fold in (0, 9):
        dm = TUGraphDataModule("mutag", data_dir=data_dir, cache_dir=tmp_path, fold=fold)
        dm.setup("fit")
        counts.append({k: len(v) for k, v in dm.splits.items()})
        assert dm.num_features == 7 and dm.num_classes == 2
    assert all(sum(c.values()) == 188 for c in counts)
    assert not (tmp_path / "TU" / "MUTAG" / "raw" / "MUTAG_A.txt").resolve().is_relative_to(tmp_path)
