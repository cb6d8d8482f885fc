"""MIL bags: MATLAB flat and cell layouts, CSV, the synthetic generator, the real MUSK1 file, fold-only scaling."""
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from datamodules import DataFormatError, MILDataModule, SyntheticBags
from datamodules.mil import load_bags, read_mil_csv, read_mil_mat, synthetic_bags
from tests.conftest import needs_data

FEATURES = np.arange(12, dtype=float).reshape(6, 2)


def test_flat_and_cell_matlab_layouts_give_the_same_bags(tmp_path):
    flat = tmp_path / "flat.mat"
    scipy.io.savemat(flat, {"features": sp.csc_matrix(FEATURES), "labels": np.array([[1, 1, -1, -1, -1, 1]]),
                            "bag_ids": np.array([[1, 1, 2, 2, 2, 3]])})
    bags = read_mil_mat(flat)
    assert [b.shape[0] for b in bags.bags] == [2, 3, 1] and bags.labels.tolist() == [1, 0, 1]
    cells = np.empty((3, 2), dtype=object)
    for i, (rows, label) in enumerate([(slice(0, 2), 1), (slice(2, 5), 0), (slice(5, 6), 1)]):
        cells[i, 0] = np.c_[FEATURES[rows], np.zeros(rows.stop - rows.start)]  # last column: instance labels
        cells[i, 1] = label
    cell = tmp_path / "cell.mat"
    scipy.io.savemat(cell, {"data": cells})
    again = read_mil_mat(cell)
    assert again.labels.tolist() == [1, 0, 1]
    for a, b in zip(bags.bags, again.bags):
        np.testing.assert_array_equal(a, b)


def test_csv_bags_and_errors(tmp_path):
    path = tmp_path / "bags.csv"
    path.write_text("bag,label,f1,f2\na,1,0,1\na,1,2,3\nb,0,4,5\n")
    bags = read_mil_csv(path)
    assert [b.shape for b in bags.bags] == [(2, 2), (1, 2)] and bags.labels.tolist() == [1, 0]
    path.write_text("a,1,0,1\na,0,2,3\n")
    with pytest.raises(DataFormatError, match="bag 'a' has instances with different labels"):
        read_mil_csv(path)
    path.write_text("a,1,0,1\na,1,zz,3\n")
    with pytest.raises(DataFormatError, match=r"bags.csv, line 2: bad line"):
        read_mil_csv(path)
    bad = tmp_path / "x.mat"
    scipy.io.savemat(bad, {"stuff": np.ones(2)})
    with pytest.raises(DataFormatError, match=r"unknown MIL layout \(variables: \['stuff'\]\)"):
        read_mil_mat(bad)
    with pytest.raises(DataFormatError, match="mil/messidor.mat: file not found"):
        load_bags("messidor", data_dir=tmp_path)


def test_synthetic_bags_are_positive_iff_they_hold_a_key_instance():
    spec = SyntheticBags(num_bags=60, dim=4, shift=8.0, seed=1)
    bags = synthetic_bags(spec)
    has_key = np.array([(b[:, 0] > 4).any() for b in bags.bags])
    assert (has_key == (bags.labels == 1)).mean() > 0.95 and bags.labels.mean() == 0.5


def test_musk1_and_training_fold_standardisation():
    data_dir = needs_data("mil", "musk1norm_matlab.mat").parent.parent
    bags = load_bags("musk1", data_dir)
    assert len(bags.bags) == 92 and bags.num_features == 166 and np.bincount(bags.labels).tolist() == [45, 47]
    assert sum(len(b) for b in bags.bags) == 476
    dm = MILDataModule("fox", data_dir=data_dir, fold=2)
    dm.setup("fit")
    train = np.concatenate([d.x.numpy() for d in dm.splits["train"]])
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-4)  # z-scored with the training fold's statistics
    assert abs(np.concatenate([d.x.numpy() for d in dm.splits["test"]]).mean()) > 1e-4
