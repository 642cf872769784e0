"""Byte-level parsing of separated text files: the MovieLens layouts and the seed rows.

Vectorised: lines and separators are found with NumPy, then pandas' C reader splits the
columns (``parse_columns``), or fields are cut out of the bytes and factorised without a
Python string per cell (``parse_categorical``, for the 11M-line seed-row files). Integer
columns are parsed as integers directly; every other value stays the string in the file.
Input that is not ``encoding`` text, or a line with the wrong number of fields, raises
MalformedInput naming the file and the first bad line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import numpy as np
import pandas as pd

from model.errors import MalformedInput

ENCODING = "latin-1"
_BLOCK_LINES = 1 << 20  # lines factorised at a time by parse_categorical
_SCAN = 1 << 24  # bytes searched for newlines at a time (bounds the boolean temporary)


def parse_columns(
    data: bytes,
    origin: str,
    *,
    sep: bytes,
    fields: int,
    keep: tuple[int, ...],
    integer: tuple[int, ...] = (),
    encoding: str = ENCODING,
) -> dict[int, np.ndarray]:
    """Columns ``keep`` of a separated text file: int64 arrays for ``integer``, else str.

    Every line must hold exactly ``fields`` fields. Raises MalformedInput naming ``origin``
    and the first offending line for an empty file, NUL bytes or a byte-order mark (not
    single-byte text), a wrong field count, a non-integer in an integer column, or text that
    is not valid ``encoding``.
    """
    data, sep, end = _checked_text(data, origin, sep, fields, encoding)
    data = data[:end]  # files read this way are small (ML ratings: ~25 MB)
    raw = np.frombuffer(data, dtype=np.uint8)
    for _ in _line_blocks(raw, _line_ends(raw), origin, sep, fields):
        pass  # field counts: pandas would pad short lines and misreport long ones
    dtypes = {i: (np.int64 if i in integer else str) for i in keep}
    try:
        frame = _read_csv(data, sep, fields, keep, dtypes, encoding)
    except (ValueError, OverflowError) as exc:
        frame = _read_csv(data, sep, fields, keep, dict.fromkeys(keep, str), encoding)
        for i in integer:
            text = frame[i].str.strip()
            bad = np.flatnonzero(~text.str.fullmatch(r"[-+]?\d{1,18}").to_numpy(dtype=bool))
            if len(bad):
                raise MalformedInput(
                    f"{origin}, line {bad[0] + 1}, field {i + 1}: "
                    f"{str(frame[i].iloc[bad[0]])!r} is not an integer"
                ) from None
        raise MalformedInput(f"{origin}: cannot parse ({exc})") from None
    return {
        i: frame[i].to_numpy(dtype=np.int64) if i in integer else frame[i].to_numpy(dtype=str)
        for i in keep
    }


def parse_categorical(
    data: bytes,
    origin: str,
    *,
    sep: bytes,
    fields: int,
    encoding: str = ENCODING,
    vocabulary: list[dict[str, int]] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every column as (codes, values): int32 codes (n,) into its distinct str values (k,).

    For large files of few distinct strings (seed rows: ~11M lines at ML-1M size), where one
    Python string per cell would cost a minute and gigabytes. Fields are cut out of the bytes
    with NumPy and factorised as packed integers, a block of lines at a time; only distinct
    values become strings, exactly as written. Pass the same ``vocabulary`` (one dict per
    column, value -> code, updated in place) to several calls to share one code space
    across files. Same checks and errors as parse_columns.
    """
    data, sep, end = _checked_text(data, origin, sep, fields, encoding)
    raw = np.frombuffer(data, dtype=np.uint8)[:end]  # a view: no copy of a 270 MB file
    vocabulary = vocabulary if vocabulary is not None else [{} for _ in range(fields)]
    line_ends = _line_ends(raw)
    codes = [np.empty(len(line_ends), dtype=np.int32) for _ in range(fields)]
    for first, starts, ends, seps in _line_blocks(raw, line_ends, origin, sep, fields):
        for i, known in enumerate(vocabulary):
            field_start = starts if i == 0 else seps[:, i - 1] + 1
            field_end = ends if i == fields - 1 else seps[:, i]
            block, values = _factorize_fields(data, raw, field_start, field_end, encoding)
            # a few distinct values per block: a dict maps them into the shared code space
            shared = np.fromiter(
                (known.setdefault(v, len(known)) for v in values), dtype=np.int32, count=len(values)
            )
            codes[i][first : first + len(starts)] = shared[block]
    return [
        (c, np.asarray(list(known), dtype=str)) for c, known in zip(codes, vocabulary, strict=True)
    ]


