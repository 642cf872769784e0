"""Fetch an official MovieLens archive into the cache, verified and extracted atomically.

``fetch`` downloads ``<archive>`` from GroupLens (``AFM_MOVIELENS_URL`` overrides the base
URL: a mirror, or a test server) with a progress bar on stderr, checks its MD5 (the published
digest for GroupLens; a mirror's ``<archive>.md5`` otherwise), extracts it into a temporary
folder and renames that into ``<cache_dir>/<name>/``, so the cache never holds a partial or
unverified copy. Every failure is a one-line DownloadError that says how to supply the
archive by hand (``--data-dir``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from model.errors import DownloadError

OFFICIAL_URL = "https://files.grouplens.org/datasets/movielens/"
URL_ENV = "AFM_MOVIELENS_URL"
"""Base URL override (a mirror, or a test server). Its checksum is read from ``<zip>.md5``."""

_CHUNK = 1 << 20


def fetch(name: str, cache_dir: Path, *, archive: str, md5: str, files: tuple[str, ...]) -> Path:
    """``<cache_dir>/<name>/`` holding ``files`` extracted from ``archive``; downloads if absent.

    ``md5`` is GroupLens' published digest of ``archive``, used unless URL_ENV names a mirror.
    Raises DownloadError, with a one-line hint on supplying the archive by hand, for any
    network or HTTP failure, a truncated body, a checksum mismatch or a broken archive.
    Nothing is left in the cache unless the whole archive was verified and extracted.
    """
    target = cache_dir / name
    if all((target / n).is_file() for n in files):
        return target
    if target.exists():
        missing = [n for n in files if not (target / n).is_file()]
        raise DownloadError(
            f"the cache {target} lacks {', '.join(missing)}; remove {target} to download "
            f"{archive} again, or pass --data-dir"
        )
    base = os.environ.get(URL_ENV) or OFFICIAL_URL
    url = base.rstrip("/") + "/" + archive
    hint = (
        f"download {url} by hand and pass --data-dir /path/to/{archive} "
        "(the zip or its extracted folder)"
    )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create cache {cache_dir} ({exc}); {hint}") from None
    part = Path(tempfile.mkstemp(prefix=f".{archive}.", suffix=".part", dir=cache_dir)[1])
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=cache_dir))
    try:
        expected = md5 if base == OFFICIAL_URL else _published_md5(url, hint)
        digest = _download(url, part, hint)
        if digest != expected:
            raise DownloadError(
                f"checksum mismatch for {url}: md5 {digest}, expected {expected}; {hint}"
            )
        try:
            with zipfile.ZipFile(part) as zipped:
                zipped.extractall(staging)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DownloadError(f"{url} is not a readable zip archive ({exc}); {hint}") from None
        extracted = folder_with(staging, files)
        if not all((extracted / n).is_file() for n in files):
            raise DownloadError(f"{url} lacks {', '.join(files)}; {hint}")
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


def folder_with(folder: Path, names: tuple[str, ...]) -> Path:
    """``folder`` or its one subfolder that holds ``names`` (an extracted zip's top folder)."""
    if all((folder / n).is_file() for n in names) or not folder.is_dir():
        return folder
    inner = [p for p in sorted(folder.iterdir()) if all((p / n).is_file() for n in names)]
    return inner[0] if len(inner) == 1 else folder


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
