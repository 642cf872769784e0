"""The service's scoring paths (the NumPy ranker and the rank signatures, merged requests)
equal the contract signatures on real six- and eight-field exports, and versions without rank
signatures serve."""

from __future__ import annotations

import gc
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model.contracts import export_format
from model.data.movielens import FeatureSet
from service.ranker import Ranker
from service.ranking import candidates
from service.scorer import (
    EXPLAIN_OUTPUTS,
    Candidates,
    LoadedModel,
    configure_threads,
    load_model,
    ranker_check_rows,
    with_checked_ranker,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["all", "seed"])
def version_dir(request: pytest.FixtureRequest) -> Path:
    root = "trained_model_dir" if request.param == "all" else "seed_fields_model_dir"
    return request.getfixturevalue(root) / "1"


def requests(features: FeatureSet) -> Candidates:
    """Two requests merged as the scorer merges them: a known user with known movies and
    an unknown one, and a user without features; the first movie is missing from the movie
    table (the model knows its id, not its genres and year)."""
    users, movies = features.users, features.movies
    table = {
        str(m): {"year": str(y), "genres": str(g)}
        for m, y, g in zip(movies["movie_id"], movies["year"], movies["genres"], strict=True)
    }
    del table[str(movies["movie_id"][0])]
    first_user = {
        f: str(users[f][3]) for f in export_format.USER_FIELDS if f != export_format.USER_ID
    }
    movie_ids = [int(m) for m in movies["movie_id"][:25]]
    fields = export_format.ALL_FIELDS
    return Candidates.concat(
        [
            candidates(fields, int(users["user_id"][3]), first_user, [*movie_ids, 10**9], table),
            candidates(fields, 10**9, None, movie_ids[::-1], table),
        ]
    )


def contract_explain(version_dir: Path, rows: Candidates, fields: tuple[str, ...]) -> dict:
    """The explain signature, called as any TF Serving client would: one row per candidate."""
    signature = tf.saved_model.load(str(version_dir)).signatures[export_format.SIGNATURE_EXPLAIN]
    raw = {f: tf.constant([rows.value(f, r) for r in range(len(rows))]) for f in fields}
    return {name: value.numpy() for name, value in signature(**raw).items()}


def assert_same(model: LoadedModel, version_dir: Path, features: FeatureSet) -> None:
    rows = requests(features)
    expected = contract_explain(version_dir, rows, model.fields)
    explained = model.explain(rows)
    for name, output in EXPLAIN_OUTPUTS.items():
        np.testing.assert_allclose(getattr(explained, name), expected[output], atol=1e-5)
    np.testing.assert_allclose(model.score(rows).probability, expected["probability"], atol=1e-5)
    # one request alone (one user: the ranker's single-product path)
    first = Candidates(
        {f: values[:1] for f, values in rows.users.items()},
        rows.user_index[:26],
        rows.movie_ids[:26],
        rows.movies,
    )
    assert set(rows.user_index[:26].tolist()) == {0}
    alone = model.explain(first)
    for name, output in EXPLAIN_OUTPUTS.items():
        np.testing.assert_allclose(getattr(alone, name), expected[output][:26], atol=1e-5)
    np.testing.assert_allclose(
        model.score(first).probability, expected["probability"][:26], atol=1e-5
    )
    assert np.ptp(expected["probability"]) > 1e-3  # the rows really differ
    # movie_known: from the item table's flags, or the vocabulary without one
    known = model.known(export_format.MOVIE_ID, [str(m) for m in rows.movie_ids])
    assert model.score(rows).movie_known.tolist() == known and True in known and False in known
    assert explained.movie_known.tolist() == known


