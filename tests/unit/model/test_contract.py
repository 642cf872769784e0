import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from model import contract


def test_names_clients_depend_on_are_spelled_out() -> None:
    """A rename here breaks every client and exported model: it must fail a test."""
    assert contract.SIGNATURE_SCORE == "serving_default"
    assert contract.SIGNATURE_EXPLAIN == "explain"
    assert contract.SIGNATURE_ITEMS == "items"
    assert contract.SIGNATURE_RANK == "rank"
    assert contract.SIGNATURE_RANK_EXPLAIN == "rank_explain"
    assert contract.SIGNATURE_RANK_WEIGHTS == "rank_weights"
    assert contract.INPUT_USER_INDEX == "user_index"
    assert contract.INPUT_ITEMS == contract.OUTPUT_ITEMS == "items"
    assert contract.INPUT_ITEM_INDEX == "item_index"
    assert contract.OUTPUT_PROBABILITY == "probability"
    assert contract.OUTPUT_ATTENTION == "attention"
    assert contract.OUTPUT_CONTRIBUTION == "contribution"
    assert contract.OUTPUT_BIAS == "bias"
    assert contract.OUTPUT_LINEAR == "linear"
    assert contract.OUTPUT_LOGIT == "logit"
    assert (
        contract.OUTPUT_FIELD_TABLE,
        contract.OUTPUT_USER_OFFSETS,
        contract.OUTPUT_PAIR_KERNEL,
        contract.OUTPUT_ATTENTION_BIAS,
        contract.OUTPUT_ATTENTION_PROJECTION,
        contract.OUTPUT_PAIR_BIAS,
        contract.OUTPUT_PAIR_SCALE,
        contract.OUTPUT_USES_ATTENTION,
    ) == (
        "field_table",
        "user_offsets",
        "pair_kernel",
        "attention_bias",
        "attention_projection",
        "pair_bias",
        "pair_scale",
        "uses_attention",
    )
    assert contract.METADATA_FILE == "metadata.json"
    assert contract.VOCABULARIES_FILE == "vocabularies.json"
    assert contract.FIELD_SETS == {
        "seed": ("user_id", "gender", "age", "occupation", "zip", "movie_id"),
        "all": ("user_id", "gender", "age", "occupation", "zip", "movie_id", "year", "genres"),
    }
    assert contract.MULTI_VALUED == {"genres": "|"}
    assert contract.FORMAT_VERSION == 2


def test_rank_sides_split_user_fields_from_movie_fields() -> None:
    assert contract.rank_sides(contract.SEED_FIELDS) == (list(contract.USER_FIELDS), ["movie_id"])
    assert contract.rank_sides(contract.ALL_FIELDS) == (
        ["user_id", "gender", "age", "occupation", "zip"],
        ["movie_id", "year", "genres"],
    )
    with pytest.raises(ValueError, match="user fields must come first"):
        contract.rank_sides(("movie_id", "user_id"))


def test_pairs_are_the_combinations_in_field_order() -> None:
    seed = contract.pairs(contract.SEED_FIELDS)
    assert len(seed) == 15
    assert seed[0] == ("user_id", "gender")
    assert seed[4] == ("user_id", "movie_id")
    assert seed[-1] == ("zip", "movie_id")
    every = contract.pairs(contract.ALL_FIELDS)
    assert len(every) == 28
    assert every[:5] == seed[:5] and every[-1] == ("year", "genres")
    index = {f: i for i, f in enumerate(contract.ALL_FIELDS)}
    assert all(index[a] < index[b] for a, b in every)


def test_versions_ignore_temporary_and_non_numeric_entries(tmp_path: Path) -> None:
    for name in ("1", "3", "10", ".tmp-abc", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert contract.list_versions(tmp_path) == [1, 3, 10]
    assert contract.latest_version(tmp_path) == 10
    assert contract.next_version(tmp_path) == 11


def test_empty_or_missing_model_dir_starts_at_version_one(tmp_path: Path) -> None:
    assert contract.latest_version(tmp_path / "missing") is None
    assert contract.next_version(tmp_path) == 1


def _metadata(**extra: object) -> dict:
    return {
        "version": 2,
        "fields": list(contract.SEED_FIELDS),
        "pairs": [list(p) for p in contract.pairs(contract.SEED_FIELDS)],
        "hyperparameters": {"embedding_dim": 16},
        "protocol": "next-item",
        "data": {"train": {"rows": 10, "positives": 1}},
        "metrics": {"test": {"auc": 0.9}},
        "tensorflow_version": "2.21.0",
        "created_at": "2026-11-28T00:00:00+00:00",
        **extra,
    }


def test_metadata_keeps_unknown_keys_from_newer_exports(tmp_path: Path) -> None:
    (tmp_path / contract.METADATA_FILE).write_text(
        contract.ModelMetadata.model_validate(_metadata(new_key=[1, 2])).model_dump_json()
    )
    meta = contract.read_metadata(tmp_path)
    assert meta.version == 2
    assert meta.model_dump()["new_key"] == [1, 2]


def test_metadata_without_required_keys_is_refused() -> None:
    data = _metadata()
    del data["pairs"]
    with pytest.raises(ValidationError, match="pairs"):
        contract.ModelMetadata.model_validate(data)


def _write_metadata(directory: Path, **changes: object) -> None:
    (directory / contract.METADATA_FILE).write_text(json.dumps(_metadata(**changes)))


def test_a_newer_format_or_an_unknown_field_set_is_refused(tmp_path: Path) -> None:
    _write_metadata(tmp_path, format_version=1)  # six fixed fields: still readable
    assert contract.read_metadata(tmp_path).format_version == 1
    _write_metadata(tmp_path, format_version=3)
    with pytest.raises(ValueError, match="format_version 3 is newer than this reader's 2"):
        contract.read_metadata(tmp_path)
    _write_metadata(tmp_path, fields=["user_id", "movie_id"], pairs=[["user_id", "movie_id"]])
    with pytest.raises(ValueError, match="unknown field set"):
        contract.read_metadata(tmp_path)
    _write_metadata(
        tmp_path, pairs=[list(p) for p in reversed(contract.pairs(contract.SEED_FIELDS))]
    )
    with pytest.raises(ValueError, match="pairs are not the combinations"):
        contract.read_metadata(tmp_path)


def test_eight_field_metadata_is_read_with_its_28_pairs(tmp_path: Path) -> None:
    fields = list(contract.ALL_FIELDS)
    _write_metadata(tmp_path, fields=fields, pairs=[list(p) for p in contract.pairs(fields)])
    assert tuple(contract.read_metadata(tmp_path).fields) == contract.ALL_FIELDS


def test_vocabularies_are_read_per_field_as_strings(tmp_path: Path) -> None:
    fields = contract.SEED_FIELDS
    vocab = {field: ["1", "2"] for field in fields} | {"age": [1, 18]}
    (tmp_path / contract.VOCABULARIES_FILE).write_text(json.dumps(vocab))
    assert contract.read_vocabularies(tmp_path, fields)["age"] == ["1", "18"]
    with pytest.raises(ValueError, match="genres"):
        contract.read_vocabularies(tmp_path, contract.ALL_FIELDS)
    del vocab["zip"]
    (tmp_path / contract.VOCABULARIES_FILE).write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="zip"):
        contract.read_vocabularies(tmp_path, fields)


def test_multi_valued_strings_split_on_their_separator_without_empty_parts() -> None:
    assert contract.split_values("genres", "Comedy|Drama") == ["Comedy", "Drama"]
    assert contract.split_values("genres", "A||B|") == ["A", "B"]
    assert contract.split_values("genres", "") == []
