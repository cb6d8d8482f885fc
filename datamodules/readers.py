"""Readers for interaction files. Each returns plain numpy arrays and raises :class:`DataFormatError` naming the file,
the line and the expected format on the first problem it finds.

Formats:

- LightGCN / NGCF txt (``train.txt``, ``valid.txt``, ``test.txt``): one line per user, ``user item item ...``,
  space separated, 0-based ids (He et al., SIGIR'20; Wang et al., SIGIR'19).
- MovieLens: ``u.data`` (tab separated ``user item rating timestamp``), ``ratings.dat`` (``::`` separated),
  ``ratings.csv`` (comma separated with a ``userId,movieId,rating,timestamp`` header).
- Any delimited table with a column mapping (:func:`read_table`).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from datamodules.errors import DataFormatError, missing_file

LIGHTGCN_FORMAT = "one line per user: 'user_id item_id [item_id ...]', space separated non-negative integers"

PathLike = Union[str, Path]


def resolve_data_dir(data_dir: Optional[PathLike] = None) -> Path:
    """The folder real data is read from: the argument, else ``$RECOT_DATA``, else ``./data``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("RECOT_DATA")
    return Path(env).expanduser() if env else Path("data")


def read_lightgcn(path: PathLike, *, num_users: Optional[int] = None, num_items: Optional[int] = None,
                  allow_empty_users: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read a LightGCN txt file into ``(users, items)`` int64 arrays, one entry per interaction.

    ``num_users`` / ``num_items``, when known (from ``user_list.txt`` / ``item_list.txt``), bound the ids.
    A line holding a user but no item is an error unless ``allow_empty_users``.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, LIGHTGCN_FORMAT)
    users: list[int] = []
    counts: list[int] = []
    items: list[np.ndarray] = []
    with path.open("r") as fh:
        for lineno, line in enumerate(fh, start=1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                ids = np.array(tokens, dtype=np.int64)
            except ValueError:
                bad = next(t for t in tokens if not _is_int(t))
                raise DataFormatError(path, f"'{bad}' is not an integer id", line=lineno,
                                      expected=LIGHTGCN_FORMAT) from None
            if (ids < 0).any():
                raise DataFormatError(path, f"negative id {ids[ids < 0][0]}", line=lineno, expected=LIGHTGCN_FORMAT)
            user = int(ids[0])
            if num_users is not None and user >= num_users:
                raise DataFormatError(path, f"user id {user} out of range: the dataset has {num_users} users "
                                      f"(ids 0..{num_users - 1})", line=lineno, expected=LIGHTGCN_FORMAT)
            row = ids[1:]
            if row.size == 0 and not allow_empty_users:
                raise DataFormatError(path, f"user {user} has no items", line=lineno, expected=LIGHTGCN_FORMAT)
            if num_items is not None and row.size and row.max() >= num_items:
                raise DataFormatError(path, f"item id {row.max()} out of range: the dataset has {num_items} items "
                                      f"(ids 0..{num_items - 1})", line=lineno, expected=LIGHTGCN_FORMAT)
            users.append(user)
            counts.append(row.size)
            items.append(row)
    if not users:
        raise DataFormatError(path, "no interactions in file", expected=LIGHTGCN_FORMAT)
    user_arr = np.repeat(np.asarray(users, dtype=np.int64), np.asarray(counts, dtype=np.int64))
    item_arr = np.concatenate(items) if items else np.empty(0, dtype=np.int64)
    return user_arr, item_arr


def read_id_list(path: PathLike) -> Optional[np.ndarray]:
    """Read a LightGCN ``user_list.txt`` / ``item_list.txt`` (header ``org_id remap_id``): original id per index.

    Returns None when the file does not exist (the lists are optional)."""
    path = Path(path)
    if not path.is_file():
        return None
    org: list[str] = []
    with path.open("r") as fh:
        header = fh.readline().split()
        if header[:2] != ["org_id", "remap_id"]:
            raise DataFormatError(path, f"unexpected header {' '.join(header)!r}", line=1,
                                  expected="a header 'org_id remap_id', then one 'org_id remap_id' per line")
        for lineno, line in enumerate(fh, start=2):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 2 or not _is_int(tokens[1]) or int(tokens[1]) != len(org):
                raise DataFormatError(path, f"malformed line {line.strip()!r}", line=lineno,
                                      expected=f"'org_id remap_id' with remap ids 0, 1, 2, ... in order "
                                               f"(this line should have remap_id {len(org)})")
            org.append(tokens[0])
    return np.asarray(org)


# MovieLens: file name -> (separator, has header, description)
MOVIELENS_FILES = {
    "u.data": ("\t", False, "tab separated 'user_id item_id rating timestamp' (MovieLens-100K)"),
    "ratings.dat": ("::", False, "'UserID::MovieID::Rating::Timestamp' (MovieLens-1M/10M)"),
    "ratings.csv": (",", True, "a header 'userId,movieId,rating,timestamp', then comma separated rows (MovieLens-20M/25M)"),
}


def read_movielens(path: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a MovieLens ratings file into raw ``(users, items, ratings)`` arrays (ids as in the file)."""
    path = Path(path)
    if path.name not in MOVIELENS_FILES:
        raise DataFormatError(path, "not a MovieLens ratings file",
                              expected="one of " + ", ".join(MOVIELENS_FILES))
    sep, header, expected = MOVIELENS_FILES[path.name]
    table = read_table(path, sep=sep, columns=(0, 1, 2), header=header, expected=expected)
    return table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2]


def read_table(path: PathLike, *, sep: str, columns: Sequence[int], header: bool = False,
               expected: Optional[str] = None) -> np.ndarray:
    """Read numeric ``columns`` of a delimited file into a float64 array ``(rows, len(columns))``.

    A fast C parser does the work; only when it fails is the file scanned line by line to report the first bad line.
    """
    path = Path(path)
    expected = expected or f"rows separated by {sep!r} with numeric columns {list(columns)}"
    if not path.is_file():
        raise missing_file(path, expected)
    text = path.read_text()
    if len(sep) > 1:
        if "\x1f" in text:
            raise DataFormatError(path, "contains the control character 0x1f", expected=expected)
        text = text.replace(sep, "\x1f")
        delim = "\x1f"
    else:
        delim = sep
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=delim, usecols=tuple(columns), skiprows=int(header),
                           dtype=np.float64, ndmin=2, comments=None)
    except ValueError:
        _raise_first_bad_line(path, text, delim, columns, header, expected)
        raise  # pragma: no cover - the scan above always finds the line the C parser rejected
    if table.shape[0] == 0:
        raise DataFormatError(path, "no rows", expected=expected)
    return table


def _raise_first_bad_line(path: Path, text: str, delim: str, columns: Sequence[int], header: bool,
                          expected: str) -> None:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if (header and lineno == 1) or not line.strip():
            continue
        fields = line.split(delim)
        if len(fields) <= max(columns):
            raise DataFormatError(path, f"{len(fields)} field(s) in {line.strip()!r}, need at least {max(columns) + 1}",
                                  line=lineno, expected=expected)
        for c in columns:
            try:
                float(fields[c])
            except ValueError:
                raise DataFormatError(path, f"field {c + 1} is {fields[c].strip()!r}, not a number", line=lineno,
                                      expected=expected) from None


def _is_int(token: str) -> bool:
    try:
        int(token)
        return True
    except ValueError:
        return False
