import numpy as np
import pytest

from datamodules import DataFormatError
from datamodules.readers import read_id_list, read_lightgcn, read_movielens, read_table, resolve_data_dir
from tests.conftest import needs_data


def write(path, text):
    path.write_text(text)
    return path


def test_lightgcn_lines(tmp_path):
    users, items = read_lightgcn(write(tmp_path / "train.txt", "0 3 1\n1 2\n\n2 0 1 2\n"))
    assert users.tolist() == [0, 0, 1, 2, 2, 2]
    assert items.tolist() == [3, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("text, line, problem", [
    ("0 1 2\n1 x 3\n", 2, "'x' is not an integer id"),
    ("0 1 2\n1\n", 2, "user 1 has no items"),
    ("0 1 -2\n", 1, "negative id -2"),
])
def test_lightgcn_malformed(tmp_path, text, line, problem):
    path = write(tmp_path / "train.txt", text)
    with pytest.raises(DataFormatError) as err:
        read_lightgcn(path)
    msg = str(err.value)
    assert f"{path}, line {line}: {problem}" in msg
    assert "expected: one line per user: 'user_id item_id [item_id ...]'" in msg


def test_lightgcn_id_out_of_range(tmp_path):
    path = write(tmp_path / "test.txt", "0 1\n1 7\n")
    with pytest.raises(DataFormatError, match=r"test.txt, line 2: item id 7 out of range: the dataset has 5 items"):
        read_lightgcn(path, num_items=5)
    with pytest.raises(DataFormatError, match=r"line 2: user id 1 out of range"):
        read_lightgcn(path, num_users=1)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataFormatError, match=r"train.txt: file not found"):
        read_lightgcn(tmp_path / "train.txt")


def test_id_list(tmp_path):
    ids = read_id_list(write(tmp_path / "user_list.txt", "org_id remap_id\n17 0\n5 1\n"))
    assert ids.tolist() == ["17", "5"]
    assert read_id_list(tmp_path / "absent.txt") is None
    with pytest.raises(DataFormatError, match="line 3"):
        read_id_list(write(tmp_path / "item_list.txt", "org_id remap_id\n17 0\n5 7\n"))


@pytest.mark.parametrize("name, text", [
    ("u.data", "1\t10\t5\t881250949\n2\t20\t3\t881250950\n"),
    ("ratings.dat", "1::10::5::978300760\n2::20::3::978300761\n"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,10,5.0,1112486027\n2,20,3.0,1112484676\n"),
])
def test_movielens_formats(tmp_path, name, text):
    users, items, ratings = read_movielens(write(tmp_path / name, text))
    assert users.tolist() == [1, 2] and items.tolist() == [10, 20] and ratings.tolist() == [5.0, 3.0]


def test_movielens_malformed_line(tmp_path):
    path = write(tmp_path / "ratings.dat", "1::10::5::978300760\n2::20\n")
    with pytest.raises(DataFormatError, match=r"ratings.dat, line 2: 2 field\(s\)") as err:
        read_movielens(path)
    assert "UserID::MovieID::Rating::Timestamp" in str(err.value)
    path = write(tmp_path / "u.data", "1\t10\t5\t1\n1\tten\t4\t2\n")
    with pytest.raises(DataFormatError, match=r"u.data, line 2: field 2 is 'ten', not a number"):
        read_movielens(path)


def test_table_with_column_mapping(tmp_path):
    path = write(tmp_path / "log.tsv", "ts\titem\tuser\n1\t7\t3\n2\t8\t4\n")
    table = read_table(path, sep="\t", columns=(2, 1), header=True)
    np.testing.assert_array_equal(table, [[3, 7], [4, 8]])


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("RECOT_DATA", raising=False)
    assert str(resolve_data_dir()) == "data"
    monkeypatch.setenv("RECOT_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert str(resolve_data_dir("elsewhere")) == "elsewhere"


def test_real_gowalla_files():
    folder = needs_data("gowalla")
    users, items = read_lightgcn(folder / "test.txt")
    assert users.size == 217_242 and users.max() == 29_857 and items.max() == 40_980
