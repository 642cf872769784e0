"""Synthetic data -> fit -> export -> tf.saved_model.load: the signatures are the model."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model.config import AFMConfig, DataConfig, TrainConfig
from model.contracts.export_format import (
    ALL_FIELDS,
    FIELD_SETS,
    FORMAT_VERSION,
    HISTORY_FIELD,
    HISTORY_LENGTH,
    LAST_WATCHED,
    METADATA_FILE,
    MOVIE_ID,
    MULTI_VALUED,
    OUTPUT_ATTENTION,
    OUTPUT_BAG_TABLES,
    OUTPUT_BIAS,
    OUTPUT_CONTRIBUTION,
    OUTPUT_FIELD_OFFSETS,
    OUTPUT_FIELD_TABLE,
    OUTPUT_HISTORY_ATTENTION,
    OUTPUT_LINEAR,
    OUTPUT_LOGIT,
    OUTPUT_PROBABILITY,
    SIGNATURE_EXPLAIN,
    SIGNATURE_SCORE,
    SIGNATURE_WEIGHTS,
    VOCABULARIES_FILE,
    list_versions,
    pairs,
    read_metadata,
    user_inputs,
    weights_outputs,
)
from model.contracts.numpy_scorer import NumpyScorer
from model.data.dataset import PAD, LabeledRows, PreparedData
from model.data.protocols import prepare
from model.data.synth import write_synthetic
from model.errors import AfmError
from model.export import savedmodel as export_module
from model.export.signatures import build_archive
from model.network.afm import build_afm
from model.training.rows import InMemoryRows
from model.training.train import CURVE_FILE, METRICS_FILE, FitResult, export_trained, fit

pytestmark = pytest.mark.integration

AFM = AFMConfig(embedding_dim=8, attention_factor=4, oov_rate=0.05)
TRAIN = TrainConfig(epochs=2, batch_size=1024, seed=5)
OOV = {field: f"never-seen-{field}" for field in ALL_FIELDS} | {
    "movie_id": "987654",  # a movie id the service can be asked for: an integer
    "genres": "Comedy|never-seen",
    LAST_WATCHED: "99",
    HISTORY_FIELD: "never-seen|1",
}


@pytest.fixture(scope="module")
def data_config(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    out = tmp_path_factory.mktemp("synthetic-export")
    write_synthetic(out, users=200, movies=150, ratings=8000, seed=5)
    return DataConfig(dataset="synthetic", data_dir=out, negatives=4, seed=5)


@pytest.fixture(scope="module")
def data(data_config: DataConfig) -> PreparedData:
    return prepare(data_config, history=True)  # every field set's fields, watched movies too


@pytest.fixture(scope="module", params=list(FIELD_SETS))
def afm(request: pytest.FixtureRequest) -> AFMConfig:
    return replace(AFM, fields=request.param)


@pytest.fixture(scope="module")
def fitted(data: PreparedData, data_config: DataConfig, afm: AFMConfig) -> FitResult:
    return fit(InMemoryRows(data, afm.fields, data_config), afm, TRAIN)


@pytest.fixture(scope="module")
def model_dir(fitted: FitResult, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    export_trained(fitted, root)
    return root


@pytest.fixture(scope="module")
def loaded(model_dir: Path):
    return tf.saved_model.load(str(model_dir / "1"))


def rows_slice(rows: LabeledRows, n: int) -> LabeledRows:
    return rows.take(np.arange(min(n, len(rows))))


def raw_batch(data: PreparedData, fields: tuple[str, ...], n: int) -> dict[str, np.ndarray]:
    """The first n test rows as raw strings, then one row per field with that field unseen,
    then (with genres) one row without genres."""
    raw = {field: values[:n].astype(str) for field, values in data.raw(data.test, fields).items()}
    unseen_rows = [{unseen: OOV[unseen]} for unseen in fields]
    if "genres" in fields:
        unseen_rows.append({"genres": ""})
    for changes in unseen_rows:
        for field in fields:
            raw[field] = np.append(raw[field], changes.get(field, raw[field][0]))
    return raw


def numpy_inputs(
    raw: dict[str, np.ndarray], vocabularies: dict[str, np.ndarray], fields: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """vocabulary[i] -> i + 1, anything else -> 0: the contract, written independently."""
    columns, inputs = [], {}
    for field in fields:
        index = {str(value): i + 1 for i, value in enumerate(vocabularies[field])}
        if field == HISTORY_FIELD:  # by position: the first 20 parts, "" kept in place
            rows = [
                [index.get(v, 0) if v else PAD for v in joined.split("|")[:HISTORY_LENGTH]]
                for joined in raw[field]
            ]
            rows = [r if any(i != PAD for i in r) else [0] for r in rows]
            inputs[field] = np.array(
                [r + [PAD] * (HISTORY_LENGTH - len(r)) for r in rows], dtype="int32"
            )
        elif field in MULTI_VALUED:
            bags = [
                [index.get(v, 0) for v in joined.split("|") if v] or [0] for joined in raw[field]
            ]
            width = max(map(len, bags))
            inputs[field] = np.array([b + [PAD] * (width - len(b)) for b in bags], dtype="int32")
        else:
            columns.append([index.get(value, 0) for value in raw[field]])
    return {"ids": np.array(columns, dtype="int32").T, **inputs}


def call(signature, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    outputs = signature(**{field: tf.constant(values, tf.string) for field, values in raw.items()})
    return {name: value.numpy() for name, value in outputs.items()}


def test_both_signatures_equal_the_in_memory_model(loaded, fitted: FitResult, data) -> None:
    fields = fitted.fields
    raw = raw_batch(data, fields, 40)
    inputs = numpy_inputs(raw, fitted.vocabularies, fields)
    single = inputs["ids"][40 : 40 + inputs["ids"].shape[1]]
    assert (single == 0).sum() == len(single)  # one OOV per appended row
    if "genres" in fields:  # unseen genre values and an empty genre set map to OOV
        genres, unseen = inputs["genres"], 40 + list(fields).index("genres")
        assert genres[[unseen, -1], :2].tolist() == [[genres[unseen, 0], 0], [0, PAD]]
    expected = {k: v.numpy() for k, v in fitted.model(inputs, training=False).items()}

    score = call(loaded.signatures[SIGNATURE_SCORE], raw)
    assert set(score) == {OUTPUT_PROBABILITY}
    np.testing.assert_allclose(score[OUTPUT_PROBABILITY], expected[OUTPUT_PROBABILITY], atol=1e-6)

    explain = call(loaded.signatures[SIGNATURE_EXPLAIN], raw)
    assert set(explain) == {
        OUTPUT_PROBABILITY,
        OUTPUT_ATTENTION,
        OUTPUT_CONTRIBUTION,
        OUTPUT_BIAS,
        OUTPUT_LINEAR,
        OUTPUT_LOGIT,
        *([OUTPUT_HISTORY_ATTENTION] if HISTORY_FIELD in fields else []),
    }
    parts = (
        explain[OUTPUT_BIAS] + explain[OUTPUT_LINEAR].sum(1) + explain[OUTPUT_CONTRIBUTION].sum(1)
    )
    np.testing.assert_allclose(parts, explain[OUTPUT_LOGIT], atol=1e-4)
    for name, value in expected.items():
        np.testing.assert_allclose(explain[name], value, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(explain[OUTPUT_ATTENTION].sum(axis=1), 1.0, rtol=1e-5)


def numpy_explain(loaded, raw: dict[str, np.ndarray], fields, vocabularies) -> dict:
    """``raw``'s rows through the NumpyScorer on the version's weights signature: each
    distinct user once, each movie in an item table by its id. A movie id met again with
    other movie fields goes to another table: one call per table, merged back in row order."""
    weights = {
        name: value.numpy() for name, value in loaded.signatures[SIGNATURE_WEIGHTS]().items()
    }
    scorer = NumpyScorer(fields, weights, {f: [str(v) for v in vocabularies[f]] for f in fields})
    user_fields = user_inputs(fields)
    item_fields = [f for f in fields if f not in user_fields]
    users = list(zip(*(raw[f] for f in user_fields), strict=True))
    distinct = list(dict.fromkeys(users))
    assert 1 < len(distinct) < len(users)  # several users, some with several candidates
    user_index = np.array([distinct.index(user) for user in users], np.int32)
    tables: list[dict[str, dict[str, str]]] = []
    groups: list[list[int]] = []
    for row, movie in enumerate(raw[MOVIE_ID].tolist()):
        features = {f: str(raw[f][row]) for f in item_fields if f != MOVIE_ID}
        fits = (n for n, table in enumerate(tables) if table.get(movie, features) == features)
        n = next(fits, len(tables))
        if n == len(tables):
            tables.append({})
            groups.append([])
        tables[n][movie] = features
        groups[n].append(row)
    by_field = {f: [str(user[i]) for user in distinct] for i, f in enumerate(user_fields)}
    merged: dict[str, np.ndarray] = {}
    for table, rows in zip(tables, groups, strict=True):
        items = scorer.item_table(table)
        item_index = items.index([int(raw[MOVIE_ID][row]) for row in rows])
        part = scorer.explain(by_field, user_index[rows], items, item_index)
        for name, value in part.items():
            merged.setdefault(name, np.empty((len(users), *value.shape[1:]), value.dtype))
            merged[name][rows] = value
    return merged


def test_the_signatures_are_score_explain_and_weights(loaded, fitted: FitResult) -> None:
    assert set(loaded.signatures) == {SIGNATURE_SCORE, SIGNATURE_EXPLAIN, SIGNATURE_WEIGHTS}
    weights = loaded.signatures[SIGNATURE_WEIGHTS]()
    assert sorted(weights) == sorted(weights_outputs(fitted.fields))
    single = [f for f in fitted.fields if f not in MULTI_VALUED]
    rows = sum(len(fitted.vocabularies[f]) + 1 for f in single)
    assert weights[OUTPUT_FIELD_TABLE].shape == (rows, AFM.embedding_dim + 1)
    assert weights[OUTPUT_FIELD_OFFSETS].shape == (len(single),)
    for f in set(fitted.fields) & set(MULTI_VALUED):
        bag = (len(fitted.vocabularies[f]) + 1, AFM.embedding_dim + 1)
        assert weights[OUTPUT_BAG_TABLES[f]].shape == bag


def test_the_weights_signature_in_numpy_equals_the_explain_signature(
    loaded, fitted: FitResult, data
) -> None:
    fields = fitted.fields
    raw = raw_batch(data, fields, 60)
    explain = call(loaded.signatures[SIGNATURE_EXPLAIN], raw)
    in_numpy = numpy_explain(loaded, raw, fields, fitted.vocabularies)
    assert set(in_numpy) == set(explain)
    for name, value in explain.items():
        np.testing.assert_allclose(in_numpy[name], value, atol=1e-5, err_msg=name)
    assert np.abs(explain[OUTPUT_ATTENTION] - 1 / len(pairs(fields))).max() > 1e-3  # trained h


@pytest.mark.parametrize(
    "variant", [{"use_attention": False}, {"pair_bias": False, "fm_init": False}]
)
def test_the_weights_of_other_architectures(data, variant: dict, tmp_path: Path) -> None:
    """The FM ablation and an AFM without pair offsets or FM start, weights drawn at random."""
    config = replace(AFM, **variant)
    fields = FIELD_SETS[config.fields]
    vocabularies = data.vocabularies(fields)
    model = build_afm(fields, {f: len(v) + 1 for f, v in vocabularies.items()}, config)
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()])
    build_archive(model, fields, vocabularies).write_out(str(tmp_path), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path))
    raw = raw_batch(data, fields, 30)
    explain = call(loaded.signatures[SIGNATURE_EXPLAIN], raw)
    in_numpy = numpy_explain(loaded, raw, fields, vocabularies)
    for name, value in explain.items():
        np.testing.assert_allclose(in_numpy[name], value, atol=1e-5, err_msg=name)


def test_ids_in_training_equal_ids_in_serving(fitted: FitResult, data) -> None:
    """PreparedData.encode (training) and the lookups (serving) agree on every test row."""
    fields = fitted.fields
    raw = {field: values.astype(str) for field, values in data.raw(data.test, fields).items()}
    want = numpy_inputs(raw, fitted.vocabularies, fields)
    got = data.encode(data.test, fitted.vocabularies, fields)
    assert list(got) == list(want)
    for name, ids in want.items():
        width = ids.shape[1]  # training pads to the catalogue's longest genre set
        np.testing.assert_array_equal(got[name][:, :width], ids)
        assert (got[name][:, width:] == PAD).all()


@pytest.mark.parametrize("batch", [1, 3, 257])
def test_any_batch_size_with_a_fixed_signature(loaded, fitted: FitResult, data, batch: int) -> None:
    signature = loaded.signatures[SIGNATURE_EXPLAIN]
    specs = signature.structured_input_signature[1]
    assert sorted(specs) == sorted(fitted.fields)  # exactly the version's fields
    for spec in specs.values():
        assert spec.shape.as_list() == [None] and spec.dtype == tf.string
    raw = {
        f: np.resize(v.astype(str), batch) for f, v in data.raw(data.test, fitted.fields).items()
    }
    out = call(signature, raw)
    assert out[OUTPUT_PROBABILITY].shape == (batch,)
    shape = (batch, len(pairs(fitted.fields)))
    assert out[OUTPUT_ATTENTION].shape == out[OUTPUT_CONTRIBUTION].shape == shape


def test_metadata_follows_the_contract(model_dir: Path, fitted: FitResult, data, afm) -> None:
    version_dir = model_dir / "1"
    meta = read_metadata(version_dir)
    assert meta.version == 1
    assert meta.format_version == FORMAT_VERSION
    assert meta.fields == list(FIELD_SETS[afm.fields])
    assert meta.pairs == [list(pair) for pair in pairs(FIELD_SETS[afm.fields])]
    assert meta.hyperparameters["model"]["fields"] == afm.fields
    assert meta.protocol == "next-item"
    assert meta.hyperparameters["model"]["embedding_dim"] == AFM.embedding_dim
    assert meta.hyperparameters["training"]["seed"] == TRAIN.seed
    assert meta.data["train"] == data.summary()["train"]
    assert meta.data["vocabulary_sizes"] == {f: len(fitted.vocabularies[f]) for f in meta.fields}
    assert meta.metrics["test"]["auc"] == pytest.approx(fitted.metrics["test"]["auc"])
    assert 1 <= meta.metrics["best_epoch"] <= meta.metrics["epochs_run"] <= TRAIN.epochs
    assert meta.tensorflow_version == tf.__version__
    assert meta.model_extra["keras_version"]
    assert datetime.fromisoformat(meta.created_at).tzinfo is not None

    vocabularies = json.loads((version_dir / VOCABULARIES_FILE).read_text())
    assert vocabularies == {f: [str(v) for v in fitted.vocabularies[f]] for f in meta.fields}

    metrics = json.loads((version_dir / METRICS_FILE).read_text())
    assert len(metrics["history"]) == meta.metrics["epochs_run"]
    assert (version_dir / CURVE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_version_of_an_older_format_is_refused(model_dir: Path, tmp_path: Path) -> None:
    metadata = json.loads((model_dir / "1" / METADATA_FILE).read_text())
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata | {"format_version": 2}))
    with pytest.raises(ValueError, match="exported by an older afm-ctr.*train a new version"):
        read_metadata(tmp_path)


def test_exported_version_is_one_and_no_temporary_directory_is_left(model_dir: Path) -> None:
    assert [p.name for p in model_dir.iterdir()] == ["1"]


METADATA = {"hyperparameters": {}, "protocol": "next-item", "data": {}, "metrics": {}}


def staged(model_dir: Path, name: str) -> Path:
    """A complete directory waiting to be published, as export_version stages it."""
    tmp = model_dir / f".tmp-{name}"
    tmp.mkdir(parents=True)
    (tmp / "saved_model.pb").write_bytes(name.encode())
    return tmp


def test_versions_count_up_from_the_highest_present(tmp_path: Path) -> None:
    for expected in (1, 2):
        version_dir = export_module.publish_version(
            staged(tmp_path, str(expected)), tmp_path, ALL_FIELDS, METADATA
        )
        assert version_dir == tmp_path / str(expected)
        assert read_metadata(version_dir).version == expected
    (tmp_path / "9").mkdir()
    (tmp_path / ".tmp-unfinished").mkdir()  # another export still writing: not a version
    assert (
        export_module.publish_version(staged(tmp_path, "x"), tmp_path, ALL_FIELDS, METADATA).name
        == "10"
    )
    assert list_versions(tmp_path) == [1, 2, 9, 10]


def test_export_losing_a_race_takes_the_next_number(tmp_path: Path, monkeypatch) -> None:
    export_module.publish_version(staged(tmp_path, "winner"), tmp_path, ALL_FIELDS, METADATA)
    # The loser chose its number before the winner's rename landed.
    stale = iter([1])
    real = export_module.next_version
    monkeypatch.setattr(export_module, "next_version", lambda root: next(stale, None) or real(root))
    version_dir = export_module.publish_version(
        staged(tmp_path, "loser"), tmp_path, ALL_FIELDS, METADATA
    )
    assert version_dir.name == "2"
    assert read_metadata(version_dir).version == 2
    assert (tmp_path / "1" / "saved_model.pb").read_bytes() == b"winner"
    assert (tmp_path / "2" / "saved_model.pb").read_bytes() == b"loser"


def test_failed_export_leaves_nothing_behind(fitted: FitResult, tmp_path: Path) -> None:
    def broken(directory: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(AfmError, match="cannot write the model"):
        export_module.export_version(
            fitted.model,
            fitted.fields,
            fitted.vocabularies,
            tmp_path,
            METADATA,
            write_extras=broken,
        )
    assert list(tmp_path.iterdir()) == []


def test_seeded_training_is_reproducible(data: PreparedData) -> None:
    config = replace(TRAIN, epochs=1)
    small = replace(data, train=rows_slice(data.train, 3 * TRAIN.batch_size))  # one batch shape
    rows = InMemoryRows(small, AFM.fields)
    first, second = fit(rows, AFM, config), fit(rows, AFM, config)  # eight fields, OOV drops
    for a, b in zip(first.model.get_weights(), second.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert first.metrics == second.metrics
