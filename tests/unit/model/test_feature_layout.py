"""Golden tests: these byte-level names are a contract between loader and service."""

import pytest

from model import feature_layout as fl
from model.dataset import MOVIE_COLUMNS


def test_key_names_are_stable() -> None:
    ns = fl.namespace("afm:", "123-ab")
    assert fl.pointer_key("afm:") == "afm:current"
    assert ns == "afm:ns:123-ab:"
    assert fl.user_key(ns, 42) == "afm:ns:123-ab:user:42"
    assert fl.user_key(ns, "42") == "afm:ns:123-ab:user:42"
    assert fl.movies_key(ns) == "afm:ns:123-ab:movies"


def test_movie_features_are_the_movie_columns_after_the_id() -> None:
    assert fl.MOVIE_FEATURES == ("title", "year", "genres")
    assert MOVIE_COLUMNS == ("movie_id", *fl.MOVIE_FEATURES)


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


def test_encode_movie_is_compact_utf8_json_in_feature_order() -> None:
    encoded = fl.encode_movie(
        {"genres": "Comedy|Drama", "year": 1995, "title": "Misérables, Les (1995)", "x": "1"}
    )
    assert encoded == '{"title":"Misérables, Les (1995)","year":"1995","genres":"Comedy|Drama"}'
    assert encoded.encode() == (
        b'{"title":"Mis\xc3\xa9rables, Les (1995)","year":"1995","genres":"Comedy|Drama"}'
    )


def test_encode_movie_keeps_empty_values_and_escapes_quotes() -> None:
    encoded = fl.encode_movie({"title": 'Say "Hi"', "year": "", "genres": ""})
    assert encoded == '{"title":"Say \\"Hi\\"","year":"","genres":""}'


def test_encode_movie_missing_feature_raises() -> None:
    with pytest.raises(KeyError, match="genres"):
        fl.encode_movie({"title": "Heat (1995)", "year": "1995"})


@pytest.mark.parametrize(
    "raw",
    [
        b'{"title":"Mis\xc3\xa9rables, Les (1995)","year":"1995","genres":"Comedy|Drama"}',
        '{"title":"Misérables, Les (1995)","year":"1995","genres":"Comedy|Drama"}',
    ],
)
def test_decode_movie_reads_bytes_or_text(raw: bytes | str) -> None:
    assert fl.decode_movie(raw) == {
        "title": "Misérables, Les (1995)",
        "year": "1995",
        "genres": "Comedy|Drama",
    }


def test_decode_movie_round_trips_and_ignores_extra_keys() -> None:
    movie = {"title": "Heat (1995)", "year": "1995", "genres": "Action|Crime"}
    assert fl.decode_movie(fl.encode_movie(movie)) == movie
    assert fl.decode_movie(b'{"title":"","year":"","genres":"","rating":"5"}') == {
        "title": "",
        "year": "",
        "genres": "",
    }


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b'["Heat (1995)","1995","Action"]',
        b'{"title":"Heat (1995)","year":"1995"}',
        b'{"title":"Heat (1995)","year":1995,"genres":"Action"}',
    ],
)
def test_decode_movie_unreadable_or_incomplete_is_none(raw: bytes) -> None:
    assert fl.decode_movie(raw) is None


def test_read_scripts_resolve_the_pointer_and_return_the_namespace() -> None:
    # The scripts build keys exactly as user_key and movies_key do.
    assert "ns .. 'user:' .. ARGV[1]" in fl.READ_USER_SCRIPT
    assert "ns .. 'movies'" in fl.READ_MOVIES_SCRIPT
    for script in (fl.READ_USER_SCRIPT, fl.READ_MOVIES_SCRIPT):
        assert "redis.call('GET', KEYS[1])" in script
        assert "return {ns, redis.call('HGETALL'" in script
