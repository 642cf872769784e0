"""Download of the ML-1M archive against a real local HTTP server serving a zip built here."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.config import DataConfig
from model.data.download import URL_ENV
from model.data.movielens import load_movies, load_ratings, load_users
from model.errors import DownloadError

pytestmark = pytest.mark.integration

FILES = {
    "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
    "movies.dat": "1::Toy Story (1995)::Animation\n2::Jumanji (1995)::Adventure\n",
    "ratings.dat": "1::1::5::978300760\n1::2::3::978302109\n2::2::4::978300275\n",
}


def ml1m_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in FILES.items():
            archive.writestr(f"ml-1m/{name}", text)
    return buffer.getvalue()


class Mirror:
    """What the server answers per path: (status, body, declared Content-Length or None)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, int | None]] = {}
        self.requests: list[str] = []

    def serve(self, name: str, body: bytes, *, md5: str | None = None, length: int | None = None):
        self.routes[f"/{name}"] = (200, body, length)
        digest = md5 or hashlib.md5(body).hexdigest()
        self.routes[f"/{name}.md5"] = (200, f"MD5 ({name}) = {digest}\n".encode(), None)


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    state = Mirror()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            state.requests.append(self.path)
            status, body, length = state.routes.get(self.path, (404, b"not found", None))
            self.send_response(status)
            self.send_header("Content-Length", str(length if length is not None else len(body)))
            self.end_headers()
            self.wfile.write(body)  # a declared length above len(body) is a truncated reply
            self.close_connection = True

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv(URL_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    yield state
    server.shutdown()
    server.server_close()


def config(tmp_path: Path) -> DataConfig:
    return DataConfig(dataset="ml-1m", cache_dir=tmp_path / "cache")


def assert_clean_failure(tmp_path: Path, exc: pytest.ExceptionInfo, *reasons: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert "--data-dir" in message and "ml-1m.zip" in message
    for reason in reasons:
        assert reason in message
    leftovers = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert leftovers == []  # no half-extracted cache, no partial download


def test_download_verifies_extracts_and_is_reused(tmp_path: Path, mirror: Mirror):
    mirror.serve("ml-1m.zip", ml1m_zip())
    ratings = load_ratings(config(tmp_path))
    assert ratings.users["zip"].tolist() == ["48067", "70072"]
    assert len(ratings.rating) == 3
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["ml-1m"]
    assert sorted(p.name for p in (tmp_path / "cache" / "ml-1m").iterdir()) == sorted(FILES)
    served = len(mirror.requests)
    assert mirror.requests == ["/ml-1m.zip.md5", "/ml-1m.zip"]

    again = load_users(config(tmp_path))
    assert again["user_id"].tolist() == ["1", "2"]
    assert load_movies(config(tmp_path))["year"].tolist() == ["1995", "1995"]
    assert len(mirror.requests) == served  # the cache answered


def test_bad_checksum_is_refused(tmp_path: Path, mirror: Mirror):
    mirror.serve("ml-1m.zip", ml1m_zip(), md5="0" * 32)
    with pytest.raises(DownloadError) as exc:
        load_ratings(config(tmp_path))
    assert_clean_failure(tmp_path, exc, "checksum mismatch", "0" * 32)


def test_http_404_is_a_download_error(tmp_path: Path, mirror: Mirror):
    mirror.routes["/ml-1m.zip.md5"] = (200, b"MD5 (ml-1m.zip) = " + b"a" * 32, None)
    with pytest.raises(DownloadError) as exc:
        load_ratings(config(tmp_path))
    assert_clean_failure(tmp_path, exc, "HTTP 404")


def test_truncated_body_is_a_download_error(tmp_path: Path, mirror: Mirror):
    body = ml1m_zip()
    mirror.serve(
        "ml-1m.zip", body[: len(body) // 2], md5=hashlib.md5(body).hexdigest(), length=len(body)
    )
    with pytest.raises(DownloadError) as exc:
        load_ratings(config(tmp_path))
    assert_clean_failure(tmp_path, exc)


def test_corrupt_zip_with_matching_checksum_is_a_download_error(tmp_path: Path, mirror: Mirror):
    mirror.serve("ml-1m.zip", b"PK\x03\x04 this is no zip archive")
    with pytest.raises(DownloadError) as exc:
        load_ratings(config(tmp_path))
    assert_clean_failure(tmp_path, exc, "not a readable zip")


def test_archive_without_the_dataset_files_is_a_download_error(tmp_path: Path, mirror: Mirror):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-1m/README", "nothing here")
    mirror.serve("ml-1m.zip", buffer.getvalue())
    with pytest.raises(DownloadError) as exc:
        load_ratings(config(tmp_path))
    assert_clean_failure(tmp_path, exc, "lacks users.dat")


def test_no_server_is_a_download_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(URL_ENV, f"http://127.0.0.1:{port}/")
    (tmp_path / "cache").mkdir()
    with pytest.raises(DownloadError) as exc:
        load_ratings(config(tmp_path))
    assert_clean_failure(tmp_path, exc, "refused")


def test_cli_reports_a_download_failure_in_one_line(tmp_path: Path, mirror: Mirror):
    from tests.conftest import run_cli

    # load-features reads the users before it ever talks to Redis, and imports no TensorFlow
    result = run_cli(
        "load-features", "--dataset", "ml-1m", "--cache-dir", str(tmp_path / "cache"),
        "--redis-url", "redis://127.0.0.1:1/0",
        env={URL_ENV: os.environ[URL_ENV]}, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "HTTP 404" in errors[0] and "--data-dir" in errors[0]
    assert "Traceback" not in result.stderr


def test_damaged_cache_is_reported_not_silently_used(tmp_path: Path, mirror: Mirror):
    mirror.serve("ml-1m.zip", ml1m_zip())
    load_users(config(tmp_path))
    (tmp_path / "cache" / "ml-1m" / "ratings.dat").unlink()
    with pytest.raises(DownloadError, match=r"lacks ratings.dat; remove .* to download"):
        load_ratings(config(tmp_path))
