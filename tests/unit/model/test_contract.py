import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from model import contract


def test_pairs_are_the_fifteen_combinations_in_field_order() -> None:
    assert len(contract.PAIRS) == 15
    assert contract.PAIRS[0] == ("user_id", "gender")
    assert contract.PAIRS[4] == ("user_id", "movie_id")
    assert contract.PAIRS[-1] == ("zip", "movie_id")
    index = {f: i for i, f in enumerate(contract.FIELDS)}
    assert all(index[a] < index[b] for a, b in contract.PAIRS)


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
        "fields": list(contract.FIELDS),
        "pairs": [list(p) for p in contract.PAIRS],
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


def test_vocabularies_are_read_per_field_as_strings(tmp_path: Path) -> None:
    vocab = {field: ["1", "2"] for field in contract.FIELDS} | {"age": [1, 18]}
    (tmp_path / contract.VOCABULARIES_FILE).write_text(json.dumps(vocab))
    assert contract.read_vocabularies(tmp_path)["age"] == ["1", "18"]
    del vocab["zip"]
    (tmp_path / contract.VOCABULARIES_FILE).write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="zip"):
        contract.read_vocabularies(tmp_path)
