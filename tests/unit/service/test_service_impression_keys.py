"""Impression signing keys from the settings: a list, a file (its keys first), rotation
order kept, bad entries refused at startup without quoting a secret, and a random key with
one warning when none is configured."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.impressions import signing_keys
from service.settings import Settings


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(model_dir=tmp_path, **values)


def test_keys_from_the_list_keep_their_order(tmp_path: Path) -> None:
    keys = _settings(tmp_path, impression_keys="k2:new, k1:old").impression_signing_keys
    assert keys == {"k2": b"new", "k1": b"old"} and next(iter(keys)) == "k2"


def test_keys_from_a_file_come_first(tmp_path: Path) -> None:
    secret = tmp_path / "impression-keys"
    secret.write_text("k3:from-file\n\nk2:also-file\n")
    keys = _settings(
        tmp_path, impression_keys_file=secret, impression_keys="k1:listed"
    ).impression_signing_keys
    assert list(keys) == ["k3", "k2", "k1"]


@pytest.mark.parametrize("text", ["no-colon-secret", "k1:a,k1:b", "bad id!:secret", ":secret"])
def test_a_bad_key_stops_startup_without_quoting_it(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(tmp_path, impression_keys=text)
    assert "impression key" in str(caught.value)
    assert "secret" not in str(caught.value).replace("<secret>", "")


def test_an_empty_or_missing_keys_file_stops_startup(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValidationError, match="is empty"):
        _settings(tmp_path, impression_keys_file=empty)
    with pytest.raises(ValidationError, match="cannot read the impression keys file"):
        _settings(tmp_path, impression_keys_file=tmp_path / "missing")


def test_without_keys_a_random_one_is_drawn_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert _settings(tmp_path).impression_signing_keys == {}
    with caplog.at_level(logging.WARNING, logger="service.impressions"):
        first, second = signing_keys({}), signing_keys({})
    assert first != second and all(len(secret) == 32 for secret in first.values())
    assert len(caplog.records) == 2 and "will not verify" in caplog.records[0].getMessage()
    assert signing_keys({"k1": b"s"}) == {"k1": b"s"}
