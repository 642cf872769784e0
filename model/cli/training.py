"""The data and training commands: synth, train, prepare, load-features.

Each builds its configs from the flags and calls one function; TensorFlow is imported inside
the commands, after ``logs.quiet_tensorflow_import``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from model.cli import logs
from model.cli.options import (
    DEFAULT_DATASET,
    DEFAULT_REDIS_URL,
    CacheDirOpt,
    DataDirOpt,
    DatasetOpt,
    FieldsOpt,
    HoldoutMoviesOpt,
    NegativesOpt,
    PrefixOpt,
    ProtocolOpt,
    RedisClusterOpt,
    RedisUrlOpt,
    SeedOpt,
    TestFileOpt,
    TrainFileOpt,
    ValidFileOpt,
    fail,
    with_option_groups,
)
from model.config import (
    DEFAULT_OOV_RATE,
    SYNTHETIC_DEFAULTS,
    AFMConfig,
    DataConfig,
    FieldSet,
    TrainConfig,
    as_record,
)
from model.contracts.feature_layout import DEFAULT_PREFIX
from model.errors import AfmError

if TYPE_CHECKING:
    from model.data.dataset import PreparedData
    from model.data.shards import Manifest

_SIZE = SYNTHETIC_DEFAULTS


def synth(
    out: Annotated[Path, typer.Option(help="Folder to write users.dat, movies.dat, ratings.dat.")],
    users: Annotated[int, typer.Option(min=10, help="Number of users.")] = _SIZE["users"],
    movies: Annotated[int, typer.Option(min=10, help="Number of movies.")] = _SIZE["movies"],
    ratings: Annotated[int, typer.Option(min=100, help="Number of ratings.")] = _SIZE["ratings"],
    seed: Annotated[int, typer.Option(help="Random seed; equal seeds give equal files.")] = _SIZE[
        "seed"
    ],
) -> None:
    """Write a synthetic dataset in ML-1M format with planted, learnable structure."""
    from model.data.synth import write_synthetic

    try:
        write_synthetic(out, users=users, movies=movies, ratings=ratings, seed=seed)
    except AfmError as exc:
        raise fail(exc) from None
    typer.echo(f"wrote {ratings} ratings of {users} users on {movies} movies to {out}")


@dataclass(frozen=True)
class DataFlags:
    """Where the rows come from: the data flags train and prepare share."""

    dataset: DatasetOpt = None
    data_dir: DataDirOpt = None
    cache_dir: CacheDirOpt = DataConfig.cache_dir
    protocol: ProtocolOpt = DataConfig.protocol
    negatives: NegativesOpt = DataConfig.negatives
    train_file: TrainFileOpt = None
    valid_file: ValidFileOpt = None
    test_file: TestFileOpt = None


@dataclass(frozen=True)
class TrainingFlags:
    """TrainConfig's flags, but the seed (which seeds the data too)."""

    epochs: Annotated[int, typer.Option(min=1)] = TrainConfig.epochs
    batch_size: Annotated[int, typer.Option(min=1)] = TrainConfig.batch_size
    learning_rate: Annotated[float, typer.Option(min=0.0)] = TrainConfig.learning_rate
    patience: Annotated[
        int, typer.Option(min=1, help="Early-stopping patience on validation AUC.")
    ] = TrainConfig.patience


@dataclass(frozen=True)
class ModelFlags:
    """AFMConfig's flags, but the field set and the OOV rate (which default by field set)."""

    embedding_dim: Annotated[int, typer.Option(min=1, help="k, the embedding size.")] = (
        AFMConfig.embedding_dim
    )
    attention_factor: Annotated[
        int, typer.Option(min=1, help="t, the attention network's hidden size.")
    ] = AFMConfig.attention_factor
    dropout: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Dropout on the pooled vector.")
    ] = AFMConfig.dropout
    l2_attention: Annotated[float, typer.Option(min=0.0, help="L2 on the attention matrix W.")] = (
        AFMConfig.l2_attention
    )
    l2_embedding: Annotated[
        float, typer.Option(min=0.0, help="L2 on the embedding tables (not the linear weights).")
    ] = AFMConfig.l2_embedding
    no_attention: Annotated[
        bool, typer.Option("--no-attention", help="FM ablation: every pair weighs 1.")
    ] = False
    fm_init: Annotated[
        bool,
        typer.Option(
            help="Start the AFM as the FM: h = 0, pooled vector scaled by the pair count. "
            "--no-fm-init: the paper's plain softmax average."
        ),
    ] = AFMConfig.fm_init
    pair_bias: Annotated[
        bool,
        typer.Option(
            help="Add a learned score offset c_ij per pair to the attention (global pair "
            "importance on top of the per-example attention)."
        ),
    ] = AFMConfig.pair_bias
    l2_pair_bias: Annotated[
        float, typer.Option(min=0.0, help="L2 on the per-pair attention offsets c.")
    ] = AFMConfig.l2_pair_bias

    def config(self, fields: FieldSet, oov_rate: float | None) -> AFMConfig:
        flags = {k: v for k, v in asdict(self).items() if k != "no_attention"}
        if oov_rate is None:
            oov_rate = DEFAULT_OOV_RATE[fields]
        return AFMConfig(
            fields=fields, oov_rate=oov_rate, use_attention=not self.no_attention, **flags
        )


