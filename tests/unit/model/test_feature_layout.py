"""Golden tests: these byte-level names are a contract between loader and service."""

import pytest
from redis.crc import key_slot

from model.contracts import feature_layout as fl
from model.contracts.export_format import HISTORY_FIELD
from model.data.dataset import MOVIE_COLUMNS


def test_key_names_are_stable() -> None:
    ns = fl.namespace("afm:", "123-ab")
    assert fl.pointer_key("afm:") == "afm:current"
    assert ns == "afm:ns:123-ab:"
    assert fl.user_key(ns, 42) == "afm:ns:123-ab:user:42"
    assert fl.user_key(ns, "42") == "afm:ns:123-ab:user:42"
    assert fl.movies_key(ns) == "afm:ns:123-ab:movies"
    assert fl.meta_key(ns) == "afm:ns:123-ab:meta"


def test_cluster_keys_are_the_same_names_each_hashed_whole() -> None:
    """No hash tag: a key's slot is CRC16 of the whole name, so one load's users land on
    slots all over the cluster (hence on every master), and the next load's elsewhere."""
    ns = fl.namespace("afm:", "123-ab")
    slots = {
        "afm:current": 584,
        "afm:ns:123-ab:user:1": 8470,
        "afm:ns:123-ab:user:2": 4469,
        "afm:ns:123-ab:user:3": 340,
        "afm:ns:123-ab:movies": 15439,
        "afm:ns:123-ab:meta": 13298,
        "afm:ns:124-cd:user:1": 3591,
    }
    assert [fl.pointer_key("afm:"), *(fl.user_key(ns, u) for u in (1, 2, 3))] == list(slots)[:4]
    assert [fl.movies_key(ns), fl.meta_key(ns)] == list(slots)[4:6]
    assert fl.user_key(fl.namespace("afm:", "124-cd"), 1) == "afm:ns:124-cd:user:1"
    assert {key: key_slot(key.encode()) for key in slots} == slots


def test_cluster_prefix_may_not_hold_a_hash_tag() -> None:
    assert fl.check_cluster_prefix("afm:") == "afm:"
    assert key_slot(b"{afm}:ns:123-ab:user:1") == key_slot(b"{afm}:current")  # why not
    for prefix in ("{afm}:", "afm{", "x}:"):
        with pytest.raises(ValueError, match="hash tag would put every key in one slot"):
            fl.check_cluster_prefix(prefix)


def test_cluster_timings_leave_readers_time_to_move_on() -> None:
    # A reader uses a namespace at most max age after reading the pointer, plus its reads
    # (a few calls of at most the service's 30 s timeout): the retired keys outlive that.
    assert fl.CLUSTER_REFRESH_SECONDS < fl.CLUSTER_MAX_AGE_SECONDS
    assert fl.CLUSTER_RETIRE_SECONDS > fl.CLUSTER_MAX_AGE_SECONDS + 6 * 30


def test_movie_features_are_the_movie_columns_after_the_id() -> None:
    assert fl.MOVIE_FEATURES == ("title", "year", "genres")
    assert MOVIE_COLUMNS == ("movie_id", *fl.MOVIE_FEATURES)


def test_encode_user_keeps_raw_strings_and_only_user_fields() -> None:
    encoded = fl.encode_user(
        {"gender": "F", "age": 1, "occupation": "10", "zip": "02138", "user_id": "1"}
    )
    assert encoded == {"gender": "F", "age": "1", "occupation": "10", "zip": "02138"}


def test_encode_user_writes_the_watched_movies_when_given() -> None:
    features = {"gender": "F", "age": "1", "occupation": "10", "zip": "02138"}
    assert fl.encode_user({**features, "watched": "50|1|181"}) == {
        **features,
        "watched": "50|1|181",
    }
    assert fl.encode_user({**features, "watched": ""})["watched"] == ""


def test_watched_is_the_contract_history_field() -> None:
    assert fl.WATCHED == HISTORY_FIELD


def test_encode_user_missing_field_raises() -> None:
    with pytest.raises(KeyError, match="zip"):
        fl.encode_user({"gender": "F", "age": "1", "occupation": "10"})


def test_decode_user_round_trips_bytes_from_redis() -> None:
    raw = {b"gender": b"M", b"age": b"25", b"occupation": b"4", b"zip": b"55455-1234"}
    decoded = {"gender": "M", "age": "25", "occupation": "4", "zip": "55455-1234"}
    assert fl.decode_user(raw) == {**decoded, "watched": "", "watched_at": ""}  # older loader
    history = {b"watched": b"50|1|181", b"watched_at": b"874965758"}
    assert fl.decode_user({**raw, **history}) == {
        **decoded, "watched": "50|1|181", "watched_at": "874965758"
    }  # fmt: skip


def test_encode_user_leaves_out_an_empty_watched_at() -> None:
    user = {"gender": "F", "age": "1", "occupation": "10", "zip": "48067", "watched": ""}
    assert fl.encode_user({**user, "watched_at": ""}) == user
    assert fl.encode_user({**user, "watched_at": "874965758"})["watched_at"] == "874965758"


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
    # The scripts build keys exactly as user_key, movies_key and meta_key do.
    assert "ns .. 'user:' .. ARGV[1]" in fl.READ_USER_SCRIPT
    assert (
        "return {ns, redis.call('HGETALL', ns .. 'movies'), redis.call('HGETALL', ns .. 'meta')}"
        in fl.READ_MOVIES_SCRIPT
    )
    for script in (fl.READ_USER_SCRIPT, fl.READ_MOVIES_SCRIPT):
        assert "redis.call('GET', KEYS[1])" in script
        assert "return {ns, redis.call('HGETALL'" in script


