"""Reader for the Netflix Prize ratings (SinkhornCF / Mult-VAE's Netflix data set).

Format (``combined_data_1.txt`` ... ``combined_data_4.txt`` of the Kaggle copy, or the per-movie ``mv_*.txt`` files of
the original ``training_set``): a line ``MovieID:`` opens each movie's block, followed by one
``CustomerID,Rating,Date`` line per rating of that movie.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Union

import numpy as np

from datamodules.errors import DataFormatError, missing_file

NETFLIX_FORMAT = "blocks of a line 'MovieID:' followed by 'CustomerID,Rating,Date' lines (Netflix Prize)"
NETFLIX_SOURCE = ("Get the Netflix Prize data from https://www.kaggle.com/netflix-inc/netflix-prize-data "
                  "(combined_data_1.txt ... combined_data_4.txt) into this folder.")
_HEADER = re.compile(r"^\s*(\d+):\s*$", re.MULTILINE)


def netflix_files(folder: Union[str, Path]) -> list[Path]:
    """The rating files of a Netflix folder: ``combined_data_*.txt``, else ``training_set/mv_*.txt``."""
    folder = Path(folder)
    files = sorted(folder.glob("combined_data_*.txt")) or sorted((folder / "training_set").glob("mv_*.txt"))
    if not files:
        raise missing_file(folder / "combined_data_1.txt", NETFLIX_FORMAT, hint=NETFLIX_SOURCE)
    return files


def read_netflix_file(path: Union[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Netflix rating file -> raw ``(users, items, ratings)`` arrays (customer and movie ids as in the file)."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, NETFLIX_FORMAT, hint=NETFLIX_SOURCE)
    text = path.read_text()
    headers = list(_HEADER.finditer(text))
    if not headers or text[: headers[0].start()].strip():
        line = 1 + text[: headers[0].start()].count("\n") if headers else 1
        raise DataFormatError(path, "ratings before the first 'MovieID:' line", line=line, expected=NETFLIX_FORMAT)
    users, items, ratings = [], [], []
    for h, nxt in zip(headers, headers[1:] + [None]):
        block = text[h.end(): nxt.start() if nxt is not None else len(text)]
        if not block.strip():
            continue
        try:
            table = np.loadtxt(io.StringIO(block), delimiter=",", usecols=(0, 1), dtype=np.int64, ndmin=2,
                               comments=None)
        except ValueError:
            first = 1 + text[: h.end()].count("\n")
            for offset, row in enumerate(block.splitlines()):
                fields = row.split(",")
                if row.strip() and (len(fields) < 2 or not all(f.strip().isdigit() for f in fields[:2])):
                    raise DataFormatError(path, f"malformed rating line {row.strip()!r}", line=first + offset,
                                          expected=NETFLIX_FORMAT) from None
            raise
        users.append(table[:, 0])
        ratings.append(table[:, 1].astype(np.float64))
        items.append(np.full(table.shape[0], int(h.group(1)), dtype=np.int64))
    if not users:
        raise DataFormatError(path, "no ratings in file", expected=NETFLIX_FORMAT)
    return np.concatenate(users), np.concatenate(items), np.concatenate(ratings)


def read_netflix(folder: Union[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rating files of a Netflix folder -> raw ``(users, items, ratings)``."""
    parts = [read_netflix_file(f) for f in netflix_files(folder)]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))
