"""One exception type for bad input data, so every loader fails the same way: file, line, what was expected."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class DataFormatError(ValueError):
    """Raised for missing, malformed or inconsistent data files.

    The message always names the file (and the line where one applies) and the expected format, so a user can
    fix the input without reading recot's source.
    """

    def __init__(self, path: Union[str, Path], problem: str, *, line: Optional[int] = None,
                 expected: Optional[str] = None, hint: Optional[str] = None):
        where = f"{path}" if line is None else f"{path}, line {line}"
        msg = f"{where}: {problem}"
        if expected:
            msg += f"\n  expected: {expected}"
        if hint:
            msg += f"\n  {hint}"
        super().__init__(msg)
        self.path = str(path)
        self.line = line


def missing_file(path: Union[str, Path], expected: str, hint: Optional[str] = None) -> DataFormatError:
    return DataFormatError(path, "file not found", expected=expected, hint=hint)
