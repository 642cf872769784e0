"""A real local Redis Cluster: three masters and three replicas on free ports, one per
module, removed afterwards even when a test fails.

``cluster-node-timeout`` is low (2 s) so a killed master's replica takes over within
seconds; ``cluster-require-full-coverage no`` keeps the other masters answering while a
master is down (as docs/operations.md recommends in production).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from tests.integration.serving.helpers import wait_until

NODE_TIMEOUT_MS = 2000


class LocalCluster:
    """Six ``redis-server --cluster-enabled yes`` processes joined by ``redis-cli --cluster
    create``; ``kill(port)`` stops one for good (SIGKILL: no goodbye to the others)."""

    def __init__(self, root: Path, nodes: int = 6) -> None:
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is not installed (apt-get install redis-server)")
        self.root = root
        self.ports = _cluster_ports(nodes)
        self.processes: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """Any one node: the client discovers the rest."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> LocalCluster:
        for port in self.ports:
            workdir = self.root / str(port)
            workdir.mkdir()
            self.processes[port] = subprocess.Popen(
                [
                    "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    "--cluster-require-full-coverage", "no",
                    "--save", "", "--appendonly", "no", "--dir", str(workdir),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        for port in self.ports:
            wait_until(lambda p=port: _pings(p), timeout=10, what=f"redis-server on {port}")
        subprocess.run(
            ["redis-cli", "--cluster", "create"]
            + [f"127.0.0.1:{port}" for port in self.ports]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self.healthy, timeout=30, what="cluster_state:ok on every node")
        return self

    def healthy(self) -> bool:
        """Every live node reports cluster_state:ok and knows three masters that hold slots,
        and every replica's link to its master is up (synced)."""
        for port in self.processes:
            try:
                client = redis.Redis(port=port, socket_timeout=1)
                info = client.cluster("info")
                replication = client.info("replication")
                client.close()
            except redis.RedisError:
                return False
            if info.get("cluster_state") != "ok" or int(info.get("cluster_size", 0)) != 3:
                return False
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return False
        return True

    def masters(self) -> list[int]:
        """Ports of the masters that serve slots, as a cluster client sees them now."""
        client = RedisCluster(host="127.0.0.1", port=next(iter(self.processes)))
        ports = sorted(node.port for node in client.get_primaries())
        client.close()
        return ports

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free and valid too."""
    ports: list[int] = []
    for port in range(20000 + 97 * (os.getpid() % 300), 55000):
        if len(ports) == count:
            return ports
        if _free(port) and _free(port + 10000):
            ports.append(port)
    pytest.fail("no free ports for a Redis Cluster")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pings(port: int) -> bool:
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        ok = bool(client.ping())
        client.close()
        return ok
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield local.start()
    finally:
        local.stop()
