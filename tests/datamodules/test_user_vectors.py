"""Strong-generalization user vectors: split, fold-in / held-out separation, readers, clear errors."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from datamodules import DataFormatError, SyntheticSpec, TableSpec, UserVectorDataModule, load_user_vectors
from datamodules.netflix import read_netflix
from datamodules.user_vectors import RowBatches, read_positives, subsample
from tests.conftest import needs_data

SPEC = SyntheticSpec(num_users=120, num_items=60, min_items_per_user=5, max_items_per_user=25)


@pytest.fixture(scope="module")
def data():
    return load_user_vectors("synthetic", synthetic=SPEC, num_val_users=20, num_test_users=15, seed=3)


def test_users_split_into_train_validation_and_test(data):
    assert (data.train_users.size, data.val_users.size, data.test_users.size) == (85, 20, 15)
    assert len(set(data.train_users) | set(data.val_users) | set(data.test_users)) == 120
    heldout_users = np.r_[data.val_users, data.test_users]
    assert data.train[heldout_users].nnz == 0 and data.fold_in[data.train_users].nnz == 0
    assert data.held_out[data.train_users].nnz == 0
    # every item is one a training user has: the model's output units
    assert (np.asarray(data.train.sum(0)).ravel() > 0).all()
    again = load_user_vectors("synthetic", synthetic=SPEC, num_val_users=20, num_test_users=15, seed=3)
    assert (again.fold_in != data.fold_in).nnz == 0 and (again.held_out != data.held_out).nnz == 0


def test_held_out_users_keep_80_percent_for_fold_in(data):
    users = np.r_[data.val_users, data.test_users]
    fold, held = np.diff(data.fold_in.indptr)[users], np.diff(data.held_out.indptr)[users]
    assert (held == np.floor(0.2 * (fold + held))).all()
    assert data.fold_in.multiply(data.held_out).nnz == 0  # disjoint parts of each history


@pytest.mark.parametrize("fold_in_training", [False, True])
def test_fold_in_never_sees_held_out_items(data, fold_in_training):
    dm = UserVectorDataModule("synthetic", synthetic=SPEC, num_val_users=20, num_test_users=15, seed=3,
                              fold_in_training=fold_in_training, batch_size=16, eval_batch_size=7)
    dm.setup()
    held = dm.data.held_out.toarray() > 0
    trained = []
    for batch in dm.train_dataloader():
        x = batch["x"].numpy() > 0
        assert not (x & held[batch["users"].numpy()]).any()
        trained += batch["users"].tolist()
    expected = dm.data.train_users if not fold_in_training else np.arange(120)
    assert sorted(trained) == sorted(expected.tolist())
    for loader, users in ((dm.val_dataloader(), dm.data.val_users), (dm.test_dataloader(), dm.data.test_users)):
        seen = []
        for batch in loader:
            x, target = batch["x"].numpy() > 0, batch["target"].numpy()
            np.testing.assert_array_equal(target, held[batch["users"].numpy()])
            assert not (x & target).any() and x.any(1).all()
            seen += batch["users"].tolist()
        assert set(seen) <= set(users.tolist()) and len(seen) > 0.9 * users.size


def test_row_batches_resume_mid_epoch():
    mat = sp.csr_matrix(np.eye(10, dtype=np.float32))
    users = np.arange(10)
    done = [0]
    straight = RowBatches(mat, users, 3, torch.Generator().manual_seed(0), position=lambda: (done[0], 4))
    first = [b["users"].tolist() for b in straight]
    killed = RowBatches(mat, users, 3, torch.Generator().manual_seed(0), position=lambda: (done[0], 4))
    it = iter(killed)
    next(it), next(it)
    done[0] = 2
    resumed = RowBatches(mat, users, 3, torch.Generator().manual_seed(99), position=lambda: (0, 4))
    resumed.load_state_dict(killed.state_dict())
    assert [b["users"].tolist() for b in resumed] == first[2:]


def test_ratings_are_binarised_and_light_users_dropped(tmp_path):
    rows = ["user,item,rating"]
    rows += [f"1,{i},5" for i in range(6)] + ["1,6,3"]  # user 1: 6 positives, one rating below 4
    rows += [f"2,{i},4" for i in range(4)] + [f"2,{i},2" for i in range(4, 9)]  # user 2: 4 positives only
    rows += [f"{u},{i},4.5" for u in range(3, 9) for i in range(5)]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    table = TableSpec(file="r.csv", rating_col=2)
    _, users, items = read_positives(str(tmp_path / "r.csv"), table=table, format="table")
    assert 6 not in items[users == 1] and (users == 2).sum() == 4
    data = load_user_vectors(str(tmp_path / "r.csv"), format="table", table=table, num_val_users=1,
                             num_test_users=1)
    assert 2 not in data.user_ids and data.num_users == 7
    assert sorted(data.item_ids.tolist()) == list(range(6)) or sorted(data.item_ids.tolist()) == list(range(5))


def test_lightgcn_folder_is_merged_and_not_thresholded(tmp_path):
    (tmp_path / "train.txt").write_text("0 1 2 3\n1 0 1\n")
    (tmp_path / "valid.txt").write_text("0 4\n1 2\n")
    (tmp_path / "test.txt").write_text("0 5\n1 3 4\n")
    name, users, items = read_positives(str(tmp_path), rating_threshold=4.0)
    assert sorted(zip(users.tolist(), items.tolist())) == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 0), (1, 1),
                                                             (1, 2), (1, 3), (1, 4)]


def test_sampled_subset_keeps_random_users_and_their_most_popular_items():
    users = np.repeat(np.arange(50), 8)
    items = np.tile(np.arange(8), 50) + (users % 3 == 0)  # item 0 less popular, item 8 rare
    keep = subsample(users, items, 20, 5, np.random.default_rng(0))
    assert np.unique(users[keep]).size <= 20
    assert set(items[keep].tolist()) <= {1, 2, 3, 4, 5}


def test_netflix_reader_and_its_errors(tmp_path):
    (tmp_path / "combined_data_1.txt").write_text("1:\n10,5,2005-09-06\n11,3,2005-05-13\n2:\n10,4,2005-10-19\n")
    (tmp_path / "combined_data_2.txt").write_text("3:\n12,1,2004-01-01\n")
    users, items, ratings = read_netflix(tmp_path)
    assert list(zip(users, items, ratings)) == [(10, 1, 5), (11, 1, 3), (10, 2, 4), (12, 3, 1)]
    (tmp_path / "combined_data_2.txt").write_text("3:\n12,1,2004-01-01\nnot a rating\n")
    with pytest.raises(DataFormatError, match=r"combined_data_2.txt, line 3: malformed rating line"):
        read_netflix(tmp_path)
    with pytest.raises(DataFormatError, match=r"netflix/combined_data_1.txt: file not found(?s:.*)kaggle"):
        load_user_vectors("netflix", data_dir=str(tmp_path))


def test_missing_ml20m_names_the_file_and_where_to_get_it(tmp_path):
    with pytest.raises(DataFormatError, match=r"ml-20m/ratings.csv: file not found(?s:.*)ml-20m.zip"):
        load_user_vectors("ml-20m", data_dir=str(tmp_path))


def test_too_many_held_out_users():
    with pytest.raises(ValueError, match="validation"):
        load_user_vectors("synthetic", synthetic=SPEC, num_val_users=60, num_test_users=60)


def test_ml1m_lightgcn_split_is_used_as_it_is():
    folder = needs_data("ml-1m")
    name, users, items = read_positives(str(folder))  # default threshold 4 does not apply to implicit data
    assert name == "ml-1m" and users.size == 836_478  # train + valid + test (MANIFEST: ratings >= 3)
