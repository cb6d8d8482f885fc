"""GED pair data (datamodules/ged.py): GTN's npz splits, PyG's layout (absent here), the synthetic generator."""
import numpy as np
import pytest
import torch

from datamodules import DataFormatError
from datamodules.ged import GEDDataModule, SyntheticGED, exact_ged, read_npz_split
from tests.conftest import needs_data


def test_aids30_splits_follow_the_manifest():
    needs_data("ged", "aids30_ged_train.npz")
    from tests.conftest import SHARED_DATA
    dm = GEDDataModule("aids30", data_dir=str(SHARED_DATA))
    dm.setup()
    assert {s: len(p) for s, p in dm.splits.items()} == {"train": 10296, "val": 1128, "test": 1128}
    graphs, dists = read_npz_split(SHARED_DATA / "ged" / "aids30_ged_train.npz")
    assert len(graphs) == 144 and sum(g.labels.size for g in graphs) == 2971
    i, j = dm.splits["train"].pairs[5].tolist()
    assert i < j and dm.splits["train"].targets[5].item() == pytest.approx(dists[i, j])
    assert dm.num_node_features == 53 and dm.num_edge_features == 4  # one-hot codes up to 52 / bond codes up to 3
    g1, g2, y = next(iter(dm.train_dataloader()))
    assert g1.num_graphs == g2.num_graphs == y.numel() == 100
    assert g1.x.shape[1] == 53 and g1.edge_attr.shape[1] == 4


def test_pref_att_200_has_no_edge_labels():
    needs_data("ged", "pref_att_200_pm_val.npz")
    from tests.conftest import SHARED_DATA
    graphs, dists = read_npz_split(SHARED_DATA / "ged" / "pref_att_200_pm_val.npz")
    assert len(graphs) == 48 and graphs[0].edge_labels is None
    assert 0 < dists[np.triu_indices(48, 1)].min() and dists.max() < 1


@pytest.mark.parametrize("dataset", ["aids700nef", "linux"])
def test_pyg_layout_absent_is_a_clear_error(tmp_path, dataset):
    dm = GEDDataModule(dataset, data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataFormatError, match=r"(?s)GED/raw/.*file not found.*GEDDataset"):
        dm.setup()


def test_malformed_npz_names_the_file(tmp_path):
    (tmp_path / "ged").mkdir()
    np.savez(tmp_path / "ged" / "aids30_ged_train.npz", dists=np.zeros((2, 2)))
    with pytest.raises(DataFormatError, match=r"aids30_ged_train.npz: array 'node_ptr' is missing"):
        GEDDataModule("aids30", data_dir=str(tmp_path)).setup()
    with pytest.raises(DataFormatError, match=r"aids30_ged_val.npz: file not found"):
        read_npz_split(tmp_path / "ged" / "aids30_ged_val.npz")


def test_synthetic_pairs_carry_the_exact_ged():
    spec = SyntheticGED(base_graphs=2, copies=2, max_nodes=5, seed=3)
    graphs, dists = spec.split(0)
    assert len(graphs) == 6 and (dists == dists.T).all() and (np.diag(dists) == 0).all()
    assert all(3 <= g.labels.size <= 5 for g in graphs)
    assert dists[0, 1] == exact_ged(graphs[0], graphs[1])
    assert dists[0, 1] == dists[1, 0] and float(dists[0, 1]).is_integer()
    # symmetric edges, both directions stored
    e = graphs[1].edges
    assert {tuple(p) for p in e.T.tolist()} == {tuple(p) for p in e[::-1].T.tolist()}


def test_synthetic_module_statistics_and_subsampling():
    dm = GEDDataModule("synthetic", synthetic=SyntheticGED(base_graphs=2, copies=1, max_nodes=4), max_pairs=3,
                       batch_size=2)
    dm.setup()
    assert all(len(p) == 3 for p in dm.splits.values())
    assert dm.num_edge_features == 0 and dm.dist_scale > 0 and dm.avg_degree >= 0
    state = dm.state_dict()
    first = [b[2] for b in dm.train_dataloader()]
    dm.load_state_dict(state)
    again = [b[2] for b in dm.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # resumable shuffling