@with_option_groups
def train(
    model_dir: Annotated[
        Path,
        typer.Option(help="Export root; a new numbered version is added.", envvar="AFM_MODEL_DIR"),
    ],
    data: DataFlags = DataFlags(),
    prepared: Annotated[
        Path | None,
        typer.Option(
            help="A directory from `afm-ctr prepare`: stream its rows instead of reading a "
            "dataset. With TF_CONFIG naming a cluster, train on every worker "
            "(docs/training-at-scale.md#multi-worker-training).",
            envvar="AFM_PREPARED",
        ),
    ] = None,
    from_logs: Annotated[
        Path | None,
        typer.Option(
            help="A directory from `afm-ctr logs export`: train on what the service showed, "
            "labelled by clicks, with the features as they were served; split by time (the "
            "latest 10% of impressions test, the 10% before them validate). With --dataset, "
            "the dataset's training rows join the log's (the log only holds what a model "
            "ranked first; the dataset's negatives cover the whole catalogue).",
            envvar="AFM_FROM_LOGS",
        ),
    ] = None,
    training: TrainingFlags = TrainingFlags(),
    model: ModelFlags = ModelFlags(),
    fields: FieldsOpt = None,
    oov_rate: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=0.99,
            help="Share of rows in which a new user, zip or movie, or an unknown user, is "
            "simulated (ids trained as out-of-vocabulary). Default: 0.05 with --fields all "
            "or history, 0 with seed.",
        ),
    ] = None,
    holdout_movies: HoldoutMoviesOpt = DataConfig.holdout_movies,
    seed: SeedOpt = TrainConfig.seed,
) -> None:
    """Train an AFM and export it as a new version under --model-dir."""
    from model.training.distributed import cluster_from_env, in_memory_refusal

    try:
        cluster = cluster_from_env()
    except AfmError as exc:
        raise fail(exc) from None
    manifest, data_config, logged = None, None, None
    if prepared is not None:
        _no_data_flags(data, "--prepared", from_logs=from_logs)
        manifest = _manifest(prepared, fields)
        fields = manifest.field_set
    elif cluster is not None:  # every worker would train alone and export a version
        raise fail(in_memory_refusal(cluster))
    elif from_logs is not None:
        if data.dataset is None:  # with --dataset, its training rows join the log's
            _no_data_flags(data, "--from-logs", holdout_movies=holdout_movies)
        else:
            data_config, _ = _data_config(data, fields, holdout_movies, seed)
        fields = fields or "all"
        logged = _logged_rows(from_logs, fields)
    else:
        data_config, fields = _data_config(data, fields, holdout_movies, seed)
    afm_config = model.config(fields, oov_rate)
    train_config = TrainConfig(**asdict(training), seed=seed)
    logs.quiet_tensorflow_import()
    from model.data.dataset import add_training_rows
    from model.data.protocols import prepare as prepare_rows
    from model.training.rows import InMemoryRows, ShardedRows
    from model.training.train import train_and_export

    try:
        if manifest is not None:
            rows = ShardedRows(manifest)
        elif logged is not None:
            if data_config is not None:
                dataset_rows = prepare_rows(data_config, history=fields == "history")
                logged = add_training_rows(logged, dataset_rows)
            rows = InMemoryRows(logged, fields)
            rows.data_config = {"from_logs": str(from_logs)}
        else:
            data_rows = prepare_rows(data_config, history=fields == "history")
            rows = InMemoryRows(data_rows, fields, data_config)
        version_dir = train_and_export(rows, afm_config, train_config, model_dir, cluster)
    except AfmError as exc:
        raise fail(exc) from None
    if version_dir is None:
        typer.echo(f"worker {cluster.index} of {cluster.workers} done; the chief exports")
        return
    typer.echo(f"exported {version_dir}")


def _no_data_flags(
    data: DataFlags, source: str, *, from_logs: Path | None = None, holdout_movies: float = 0.0
) -> None:
    """Refuse the flags that name other rows than ``source``'s (--prepared, --from-logs)."""
    rows_flags = ("dataset", "data_dir", "train_file", "valid_file", "test_file")
    given = [f"--{name.replace('_', '-')}" for name in rows_flags if getattr(data, name)]
    given += ["--from-logs"] if from_logs is not None else []
    if given:
        raise typer.BadParameter(f"{source} holds the rows already; drop {given[0]}")
    if holdout_movies:
        raise typer.BadParameter(f"{source} splits by time; drop --holdout-movies")


