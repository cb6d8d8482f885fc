import numpy as np
import pytest
import scipy.sparse as sp
import torch

from datamodules import DataFormatError, InteractionDataModule, SyntheticSpec, TableSpec, load_interactions
from datamodules.interactions import BPRBatches, UserBatches
from datamodules.splits import k_core, per_user_holdout
from tests.conftest import needs_data


def lightgcn_folder(tmp_path, with_valid=False):
    (tmp_path / "train.txt").write_text("".join(f"{u} " + " ".join(str((u + j) % 30) for j in range(12)) + "\n"
                                                for u in range(20)))
    (tmp_path / "test.txt").write_text("".join(f"{u} {(u + 15) % 30} {(u + 16) % 30}\n" for u in range(20)))
    if with_valid:
        (tmp_path / "valid.txt").write_text("".join(f"{u} {(u + 20) % 30}\n" for u in range(0, 20, 2)))
    return tmp_path


def test_holdout_takes_floor_of_ratio_per_user():
    users = np.repeat(np.arange(4), [10, 5, 1, 20])
    mask = per_user_holdout(users, 0.2, np.random.default_rng(0))
    assert np.bincount(users[mask], minlength=4).tolist() == [2, 1, 0, 4]
    again = per_user_holdout(users, 0.2, np.random.default_rng(0))
    np.testing.assert_array_equal(mask, again)


def test_random_split_partitions_each_user(tmp_path):
    data = load_interactions("synthetic", synthetic=SyntheticSpec(num_users=50, num_items=40, max_items_per_user=30))
    total = data.train + data.val + data.test
    assert total.max() == 1  # disjoint
    n_u = np.diff(total.indptr)
    assert (np.diff(data.test.indptr) == np.floor(0.2 * n_u)).all()
    n_rest = n_u - np.diff(data.test.indptr)
    assert (np.diff(data.val.indptr) == np.floor(0.1 * n_rest)).all()


def test_lightgcn_folder_carves_validation_from_train(tmp_path):
    data = load_interactions(str(lightgcn_folder(tmp_path)))
    assert (data.num_users, data.num_items) == (20, 30)
    assert data.test.nnz == 40 and data.train.nnz + data.val.nnz == 240
    assert (np.diff(data.val.indptr) == 1).all()  # floor(0.1 * 12) per user


def test_lightgcn_folder_uses_valid_txt(tmp_path):
    data = load_interactions(str(lightgcn_folder(tmp_path, with_valid=True)))
    assert data.train.nnz == 240 and data.val.nnz == 10


def test_missing_train_txt_is_a_clear_error(tmp_path):
    (tmp_path / "test.txt").write_text("0 1\n")
    with pytest.raises(DataFormatError) as err:
        load_interactions(str(tmp_path))
    assert f"{tmp_path / 'train.txt'}: file not found" in str(err.value)
    assert "LightGCN format needs train.txt and test.txt" in str(err.value)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataFormatError, match=r"gowalla: file not found") as err:
        load_interactions("gowalla", data_dir=str(tmp_path))
    assert "https://github.com/kuandeng/LightGCN" in str(err.value)


def test_real_yelp2018_without_train_txt():
    folder = needs_data("yelp2018")
    with pytest.raises(DataFormatError) as err:
        load_interactions("yelp2018", data_dir=str(folder.parent))
    msg = str(err.value)
    assert str(folder / "train.txt") in msg and "file not found" in msg and "kuandeng/LightGCN" in msg


def test_movielens_threshold_kcore_and_remap(tmp_path):
    rows = [(u, i, 5 if (u + i) % 3 else 1) for u in (11, 12, 13, 14) for i in (101, 102, 103, 104, 105, 106)]
    rows.append((99, 101, 5))  # a user with one interaction, dropped by the 2-core
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t0\n" for u, i, r in rows))
    data = load_interactions(str(tmp_path), rating_threshold=4, k_core_min=2, test_ratio=0.2, val_ratio=0.0)
    assert data.user_ids.tolist() == [11, 12, 13, 14]
    kept = sum(1 for u, i, r in rows if r >= 4 and u != 99)
    assert data.train.nnz + data.val.nnz + data.test.nnz == kept


def test_k_core_is_iterative():
    users = np.array([0, 0, 1, 1, 2])
    items = np.array([0, 1, 0, 1, 1])
    keep = k_core(users, items, 2)
    assert keep.tolist() == [True, True, True, True, False]


