"""The service's impression and event log, exported by ``afm-ctr logs export``: the rows are
what ``/score`` returned (order, scores, the features as served, not as a click changed them
since) labelled by ``POST /events``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from model.contracts import feature_layout
from model.contracts.export_format import LAST_WATCHED
from model.data.click_logs import LogExporter
from service.feature_store import last_watched
from service.settings import Settings
from tests.integration.click_log_helpers import exported_rows
from tests.integration.serving.helpers import service_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(trained_model_dir: Path, redis_url: str, loaded_prefix: str) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=trained_model_dir,
        redis_url=redis_url,
        redis_prefix=loaded_prefix,
        impression_keys="k1:round-trip",
        reload_interval=0,
    )
    with service_client(settings) as served:
        yield served


def test_what_score_showed_and_events_clicked_export_as_labelled_rows(
    client: TestClient, redis_url: str, loaded_prefix: str, tmp_path: Path
) -> None:
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    replies = {}
    for user in (3, 4, 5):
        reply = client.post("/score", json={"user_id": user, "movie_ids": [1, 2, 3, 4], "top_k": 3})
        assert reply.status_code == 200, reply.text
        replies[user] = reply.json()
    client.portal.call(client.app.state.impressions.flush)  # type: ignore[attr-defined]
    namespace = admin.get(feature_layout.pointer_key(loaded_prefix))
    served = {user: _user(admin, namespace, user) for user in replies}
    clicked = {user: reply["scores"][1]["movie_id"] for user, reply in replies.items()}
    events = [
        {"impression_id": replies[u]["impression_id"], "movie_id": m, "type": "click",
         "ts": time.time_ns() // 1_000_000}
        for u, m in clicked.items()
    ]  # fmt: skip
    assert client.post("/events", json={"events": events}).status_code == 202

    summary = LogExporter(admin, loaded_prefix, tmp_path, flush=True).export()
    assert (summary.impressions, summary.rows, summary.clicks) == (3, 9, 3)
    rows = exported_rows(tmp_path)
    for user, reply in replies.items():
        mine = sorted((r for r in rows if r["user_id"] == str(user)), key=lambda r: r["position"])
        assert [r["impression_id"] for r in mine] == [reply["impression_id"]] * 3
        assert [r["movie_id"] for r in mine] == [str(s["movie_id"]) for s in reply["scores"]]
        assert [r["score"] for r in mine] == pytest.approx(
            [s["probability"] for s in reply["scores"]], abs=1e-6
        )
        assert [r["label"] for r in mine] == [0, 1, 0]
        logged = {k: v for k, v in served[user].items() if k != feature_layout.WATCHED_AT}
        assert {k: mine[0][k] for k in logged} == logged
        assert mine[0][LAST_WATCHED] == last_watched(served[user][feature_layout.WATCHED_AT])
        # The click went first into the user's watched movies; the row keeps what was served.
        now = _user(admin, namespace, user)
        assert (
            now["watched"].split("|")[0] == str(clicked[user]) != mine[0]["watched"].split("|")[0]
        )
        assert now[feature_layout.WATCHED_AT] != "" == mine[0][LAST_WATCHED]  # watched since
    admin.close()


def _user(admin: redis.Redis, namespace: str, user: int) -> dict[str, str]:
    return feature_layout.decode_user(admin.hgetall(feature_layout.user_key(namespace, user)))
