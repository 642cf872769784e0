"""Hot reload under load: a real uvicorn server, clients hammering /score while new (and
broken) versions appear; every request must succeed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from model import contract
from service.settings import Settings
from tests.integration.serving.helpers import ServerThread, wait_until

pytestmark = pytest.mark.integration

CLIENTS = 4


class Hammer:
    """CLIENTS threads posting /score back to back; records (status, model_version)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.results: list[list[tuple[int, int | None]]] = [[] for _ in range(CLIENTS)]
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(CLIENTS)]

    def _run(self, index: int) -> None:
        body = {"user_id": 1 + index, "movie_ids": list(range(1, 101)), "top_k": 10}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/score", json=body)
                    version = response.json().get("model_version")
                    self.results[index].append((response.status_code, version))
                except httpx.HTTPError as exc:  # a dropped connection is a failure too
                    self.results[index].append((-1, repr(exc)))  # type: ignore[arg-type]

    def count(self) -> int:
        return sum(len(r) for r in self.results)

    def versions_seen(self) -> set:
        return {v for results in self.results for _, v in results}

    def __enter__(self) -> Hammer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_new_versions_swap_in_under_load_without_failures(
    copy_model: Callable[..., Path],
    redis_url: str,
    loaded_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model_dir = copy_model(1)
    settings = Settings(
        model_dir=model_dir, redis_url=redis_url, redis_prefix=loaded_prefix, reload_interval=0.1
    )
    with ServerThread(settings) as server, httpx.Client(base_url=server.url) as probe:
        wait_until(lambda: probe.get("/readyz").status_code == 200, what="version 1")
        with Hammer(server.url) as hammer, caplog.at_level(logging.ERROR):
            wait_until(lambda: hammer.count() >= 20, what="traffic on version 1")
            copy_model(2)
            wait_until(lambda: 2 in hammer.versions_seen(), what="version 2 in responses")

            # A broken version 3: metadata present, SavedModel missing.
            broken = model_dir / ".tmp-3"
            broken.mkdir()
            (broken / contract.METADATA_FILE).write_text(
                (model_dir / "2" / contract.METADATA_FILE).read_text()
            )
            broken.rename(model_dir / "3")
            wait_until(
                lambda: probe.get("/model").json()["refused_versions"] == [3], what="refusal"
            )
            served_after_refusal = hammer.count()
            wait_until(lambda: hammer.count() >= served_after_refusal + 20, what="more traffic")

        statuses = [status for results in hammer.results for status, _ in results]
        assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
        assert hammer.versions_seen() == {1, 2}
        for results in hammer.results:  # each client moves forward only, never back to 1
            versions = [v for _, v in results]
            assert versions == sorted(versions)
            assert versions[-1] == 2
        assert probe.get("/model").json()["version"] == 2
        refusals = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
        assert (
            len(refusals) == 1 and "version 3" in refusals[0] and "keeping version 2" in refusals[0]
        )


def test_reload_between_six_and_eight_field_versions_under_load(
    copy_model: Callable[..., Path],
    seed_fields_model_dir: Path,
    redis_url: str,
    loaded_prefix: str,
) -> None:
    """Each version brings its own field set; the service follows it without a failure."""
    model_dir = copy_model(1)  # eight fields
    settings = Settings(
        model_dir=model_dir, redis_url=redis_url, redis_prefix=loaded_prefix, reload_interval=0.1
    )
    pair_counts = {}
    with ServerThread(settings) as server, httpx.Client(base_url=server.url) as probe:
        wait_until(lambda: probe.get("/readyz").status_code == 200, what="version 1")
        with Hammer(server.url) as hammer:
            for version, source in ((2, seed_fields_model_dir), (3, None)):
                wait_until(lambda v=version: hammer.count() >= 20 * v, what="traffic")
                copy_model(version, **({"source": source} if source else {}))
                wait_until(lambda v=version: v in hammer.versions_seen(), what=f"version {version}")
                explained = probe.get("/explain", params={"user_id": 1, "movie_id": 2}).json()
                pair_counts[explained["model_version"]] = len(explained["pairs"])
        statuses = [status for results in hammer.results for status, _ in results]
        assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
        assert hammer.versions_seen() == {1, 2, 3}
    assert pair_counts == {2: 15, 3: 28}
