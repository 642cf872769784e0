"""The ``afm-ctr`` command line: train, prepare, synth, load-features, serve, rollout.

Commands are thin: they build configs and call one function each. Heavy imports (TensorFlow,
the service) happen inside the commands, so ``afm-ctr --help`` stays instant.
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from model.cli import logs
from model.config import (
    DEFAULT_OOV_RATE,
    SYNTHETIC_DEFAULTS,
    AFMConfig,
    DataConfig,
    Dataset,
    FieldSet,
    Protocol,
    TrainConfig,
)
from model.contracts.feature_layout import DEFAULT_PREFIX
from model.errors import AfmError

log = logging.getLogger(__name__)

app = typer.Typer(
    help="Attentional Factorization Machines for click-through-rate scoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DEFAULT_DATASET: Dataset = "ml-1m"  # as compose's DATASET; `synthetic` works offline
DatasetOpt = Annotated[
    Dataset | None,
    typer.Option(help="ml-1m (downloaded once), ml-100k or synthetic.", envvar="AFM_DATASET"),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="Dataset folder or zip. Default: download (ml-1m) or synthesize into the cache.",
        envvar="AFM_DATA_DIR",
    ),
]
CacheDirOpt = Annotated[
    Path, typer.Option(help="Where downloads and generated data are kept.", envvar="AFM_CACHE_DIR")
]
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # the service's default too (service/settings.py)
RedisUrlOpt = Annotated[
    str, typer.Option(help="Redis holding the user features.", envvar="AFM_REDIS_URL")
]
ProtocolOpt = Annotated[Protocol, typer.Option(envvar="AFM_PROTOCOL")]
NegativesOpt = Annotated[int, typer.Option(min=1, help="Negatives per positive (next-item).")]
TrainFileOpt = Annotated[
    Path | None,
    typer.Option(
        help="Seed rows: user_id gender age occupation zip movie_id label, tab-separated."
    ),
]
ValidFileOpt = Annotated[Path | None, typer.Option(help="Seed rows for validation.")]
TestFileOpt = Annotated[Path | None, typer.Option(help="Seed rows for the test.")]
FieldsOpt = Annotated[
    FieldSet | None,
    typer.Option(
        help="seed: user_id gender age occupation zip movie_id; all: also the movie's year "
        "and genres. Default: all for a dataset, seed for seed row files."
    ),
]
HoldoutMoviesOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=0.99,
        help="Keep this share of movies out of training; the test reports their AUC.",
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Seeds sampling, splits and initialisation.")]
RedisClusterOpt = Annotated[
    bool,
    typer.Option(
        "--redis-cluster",
        help="--redis-url names any node of a Redis Cluster (docs/service.md#redis-cluster).",
        envvar="AFM_REDIS_CLUSTER",
    ),
]


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Debug logs, and TensorFlow's C++ notices (CPU features, oneDNN) back on.",
        ),
    ] = False,
    log_format: Annotated[
        logs.LogFormat,
        typer.Option(help="text for people; json: one object per line.", envvar="AFM_LOG_FORMAT"),
    ] = "text",
) -> None:
    """Attentional Factorization Machines for click-through-rate scoring."""
    # serve runs for days: its lines carry the time. Before any command imports TensorFlow.
    timestamps = ctx.invoked_subcommand in ("serve", "up")
    logs.configure(verbose=verbose, fmt=log_format, timestamps=timestamps)


def _fail(exc: Exception) -> typer.Exit:
    log.error("%s", exc)
    return typer.Exit(code=1)


_SIZE = SYNTHETIC_DEFAULTS


@app.command()
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
        raise _fail(exc) from None
    typer.echo(f"wrote {ratings} ratings of {users} users on {movies} movies to {out}")


@app.command()
def train(
    model_dir: Annotated[
        Path,
        typer.Option(help="Export root; a new numbered version is added.", envvar="AFM_MODEL_DIR"),
    ],
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = DataConfig.cache_dir,
    protocol: ProtocolOpt = DataConfig.protocol,
    negatives: NegativesOpt = DataConfig.negatives,
    train_file: TrainFileOpt = None,
    valid_file: ValidFileOpt = None,
    test_file: TestFileOpt = None,
    prepared: Annotated[
        Path | None,
        typer.Option(
            help="A directory from `afm-ctr prepare`: stream its rows instead of reading a "
            "dataset. With TF_CONFIG naming a cluster, train on every worker "
            "(docs/training.md#multi-worker-training).",
            envvar="AFM_PREPARED",
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = TrainConfig.epochs,
    batch_size: Annotated[int, typer.Option(min=1)] = TrainConfig.batch_size,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = TrainConfig.learning_rate,
    patience: Annotated[
        int, typer.Option(min=1, help="Early-stopping patience on validation AUC.")
    ] = TrainConfig.patience,
    embedding_dim: Annotated[
        int, typer.Option(min=1, help="k, the embedding size.")
    ] = AFMConfig.embedding_dim,
    attention_factor: Annotated[
        int, typer.Option(min=1, help="t, the attention network's hidden size.")
    ] = AFMConfig.attention_factor,
    dropout: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Dropout on the pooled vector.")
    ] = AFMConfig.dropout,
    l2_attention: Annotated[
        float, typer.Option(min=0.0, help="L2 on the attention matrix W.")
    ] = AFMConfig.l2_attention,
    no_attention: Annotated[
        bool, typer.Option("--no-attention", help="FM ablation: every pair weighs 1.")
    ] = False,
    fm_init: Annotated[
        bool,
        typer.Option(
            help="Start the AFM as the FM: h = 0, pooled vector scaled by the pair count. "
            "--no-fm-init: the paper's plain softmax average."
        ),
    ] = AFMConfig.fm_init,
    pair_bias: Annotated[
        bool,
        typer.Option(
            help="Add a learned score offset c_ij per pair to the attention (global pair "
            "importance on top of the per-example attention)."
        ),
    ] = AFMConfig.pair_bias,
    l2_pair_bias: Annotated[
        float, typer.Option(min=0.0, help="L2 on the per-pair attention offsets c.")
    ] = AFMConfig.l2_pair_bias,
    fields: FieldsOpt = None,
    oov_rate: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=0.99,
            help="Share of rows in which a new user, zip or movie, or an unknown user, is "
            "simulated (ids trained as out-of-vocabulary). Default: 0.05 with --fields all, "
            "0 with seed.",
        ),
    ] = None,
    holdout_movies: HoldoutMoviesOpt = DataConfig.holdout_movies,
    seed: SeedOpt = TrainConfig.seed,
) -> None:
    """Train an AFM and export it as a new version under --model-dir."""
    manifest = None
    if prepared is not None:
        given = [flag for flag, value in (("--dataset", dataset), ("--data-dir", data_dir),
                 ("--train-file", train_file), ("--valid-file", valid_file),
                 ("--test-file", test_file)) if value is not None]  # fmt: skip
        if given:
            raise typer.BadParameter(f"--prepared holds the rows already; drop {given[0]}")
        logs.quiet_tensorflow_import()  # model.data.shards imports Keras
        from model.data.shards import Manifest

        try:
            manifest = Manifest.load(prepared)
        except AfmError as exc:
            raise _fail(exc) from None
        if fields is not None and fields != manifest.field_set:
            raise typer.BadParameter(
                f"the prepared rows are for --fields {manifest.field_set}; prepare again "
                f"with --fields {fields}"
            )
        fields = manifest.field_set
        data_config = None
    else:
        data_config, fields = _data_config(
            dataset, data_dir, cache_dir, protocol, negatives, (train_file, valid_file, test_file),
            fields, holdout_movies, seed,
        )  # fmt: skip
    afm_config = AFMConfig(
        fields=fields,
        oov_rate=DEFAULT_OOV_RATE[fields] if oov_rate is None else oov_rate,
        embedding_dim=embedding_dim,
        attention_factor=attention_factor,
        dropout=dropout,
        l2_attention=l2_attention,
        use_attention=not no_attention,
        fm_init=fm_init,
        pair_bias=pair_bias,
        l2_pair_bias=l2_pair_bias,
    )
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=patience,
        seed=seed,
    )
    logs.quiet_tensorflow_import()
    from model.data.protocols import prepare
    from model.training.distributed import cluster_from_env
    from model.training.train import train_and_export, train_prepared_and_export

    try:
        if manifest is None:
            data = prepare(data_config)
            version_dir = train_and_export(data, afm_config, train_config, model_dir, data_config)
        else:
            cluster = cluster_from_env()
            version_dir = train_prepared_and_export(
                manifest, afm_config, train_config, model_dir, cluster
            )
            if version_dir is None:
                typer.echo(f"worker {cluster.index} of {cluster.workers} done; the chief exports")
                return
    except AfmError as exc:
        raise _fail(exc) from None
    typer.echo(f"exported {version_dir}")


def _data_config(
    dataset: Dataset | None,
    data_dir: Path | None,
    cache_dir: Path,
    protocol: Protocol,
    negatives: int,
    seed_files: tuple[Path | None, Path | None, Path | None],
    fields: FieldSet | None,
    holdout_movies: float,
    seed: int,
) -> tuple[DataConfig, FieldSet]:
    """The DataConfig and field set the data flags ask for (train and prepare share them)."""
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
    train_file, valid_file, test_file = seed_files
    config = DataConfig(
        dataset=dataset,
        data_dir=data_dir,
        cache_dir=cache_dir,
        protocol=protocol,
        negatives=negatives,
        seed=seed,
        train_file=train_file,
        valid_file=valid_file,
        test_file=test_file,
        holdout_movies=holdout_movies,
    )
    return config, fields


@app.command()
def prepare(
    out: Annotated[Path, typer.Option(help="New directory for the shards and manifest.json.")],
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = DataConfig.cache_dir,
    protocol: ProtocolOpt = DataConfig.protocol,
    negatives: NegativesOpt = DataConfig.negatives,
    train_file: TrainFileOpt = None,
    valid_file: ValidFileOpt = None,
    test_file: TestFileOpt = None,
    fields: FieldsOpt = None,
    holdout_movies: HoldoutMoviesOpt = DataConfig.holdout_movies,
    seed: SeedOpt = DataConfig.seed,
    shards: Annotated[
        int, typer.Option(min=1, help="Training shard files: at least the number of workers.")
    ] = 8,
) -> None:
    """Write the training, validation and test rows as TFRecord shards with a manifest, for
    `afm-ctr train --prepared DIR` (streamed, or on several workers)."""
    data_config, fields = _data_config(
        dataset, data_dir, cache_dir, protocol, negatives, (train_file, valid_file, test_file),
        fields, holdout_movies, seed,
    )  # fmt: skip
    logs.quiet_tensorflow_import()
    from dataclasses import asdict

    from model.data.protocols import prepare as prepare_rows
    from model.data.shards import write_prepared

    try:
        data = prepare_rows(data_config)
        config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(data_config).items()}
        manifest = write_prepared(data, fields, out, shards=shards, seed=seed, data_config=config)
    except AfmError as exc:
        raise _fail(exc) from None
    parts = ", ".join(f"{k} {v['rows']:,}" for k, v in manifest.summary().items())
    typer.echo(f"wrote {parts} rows ({fields} fields, {shards} training shards) to {out}")


@app.command("load-features")
def load_features(
    redis_url: RedisUrlOpt = DEFAULT_REDIS_URL,
    dataset: DatasetOpt = DEFAULT_DATASET,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = DataConfig.cache_dir,
    prefix: Annotated[
        str, typer.Option(help="Key prefix of the feature set.", envvar="AFM_REDIS_PREFIX")
    ] = DEFAULT_PREFIX,
    redis_cluster: RedisClusterOpt = False,
) -> None:
    """Write every user's and movie's features and what the load is (source, value labels,
    most rated movies, sample users) to Redis as a new namespace, then switch to it
    atomically."""
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
            cluster=redis_cluster,
        )
    except AfmError as exc:
        raise _fail(exc) from None
    typer.echo(
        f"loaded {user_count} users and {movie_count} movies of {loaded.source} into "
        f"{redis_url} under prefix {prefix!r}"
    )


@app.command()
def serve(
    model_dir: Annotated[
        Path,
        typer.Option(help="Export root to serve the newest version of.", envvar="AFM_MODEL_DIR"),
    ],
    redis_url: RedisUrlOpt = DEFAULT_REDIS_URL,
    host: Annotated[str, typer.Option(envvar="AFM_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="AFM_PORT")] = 8000,
    workers: Annotated[int, typer.Option(min=1, envvar="AFM_WORKERS")] = 1,
    redis_cluster: RedisClusterOpt = False,
) -> None:
    """Run the scoring API (uvicorn). Every flag is also an AFM_* environment variable."""
    import uvicorn

    # Workers are separate processes that build the app from the environment.
    os.environ["AFM_MODEL_DIR"] = str(model_dir)
    os.environ["AFM_REDIS_URL"] = redis_url
    os.environ["AFM_REDIS_CLUSTER"] = "1" if redis_cluster else "0"
    if workers == 1:  # the app loads models in a thread, while uvicorn writes to stderr
        logs.quiet_tensorflow_import()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # None: keep main()'s setup; worker processes apply it again from the dict.
        log_config=None if workers == 1 else logs.active_dict_config(),
        access_log=False,  # the app writes its own access line (service/access_log.py)
    )


@app.command()
def rollout(
    model_dir: Annotated[
        Path, typer.Option(help="Export root the services read.", envvar="AFM_MODEL_DIR")
    ],
    canary: Annotated[
        int | None, typer.Option(min=0, help="Send --percent of users to this version.")
    ] = None,
    percent: Annotated[
        float | None,
        typer.Option(min=0, max=100, help="The canary's share of users, in 0.01 steps."),
    ] = None,
    promote: Annotated[
        bool, typer.Option("--promote", help="The canary becomes stable for everyone.")
    ] = False,
    rollback: Annotated[
        bool,
        typer.Option(
            "--rollback",
            help="Drop the canary, or without one go back to the previous stable version; "
            "with VERSION: make that version stable.",
        ),
    ] = False,
    version: Annotated[
        int | None, typer.Argument(min=0, help="With --rollback: the version to make stable.")
    ] = None,
    status: Annotated[
        bool, typer.Option("--status", help="Show the policy (the default action).")
    ] = False,
) -> None:
    """Control which versions serve whom: a canary for a share of users, promotion, rollback.

    Writes rollout.json beside the versions (atomically); every service reading the
    directory follows it within its reload interval. Without the file, the newest version
    serves everyone.
    """
    from model.contracts import export_format
    from model.contracts import rollout as policies
    from model.contracts.rollout import PolicyError

    chosen = {"--canary": canary is not None, "--promote": promote, "--rollback": rollback}
    actions = [name for name, on in {**chosen, "--status": status}.items() if on]
    if len(actions) > 1:
        raise typer.BadParameter(f"give one action, not {' and '.join(actions)}")
    if (canary is None) != (percent is None):
        raise typer.BadParameter("--canary VERSION and --percent P go together")
    if version is not None and not rollback:
        raise typer.BadParameter("a VERSION argument goes with --rollback")
    try:
        policy = policies.read_policy(model_dir)
        if not actions or status:
            typer.echo(policies.describe(policy, model_dir))
            return
        versions = export_format.list_versions(model_dir)
        if canary is not None:
            assert percent is not None
            policy = policies.start_canary(policy, versions, canary, percent)
        elif promote:
            policy = policies.promote(policy)
        else:
            policy = policies.rollback(policy, versions, version)
        _check_servable(model_dir, policy.stable, policy.canary)
        path = policies.write_policy(model_dir, policy)
    except (AfmError, PolicyError) as exc:
        raise _fail(exc) from None
    typer.echo(f"wrote {path}: {policies.describe(policy, model_dir)}")


def _check_servable(model_dir: Path, *versions: int | None) -> None:
    """Refuse to route traffic to a version whose metadata a service would refuse."""
    from model.contracts import export_format
    from model.contracts.rollout import PolicyError

    for version in versions:
        if version is None:
            continue
        try:
            export_format.read_metadata(model_dir / str(version))
        except (OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PolicyError(f"version {version} cannot be served: {reason}") from None


@app.command()
def up(
    model_dir: Annotated[
        Path, typer.Option(help="Export root; trained into when empty.", envvar="AFM_MODEL_DIR")
    ] = Path("models"),
    dataset: Annotated[
        Dataset,
        typer.Option(help="What to train on and load (synthetic: offline).", envvar="AFM_DATASET"),
    ] = DEFAULT_DATASET,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = DataConfig.cache_dir,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Redis to use. Default: an embedded one under the cache dir, stopped on exit.",
            envvar="AFM_REDIS_URL",
        ),
    ] = None,
    host: Annotated[str, typer.Option(envvar="AFM_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="AFM_PORT")] = 8000,
    redis_cluster: RedisClusterOpt = False,
) -> None:
    """Train a first version if --model-dir has none, load the features, serve. Ctrl-C stops
    everything it started."""
    from model.cli.local import redis_for
    from model.contracts.export_format import latest_version

    if redis_cluster and redis_url is None:
        raise _fail(AfmError("--redis-cluster needs --redis-url naming a node of the cluster"))
    try:
        with redis_for(redis_url, cache_dir) as url:
            if latest_version(model_dir) is None:
                train(model_dir=model_dir, dataset=dataset, data_dir=data_dir, cache_dir=cache_dir)
            load_features(
                redis_url=url,
                dataset=dataset,
                data_dir=data_dir,
                cache_dir=cache_dir,
                redis_cluster=redis_cluster,
            )
            typer.echo(
                f"serving http://{host}:{port}  (page: /ui, API docs: /docs; Ctrl-C stops)\n"
                f"try: curl -s -X POST http://{host}:{port}/score -H 'content-type: "
                'application/json\' -d \'{"user_id": 1, "movie_ids": [1, 2, 3]}\'',
                err=True,
            )
            serve(
                model_dir=model_dir,
                redis_url=url,
                host=host,
                port=port,
                redis_cluster=redis_cluster,
            )
    except AfmError as exc:
        raise _fail(exc) from None


def run() -> None:
    """The ``afm-ctr`` console script: ``app``, then a quick exit."""
    try:
        app()
    finally:
        # Exempt every object from the interpreter's final garbage collections: with
        # TensorFlow imported they walk hundreds of thousands of objects, and a process took
        # 0.7-0.8 s to exit after its last line (0.07 s frozen, measured). Not in ``app``
        # itself, which tests invoke in their own process.
        gc.freeze()


if __name__ == "__main__":
    run()
