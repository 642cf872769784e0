"""Prepared rows on disk (model/data/shards.py): what is written is what streams back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model.contracts.export_format import (
    ALL_FIELDS,
    HISTORY_FIELD,
    HISTORY_FIELDS,
    HISTORY_LENGTH,
)
from model.data.dataset import SINGLE_INPUT, LabeledRows, PreparedData
from model.data.shards import (
    BLOCK_ROWS,
    MANIFEST_FILE,
    Manifest,
    evaluation_batches,
    training_batches,
    worker_files,
    worker_rows,
    write_prepared,
)
from model.errors import AfmError

N_TRAIN = 3 * BLOCK_ROWS + 37  # blocks of BLOCK_ROWS and one partial block


def small_data(held_out: bool = False) -> PreparedData:
    rng = np.random.default_rng(0)
    n_users, n_movies = 40, 30
    users = {
        "user_id": np.array([str(i) for i in range(n_users)]),
        "gender": np.array(["F", "M"] * (n_users // 2)),
        "age": np.array(["1", "18", "25", "35"] * (n_users // 4)),
        "occupation": np.array([str(i % 7) for i in range(n_users)]),
        "zip": np.array([f"{i % 9:05d}" for i in range(n_users)]),
    }
    genres = ["Comedy", "Drama|Comedy", "Horror|Drama|Action", ""]
    movies = {
        "movie_id": np.array([str(100 + i) for i in range(n_movies)]),
        "title": np.array([f"t{i}" for i in range(n_movies)]),
        "year": np.array([str(1990 + i % 5) for i in range(n_movies)]),
        "genres": np.array([genres[i % 4] for i in range(n_movies)]),
    }

    def rows(n: int) -> LabeledRows:
        return LabeledRows(
            rng.integers(0, n_users, n).astype(np.int32),
            rng.integers(0, n_movies, n).astype(np.int32),
            (np.arange(n) % 3 == 0).astype(np.float32),
        )

    return PreparedData(
        users,
        movies,
        rows(N_TRAIN),
        rows(300),
        rows(500),
        "next-item",
        "unit test",
        extra={"negatives": 2},
        held_out_movies=np.array([3, 5]) if held_out else None,
    )


def encoded(data: PreparedData, rows: LabeledRows) -> dict[str, np.ndarray]:
    return data.encode(rows, data.vocabularies(ALL_FIELDS), ALL_FIELDS)


def row_keys(inputs: dict[str, np.ndarray], labels: np.ndarray) -> list[tuple]:
    """Each row as one hashable tuple: ids, genres ids, label (rows must travel whole)."""
    return sorted(
        (*ids.tolist(), *genres.tolist(), float(label))
        for ids, genres, label in zip(inputs[SINGLE_INPUT], inputs["genres"], labels, strict=True)
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedData, Manifest]:
    data = small_data(held_out=True)
    out = tmp_path_factory.mktemp("prepared") / "rows"
    manifest = write_prepared(data, "all", out, shards=3, seed=5, data_config={"seed": 5})
    return data, manifest


def test_manifest_records_vocabularies_rows_and_protocol(prepared) -> None:
    data, manifest = prepared
    raw = json.loads((manifest.directory / MANIFEST_FILE).read_text())
    assert raw["fields"] == list(ALL_FIELDS)
    vocabularies = data.vocabularies(ALL_FIELDS)
    assert raw["vocabularies"] == {f: vocabularies[f].tolist() for f in ALL_FIELDS}
    assert manifest.summary() == data.summary()
    assert [f["rows"] for f in raw["splits"]["train"]["files"]] == [268, 268, 269]
    assert (raw["protocol"], raw["extra"], raw["data_config"]) == (
        "next-item",
        {"negatives": 2},
        {"seed": 5},
    )
    assert manifest.bag_widths == {"genres": 3}
    assert manifest.held_out_movies == 2


def test_training_shards_hold_every_training_row_once(prepared) -> None:
    data, manifest = prepared
    streamed = list(training_batches(manifest, manifest.files("train"), 100, seed=1, epoch=1))
    assert [len(y) for _, y in streamed] == [100] * (N_TRAIN // 100) + [N_TRAIN % 100]
    inputs = {k: np.concatenate([x[k].numpy() for x, _ in streamed]) for k in streamed[0][0]}
    labels = np.concatenate([y.numpy() for _, y in streamed])
    assert row_keys(inputs, labels) == row_keys(encoded(data, data.train), data.train.label)


def test_evaluation_rows_keep_the_protocol_order(prepared) -> None:
    data, manifest = prepared
    batches = list(evaluation_batches(manifest, "test", 128))
    assert len(batches[0]) == 3  # inputs, labels, held-out flags
    expected = encoded(data, data.test)
    for name in (SINGLE_INPUT, "genres"):
        got = np.concatenate([b[0][name].numpy() for b in batches])
        np.testing.assert_array_equal(got, expected[name])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), data.test.label)
    held = np.concatenate([b[2].numpy() for b in batches]).astype(bool)
    np.testing.assert_array_equal(held, np.isin(data.test.movie_idx, [3, 5]))
    assert len(list(evaluation_batches(manifest, "valid", 128))[0]) == 2  # no flags


def test_epoch_order_follows_seed_and_epoch(prepared) -> None:
    _, manifest = prepared

    def labels_and_ids(seed: int, epoch: int) -> list[int]:
        batches = training_batches(manifest, manifest.files("train"), 64, seed=seed, epoch=epoch)
        return np.concatenate([x[SINGLE_INPUT].numpy()[:, 0] for x, _ in batches]).tolist()

    assert labels_and_ids(1, 1) == labels_and_ids(1, 1)
    assert labels_and_ids(1, 1) != labels_and_ids(1, 2)
    assert labels_and_ids(1, 1) != labels_and_ids(2, 1)


def test_steps_give_exactly_that_many_full_batches(prepared) -> None:
    _, manifest = prepared
    batches = list(
        training_batches(manifest, manifest.files("train"), 64, seed=1, epoch=1, steps=5)
    )
    assert [len(y) for _, y in batches] == [64] * 5


def test_workers_read_disjoint_shards_that_cover_the_set(prepared) -> None:
    _, manifest = prepared
    parts = [worker_files(manifest, w, 2) for w in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(manifest.files("train"))
    assert not set(parts[0]) & set(parts[1])
    assert worker_rows(manifest, 0, 2) + worker_rows(manifest, 1, 2) == N_TRAIN
    with pytest.raises(AfmError, match="3 training shards for 4 workers"):
        worker_files(manifest, 0, 4)


def test_an_existing_directory_is_never_overwritten(prepared, tmp_path: Path) -> None:
    data, manifest = prepared
    with pytest.raises(AfmError, match="already exists and is not empty"):
        write_prepared(data, "all", manifest.directory)
    assert Manifest.load(manifest.directory).summary() == data.summary()
    assert not [p for p in manifest.directory.parent.iterdir() if ".tmp-" in p.name]


def test_a_directory_without_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AfmError, match="not a prepared directory"):
        Manifest.load(tmp_path)


def test_a_missing_shard_is_refused(tmp_path: Path) -> None:
    manifest = write_prepared(small_data(), "seed", tmp_path / "rows", shards=2)
    manifest.files("train")[1].unlink()
    with pytest.raises(AfmError, match="lacks shard file"):
        Manifest.load(manifest.directory)


def with_histories(data: PreparedData) -> PreparedData:
    """``data`` with a watched-movies history per row (some empty, one too long)."""
    ids = data.movie_ids.tolist()
    histories = np.array(
        ["", "|".join(ids[:3]), "|".join(ids[5:9]), "|".join(ids[::-1])], dtype=object
    )
    rng = np.random.default_rng(1)

    def rows(part: LabeledRows) -> LabeledRows:
        return replace(part, history_idx=rng.integers(0, len(histories), len(part)))

    return replace(
        data,
        train=rows(data.train),
        valid=rows(data.valid),
        test=rows(data.test),
        histories=histories,
        last_watched=np.array(["", "3", "9", "21"], dtype=object),
    )


def test_history_rows_stream_back_twenty_wide(tmp_path: Path) -> None:
    data = with_histories(small_data())
    manifest = write_prepared(data, "history", tmp_path / "rows", shards=2)
    assert manifest.fields == HISTORY_FIELDS
    assert manifest.bag_widths == {"genres": 3, HISTORY_FIELD: HISTORY_LENGTH}
    expected = data.encode(data.test, data.vocabularies(HISTORY_FIELDS), HISTORY_FIELDS)
    batches = list(evaluation_batches(manifest, "test", 128))
    for name in (SINGLE_INPUT, "genres", HISTORY_FIELD):
        got = np.concatenate([b[0][name].numpy() for b in batches])
        np.testing.assert_array_equal(got, expected[name])