def test_the_service_path_equals_the_contract_signatures(
    version_dir: Path, synthetic_feature_set: FeatureSet
) -> None:
    model = load_model(version_dir)
    assert model.items_fn is not None and model.ranker is not None  # NumPy scores
    assert_same(model, version_dir, synthetic_feature_set)
    assert_same(replace(model, ranker=None), version_dir, synthetic_feature_set)  # TensorFlow
    rows = requests(synthetic_feature_set)
    assert model._ranker_for(rows) is model.ranker
    assert replace(model, numpy_rows=len(rows) - 1)._ranker_for(rows) is None  # too many rows
    assert load_model(version_dir, numpy_rows=0).ranker is None  # AFM_NUMPY_RANKER_ROWS=0


def test_a_ranker_that_disagrees_with_the_signatures_is_not_used(
    version_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """load_model checks the NumPy ranker against the rank signatures; a wrong weight (here
    the attention network's, doubled) sends the version back to TensorFlow, with a warning."""
    model = load_model(version_dir)
    weights = model.saved_model.signatures[export_format.SIGNATURE_RANK_WEIGHTS]()
    wrong = {name: value.numpy() for name, value in weights.items()}
    wrong[export_format.OUTPUT_PAIR_KERNEL] = 2 * wrong[export_format.OUTPUT_PAIR_KERNEL]
    vocabularies = export_format.read_vocabularies(version_dir, model.fields)
    broken = replace(model, ranker=Ranker(model.fields, wrong, vocabularies))
    with caplog.at_level(logging.WARNING, logger="service.scorer"):
        checked = with_checked_ranker(broken, vocabularies)
    assert checked.ranker is None
    assert "scoring through TensorFlow" in caplog.text
    assert with_checked_ranker(model, vocabularies).ranker is model.ranker
    # the check reaches the item table's known movie rows as well as the unknown one
    known = model.score(ranker_check_rows(model.fields, vocabularies)).movie_known.tolist()
    assert known.count(True) == len(known) - 1 and not known[-1]


def test_an_item_table_is_built_once_per_movie_table(
    version_dir: Path, synthetic_feature_set: FeatureSet
) -> None:
    model = load_model(version_dir)
    rows = requests(synthetic_feature_set)
    table = model.item_table(rows.movies)
    assert model.item_table(rows.movies) is table
    # every movie of the table and every movie id the model knows has a row; then the unknown
    vocabulary = model.vocabularies[export_format.MOVIE_ID]
    ids = set(rows.movies) | vocabulary
    assert set(table.rows) == {int(m) for m in ids}  # the synthetic ids are all decimal
    assert table.tensor.shape[0] == len(ids) + 1 == len(table.known)
    assert table.index([10**12]).tolist() == [len(ids)]
    # a row is flagged known exactly when the model was trained on its movie id
    assert {m for m in ids if table.known[table.rows[int(m)]]} == vocabulary
    assert not table.known[-1]
    other = model.item_table(dict(rows.movies))  # another feature set: its own table
    assert other is not table


def test_a_version_without_rank_signatures_is_served_from_the_contract_ones(
    version_dir: Path, synthetic_feature_set: FeatureSet, tmp_path: Path
) -> None:
    """As exported before the rank signatures existed: only the two contract signatures."""
    loaded = tf.saved_model.load(str(version_dir))
    older = tmp_path / "1"
    kept = (export_format.SIGNATURE_SCORE, export_format.SIGNATURE_EXPLAIN)
    tf.saved_model.save(loaded, str(older), signatures={s: loaded.signatures[s] for s in kept})
    for name in (export_format.METADATA_FILE, export_format.VOCABULARIES_FILE):
        shutil.copy(version_dir / name, older / name)

    model = load_model(older)
    assert set(model.saved_model.signatures) == set(kept) and model.items_fn is None
    assert_same(model, older, synthetic_feature_set)


def test_configure_threads_keeps_blas_on_one_thread() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):  # restores the limits afterwards
        configure_threads(1, 1)
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas, "NumPy's BLAS not found"
        assert all(pool["num_threads"] == 1 for pool in blas)
        assert gc.get_freeze_count() > 0  # TensorFlow's import, exempt from collection
    gc.unfreeze()
