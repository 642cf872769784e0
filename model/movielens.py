"""Read MovieLens-1M, MovieLens-100K and synthetic data; fetch the official archives.

Where the files come from (``DataConfig``):

* ``data_dir`` set: an extracted folder (or a folder holding one, e.g. the zip's ``ml-1m/``)
  or the zip itself. Nothing is downloaded.
* ``ml-1m`` / ``ml-100k`` without ``data_dir``: ``<cache_dir>/<name>/``, downloaded once from
  GroupLens (``AFM_MOVIELENS_URL`` overrides the base URL), its MD5 checked, extracted into a
  temporary folder and renamed into place, so the cache never holds a half-extracted copy.
* ``synthetic`` without ``data_dir``: ``<cache_dir>/synthetic-.../``, written once by
  ``model.synth`` with the ``afm-ctr synth`` defaults.

Parsing is vectorised: fields are counted per line with NumPy, then pandas' C reader splits
the columns; integer columns are parsed as integers directly. Every raw value the model sees
is kept as the string in the file (zip "48067", ML-1M age "1", ML-100K occupation "writer").
Malformed input raises MalformedInput naming the file and the first bad line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from model.config import DataConfig
from model.dataset import USER_COLUMNS, Ratings
from model.errors import AfmError, DownloadError, MalformedInput

OFFICIAL_URL = "https://files.grouplens.org/datasets/movielens/"
URL_ENV = "AFM_MOVIELENS_URL"
"""Base URL override (a mirror, or a test server). Its checksum is read from ``<zip>.md5``."""

SYNTHETIC_DEFAULTS = {"users": 2000, "movies": 1000, "ratings": 100_000, "seed": 42}
"""What ``--dataset synthetic`` generates when no --data-dir is given (as ``afm-ctr synth``)."""

ENCODING = "latin-1"
_CHUNK = 1 << 20
_BLOCK_LINES = 1 << 20  # lines factorised at a time by parse_categorical
_SCAN = 1 << 24  # bytes searched for newlines at a time (bounds the boolean temporary)


@dataclass(frozen=True)
class Layout:
    """File names and column positions of one MovieLens layout."""

    archive: str  # official zip name
    md5: str  # GroupLens' published <archive>.md5
    users: str
    movies: str
    ratings: str
    user_sep: bytes
    user_fields: int
    user_order: tuple[int, ...]  # file column of each USER_COLUMNS entry
    movie_sep: bytes
    movie_fields: int
    rating_sep: bytes

    @property
    def files(self) -> tuple[str, str, str]:
        return (self.users, self.movies, self.ratings)


ML_1M = Layout(
    archive="ml-1m.zip",
    md5="c4d9eecfca2ab87c1945afe126590906",
    users="users.dat",  # UserID::Gender::Age::Occupation::Zip-code
    movies="movies.dat",  # MovieID::Title::Genres
    ratings="ratings.dat",  # UserID::MovieID::Rating::Timestamp
    user_sep=b"::",
    user_fields=5,
    user_order=(0, 1, 2, 3, 4),
    movie_sep=b"::",
    movie_fields=3,
    rating_sep=b"::",
)
ML_100K = Layout(
    archive="ml-100k.zip",
    md5="0e33842e24a9c977be4e0107933c0723",
    users="u.user",  # user id | age | gender | occupation | zip code
    movies="u.item",  # movie id | title | release date | video date | URL | 19 genre flags
    ratings="u.data",  # user id \t item id \t rating \t timestamp
    user_sep=b"|",
    user_fields=5,
    user_order=(0, 2, 1, 3, 4),
    movie_sep=b"|",
    movie_fields=24,
    rating_sep=b"\t",
)
LAYOUTS = {"ml-1m": ML_1M, "ml-100k": ML_100K, "synthetic": ML_1M}


# ---------------------------------------------------------------- public API


def load_ratings(config: DataConfig) -> Ratings:
    """Users, movies and ratings of ``config.dataset``; ids are checked against the tables.

    ``Ratings.users`` and ``Ratings.movie_ids`` are sorted by numeric id, so a movie index
    orders like its id (the next-item protocol breaks time ties by it).
    """
    layout, files = _open(config)
    users = _read_users(files, layout)
    movie_ids = _read_movie_ids(files, layout)
    data, origin = files.read(layout.ratings)
    columns = parse_columns(
        data, origin, sep=layout.rating_sep, fields=4, integer=(0, 1, 2, 3), keep=(0, 1, 2, 3)
    )
    user_col, movie_col, rating, timestamp = (columns[i] for i in range(4))
    bad = np.flatnonzero((rating < 1) | (rating > 5))
    if len(bad):
        raise MalformedInput(f"{origin}, line {bad[0] + 1}: rating {rating[bad[0]]} is not in 1..5")
    user_idx = _index_of(users["user_id"], user_col, origin, layout.users, "user")
    movie_idx = _index_of(movie_ids, movie_col, origin, layout.movies, "movie")
    return Ratings(
        users=users,
        movie_ids=movie_ids,
        user_idx=user_idx,
        movie_idx=movie_idx,
        rating=rating.astype(np.int8),
        timestamp=timestamp.astype(np.int64),
        source=files.describe(config.dataset),
    )


def load_users(config: DataConfig) -> dict[str, np.ndarray]:
    """USER_COLUMNS -> raw string arrays, one entry per user, without reading the ratings."""
    layout, files = _open(config)
    return _read_users(files, layout)


# ---------------------------------------------------------------- parsing


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


def _read_users(files: _Files, layout: Layout) -> dict[str, np.ndarray]:
    data, origin = files.read(layout.users)
    columns = parse_columns(
        data, origin, sep=layout.user_sep, fields=layout.user_fields, keep=layout.user_order
    )
    users = {name: columns[i] for name, i in zip(USER_COLUMNS, layout.user_order, strict=True)}
    numeric = _numeric_ids(users["user_id"], origin, "user id")
    order = np.argsort(numeric, kind="stable")
    return {name: values[order] for name, values in users.items()}


def _read_movie_ids(files: _Files, layout: Layout) -> np.ndarray:
    data, origin = files.read(layout.movies)
    ids = parse_columns(data, origin, sep=layout.movie_sep, fields=layout.movie_fields, keep=(0,))[
        0
    ]
    return ids[np.argsort(_numeric_ids(ids, origin, "movie id"), kind="stable")]


def _numeric_ids(ids: np.ndarray, origin: str, what: str) -> np.ndarray:
    """Integer values of an id column; ids must be distinct integers."""
    is_int = np.char.isdigit(np.char.strip(ids))
    if not is_int.all():
        line = int(np.flatnonzero(~is_int)[0])
        raise MalformedInput(
            f"{origin}, line {line + 1}: {what} {str(ids[line])!r} is not an integer"
        )
    numeric = ids.astype(np.int64)
    order = np.argsort(numeric, kind="stable")
    dup = np.flatnonzero(numeric[order][1:] == numeric[order][:-1])
    if len(dup):
        line = int(order[dup[0] + 1])
        raise MalformedInput(f"{origin}, line {line + 1}: duplicate {what} {str(ids[line])!r}")
    return numeric


def _index_of(
    table_ids: np.ndarray, values: np.ndarray, origin: str, table: str, what: str
) -> np.ndarray:
    """Row in a sorted-by-number id table of each integer id; unknown ids are malformed."""
    numeric = table_ids.astype(np.int64)
    pos = np.searchsorted(numeric, values)
    found = pos < len(numeric)
    found[found] = numeric[pos[found]] == values[found]
    if not found.all():
        line = int(np.flatnonzero(~found)[0])
        raise MalformedInput(f"{origin}, line {line + 1}: {what} {values[line]} is not in {table}")
    return pos.astype(np.int32)


# ---------------------------------------------------------------- locating files


class _Files:
    """Reads the files of one dataset from a folder or a zip archive."""

    def __init__(self, location: Path, layout: Layout) -> None:
        self.location = location
        self.layout = layout
        if location.is_file():
            if not zipfile.is_zipfile(location):
                raise AfmError(f"{location} is neither a folder nor a zip archive")
            with zipfile.ZipFile(location) as archive:
                names = {Path(n).name: n for n in archive.namelist() if not n.endswith("/")}
            missing = [f for f in layout.files if f not in names]
            self.members = names
        else:
            self.location = _folder_with(location, layout.files)
            missing = [f for f in layout.files if not (self.location / f).is_file()]
        if missing:
            raise AfmError(
                f"{location} lacks {', '.join(missing)} "
                f"(expected the files of {layout.archive}: {', '.join(layout.files)})"
            )

    def read(self, name: str) -> tuple[bytes, str]:
        """Bytes of one file and the name to use in error messages."""
        if self.location.is_file():
            member = self.members[name]
            try:
                with zipfile.ZipFile(self.location) as archive:
                    return archive.read(member), f"{self.location}:{member}"
            except (zipfile.BadZipFile, OSError) as exc:
                raise MalformedInput(f"{self.location}:{member}: unreadable ({exc})") from None
        path = self.location / name
        return path.read_bytes(), str(path)

    def describe(self, dataset: str | None) -> str:
        return f"{dataset} at {self.location}"


def _folder_with(folder: Path, names: tuple[str, ...]) -> Path:
    """``folder`` or its one subfolder that holds ``names`` (an extracted zip's top folder)."""
    if all((folder / n).is_file() for n in names) or not folder.is_dir():
        return folder
    inner = [p for p in sorted(folder.iterdir()) if all((p / n).is_file() for n in names)]
    return inner[0] if len(inner) == 1 else folder


def _open(config: DataConfig) -> tuple[Layout, _Files]:
    if config.dataset not in LAYOUTS:
        raise AfmError(f"unknown dataset {config.dataset!r}; expected one of {', '.join(LAYOUTS)}")
    layout = LAYOUTS[config.dataset]
    if config.data_dir is not None:
        if not Path(config.data_dir).exists():
            raise AfmError(f"--data-dir {config.data_dir} does not exist")
        return layout, _Files(Path(config.data_dir), layout)
    if config.dataset == "synthetic":
        return layout, _Files(_cached_synthetic(Path(config.cache_dir)), layout)
    return layout, _Files(fetch(config.dataset, Path(config.cache_dir)), layout)


def _cached_synthetic(cache_dir: Path) -> Path:
    from model.synth import write_synthetic

    d = SYNTHETIC_DEFAULTS
    folder = cache_dir / f"synthetic-{d['users']}u-{d['movies']}m-{d['ratings']}r-seed{d['seed']}"
    if not all((folder / n).is_file() for n in ML_1M.files):
        write_synthetic(folder, **d)  # atomic: a temporary folder renamed into place
    return folder


# ---------------------------------------------------------------- download


def fetch(dataset: str, cache_dir: Path) -> Path:
    """``<cache_dir>/<dataset>/`` holding the extracted official files; downloads if absent.

    Raises DownloadError, with a one-line hint on supplying the archive by hand, for any
    network or HTTP failure, a truncated body, a checksum mismatch or a broken archive.
    Nothing is left in the cache unless the whole archive was verified and extracted.
    """
    layout = LAYOUTS[dataset]
    target = cache_dir / dataset
    if all((target / n).is_file() for n in layout.files):
        return target
    if target.exists():
        missing = [n for n in layout.files if not (target / n).is_file()]
        raise DownloadError(
            f"the cache {target} lacks {', '.join(missing)}; remove {target} to download "
            f"{layout.archive} again, or pass --data-dir"
        )
    base = os.environ.get(URL_ENV) or OFFICIAL_URL
    url = base.rstrip("/") + "/" + layout.archive
    hint = (
        f"download {url} by hand and pass --data-dir /path/to/{layout.archive} "
        "(the zip or its extracted folder)"
    )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create cache {cache_dir} ({exc}); {hint}") from None
    part = Path(tempfile.mkstemp(prefix=f".{layout.archive}.", suffix=".part", dir=cache_dir)[1])
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset}.", suffix=".tmp", dir=cache_dir))
    try:
        expected = layout.md5 if base == OFFICIAL_URL else _published_md5(url, hint)
        digest = _download(url, part, hint)
        if digest != expected:
            raise DownloadError(
                f"checksum mismatch for {url}: md5 {digest}, expected {expected}; {hint}"
            )
        try:
            with zipfile.ZipFile(part) as archive:
                archive.extractall(staging)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DownloadError(f"{url} is not a readable zip archive ({exc}); {hint}") from None
        extracted = _folder_with(staging, layout.files)
        if not all((extracted / n).is_file() for n in layout.files):
            raise DownloadError(f"{url} lacks {', '.join(layout.files)}; {hint}")
        extracted.chmod(0o755)  # mkdtemp's 0700 if the archive has no top folder
        try:
            extracted.rename(target)
        except OSError:
            if not target.is_dir():  # else another process finished first: use its copy
                raise
    except OSError as exc:
        raise DownloadError(f"cannot write the cache at {cache_dir} ({exc}); {hint}") from None
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _published_md5(url: str, hint: str) -> str:
    """The digest in a GroupLens-style ``<zip>.md5`` file next to the archive."""
    try:
        with urllib.request.urlopen(url + ".md5", timeout=30) as response:
            text = response.read(4096).decode("ascii", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadError(
            f"cannot fetch the checksum {url}.md5 ({_reason(exc)}); {hint}"
        ) from None
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if not match:
        raise DownloadError(f"{url}.md5 holds no MD5 digest; {hint}")
    return match.group().lower()


def _download(url: str, part: Path, hint: str) -> str:
    """Stream ``url`` into ``part`` with a progress bar on stderr; returns the MD5 hex digest."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    md5 = hashlib.md5()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
            )
            with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
                task = progress.add_task(f"downloading {url}", total=total)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    received += len(chunk)
                    progress.update(task, advance=len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadError(f"cannot download {url} ({_reason(exc)}); {hint}") from None
    except Exception as exc:  # http.client.IncompleteRead and friends on a cut connection
        raise DownloadError(f"download of {url} failed ({exc!r}); {hint}") from None
    if total is not None and received != total:
        raise DownloadError(f"download of {url} truncated: {received} of {total} bytes; {hint}")
    return md5.hexdigest()


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc)
