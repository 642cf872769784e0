"""The impression id and log layout contract."""

from __future__ import annotations

import pytest

from model.contracts import event_log
from model.contracts.event_log import ImpressionIdError

KEYS = event_log.parse_keys("k2:new-secret, k1:old-secret")
NOW = 1_796_616_305_123


def test_an_issued_id_parses_back_to_what_it_says() -> None:
    text = event_log.issue_impression_id(KEYS, 3, "canary", 42, NOW)
    parsed = event_log.parse_impression_id(text, KEYS, NOW + 1000, window_s=60)
    assert (parsed.key_id, parsed.version, parsed.arm, parsed.user_id) == ("k2", 3, "canary", 42)
    assert parsed.issued_ms == NOW and parsed.text == text
    assert text != event_log.issue_impression_id(KEYS, 3, "canary", 42, NOW)  # the nonce


def test_an_id_signed_with_a_rotated_out_key_still_verifies_while_listed() -> None:
    old = event_log.issue_impression_id(event_log.parse_keys("k1:old-secret"), 1, "stable", 7, NOW)
    assert event_log.parse_impression_id(old, KEYS, NOW, window_s=60).key_id == "k1"
    with pytest.raises(ImpressionIdError) as error:
        event_log.parse_impression_id(old, event_log.parse_keys("k2:new-secret"), NOW, 60)
    assert error.value.reason == "forged"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda t: t.replace(".42.", ".43."), "forged"),  # another user, same signature
        (lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), "forged"),
        (lambda t: "x" + t, "malformed"),
        (lambda t: t.rsplit(".", 1)[0], "malformed"),
        (lambda t: "", "malformed"),
    ],
)
def test_tampered_and_malformed_ids_are_refused(change, reason: str) -> None:
    text = event_log.issue_impression_id(KEYS, 3, "stable", 42, NOW)
    with pytest.raises(ImpressionIdError) as error:
        event_log.parse_impression_id(change(text), KEYS, NOW, window_s=60)
    assert error.value.reason == reason


def test_an_id_older_than_the_window_has_expired() -> None:
    text = event_log.issue_impression_id(KEYS, 3, "stable", 42, NOW)
    event_log.parse_impression_id(text, KEYS, NOW + 60_000, window_s=60)  # at the edge: fine
    with pytest.raises(ImpressionIdError) as error:
        event_log.parse_impression_id(text, KEYS, NOW + 60_001, window_s=60)
    assert error.value.reason == "expired"


@pytest.mark.parametrize("text", ["k1", "k1:", ":secret", "k 1:x", "k1:a,k1:b"])
def test_bad_key_lists_are_refused_in_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="impression key"):
        event_log.parse_keys(text)


def test_a_user_always_lands_in_the_same_shard_and_users_spread() -> None:
    assert event_log.shard(42) == event_log.shard("42")
    shards = {event_log.shard(user) for user in range(1, 200)}
    assert shards == set(range(event_log.LOG_SHARDS))
