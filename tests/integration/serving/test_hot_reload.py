"""Hot reload under load: a real uvicorn server, clients hammering /score while new (and
broken) versions appear; every request must succeed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from model.contracts import export_format
from service.settings import Settings
from tests.integration.serving.helpers import Hammer, ServerThread, wait_until

pytestmark = pytest.mark.integration


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
            (broken / export_format.METADATA_FILE).write_text(
                (model_dir / "2" / export_format.METADATA_FILE).read_text()
            )
            broken.rename(model_dir / "3")
            wait_until(
                lambda: probe.get("/model").json()["refused_versions"] == [3], what="refusal"
            )
            served_after_refusal = hammer.count()
            wait_until(lambda: hammer.count() >= served_after_refusal + 20, what="more traffic")

        statuses = hammer.statuses()
        assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
        assert hammer.versions_seen() == {1, 2}
        for results in hammer.results:  # each client moves forward only, never back to 1
            versions = [v for _, v, _ in results]
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
        statuses = hammer.statuses()
        assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
        assert hammer.versions_seen() == {1, 2, 3}
    assert pair_counts == {2: 15, 3: 28}
