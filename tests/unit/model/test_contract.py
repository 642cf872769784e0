import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from model.contracts import export_format


def test_names_clients_depend_on_are_spelled_out() -> None:
    """A rename here breaks every client and exported model: it must fail a test."""
    assert export_format.SIGNATURE_SCORE == "serving_default"
    assert export_format.SIGNATURE_EXPLAIN == "explain"
    assert export_format.SIGNATURE_WEIGHTS == "weights"
    assert export_format.OUTPUT_PROBABILITY == "probability"
    assert export_format.OUTPUT_ATTENTION == "attention"
    assert export_format.OUTPUT_CONTRIBUTION == "contribution"
    assert export_format.OUTPUT_BIAS == "bias"
    assert export_format.OUTPUT_LINEAR == "linear"
    assert export_format.OUTPUT_LOGIT == "logit"
    assert export_format.weights_outputs(export_format.ALL_FIELDS) == [
        "field_table",
        "field_offsets",
        "bag_table_genres",
        "attention_kernel",
        "attention_bias",
        "attention_projection",
        "projection",
        "pair_bias",
        "pair_scale",
        "bias",
        "uses_attention",
    ]
    assert "bag_table_genres" not in export_format.weights_outputs(export_format.SEED_FIELDS)
    assert export_format.METADATA_FILE == "metadata.json"
    assert export_format.VOCABULARIES_FILE == "vocabularies.json"
    assert export_format.FIELD_SETS == {
        "seed": ("user_id", "gender", "age", "occupation", "zip", "movie_id"),
        "all": ("user_id", "gender", "age", "occupation", "zip", "movie_id", "year", "genres"),
        "history": (
            "user_id", "gender", "age", "occupation", "zip", "last_watched", "movie_id", "year",
            "genres", "watched",
        ),
    }  # fmt: skip
    assert export_format.HISTORY_FIELD == "watched" and export_format.HISTORY_LENGTH == 20
    assert export_format.OUTPUT_HISTORY_ATTENTION == "history_attention"
    assert export_format.weights_outputs(export_format.HISTORY_FIELDS)[-2:] == [
        "history_query",
        "history_recency",
    ]
    assert "bag_table_watched" in export_format.weights_outputs(export_format.HISTORY_FIELDS)
    assert export_format.MULTI_VALUED == {"genres": "|", "watched": "|"}
    assert export_format.FORMAT_VERSION == 3


def test_rank_sides_split_user_fields_from_movie_fields() -> None:
    assert export_format.rank_sides(export_format.SEED_FIELDS) == (
        list(export_format.USER_FIELDS),
        ["movie_id"],
    )
    assert export_format.rank_sides(export_format.ALL_FIELDS) == (
        ["user_id", "gender", "age", "occupation", "zip"],
        ["movie_id", "year", "genres"],
    )
    with pytest.raises(ValueError, match="user fields must come first"):
        export_format.rank_sides(("movie_id", "user_id"))


def test_pairs_are_the_combinations_in_field_order() -> None:
    seed = export_format.pairs(export_format.SEED_FIELDS)
    assert len(seed) == 15
    assert seed[0] == ("user_id", "gender")
    assert seed[4] == ("user_id", "movie_id")
    assert seed[-1] == ("zip", "movie_id")
    every = export_format.pairs(export_format.ALL_FIELDS)
    assert len(every) == 28
    assert every[:5] == seed[:5] and every[-1] == ("year", "genres")
    index = {f: i for i, f in enumerate(export_format.ALL_FIELDS)}
    assert all(index[a] < index[b] for a, b in every)


