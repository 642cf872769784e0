"""The service's scoring (the NumPy scorer of the version's weights, requests merged) equals
the contract signatures on real six-field, eight-field and history exports; a version whose
scorer would disagree, or of an older format, is refused at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model.contracts import export_format
from model.data.movielens import FeatureSet
from service.candidates import Candidates, explain_outputs
from service.loaded_model import LoadedModel, check_rows, load_model

candidates = Candidates.of_request

pytestmark = pytest.mark.integration


ROOTS = {
    "all": "trained_model_dir",
    "seed": "seed_fields_model_dir",
    "history": "history_model_dir",
}


@pytest.fixture(scope="module", params=list(ROOTS))
def version_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(ROOTS[request.param]) / "1"


def requests(features: FeatureSet, fields: tuple[str, ...]) -> Candidates:
    """Two requests merged as the scorer merges them: a known user (with what they watched)
    with known movies and an unknown one, and a user without features; the first movie is
    missing from the movie table (the model knows its id, not its genres and year)."""
    users, movies = features.users, features.movies
    table = {
        str(m): {"year": str(y), "genres": str(g)}
        for m, y, g in zip(movies["movie_id"], movies["year"], movies["genres"], strict=True)
    }
    del table[str(movies["movie_id"][0])]
    first_user = {
        f: str(users[f][3]) for f in export_format.USER_FIELDS if f != export_format.USER_ID
    }
    assert features.watched is not None and features.watched[3]
    first_user[export_format.HISTORY_FIELD] = str(features.watched[3])
    movie_ids = [int(m) for m in movies["movie_id"][:25]]
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
    rows = requests(features, model.fields)
    expected = contract_explain(version_dir, rows, model.fields)
    explained = model.explain(rows)
    for name, output in explain_outputs(model.fields).items():
        np.testing.assert_allclose(getattr(explained, name), expected[output], atol=1e-5)
    np.testing.assert_allclose(model.score(rows).probability, expected["probability"], atol=1e-5)
    # one request alone (one user: the scorer's single-product path)
    first = Candidates(
        {f: values[:1] for f, values in rows.users.items()},
        rows.user_index[:26],
        rows.movie_ids[:26],
        rows.movies,
    )
    assert set(rows.user_index[:26].tolist()) == {0}
    alone = model.explain(first)
    for name, output in explain_outputs(model.fields).items():
        np.testing.assert_allclose(getattr(alone, name), expected[output][:26], atol=1e-5)
    np.testing.assert_allclose(
        model.score(first).probability, expected["probability"][:26], atol=1e-5
    )
    assert np.ptp(expected["probability"]) > 1e-3  # the rows really differ
    # movie_known: the item table's flags
    known = model.known(export_format.MOVIE_ID, [str(m) for m in rows.movie_ids])
    assert model.score(rows).movie_known.tolist() == known and True in known and False in known
    assert explained.movie_known.tolist() == known


def test_the_service_path_equals_the_contract_signatures(
    version_dir: Path, synthetic_feature_set: FeatureSet
) -> None:
    assert_same(load_model(version_dir), version_dir, synthetic_feature_set)


def _copy(version_dir: Path, target: Path) -> Path:
    shutil.copytree(version_dir, target)
    return target


def test_a_version_whose_scorer_disagrees_with_its_signatures_is_refused(
    version_dir: Path, tmp_path: Path
) -> None:
    """load_model checks the NumPy scorer against the explain signature; vocabularies that
    do not match the SavedModel's own lookups (two values swapped) make them disagree."""
    broken = _copy(version_dir, tmp_path / "1")
    path = broken / export_format.VOCABULARIES_FILE
    vocabularies = json.loads(path.read_text())
    movies = vocabularies[export_format.MOVIE_ID]
    movies[0], movies[1] = movies[1], movies[0]
    path.write_text(json.dumps(vocabularies))
    with pytest.raises(ValueError, match="differs from the SavedModel's explain signature"):
        load_model(broken)
    assert load_model(version_dir).version == 1  # the untouched export loads


def test_a_version_of_an_older_format_is_refused(version_dir: Path, tmp_path: Path) -> None:
    older = _copy(version_dir, tmp_path / "1")
    path = older / export_format.METADATA_FILE
    metadata = json.loads(path.read_text())
    path.write_text(json.dumps({**metadata, "format_version": 2}))
    with pytest.raises(ValueError, match="older afm-ctr"):
        load_model(older)


def test_the_load_check_covers_known_and_unknown_movies(version_dir: Path) -> None:
    model = load_model(version_dir)
    vocabularies = export_format.read_vocabularies(version_dir, model.fields)
    known = model.score(check_rows(model.fields, vocabularies)).movie_known.tolist()
    assert known.count(True) == len(known) - 1 and not known[-1]


def test_an_item_table_is_built_once_per_movie_table(
    version_dir: Path, synthetic_feature_set: FeatureSet
) -> None:
    model = load_model(version_dir)
    rows = requests(synthetic_feature_set, model.fields)
    model.score(rows)
    (table,) = model._item_tables
    model.explain(rows)
    assert list(model._item_tables) == [table]  # the same movie table: the same item table
    # every movie of the table and every movie id the model knows has a row; then the unknown
    vocabulary = model.vocabularies[export_format.MOVIE_ID]
    ids = set(rows.movies) | vocabulary
    assert len(table.known) == len(ids) + 1
    assert table.index([10**12]).tolist() == [len(ids)]
    # a row is flagged known exactly when the model was trained on its movie id
    index = table.index([int(m) for m in ids])
    assert {m for m, row in zip(ids, index.tolist(), strict=True) if table.known[row]} == vocabulary
    assert not table.known[-1]
    model.score(candidates(model.fields, 1, None, [1], dict(rows.movies)))  # another feature set
    assert len(model._item_tables) == 2 and model._item_tables[1] is not table
