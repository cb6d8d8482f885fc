"""The ML-1M paper protocol (configs/*/ml-1m-ratings.yaml) on a generated ``ratings.dat`` in the original format."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from datamodules import DataFormatError, InteractionDataModule
from tests.conftest import CONFIGS, results, run_cli


@pytest.fixture(scope="module")
def ratings_dir(tmp_path_factory):
    """``ml-1m-ratings/ratings.dat``: 40 users (ids 1..40) rate 20..34 of 50 common movies (ids 101..150) with every
    rating 1..5, and 5 rare movies (ids 901..905) get 3 ratings each, so the 10-core filter drops exactly them."""
    rng = np.random.default_rng(0)
    lines, expected = [], 0
    for user in range(1, 41):
        movies = rng.choice(np.arange(101, 151), size=20 + user % 15, replace=False)
        for t, movie in enumerate(movies):
            lines.append(f"{user}::{movie}::{1 + (user + t) % 5}::{978300760 + t}")
        expected += movies.size
    for movie in range(901, 906):
        lines += [f"{user}::{movie}::5::978300000" for user in (1, 2, 3)]
    folder = tmp_path_factory.mktemp("data")
    (folder / "ml-1m-ratings").mkdir()
    (folder / "ml-1m-ratings" / "ratings.dat").write_text("\n".join(lines) + "\n")
    return folder, expected


def module_from_config(data_dir) -> InteractionDataModule:
    spec = yaml.safe_load((CONFIGS / "mf" / "ml-1m-ratings.yaml").read_text())["data"]["init_args"]
    return InteractionDataModule(**spec, data_dir=str(data_dir), seed=2020)


def test_paper_protocol_split(ratings_dir):
    folder, expected = ratings_dir
    dm = module_from_config(folder)
    dm.setup("fit")
    data = dm.data
    assert data.user_ids.tolist() == list(range(1, 41))
    assert data.item_ids.tolist() == list(range(101, 151))  # the rare movies fell to the 10-core filter
    assert data.train.nnz + data.val.nnz + data.test.nnz == expected  # every rating, 1 to 5, is an interaction
    n_u = np.diff((data.train + data.val + data.test).indptr)
    n_test = np.diff(data.test.indptr)
    assert (n_test == np.floor(0.2 * n_u)).all()  # per-user 80/20
    assert (np.diff(data.val.indptr) == np.floor(0.1 * (n_u - n_test))).all()  # 10% of train validates
    assert (data.train + data.val + data.test).max() == 1  # disjoint parts
    again = module_from_config(folder)
    again.setup("fit")
    assert (again.data.test != data.test).nnz == 0  # seeded


def test_config_runs_on_ratings_dat(ratings_dir, tmp_path):
    folder, _ = ratings_dir
    run_cli("fit", "--config", CONFIGS / "mf" / "ml-1m-ratings.yaml", "--data.init_args.data_dir", folder,
            "--run_root", tmp_path, "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false")
    out = results(tmp_path / "mf-ml-1m-ratings")
    assert out["dataset"] == "ml-1m-ratings" and out["test"]["test/recall@20"] >= 0


def test_without_ratings_dat_the_error_names_the_file_and_source(tmp_path):
    with pytest.raises(DataFormatError) as err:
        module_from_config(tmp_path).setup("fit")
    msg = str(err.value)
    assert f"{tmp_path / 'ml-1m-ratings' / 'ratings.dat'}: file not found" in msg
    assert "ml-1m.zip" in msg
