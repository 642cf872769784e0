"""Impressions and clicks per version, arm and position in /metrics, through the real app and
a real Redis: the series of a loaded stable and canary read 0 before any traffic, they move
with /score and /events as the impression log does, and the PromQL of docs/online.md names
only series /metrics has."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from model.contracts import event_log, rollout
from model.contracts.rollout import RolloutPolicy
from model.online import ctr, log_reader
from service.metrics import POSITION_BUCKETS, position_bucket
from service.settings import Settings
from tests.conftest import REPO_ROOT
from tests.integration.serving.helpers import service_client, wait_until

pytestmark = pytest.mark.integration

KEYS = "k1:metrics-secret"
MOVIES = list(range(1, 13))  # twelve shown: positions 0 to 11 reach every bucket
Samples = dict[tuple[str, frozenset], float]


@pytest.fixture
def client(
    copy_model: Callable[..., Path], redis_url: str, loaded_prefix: str
) -> Iterator[TestClient]:
    """Stable 1 and a 50 % canary 2 (copies of one export), logging under the module's prefix."""
    model_dir = copy_model(1, 2)
    rollout.write_policy(model_dir, RolloutPolicy(stable=1, canary=2, percent=50))
    settings = Settings(
        model_dir=model_dir,
        redis_url=redis_url,
        redis_prefix=loaded_prefix,
        impression_keys=KEYS,
        reload_interval=0.1,
    )
    with service_client(settings) as served:
        wait_until(lambda: len(served.get("/model").json()["loaded"]) == 2, what="the canary")
        yield served


def scrape(client: TestClient) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
    }


def series(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_a_loaded_stable_and_canary_read_zero_before_any_traffic(client: TestClient) -> None:
    samples = scrape(client)
    for version, arm in (("1", "stable"), ("2", "canary")):
        assert series(samples, "afm_impressions_issued_total", version=version, arm=arm) == 0
        for position in POSITION_BUCKETS:
            labels = {"version": version, "arm": arm, "position": position}
            assert series(samples, "afm_impression_movies_total", **labels) == 0
            assert series(samples, "afm_clicks_total", **labels) == 0
        assert series(samples, "afm_clicks_total", version=version, arm=arm,
                      position="unknown") == 0  # fmt: skip


def show_and_click(
    client: TestClient,
) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str, str]], list[dict]]:
    """Forty users' /score replies of twelve movies, clicks at a few positions of each and a
    view: (version, arm) -> replies, (version, arm, position bucket) -> clicks, the events."""
    issued: Counter[tuple[str, str]] = Counter()
    clicks: Counter[tuple[str, str, str]] = Counter()
    events = []
    for user in range(1, 41):
        reply = client.post("/score", json={"user_id": user, "movie_ids": MOVIES, "top_k": 12})
        assert reply.status_code == 200, reply.text
        impression = reply.json()["impression_id"]
        version, arm = impression.split(".")[2:4]
        issued[(version, arm)] += 1
        shown = [score["movie_id"] for score in reply.json()["scores"]]
        for position in {user % 4, 3 + user % 7, 10 + user % 2} if user % 3 else {0}:
            events.append({"impression_id": impression, "movie_id": shown[position],
                           "type": "click"})  # fmt: skip
            clicks[(version, arm, position_bucket(position))] += 1
        events.append({"impression_id": impression, "movie_id": shown[1], "type": "view"})
    client.portal.call(client.app.state.impressions.flush)  # type: ignore[attr-defined]
    body = client.post("/events", json={"events": events}).json()
    assert body["accepted"] == len(events), body
    return issued, clicks, events


def test_impressions_and_clicks_move_by_version_arm_and_position(
    client: TestClient, redis_url: str, loaded_prefix: str
) -> None:
    start_ms = now_ms()
    before = scrape(client)
    issued, clicks, events = show_and_click(client)
    again = client.post("/events", json={"events": events[:5]}).json()  # duplicates: not counted
    early = event_log.issue_impression_id(event_log.parse_keys(KEYS), 2, "canary", 99, now_ms())
    unknown = {"impression_id": early, "movie_id": 5, "type": "click"}  # before its impression
    assert (again["duplicate"], client.post("/events", json={"events": [unknown]}).json()[
        "accepted"]) == (5, 1)  # fmt: skip
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return series(after, name, **labels) - series(before, name, **labels)

    assert set(issued) == {("1", "stable"), ("2", "canary")}  # both arms drew users
    for (version, arm), count in issued.items():
        assert moved("afm_impressions_issued_total", version=version, arm=arm) == count
        per_bucket = dict(zip(POSITION_BUCKETS, (1, 1, 1, 7, 2), strict=True))
        for position, shown in per_bucket.items():
            labels = {"version": version, "arm": arm, "position": position}
            assert moved("afm_impression_movies_total", **labels) == count * shown
            assert moved("afm_clicks_total", **labels) == clicks[(version, arm, position)]
    assert moved("afm_clicks_total", version="2", arm="canary", position="unknown") == 1
    assert moved("afm_clicks_total", version="1", arm="stable", position="unknown") == 0

    # The judge's point estimates from the log are the counters' ratios (less the click that
    # came before an impression the log never got).
    window = log_reader.read_window(
        log_reader.connect(redis_url), loaded_prefix, start_ms, now_ms()
    )
    for (version, arm), sample in ctr.per_user(window.impressions).items():
        counted = sum(
            moved("afm_clicks_total", version=str(version), arm=arm, position=p)
            for p in POSITION_BUCKETS
        )
        assert sample.total_impressions == issued[(str(version), arm)]
        assert sample.clicks_per_impression().value == pytest.approx(
            counted / moved("afm_impressions_issued_total", version=str(version), arm=arm)
        )
        assert sample.at_position(0).value == pytest.approx(
            moved("afm_clicks_total", version=str(version), arm=arm, position="0")
            / moved("afm_impression_movies_total", version=str(version), arm=arm, position="0")
        )


