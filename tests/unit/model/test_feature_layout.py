"""Golden tests: these byte-level names are a contract between loader and service."""

import pytest

from model import feature_layout as fl


def test_key_names_are_stable() -> None:
    ns = fl.namespace("afm:", "17")
    assert fl.pointer_key("afm:") == "afm:current"
    assert ns == "afm:ns:17:"
    assert fl.user_key(ns, 42) == "afm:ns:17:user:42"
    assert fl.user_key(ns, "42") == "afm:ns:17:user:42"


def test_encode_user_keeps_raw_strings_and_only_user_fields() -> None:
    encoded = fl.encode_user(
        {"gender": "F", "age": 1, "occupation": "10", "zip": "02138", "user_id": "1"}
    )
    assert encoded == {"gender": "F", "age": "1", "occupation": "10", "zip": "02138"}


def test_encode_user_missing_field_raises() -> None:
    with pytest.raises(KeyError, match="zip"):
        fl.encode_user({"gender": "F", "age": "1", "occupation": "10"})


def test_decode_user_round_trips_bytes_from_redis() -> None:
    raw = {b"gender": b"M", b"age": b"25", b"occupation": b"4", b"zip": b"55455-1234"}
    assert fl.decode_user(raw) == {
        "gender": "M",
        "age": "25",
        "occupation": "4",
        "zip": "55455-1234",
    }


@pytest.mark.parametrize("raw", [None, {}, {b"gender": b"M"}])
def test_decode_user_missing_or_incomplete_is_none(raw: dict | None) -> None:
    assert fl.decode_user(raw) is None
