"""Downloads of missing data sets, against a local HTTP server: checksums, archives, corrupted files, offline."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from datamodules import DataFormatError, InteractionDataModule, load_interactions
from datamodules import download
from datamodules.download import Remote, ensure_dataset
from tests.conftest import CONFIGS, results, run_cli


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


TRAIN = "".join(f"{u} " + " ".join(str((u * 7 + k) % 30) for k in range(6)) + "\n" for u in range(20)).encode()
TEST = "".join(f"{u} {(u * 7 + 6) % 30} {(u * 7 + 7) % 30}\n" for u in range(20)).encode()
RATINGS = "".join(f"{u}\t{i}\t{1 + (u + i) % 5}\t88125{u:04d}\n" for u in range(1, 16) for i in range(1, 12)).encode()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server over tmp_path/www: yields (folder, base URL). Downloads are allowed while it runs."""
    monkeypatch.delenv("RECOT_OFFLINE", raising=False)
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


def test_a_missing_data_set_is_downloaded_verified_and_loaded(server, tmp_path, monkeypatch, capsys):
    www, url = server
    (www / "train.txt").write_bytes(TRAIN)
    (www / "test.txt").write_bytes(TEST)
    monkeypatch.setitem(download.SOURCES, "gowalla", {
        "train.txt": Remote(f"{url}/train.txt", git_blob=git_blob(TRAIN)),  # checked by git blob id, as yelp2018's
        "test.txt": Remote(f"{url}/test.txt", sha256(TEST))})
    data_dir = tmp_path / "data"
    # what a user runs on a fresh machine: the shipped config, the data folder empty
    run_cli("fit", "--config", CONFIGS / "mf" / "gowalla.yaml", "--data.init_args.data_dir", data_dir,
            "--run_root", tmp_path / "runs", "--trainer.max_epochs", "1", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")
    assert (data_dir / "gowalla" / "train.txt").read_bytes() == TRAIN
    assert (data_dir / "gowalla" / "test.txt").read_bytes() == TEST
    assert results(tmp_path / "runs" / "mf-gowalla")["test"]
    assert "100%" in capsys.readouterr().err  # the progress bar
    assert _no_partial_files(data_dir)
    # present now: loading again does not download (the server is gone for this one)
    monkeypatch.setitem(download.SOURCES, "gowalla", {"train.txt": Remote("http://127.0.0.1:9/x", sha256(b""))})
    data = InteractionDataModule("gowalla", data_dir=str(data_dir))
    data.prepare_data()
    data.setup("fit")
    assert data.data.num_users == 20 and data.data.test.nnz == 40


def test_members_of_an_archive_are_extracted_and_verified(server, tmp_path, monkeypatch):
    www, url = server
    with zipfile.ZipFile(www / "ml-100k.zip", "w") as zf:
        zf.writestr("ml-100k/u.data", RATINGS)
        zf.writestr("ml-100k/u.info", b"15 users\n")
        zf.writestr("ml-100k/allbut.pl", b"# not wanted\n")
    monkeypatch.setitem(download.SOURCES, "ml-100k", {
        "u.data": Remote(f"{url}/ml-100k.zip", sha256(RATINGS), member="ml-100k/u.data"),
        "u.info": Remote(f"{url}/ml-100k.zip", sha256(b"15 users\n"), member="ml-100k/u.info", required=False)})
    data = load_interactions("ml-100k", data_dir=str(tmp_path / "data"), split="random")
    assert data.num_users == 15 and data.num_items == 11
    folder = tmp_path / "data" / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == ["u.data", "u.info"]  # the archive itself is not kept


def test_a_corrupted_download_is_rejected_and_nothing_is_left_behind(server, tmp_path):
    www, url = server
    (www / "train.txt").write_bytes(TRAIN[:-10] + b"9 9 9 9 9\n")  # same size, other bytes
    sources = {"tiny": {"train.txt": Remote(f"{url}/train.txt", sha256(TRAIN))}}
    folder = tmp_path / "data" / "tiny"
    with pytest.raises(DataFormatError, match="checksum mismatch") as err:
        ensure_dataset("tiny", folder, sources=sources, progress=False)
    msg = str(err.value)
    assert str(folder / "train.txt") in msg and sha256(TRAIN) in msg and f"{url}/train.txt" in msg
    assert not (folder / "train.txt").exists() and _no_partial_files(tmp_path / "data")
    # a corrupted archive member, likewise
    with zipfile.ZipFile(www / "a.zip", "w") as zf:
        zf.writestr("a/u.data", b"corrupted\n")
    sources = {"tiny": {"u.data": Remote(f"{url}/a.zip", sha256(RATINGS), member="a/u.data")}}
    with pytest.raises(DataFormatError, match="checksum mismatch"):
        ensure_dataset("tiny", folder, sources=sources, progress=False)
    assert not (folder / "u.data").exists() and _no_partial_files(tmp_path / "data")


def test_offline_the_error_names_the_url_and_where_to_put_the_files(tmp_path, monkeypatch):
    sources = {"tiny": {"train.txt": Remote("http://127.0.0.1:9/train.txt", sha256(TRAIN)),  # port 9: refused
                        "test.txt": Remote("http://127.0.0.1:9/test.txt", sha256(TEST))}}
    folder = tmp_path / "data" / "tiny"
    with pytest.raises(DataFormatError, match="file not found") as err:
        ensure_dataset("tiny", folder, sources=sources, progress=False)
    msg = str(err.value)
    for name in ("train.txt", "test.txt"):
        assert f"http://127.0.0.1:9/{name}" in msg and str(folder / name) in msg
    assert not folder.exists()  # no empty folder left behind either
    monkeypatch.setenv("RECOT_OFFLINE", "1")
    with pytest.raises(DataFormatError, match=r"(?s)file not found.*RECOT_OFFLINE=1"):
        load_interactions("gowalla", data_dir=str(tmp_path / "data"))
    monkeypatch.delenv("RECOT_OFFLINE")
    with pytest.raises(DataFormatError, match=r"(?s)file not found.*download=False"):
        load_interactions("gowalla", data_dir=str(tmp_path / "data"), download=False)


def test_the_source_table_is_complete():
    """Every entry has a checksum of the right form, and an archive's members come from one URL."""
    for dataset, files in download.SOURCES.items():
        assert any(r.required for r in files.values()), dataset
        for name, remote in files.items():
            assert remote.url.startswith("https://"), (dataset, name)
            assert (remote.sha256 and len(remote.sha256) == 64) or (remote.git_blob and len(remote.git_blob) == 40)
            assert (remote.member is not None) == remote.url.endswith(".zip"), (dataset, name)