def documented_queries() -> list[str]:
    """The PromQL blocks of docs/online.md."""
    text = (REPO_ROOT / "docs" / "online.md").read_text()
    return re.findall(r"```promql\n(.*?)```", text, re.S)


def test_the_documented_queries_name_series_metrics_has(client: TestClient) -> None:
    client.post("/score", json={"user_id": 3, "movie_ids": MOVIES, "top_k": 4})
    names = {name for name, _ in scrape(client)}
    queries = documented_queries()
    assert queries, "docs/online.md has no ```promql block"
    used = {name for query in queries for name in re.findall(r"\bafm_[a-z_]+", query)}
    assert {"afm_clicks_total", "afm_impressions_issued_total"} <= used
    assert used - names == set(), f"not in /metrics: {sorted(used - names)}"


def judges_figures(samples: dict[tuple[int, str], ctr.ArmSample]) -> list[dict[str, float]]:
    """What --status shows, as the documented queries group it: per version and arm, clicks
    per impression, clicks per shown movie, and clicks per shown movie by position bucket."""
    per_impression, per_shown, by_position = {}, {}, {}
    for (version, arm), sample in samples.items():
        labels = f'version="{version}",arm="{arm}"'
        per_impression[f"{{{labels}}}"] = sample.clicks_per_impression().value
        per_shown[f"{{{labels}}}"] = sample.clicks_per_shown().value
        clicks, shown = sample.clicks_at.sum(axis=0), sample.shown_at.sum(axis=0)
        for bucket, columns in zip(POSITION_BUCKETS, ([0], [1], [2], range(3, 10), [10]),
                                   strict=True):  # fmt: skip
            columns = list(columns)
            value = float(clicks[columns].sum()) / float(shown[columns].sum())
            by_position[f'{{{labels},position="{bucket}"}}'] = value
    return [per_impression, per_shown, by_position]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: apt-get install prometheus")
def test_the_documented_queries_give_the_judges_figures(
    client: TestClient, redis_url: str, loaded_prefix: str, tmp_path: Path
) -> None:
    """The counters of real /score and /events traffic, as a minute of Prometheus samples
    (0, then the scrape), through promtool's PromQL engine: the documented queries return
    the judge's figures from the log of the same traffic, to the last digit; and promtool
    finds nothing to fix in the new series."""
    start_ms = now_ms()  # the module's tests share a prefix: the window is this test's traffic
    show_and_click(client)
    scraped = scrape(client)
    window = log_reader.read_window(
        log_reader.connect(redis_url), loaded_prefix, start_ms, now_ms()
    )
    expected = judges_figures(ctr.per_user(window.impressions))
    series_names = (
        "afm_clicks_total",
        "afm_impressions_issued_total",
        "afm_impression_movies_total",
    )
    inputs = [
        {
            "series": name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}",
            "values": f"0 {value!r}",
        }
        for (name, labels), value in scraped.items()
        if name in series_names
    ]
    queries = documented_queries()[0].split("\n\n")
    assert len(queries) == len(expected) == 3
    tests = [
        {
            "expr": "\n".join(line for line in query.splitlines() if not line.startswith("#")),
            "eval_time": "1m",
            "exp_samples": [{"labels": labels, "value": value} for labels, value in want.items()],
        }
        for query, want in zip(queries, expected, strict=True)
    ]
    spec = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": inputs, "promql_expr_test": tests}],
    }
    path = tmp_path / "queries_test.json"  # JSON is YAML
    path.write_text(json.dumps(spec))
    checked = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    linted = subprocess.run(
        ["promtool", "check", "metrics"],
        input=client.get("/metrics").text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
