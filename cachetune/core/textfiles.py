"""Reading the text files users hand cachetune: every error names the file and, where it can, the line.

A file that is not UTF-8 text is one error naming the line of its first bad byte (not Python's
``UnicodeDecodeError ... position 3``); JSON errors name their line; CSV files are read
strictly, so an unterminated quote is an error naming the line where the field starts
instead of one giant field that swallows the rest of the file.
"""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

from cachetune.core.errors import CachetuneError

PathLike = Union[str, Path]


def not_utf8(path: PathLike) -> CachetuneError:
    """The error for ``path`` when it does not decode as UTF-8, naming the line of the first bad byte."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return CachetuneError(f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8", path, line)
    return CachetuneError("not UTF-8 text; save the file as UTF-8", path)


@contextmanager
def reading_text(path: PathLike) -> Iterator[None]:
    """Turn a decoding error raised while the block reads ``path`` into :func:`not_utf8`'s error."""
    try:
        yield
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def read_text(path: PathLike) -> str:
    """The whole of a UTF-8 text file."""
    with reading_text(path):
        return Path(path).read_text(encoding="utf-8")


def read_json(path: PathLike):
    """A JSON file's value; invalid JSON names its line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise CachetuneError(f"invalid JSON: {exc.msg}", path, exc.lineno) from None


def iter_csv(path: PathLike, delimiter: Optional[str] = None) -> Iterator[Tuple[int, List[str]]]:
    """``(line, cells)`` per non-blank record of a CSV/TSV file, the header first (its cells
    stripped, a byte-order mark dropped). ``delimiter`` None: sniffed among ``,``, tab and ``;``.

    Read strictly: a quote that is never closed is an error naming the line where its record
    starts (Python's csv module would otherwise swallow the rest of the file into one field).
    """
    path = Path(path)
    if not path.is_file():
        raise CachetuneError("file not found", path)
    with reading_text(path), open(path, newline="", encoding="utf-8") as fh:
        if delimiter is None:
            sample = fh.read(4096)
            fh.seek(0)
            try:
                delimiter = csv.Sniffer().sniff(sample, delimiters=",\t;").delimiter
            except csv.Error:
                delimiter = ","
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        start, header = 1, True
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                what = "a quote that is never closed" if "end of data" in str(exc) else f"bad CSV ({exc})"
                raise CachetuneError(what, path, start) from None
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if header:
                cells, header = [cell.strip().lstrip("\ufeff") for cell in cells], False
            yield line, cells