def _logged_rows(directory: Path, fields: FieldSet) -> PreparedData:
    """The exported log's rows for ``fields``, read before TensorFlow is imported (a log
    that cannot train is refused at once)."""
    from model.data.logged_rows import read_logged_rows

    try:
        return read_logged_rows(directory, fields)
    except AfmError as exc:
        raise fail(exc) from None


def _manifest(prepared: Path, fields: FieldSet | None) -> Manifest:
    """The manifest of ``prepared``, refused if it holds rows for other ``fields``."""
    logs.quiet_tensorflow_import()  # model.data.shards imports Keras
    from model.data.shards import Manifest

    try:
        manifest = Manifest.load(prepared)
    except AfmError as exc:
        raise fail(exc) from None
    if fields is not None and fields != manifest.field_set:
        raise typer.BadParameter(
            f"the prepared rows are for --fields {manifest.field_set}; prepare again "
            f"with --fields {fields}"
        )
    return manifest


def _data_config(
    data: DataFlags, fields: FieldSet | None, holdout_movies: float, seed: int
) -> tuple[DataConfig, FieldSet]:
    """The DataConfig and field set the data flags ask for (train and prepare share them)."""
    dataset, seed_files = data.dataset, (data.train_file, data.valid_file, data.test_file)
    if any(seed_files) and not all(seed_files):
        raise typer.BadParameter("give all three of --train-file, --valid-file, --test-file")
    if all(seed_files) and dataset is not None:
        raise typer.BadParameter(
            "give --dataset (ml-1m, ml-100k, synthetic) or the three seed row files, not both"
        )
    if not all(seed_files):
        dataset = dataset or DEFAULT_DATASET
    if fields is None:
        fields = "seed" if all(seed_files) else "all"
    elif fields == "all" and all(seed_files):
        raise typer.BadParameter(
            "seed row files carry no year or genres; use --fields seed (the default for them)"
        )
    elif fields == "history" and all(seed_files):
        raise typer.BadParameter(
            "seed row files carry no history (what each user watched before a row); "
            "use --fields seed (the default for them)"
        )
    flags = {**asdict(data), "dataset": dataset}
    return DataConfig(**flags, seed=seed, holdout_movies=holdout_movies), fields


@with_option_groups
def prepare(
    out: Annotated[Path, typer.Option(help="New directory for the shards and manifest.json.")],
    data: DataFlags = DataFlags(),
    fields: FieldsOpt = None,
    holdout_movies: HoldoutMoviesOpt = DataConfig.holdout_movies,
    seed: SeedOpt = DataConfig.seed,
    shards: Annotated[
        int, typer.Option(min=1, help="Training shard files: at least the number of workers.")
    ] = 8,
) -> None:
    """Write the training, validation and test rows as TFRecord shards with a manifest, for
    `afm-ctr train --prepared DIR` (streamed, or on several workers)."""
    data_config, fields = _data_config(data, fields, holdout_movies, seed)
    logs.quiet_tensorflow_import()
    from model.data.protocols import prepare as prepare_rows
    from model.data.shards import write_prepared

    try:
        rows = prepare_rows(data_config, history=fields == "history")
        config = as_record(data_config)
        manifest = write_prepared(rows, fields, out, shards=shards, seed=seed, data_config=config)
    except AfmError as exc:
        raise fail(exc) from None
    parts = ", ".join(f"{k} {v['rows']:,}" for k, v in manifest.summary().items())
    typer.echo(f"wrote {parts} rows ({fields} fields, {shards} training shards) to {out}")


def load_features(
    redis_url: RedisUrlOpt = DEFAULT_REDIS_URL,
    dataset: DatasetOpt = DEFAULT_DATASET,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = DataConfig.cache_dir,
    prefix: PrefixOpt = DEFAULT_PREFIX,
    redis_cluster: RedisClusterOpt = False,
) -> None:
    """Write every user's and movie's features (a user's include the 20 movies they rated
    last) and what the load is (source, value labels, most rated movies, sample users) to
    Redis as a new namespace, then switch to it atomically."""
    from model.data.load_features import load_features as load
    from model.data.movielens import load_feature_set

    config = DataConfig(dataset=dataset, data_dir=data_dir, cache_dir=cache_dir)
    try:
        loaded = load_feature_set(config)
        user_count, movie_count = load(
            loaded.users,
            loaded.movies,
            redis_url=redis_url,
            prefix=prefix,
            source=loaded.source,
            labels=loaded.labels,
            popular=loaded.popular,
            sample_users=loaded.sample_users,
            watched=loaded.watched,
            watched_at=loaded.watched_at,
            cluster=redis_cluster,
        )
    except AfmError as exc:
        raise fail(exc) from None
    typer.echo(
        f"loaded {user_count} users and {movie_count} movies of {loaded.source} into "
        f"{redis_url} under prefix {prefix!r}"
    )
