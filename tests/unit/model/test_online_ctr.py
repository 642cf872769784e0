"""Online CTR read from a real Redis holding impressions written as the log contract says,
and the error counts read from the service's own /metrics text."""

from __future__ import annotations

import pytest
import redis

from model.contracts import event_log
from model.online import ctr, guard, log_reader
from tests.unit.model.impression_log import write_impression

T0 = 1_800_000_000_000
MINUTE = 60_000


@pytest.fixture
def client(redis_url: str):  # noqa: ANN201
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def test_the_window_is_read_per_user_with_clicks_by_position(
    client: redis.Redis, redis_url: str, feature_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_reader, "PAGE", 2)  # several pages per shard
    p = feature_prefix
    write_impression(client, p, user_id=1, version=3, arm="stable", movies=[10, 11, 12],
                     clicks=[11], ts_ms=T0 - 120 * MINUTE)  # before the window  # fmt: skip
    for minute, clicks in ((50, [11]), (40, []), (30, [10, 12])):
        write_impression(client, p, user_id=1, version=3, arm="stable", movies=[10, 11, 12],
                         clicks=clicks, ts_ms=T0 - minute * MINUTE)  # fmt: skip
    write_impression(client, p, user_id=2, version=3, arm="stable", movies=[10, 11],
                     ts_ms=T0 - 20 * MINUTE)  # fmt: skip
    shown = write_impression(client, p, user_id=7, version=4, arm="canary", movies=[20, 21],
                             clicks=[21], ts_ms=T0 - 10 * MINUTE)  # fmt: skip
    hash_key = event_log.impression_key(p, shown)
    client.hset(hash_key, event_log.event_field(99, "click"), T0)  # a movie it did not show
    client.hset(hash_key, event_log.event_field(20, "view"), T0)  # not a click
    gone = write_impression(client, p, user_id=7, version=4, arm="canary", movies=[20],
                            clicks=[20], ts_ms=T0 - 9 * MINUTE)  # fmt: skip
    client.delete(event_log.impression_key(p, gone))  # expired
    client.xadd(event_log.impressions_key(p, event_log.shard(7)), {"data": "{"},
                id=f"{T0 - 8 * MINUTE}-*")  # fmt: skip
    write_impression(client, p, user_id=7, version=4, arm="canary", movies=[20],
                     clicks=[20], ts_ms=T0 + MINUTE)  # after the window  # fmt: skip

    read = log_reader.read_window(log_reader.connect(redis_url), p, T0 - 60 * MINUTE, T0)

    assert (read.without_hash, read.unreadable, read.log_begins_ms) == (1, 1, None)
    assert len(read.impressions) == 5
    samples = ctr.per_user(read.impressions)
    assert list(samples) == [(3, "stable"), (4, "canary")]
    stable, canary = samples[(3, "stable")], samples[(4, "canary")]
    assert dict(zip(stable.users, stable.impressions, strict=True)) == {1: 3, 2: 1}
    assert dict(zip(stable.users, stable.clicks, strict=True)) == {1: 3, 2: 0}
    assert stable.clicks_per_impression().value == pytest.approx(3 / 4)
    assert stable.clicks_per_shown().value == pytest.approx(3 / 11)
    assert [stable.at_position(k).value for k in range(3)] == pytest.approx([1 / 4, 1 / 4, 1 / 3])
    assert (canary.total_impressions, canary.total_clicks) == (1, 1)  # movie 99 not counted
    assert canary.at_position(1).value == 1.0 and canary.at_position(0).value == 0.0
    assert any("no per-impression hash" in note for note in read.notes())


def test_a_window_the_streams_were_trimmed_past_is_noted(
    client: redis.Redis, redis_url: str, feature_prefix: str
) -> None:
    for minute in (30, 20, 10):
        write_impression(client, feature_prefix, user_id=1, version=3, arm="stable",
                         movies=[1], ts_ms=T0 - minute * MINUTE)  # fmt: skip
    key = event_log.impressions_key(feature_prefix, event_log.shard(1))
    client.xtrim(key, maxlen=1, approximate=False)  # what XADD's MAXLEN does under load
    reader = log_reader.connect(redis_url)
    read = log_reader.read_window(reader, feature_prefix, T0 - 60 * MINUTE, T0)
    assert read.log_begins_ms == T0 - 10 * MINUTE and len(read.impressions) == 1
    assert read.trimmed_length == 1 and read.notes() == []
    # one impression in the last 10 minutes: the hour needs 6 of them, in 8 streams
    assert "the streams keep about 1 entries each and this window needs about 1 " in (
        read.trimmed() or ""
    )
    untouched = log_reader.read_window(reader, feature_prefix, T0 - 5 * MINUTE, T0)
    assert untouched.log_begins_ms is None and untouched.trimmed() is None


def test_positions_past_the_reported_ones_are_summed_per_movie() -> None:
    outcome = log_reader.LoggedOutcome(1, 3, "stable", tuple(range(15)), (0, 12))
    sample = ctr.per_user([outcome])[(3, "stable")]
    assert sample.shown_at[0, ctr.POSITIONS] == 5 and sample.clicks_at[0, ctr.POSITIONS] == 1
    assert sample.at_position(ctr.POSITIONS).value == pytest.approx(1 / 5)


def test_an_unreachable_redis_is_one_line() -> None:
    client = log_reader.connect("redis://127.0.0.1:1/0")
    with pytest.raises(log_reader.AfmError, match="^reading the impression log failed: "):
        log_reader.read_window(client, "afm:", 0, 1)


def test_error_counts_come_from_the_service_metrics_by_version() -> None:
    from service.errors import FeatureStoreUnavailable, ServiceError
    from service.metrics import Metrics

    metrics = Metrics()
    for _ in range(3):
        with metrics.scoring("/score", 3, "stable"):
            pass
    with metrics.scoring("/explain", 4, "canary"):
        pass
    for error in (ServiceError("boom"), FeatureStoreUnavailable("down")):
        with pytest.raises(ServiceError), metrics.scoring("/score", 4, "canary"):
            raise error
    text = metrics.render()[0].decode()
    counts = guard.errors_by_version(text)
    assert counts[3].requests == 3 and counts[3].errors == 0
    assert counts[4].requests == 3 and counts[4].errors == 2  # a 500 and a 503
