"""Sets of graphs: the documented folder format, batching offsets, synthetic sets from TU graphs."""
import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from datamodules import DataFormatError, GraphSetDataModule, SyntheticGraphSets
from datamodules.graph_sets import synthetic_sets
from tests.datamodules.test_tu import write_tu


def write_ddi(root, sets="label,graphs\n1,0 1\n0,2\n1,2 0 1\n0,1\n"):
    write_tu(root / "ddi" / "toy" / "graphs")
    (root / "ddi" / "toy" / "sets.csv").write_text(sets)


def test_folder_format_and_batching_offsets(tmp_path):
    write_ddi(tmp_path)
    dm = GraphSetDataModule("toy", data_dir=tmp_path, cache_dir=tmp_path / "cache", num_folds=2, val_fraction=0.0,
                            batch_size=4)
    dm.setup("fit")
    sets = dm.splits["train"] + dm.splits["test"]
    batch = next(iter(DataLoader(sets, batch_size=4)))
    assert batch.member_set.tolist() == sorted(batch.member_set.tolist())
    assert batch.member.max().item() + 1 == batch.member_set.numel() == sum(s.member_set.numel() for s in sets)
    assert torch.equal(torch.bincount(batch.member_set), torch.tensor([s.member_set.numel() for s in sets]))
    sizes = torch.bincount(batch.member)
    assert sizes.sum() == batch.num_nodes and (sizes > 0).all()


@pytest.mark.parametrize("text, message", [("graphs\n1,0\n", "missing header"),
                                           ("label,graphs\n1,0 7\n", r"line 2: graph ids must be in 0..2"),
                                           ("label,graphs\nx,0\n", r"line 2: bad line")])
def test_bad_sets_file(tmp_path, text, message):
    write_ddi(tmp_path, text)
    with pytest.raises(DataFormatError, match=message):
        GraphSetDataModule("toy", data_dir=tmp_path, cache_dir=tmp_path / "cache", num_folds=2).setup("fit")


def test_missing_collection_fails_with_file_not_found(tmp_path):
    with pytest.raises(DataFormatError, match="ddi/fears/graphs/FEARS_A.txt: file not found"):
        GraphSetDataModule("fears", data_dir=tmp_path).setup("fit")


def test_synthetic_rules():
    labels = np.array([0, 1, 1, 0, 1, 1])
    members, y = synthetic_sets(SyntheticGraphSets(num_sets=50, min_size=2, max_size=3, rule="same"), labels)
    assert all((len(set(labels[m])) == 1) == bool(t) for m, t in zip(members, y))
    members, y = synthetic_sets(SyntheticGraphSets(num_sets=50, rule="any"), labels)
    assert all((labels[m] == 1).any() == bool(t) for m, t in zip(members, y))
