"""The one exception type the CLI turns into a single line of output."""

from __future__ import annotations

from typing import Optional, Union
from pathlib import Path


class CachetuneError(Exception):
    """A user-facing error: bad input, a missing file, an incompatible model.

    ``path`` and ``line`` are prepended as ``path:line: message`` so the user can jump to it.
    """

    def __init__(self, message: str, path: Optional[Union[str, Path]] = None, line: Optional[int] = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path:
            where = self.path + (f":{self.line}" if self.line else "") + ": "
        return where + self.message