META = fl.FeatureSetMeta(
    source="ml-1m at /data/ml-1m",
    users=6040,
    movies=3883,
    loaded_at="2026-01-02T03:04:05Z",
    labels={"gender": {"F": "Female", "M": "Male"}, "age": {"1": "Under 18"}},
    popular=("2858", "260"),
    sample_users=("1", "2"),
    user_values={"gender": {"F": 1709, "M": 4331}, "zip": {"02138": 2, "10001": 1}},
)
META_HASH = {
    "source": "ml-1m at /data/ml-1m",
    "users": "6040",
    "movies": "3883",
    "loaded_at": "2026-01-02T03:04:05Z",
    "labels": '{"gender":{"F":"Female","M":"Male"},"age":{"1":"Under 18"}}',
    "popular": '["2858","260"]',
    "sample_users": '["1","2"]',
    "user_values": '{"gender":{"F":1709,"M":4331},"zip":{"02138":2,"10001":1}}',
}


def test_encode_meta_is_strings_and_compact_json() -> None:
    assert fl.META_FIELDS == (
        "source", "users", "movies", "loaded_at", "labels", "popular", "sample_users",
        "user_values",
    )  # fmt: skip
    encoded = fl.encode_meta(META)
    assert encoded == META_HASH
    assert tuple(encoded) == fl.META_FIELDS


def test_encode_meta_keeps_non_ascii_text_and_leaves_out_unknown_counts() -> None:
    meta = fl.FeatureSetMeta(source="données", labels={"genres": {"Crime": "Policier é"}})
    assert fl.encode_meta(meta) == {
        "source": "données",
        "loaded_at": "",
        "labels": '{"genres":{"Crime":"Policier é"}}',
        "popular": "[]",
        "sample_users": "[]",
        "user_values": "{}",
    }


def test_decode_meta_round_trips_bytes_from_redis() -> None:
    raw = {k.encode(): v.encode() for k, v in META_HASH.items()}
    assert fl.decode_meta(raw) == META
    assert fl.decode_meta(META_HASH) == META
    assert fl.decode_meta(fl.encode_meta(fl.FeatureSetMeta())) == fl.FeatureSetMeta()


def test_decoded_meta_is_read_only() -> None:
    meta = fl.decode_meta(META_HASH)
    with pytest.raises(TypeError):
        meta.labels["gender"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        meta.labels["gender"]["F"] = "f"  # type: ignore[index]
    with pytest.raises(TypeError):
        fl.FeatureSetMeta().labels["age"] = {}  # type: ignore[index]


@pytest.mark.parametrize("raw", [None, {}])
def test_a_namespace_without_meta_reads_as_the_defaults(raw: dict | None) -> None:
    meta = fl.decode_meta(raw)
    assert meta == fl.FeatureSetMeta()
    assert (meta.source, meta.users, meta.movies, meta.loaded_at) == ("", None, None, "")
    assert (dict(meta.labels), meta.popular, meta.sample_users) == ({}, (), ())
    assert dict(meta.user_values) == {}  # an older load: nothing to compare with a model


@pytest.mark.parametrize(
    ("field", "value", "default"),
    [
        ("users", "many", None),
        ("movies", "-3", None),
        ("movies", "\uff13", None),  # a digit, but not a decimal one Redis would hold
        ("labels", "{", {}),
        ("labels", '["gender"]', {}),
        ("popular", '{"2858":1}', ()),
        ("popular", "[2858]", ()),
        ("sample_users", '["1",null]', ()),
        ("user_values", "[]", {}),
        ("user_values", "{", {}),
    ],
)
def test_decode_meta_unreadable_field_reads_as_its_default(
    field: str, value: str, default: object
) -> None:
    meta = fl.decode_meta({**META_HASH, field: value})
    assert getattr(meta, field) == default
    assert meta.source == META.source  # the other fields are kept


def test_decode_meta_drops_a_field_whose_labels_are_not_strings() -> None:
    labels = '{"gender":{"F":"Female"},"age":{"1":18},"zip":"x"}'
    assert fl.decode_meta({**META_HASH, "labels": labels}).labels == {"gender": {"F": "Female"}}


def test_decode_meta_of_undecodable_bytes_is_the_defaults() -> None:
    assert fl.decode_meta({b"source": b"\xff"}) == fl.FeatureSetMeta()


def test_decode_meta_drops_a_field_whose_value_counts_are_not_counts() -> None:
    counts = '{"gender":{"F":3},"age":{"1":"3"},"zip":{"x":-1},"occupation":{"4":true},"y":1}'
    meta = fl.decode_meta({**META_HASH, "user_values": counts})
    assert meta.user_values == {"gender": {"F": 3}}
    with pytest.raises(TypeError):
        meta.user_values["gender"]["F"] = 4  # type: ignore[index]
