"""Plain and gzipped UTF-8 text files, read line by line as the whole of ``mt`` reads them:
split on ``\\n`` only, a trailing ``\\r`` dropped, invalid UTF-8 replaced with a warning.

Kept apart from :mod:`mt.data.corpora` so that reading a text file (``mt-translate``'s input)
does not import ``datasets``.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from pathlib import Path

from mt.errors import DataError

log = logging.getLogger(__name__)

_READ_BYTES = 1 << 24  # lines are decoded in chunks of about 16 MiB


def split_lines(raw: bytes, source: str) -> list[str]:
    """Decode UTF-8 bytes into lines, splitting on ``\n`` only.

    ``str.splitlines`` would also split on form feeds, U+2028 and other separators inside a
    line, breaking the one-line-in, one-line-out contract. A trailing ``\r`` is dropped from
    each line; invalid UTF-8 is replaced by U+FFFD with one warning naming ``source``.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        log.warning("%s: invalid UTF-8 (first at byte %d) replaced by U+FFFD", source, error.start)
        text = raw.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_lines(path: Path) -> list[str]:
    """Lines of a plain or gzipped UTF-8 text file (see :func:`split_lines`).

    Raises:
        DataError: the file is missing or not readable.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return split_lines(f.read(), str(path))
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}") from None


def iter_lines(path: Path) -> Iterator[str]:
    """Lines of a plain or gzipped UTF-8 file, read in chunks, split as :func:`split_lines`
    does (on ``\\n`` only; invalid UTF-8 replaced, with a warning per chunk).

    Raises:
        DataError: the file is missing or not readable.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            while chunk := f.readlines(_READ_BYTES):  # whole lines, so no character is cut
                yield from split_lines(b"".join(chunk), str(path))
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