def test_table_format(tmp_path):
    (tmp_path / "clicks.csv").write_text("item,user,score\n" + "".join(
        f"{i},{u},{(u * i) % 5}\n" for u in range(10) for i in range(10)))
    spec = TableSpec(file="clicks.csv", user_col=1, item_col=0, rating_col=2, header=True)
    data = load_interactions(str(tmp_path), format="table", table=spec, rating_threshold=1)
    assert data.train.nnz + data.val.nnz + data.test.nnz == sum(1 for u in range(10) for i in range(10)
                                                                if (u * i) % 5 >= 1)


def test_real_gowalla_and_ml1m_counts():
    gowalla = load_interactions("gowalla", data_dir=str(needs_data("gowalla").parent))
    assert (gowalla.num_users, gowalla.num_items) == (29_858, 40_981)
    assert gowalla.train.nnz + gowalla.val.nnz == 810_128 and gowalla.test.nnz == 217_242
    ml1m = load_interactions("ml-1m", data_dir=str(needs_data("ml-1m").parent))
    assert (ml1m.train.nnz, ml1m.val.nnz, ml1m.test.nnz) == (590_733, 80_897, 164_848)


def small_train():
    rng = np.random.default_rng(0)
    dense = rng.random((30, 25)) < 0.3
    dense[0] = False  # a user without training items is never sampled
    dense[1] = True   # neither is one who has every item (no negative exists)
    return sp.csr_matrix(dense.astype(np.float32))


def test_bpr_sampler_draws_valid_triples():
    train = small_train()
    loader = BPRBatches(train, batch_size=64, num_negatives=3, generator=torch.Generator().manual_seed(1))
    batches = list(loader)
    assert len(batches) == len(loader) and sum(b["users"].numel() for b in batches) == train.nnz
    dense = torch.from_numpy(train.toarray() > 0)
    for b in batches:
        assert dense[b["users"], b["pos"]].all()
        assert not dense[b["users"][:, None], b["neg"]].any()
        assert not ((b["users"] == 0) | (b["users"] == 1)).any()


def test_bpr_sampler_stream_is_reproducible_and_sharded():
    train = small_train()
    one = BPRBatches(train, 1000, 1, torch.Generator().manual_seed(5))
    first, second = next(iter(one)), next(iter(one))
    assert not torch.equal(first["neg"], second["neg"])  # epochs differ
    again = BPRBatches(train, 1000, 1, torch.Generator().manual_seed(5))
    assert torch.equal(next(iter(again))["neg"], first["neg"])
    shards = [next(iter(BPRBatches(train, 1000, 1, torch.Generator().manual_seed(5), rank=r, world_size=2)))
              for r in range(2)]
    assert shards[0]["users"].numel() == shards[1]["users"].numel() == train.nnz // 2
    assert torch.equal(shards[0]["pos"], first["pos"][0:2 * (train.nnz // 2):2])
    assert torch.equal(shards[1]["pos"], first["pos"][1:2 * (train.nnz // 2):2])


def test_user_batches_masks_and_sharding():
    train, test = small_train(), sp.csr_matrix(np.eye(30, 25, k=2, dtype=np.float32))
    batches = list(UserBatches(test, [train], batch_size=7))
    users = torch.cat([b["users"] for b in batches])
    assert users.tolist() == list(range(23))  # users with a test item
    b = batches[0]
    assert torch.equal(b["target"], torch.from_numpy(test[b["users"].numpy()].toarray() > 0))
    assert torch.equal(b["exclude"], torch.from_numpy(train[b["users"].numpy()].toarray() > 0))
    sharded = [torch.cat([b["users"] for b in UserBatches(test, [train], 7, rank=r, world_size=2)]) for r in range(2)]
    assert sorted(torch.cat(sharded).tolist()) == users.tolist()


def test_normalized_adjacency():
    data = load_interactions("synthetic", synthetic=SyntheticSpec(num_users=20, num_items=15, max_items_per_user=10))
    adj = data.adjacency.to_dense()
    r = torch.from_numpy(data.train.toarray())
    a = torch.zeros(35, 35)
    a[:20, 20:], a[20:, :20] = r, r.T
    d = a.sum(1)
    inv = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
    torch.testing.assert_close(adj, inv[:, None] * a * inv[None, :])
    assert data.adjacency is data.adjacency  # built once


def test_datamodule_state_restores_sampler():
    dm = InteractionDataModule(synthetic=SyntheticSpec(num_users=40, num_items=30, max_items_per_user=20), seed=3)
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    state = dm.state_dict()
    expected = next(iter(dm.train_dataloader()))
    fresh = InteractionDataModule(synthetic=SyntheticSpec(num_users=40, num_items=30, max_items_per_user=20), seed=3)
    fresh.load_state_dict(state)  # before setup, as Lightning may do
    fresh.setup("fit")
    assert torch.equal(next(iter(fresh.train_dataloader()))["neg"], expected["neg"])
