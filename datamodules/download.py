"""Public data sets fetched into the data folder when missing, each file verified by its checksum.

One table, :data:`SOURCES`: data set (its folder under ``data_dir``) -> file (relative to that folder) ->
:class:`Remote` (URL, checksum, and the member's name when the URL is an archive). URLs are pinned to a commit where
the host has commits. Checksums are those in ``shared/data/MANIFEST.md`` (sha256 of the files as published); where only
a git blob id is known (LightGCN's Yelp2018 / Amazon-Book ``train.txt``) the file is checked against that.

A download goes to a temporary name in the target folder, is verified, and only then renamed into place: a failed or
corrupted download leaves nothing behind. Offline (or with ``RECOT_OFFLINE=1``) the error is the usual
:class:`DataFormatError` ("file not found") naming the URLs and the paths to put the files at.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from datamodules.errors import DataFormatError, missing_file


@dataclass(frozen=True)
class Remote:
    """Where one file comes from and how it is checked.

    Args:
        url: the file, or the zip archive holding it.
        sha256: hex sha256 of the file's bytes.
        git_blob: git's blob id of the file (sha1 of ``b"blob <size>\\0" + bytes``), where no sha256 is published.
        member: the file's name inside the archive at ``url``.
        required: False for files the loaders do not read (id maps, READMEs): fetched along with a missing required
            file, but their absence alone never triggers a download.
    """

    url: str
    sha256: Optional[str] = None
    git_blob: Optional[str] = None
    member: Optional[str] = None
    required: bool = True


_LIGHTGCN = "https://raw.githubusercontent.com/kuandeng/LightGCN/b067ec05f16a24e0e1efe63cd82385f0c469af20/Data"
_LIGHTGCNPP = "https://raw.githubusercontent.com/geon0325/LightGCNpp/a394f79a7aceb8f485f6bcb549b4865fe83f1d49/data"
_ML100K = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
_TU = "https://www.chrsmrrs.com/graphkerneldatasets"  # where torch_geometric.datasets.TUDataset downloads from


def _lightgcn(name: str, train: Remote, test: str, user_list: str, item_list: str) -> dict[str, Remote]:
    return {"train.txt": train, "test.txt": Remote(f"{_LIGHTGCN}/{name}/test.txt", test),
            "user_list.txt": Remote(f"{_LIGHTGCN}/{name}/user_list.txt", user_list, required=False),
            "item_list.txt": Remote(f"{_LIGHTGCN}/{name}/item_list.txt", item_list, required=False)}


def _tu(name: str, files: dict[str, str]) -> dict[str, Remote]:
    return {f"raw/{file}": Remote(f"{_TU}/{name}.zip", digest, member=f"{name}/{file}",
                                  required=file != "README.txt") for file, digest in files.items()}


SOURCES: dict[str, dict[str, Remote]] = {
    # LightGCN / NGCF splits (He et al. SIGIR'20; Wang et al. SIGIR'19)
    "gowalla": _lightgcn(
        "gowalla", Remote(f"{_LIGHTGCN}/gowalla/train.txt",
                          "7244696fdeb23911319cf7b689f2e15a3c4c92549c873a5677b44e3f13cc3e62"),
        "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3",
        "5344c4d0deef610e1f148f23ad216a0db03b36f88834cd39a06786a672c5f5a1",
        "6b186f92890cc3f0c15a6dae5d6285f125a302bb8c5ea0cd9a16cf9c16347139"),
    "yelp2018": _lightgcn(
        "yelp2018", Remote(f"{_LIGHTGCN}/yelp2018/train.txt", git_blob="cda12361055ba448ae4bd1070f6000c16dea8f22"),
        "9cd9b37926cd1447a06625ffa7914527573fb097c10cb0bbdb1d1b8ded3742fe",
        "4931519d8b3c40d71a34cc386c3287b6d63c1be9a82edd7ee6bfad765e640778",
        "1091bc824b60561906df552f2f7cb3ec61767b1e46fd4386b44400ae49712007"),
    "amazon-book": _lightgcn(
        "amazon-book", Remote(f"{_LIGHTGCN}/amazon-book/train.txt",
                              git_blob="6ef55159c5f1fd7f6d86eb9ff290d0cc2854ac99"),
        "6250754994dd953b91b48dccdd77a73f318e0634b4757c2abfcc9d33a54ab0f5",
        "b59cc7e4a1826e1eb313c4f0557bdafbb70661346d9c93911b97fe0e9fbd7078",
        "8eee6caf6e666d95fc24ca8e0ec089ee90b1b2d1dc17933726359a6b3ecd62cb"),
    # MovieLens-1M as LightGCN++'s implicit split (ratings >= 3; Lee, Kim & Shin, RecSys'24)
    "ml-1m": {
        "train.txt": Remote(f"{_LIGHTGCNPP}/ml-1m/train.txt",
                            "dfa3a7a866feade29ca5722ac0423c1b0317ac1f6ad38a55fc1a7ceeb9cee3bb"),
        "valid.txt": Remote(f"{_LIGHTGCNPP}/ml-1m/valid.txt",
                            "429fe0d750b304677898d7eeb1080764bbf06550b94c9508b8cc8cd0573e3dfc"),
        "test.txt": Remote(f"{_LIGHTGCNPP}/ml-1m/test.txt",
                           "0d58f78bbf606f401aec2efe3f519b945c458c8398955f986e03b880fbbd16a6")},
    # MovieLens-100K from GroupLens (research use only, no redistribution: see its README)
    "ml-100k": {
        "u.data": Remote(_ML100K, "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
                         member="ml-100k/u.data"),
        **{file: Remote(_ML100K, digest, member=f"ml-100k/{file}", required=False) for file, digest in {
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
            "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
            "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
            "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
            "u.info": "5b0a40b2e47a729ee6203063f6dcf8790c2e63f5a18663e6ee318a72c5f3c27b"}.items()}},
    # TU graph classification sets, laid out as torch_geometric.datasets.TUDataset(root=<data_dir>/TU) expects
    "TU/MUTAG": _tu("MUTAG", {
        "MUTAG_A.txt": "d9656ca7493f3445d737c711710bb36fd432dddd1c0ea32e1d4713c86ebd28e2",
        "MUTAG_edge_labels.txt": "4669ce755075ff86c3240709345745886400908fa637a49310459b9c267b3e56",
        "MUTAG_graph_indicator.txt": "7d520a4d6c7961c0cdeabe076d8fe27e795b6d373485c9a2b744987e560a2056",
        "MUTAG_graph_labels.txt": "a1518ea39ba3426bd42f57396b9c4baffe68e9adc718caeeab0119c6591a5f2c",
        "MUTAG_node_labels.txt": "678f429965490e84dd27713017538c995fc05d1621beac910848b600015ee863",
        "README.txt": "66de65e4826e112482ec680bbbdf7c0af56d826ce935c110786d130b79b76b06"}),
    "TU/PROTEINS": _tu("PROTEINS", {
        "PROTEINS_A.txt": "4c4b33e272fc95cac6d27ed6d5d12b9a852c8610e91fff59f8f0dbdd5a20df67",
        "PROTEINS_graph_indicator.txt": "8d4ff1e852a5c28561e9bffb44cf9490bc552b13a3b6156dd12dc7f44e9afc4a",
        "PROTEINS_graph_labels.txt": "c0ef9810c440775252872318d0c8adc385588e14bc4c47a2c34aa96ee3c7cdcd",
        "PROTEINS_node_attributes.txt": "54eef829abb37e458a5fbf3a3c581e48e5810e220463c2cd951856b9ceb08f07",
        "PROTEINS_node_labels.txt": "f758e8ad3d6e3c026b50833d75f6f90735b94eb3345e4243707f495ca8afea8d",
        "README.txt": "e9c4ed2c9a4059ddfdc2eb7330ebecfc6c8d42dabd5ce2ee67f28aed0db49da7"}),
    "TU/NCI1": _tu("NCI1", {
        "NCI1_A.txt": "2c028eda59a5fe96e2265a63d9ac236901bd9a7dc658498be13cd704a703076d",
        "NCI1_graph_indicator.txt": "ffe5acfa754b057d5ce0dc725c5aadb631628161886cc040d38c719635257dc5",
        "NCI1_graph_labels.txt": "fae44681e70113f496256ae87eaac33b7836e3a97fe8e023933b84fde6a5c8a2",
        "NCI1_node_labels.txt": "dc0a22b6cbff0c939de00373e823977ba32b358f560e4288d7602f7b51407ee2",
        "README.txt": "1866d918409a22531ef00ff7b0f72200c3a06722342c23c5e3299cebb5cd8757"}),
    "TU/IMDB-BINARY": _tu("IMDB-BINARY", {
        "IMDB-BINARY_A.txt": "23c8964bab82f81469271186d721131714a265d0ca8c44ae048118da1d0c4092",
        "IMDB-BINARY_graph_indicator.txt": "415cc3ba25b8c647dcf34d3de034f675ee070616f3b803be939cb26773489f26",
        "IMDB-BINARY_graph_labels.txt": "63a44411fd6342b9c4429828c16e144a2a11ef5244e25bb60f0ffa8b3ee2ffce"}),
    "TU/IMDB-MULTI": _tu("IMDB-MULTI", {
        "IMDB-MULTI_A.txt": "fb538b23758d78df199272301e57dc74ad5754d6c3d79d5ed0a343193ddf4ec6",
        "IMDB-MULTI_graph_indicator.txt": "0274532a0e47dad9cdd21c08995c2265e43040a2c2a3b36c62fdb790994571d3",
        "IMDB-MULTI_graph_labels.txt": "613c2357b6b996f6f04b91697a99da87774820f9d08bf22813992f4c7afda855"}),
}

TIMEOUT_S = 30.0
CHUNK = 1 << 20


def offline() -> bool:
    return os.environ.get("RECOT_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def ensure_dataset(dataset: str, folder: Path, *, download: bool = True, progress: bool = True,
                   sources: Mapping[str, Mapping[str, Remote]] = SOURCES, hint: str = "") -> list[Path]:
    """Make ``folder`` hold the files of ``dataset`` (a key of :data:`SOURCES`); returns the files downloaded.

    Nothing happens when every required file is there (existing files are trusted, not re-hashed). Otherwise every
    missing file of the data set is downloaded and verified. Raises :class:`DataFormatError` ("file not found") when
    downloading is off or fails, naming each URL and where to put its file, and ("checksum mismatch") when a
    download differs from the published file. ``hint`` is added to the not-found message.
    """
    files = sources.get(dataset)
    if not files:
        return []
    folder = Path(folder)
    if all((folder / name).is_file() for name, remote in files.items() if remote.required):
        return []
    missing = {name: remote for name, remote in files.items() if not (folder / name).is_file()}
    if not download or offline():
        why = "downloading is off (download=False)" if not download else "downloading is off (RECOT_OFFLINE=1)"
        where = folder if not folder.exists() else folder / next(iter(missing))
        raise _not_found(dataset, where, folder, missing, why, hint)
    where = folder if not folder.exists() else folder / next(iter(missing))

    def not_found(why: str) -> DataFormatError:  # lists every missing file, whichever download failed
        return _not_found(dataset, where, folder, missing, why, hint)

    by_url: dict[str, dict[str, Remote]] = {}
    for name, remote in missing.items():
        by_url.setdefault(remote.url, {})[name] = remote
    fetched = []
    for url, wanted in by_url.items():
        fetched += _fetch(folder, url, wanted, progress, not_found)
    return fetched


def _not_found(dataset: str, where: Path, folder: Path, missing: Mapping[str, Remote], why: str,
               hint: str) -> DataFormatError:
    lines = []
    for name, remote in missing.items():
        source = remote.url + (f" (member {remote.member})" if remote.member else "")
        lines.append(f"    {source}\n      -> {folder / name}")
    return missing_file(where, f"the '{dataset}' files: " + ", ".join(missing),
                        hint=f"Could not download them: {why}. Get them from:\n" + "\n".join(lines)
                             + "\n  Set data_dir (or $RECOT_DATA) to the folder that holds the data sets."
                             + (f" {hint}" if hint else ""))


def _fetch(folder: Path, url: str, wanted: Mapping[str, Remote], progress: bool,
           not_found: Callable[[str], DataFormatError]) -> list[Path]:
    archive = any(r.member for r in wanted.values())
    tmp = folder / f".{Path(url).name}.{os.getpid()}.part"
    try:
        _download(url, tmp, progress, not_found)
        if not archive:
            (name, remote), = wanted.items()
            _verify_and_place(tmp, folder / name, remote)
            return [folder / name]
        placed = []
        try:
            with zipfile.ZipFile(tmp) as zf:
                names = set(zf.namelist())
                for name, remote in wanted.items():
                    if remote.member not in names:
                        raise DataFormatError(tmp.name, f"the archive from {url} has no member {remote.member}",
                                              expected=f"a zip holding {', '.join(r.member for r in wanted.values())}")
                    part = folder / f".{Path(name).name}.{os.getpid()}.part"
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    try:
                        with zf.open(remote.member) as src, part.open("wb") as dst:
                            shutil.copyfileobj(src, dst, CHUNK)
                        _verify_and_place(part, folder / name, remote)
                    finally:
                        part.unlink(missing_ok=True)
                    placed.append(folder / name)
        except zipfile.BadZipFile:
            raise DataFormatError(folder / Path(url).name, f"the download from {url} is not a zip archive",
                                  expected="a zip archive") from None
        return placed
    finally:
        tmp.unlink(missing_ok=True)


def _download(url: str, target: Path, progress: bool, not_found: Callable[[str], DataFormatError]) -> None:
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except (urllib.error.URLError, socket.timeout, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise not_found(f"{url}: {reason}") from None
    with response:
        total = int(response.headers.get("Content-Length") or 0) or None
        try:  # only now that the server answered: an offline attempt leaves no folder behind
            target.parent.mkdir(parents=True, exist_ok=True)
            fh = target.open("wb")
        except OSError as err:
            raise not_found(f"cannot write into {target.parent} ({err.strerror or err})") from None
        from tqdm.auto import tqdm
        with fh, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                           desc=Path(url).name, disable=not progress,
                                           mininterval=0.5) as bar:
            try:
                while chunk := response.read(CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
            except (socket.timeout, OSError) as err:
                raise not_found(f"{url}: download interrupted ({err})") from None
    if total is not None and target.stat().st_size != total:
        raise not_found(f"{url}: download incomplete ({target.stat().st_size} of {total} bytes)")


def file_digest(path: Path, remote: Remote) -> tuple[str, str, str]:
    """(kind, expected, actual) for the checksum ``remote`` publishes: ``sha256`` or ``git blob``."""
    if remote.sha256:
        h, kind, expected = hashlib.sha256(), "sha256", remote.sha256
    elif remote.git_blob:
        h, kind, expected = hashlib.sha1(), "git blob", remote.git_blob
        h.update(b"blob %d\0" % path.stat().st_size)
    else:
        raise ValueError(f"{remote.url}: no checksum to verify the download against")
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return kind, expected.lower(), h.hexdigest()


def _verify_and_place(part: Path, target: Path, remote: Remote) -> None:
    kind, expected, actual = file_digest(part, remote)
    if actual != expected:
        part.unlink(missing_ok=True)
        source = remote.url + (f" (member {remote.member})" if remote.member else "")
        raise DataFormatError(target, "checksum mismatch: the downloaded file is not the published one, and was "
                              "not kept", expected=f"{kind} {expected}",
                              hint=f"got {kind} {actual} from {source}. Retry; if it persists, the source has "
                                   f"changed: get the file by hand and check it.")
    os.replace(part, target)  # atomic within the folder: the file appears whole or not at all