def test_versions_ignore_temporary_and_non_numeric_entries(tmp_path: Path) -> None:
    for name in ("1", "3", "10", ".tmp-abc", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert export_format.list_versions(tmp_path) == [1, 3, 10]
    assert export_format.latest_version(tmp_path) == 10
    assert export_format.next_version(tmp_path) == 11


def test_empty_or_missing_model_dir_starts_at_version_one(tmp_path: Path) -> None:
    assert export_format.latest_version(tmp_path / "missing") is None
    assert export_format.next_version(tmp_path) == 1


def _metadata(**extra: object) -> dict:
    return {
        "version": 2,
        "fields": list(export_format.SEED_FIELDS),
        "pairs": [list(p) for p in export_format.pairs(export_format.SEED_FIELDS)],
        "hyperparameters": {"embedding_dim": 16},
        "protocol": "next-item",
        "data": {"train": {"rows": 10, "positives": 1}},
        "metrics": {"test": {"auc": 0.9}},
        "tensorflow_version": "2.21.0",
        "created_at": "2026-11-28T00:00:00+00:00",
        **extra,
    }


def test_metadata_keeps_unknown_keys_from_newer_exports(tmp_path: Path) -> None:
    (tmp_path / export_format.METADATA_FILE).write_text(
        export_format.ModelMetadata.model_validate(_metadata(new_key=[1, 2])).model_dump_json()
    )
    meta = export_format.read_metadata(tmp_path)
    assert meta.version == 2
    assert meta.model_dump()["new_key"] == [1, 2]


def test_metadata_without_required_keys_is_refused() -> None:
    data = _metadata()
    del data["pairs"]
    with pytest.raises(ValidationError, match="pairs"):
        export_format.ModelMetadata.model_validate(data)


def _write_metadata(directory: Path, **changes: object) -> None:
    (directory / export_format.METADATA_FILE).write_text(json.dumps(_metadata(**changes)))


def test_an_older_or_newer_format_or_an_unknown_field_set_is_refused(tmp_path: Path) -> None:
    _write_metadata(tmp_path, format_version=3)
    assert export_format.read_metadata(tmp_path).format_version == 3
    for older in (1, 2):  # no weights signature: the service keeps what it serves
        _write_metadata(tmp_path, format_version=older)
        with pytest.raises(ValueError, match=f"format_version {older} was exported by an older"):
            export_format.read_metadata(tmp_path)
    with pytest.raises(ValueError, match="train a new version") as refused:
        export_format.read_metadata(tmp_path)
    assert "\n" not in str(refused.value)  # one line, for the service's log
    _write_metadata(tmp_path, format_version=4)
    with pytest.raises(ValueError, match="format_version 4 is newer than this reader's 3"):
        export_format.read_metadata(tmp_path)
    _write_metadata(tmp_path, fields=["user_id", "movie_id"], pairs=[["user_id", "movie_id"]])
    with pytest.raises(ValueError, match="unknown field set"):
        export_format.read_metadata(tmp_path)
    _write_metadata(
        tmp_path, pairs=[list(p) for p in reversed(export_format.pairs(export_format.SEED_FIELDS))]
    )
    with pytest.raises(ValueError, match="pairs are not the combinations"):
        export_format.read_metadata(tmp_path)


def test_eight_field_metadata_is_read_with_its_28_pairs(tmp_path: Path) -> None:
    fields = list(export_format.ALL_FIELDS)
    _write_metadata(tmp_path, fields=fields, pairs=[list(p) for p in export_format.pairs(fields)])
    assert tuple(export_format.read_metadata(tmp_path).fields) == export_format.ALL_FIELDS


def test_vocabularies_are_read_per_field_as_strings(tmp_path: Path) -> None:
    fields = export_format.SEED_FIELDS
    vocab = {field: ["1", "2"] for field in fields} | {"age": [1, 18]}
    (tmp_path / export_format.VOCABULARIES_FILE).write_text(json.dumps(vocab))
    assert export_format.read_vocabularies(tmp_path, fields)["age"] == ["1", "18"]
    with pytest.raises(ValueError, match="genres"):
        export_format.read_vocabularies(tmp_path, export_format.ALL_FIELDS)
    del vocab["zip"]
    (tmp_path / export_format.VOCABULARIES_FILE).write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="zip"):
        export_format.read_vocabularies(tmp_path, fields)


def test_multi_valued_strings_split_on_their_separator_without_empty_parts() -> None:
    assert export_format.split_values("genres", "Comedy|Drama") == ["Comedy", "Drama"]
    assert export_format.split_values("genres", "A||B|") == ["A", "B"]
    assert export_format.split_values("genres", "") == []