def _factorize_fields(
    data: bytes, raw: np.ndarray, start: np.ndarray, end: np.ndarray, encoding: str
) -> tuple[np.ndarray, list[str]]:
    """Codes of the byte strings raw[start:end], and their distinct values decoded."""
    length = end - start
    width = int(length.max())
    codes = np.zeros(len(start), dtype=np.int64)
    for offset in range(0, max(width, 1), 8):  # 8 bytes per uint64; text holds no NUL
        key = np.zeros(len(start), dtype=np.uint64)
        for j in range(offset, min(offset + 8, width)):
            inside = j < length
            byte = np.where(inside, raw[np.where(inside, start + j, 0)], 0).astype(np.uint64)
            key = (key << np.uint64(8)) | byte
        part, distinct = pd.factorize(key)
        codes = pd.factorize(codes * len(distinct) + part)[0]
    any_row = np.empty(int(codes.max()) + 1, dtype=np.int64)
    any_row[codes] = np.arange(len(codes))  # one row per distinct value; equal rows agree
    values = [data[a:b].decode(encoding) for a, b in zip(start[any_row], end[any_row], strict=True)]
    return codes, values


def _checked_text(
    data: bytes, origin: str, sep: bytes, fields: int, encoding: str
) -> tuple[bytes, bytes, int]:
    """Cleaned text, a one-byte separator and the end of the last line (see _clean_text)."""
    data, end = _clean_text(data, origin, encoding)
    if len(sep) > 1:  # pandas' C reader takes one-byte separators; '::' -> tab
        tab = data.find(b"\t", 0, end)
        if tab >= 0:
            raise MalformedInput(f"{origin}, line {_line_at(data, tab)}: unexpected tab")
        data, sep = data.replace(sep, b"\t"), b"\t"
        end = len(data.rstrip(b"\n"))  # small files only take this path
    return data, sep, end


def _clean_text(data: bytes, origin: str, encoding: str) -> tuple[bytes, int]:
    """Text with \\n line endings and the offset where its trailing newlines start.

    Refuses what is not text in ``encoding``. Copies nothing unless line endings change,
    since seed-row files reach 270 MB.
    """
    for bom in (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"):
        if data.startswith(bom):
            raise MalformedInput(
                f"{origin}, line 1: starts with a byte-order mark; expected {encoding} text"
            )
    nul = data.find(b"\x00")
    if nul >= 0:
        raise MalformedInput(
            f"{origin}, line {_line_at(data, nul)}: NUL byte; "
            f"expected {encoding} text (is it UTF-16?)"
        )
    latin1 = encoding.lower().replace("_", "-") in ("latin-1", "latin1", "iso-8859-1")
    if not latin1 and not data.isascii():  # ASCII is valid in every encoding we accept
        try:
            data.decode(encoding)
        except UnicodeDecodeError as exc:
            line = _line_at(data, exc.start)
            raise MalformedInput(f"{origin}, line {line}: not valid {encoding} text") from None
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    end = len(data)
    while end and data[end - 1] == ord("\n"):
        end -= 1
    if end == 0 or data.isspace():
        raise MalformedInput(f"{origin}: empty file")
    return data, end


def _line_at(data: bytes, offset: int) -> int:
    """1-based line number of a byte offset."""
    return data.count(b"\n", 0, offset) + 1


def _line_ends(raw: np.ndarray) -> np.ndarray:
    """Offset of each line's end (its newline, or the end of the text), scanned in slices."""
    return np.concatenate(
        [np.flatnonzero(raw[i : i + _SCAN] == ord("\n")) + i for i in range(0, len(raw), _SCAN)]
        + [[len(raw)]]
    )


def _line_blocks(
    raw: np.ndarray, line_ends: np.ndarray, origin: str, sep: bytes, fields: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Per block of lines: first line, line starts, line ends, separators (lines, fields - 1).

    Vectorised and in blocks, so memory stays bounded on 11M-line files. Raises
    MalformedInput at the first line whose separator count is not ``fields - 1``.
    """
    for first in range(0, len(line_ends), _BLOCK_LINES):
        ends = line_ends[first : first + _BLOCK_LINES]
        begin = int(line_ends[first - 1]) + 1 if first else 0
        starts = np.concatenate(([begin], ends[:-1] + 1))
        seps = np.flatnonzero(raw[begin : ends[-1]] == sep[0]) + begin
        per_line = np.diff(np.searchsorted(seps, ends), prepend=0)
        bad = np.flatnonzero(per_line != fields - 1)
        if len(bad):
            line = first + int(bad[0])
            raise MalformedInput(
                f"{origin}, line {line + 1}: expected {fields} fields separated by "
                f"{sep.decode()!r}, found {per_line[bad[0]] + 1}"
            )
        yield first, starts, ends, seps.reshape(-1, fields - 1)


def _read_csv(
    data: bytes, sep: bytes, fields: int, keep: tuple[int, ...], dtypes: dict, encoding: str
) -> pd.DataFrame:
    return pd.read_csv(
        io.BytesIO(data),
        sep=sep.decode(),
        header=None,
        names=list(range(fields)),
        usecols=list(keep),
        dtype=dtypes,
        na_filter=False,
        quoting=csv.QUOTE_NONE,
        skip_blank_lines=False,
        encoding=encoding,
        engine="c",
    )
