"""The ``afm-ctr`` command line: train, synth, load-features, serve.

Commands are thin: they build configs and call one function each. Heavy imports (TensorFlow,
the service) happen inside the commands, so ``afm-ctr --help`` stays instant.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from model import logs
from model.config import (
    DEFAULT_OOV_RATE,
    AFMConfig,
    DataConfig,
    Dataset,
    FieldSet,
    Protocol,
    TrainConfig,
)
from model.errors import AfmError
from model.feature_layout import DEFAULT_PREFIX

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


def _fail(exc: AfmError) -> typer.Exit:
    log.error("%s", exc)
    return typer.Exit(code=1)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write users.dat, movies.dat, ratings.dat.")],
    users: Annotated[int, typer.Option(min=10, help="Number of users.")] = 2000,
    movies: Annotated[int, typer.Option(min=10, help="Number of movies.")] = 1000,
    ratings: Annotated[int, typer.Option(min=100, help="Number of ratings.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Random seed; equal seeds give equal files.")] = 42,
) -> None:
    """Write a synthetic dataset in ML-1M format with planted, learnable structure."""
    from model.synth import write_synthetic

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
    protocol: Annotated[Protocol, typer.Option(envvar="AFM_PROTOCOL")] = DataConfig.protocol,
    negatives: Annotated[
        int, typer.Option(min=1, help="Negatives per positive (next-item).")
    ] = DataConfig.negatives,
    train_file: Annotated[
        Path | None,
        typer.Option(
            help="Seed rows: user_id gender age occupation zip movie_id label, tab-separated."
        ),
    ] = None,
    valid_file: Annotated[Path | None, typer.Option(help="Seed rows for validation.")] = None,
    test_file: Annotated[Path | None, typer.Option(help="Seed rows for the test.")] = None,
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
    fields: Annotated[
        FieldSet | None,
        typer.Option(
            help="seed: user_id gender age occupation zip movie_id; all: also the movie's year "
            "and genres. Default: all for a dataset, seed for seed row files."
        ),
    ] = None,
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
    holdout_movies: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.99,
            help="Keep this share of movies out of training; the test reports their AUC.",
        ),
    ] = DataConfig.holdout_movies,
    seed: Annotated[
        int, typer.Option(help="Seeds sampling, splits and initialisation.")
    ] = TrainConfig.seed,
) -> None:
    """Train an AFM and export it as a new version under --model-dir."""
    seed_files = (train_file, valid_file, test_file)
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
    data_config = DataConfig(
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
    from model.protocols import prepare
    from model.train import train_and_export

    try:
        data = prepare(data_config)
        version_dir = train_and_export(data, afm_config, train_config, model_dir, data_config)
    except AfmError as exc:
        raise _fail(exc) from None
    typer.echo(f"exported {version_dir}")


@app.command("load-features")
def load_features(
    redis_url: RedisUrlOpt = DEFAULT_REDIS_URL,
    dataset: DatasetOpt = DEFAULT_DATASET,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = DataConfig.cache_dir,
    prefix: Annotated[
        str, typer.Option(help="Key prefix of the feature set.", envvar="AFM_REDIS_PREFIX")
    ] = DEFAULT_PREFIX,
) -> None:
    """Write every user's and movie's features and what the load is (source, value labels,
    most rated movies, sample users) to Redis as a new namespace, then switch to it
    atomically."""
    from model.load_features import load_features as load
    from model.movielens import load_feature_set

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
) -> None:
    """Run the scoring API (uvicorn). Every flag is also an AFM_* environment variable."""
    import uvicorn

    # Workers are separate processes that build the app from the environment.
    os.environ["AFM_MODEL_DIR"] = str(model_dir)
    os.environ["AFM_REDIS_URL"] = redis_url
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
) -> None:
    """Train a first version if --model-dir has none, load the features, serve. Ctrl-C stops
    everything it started."""
    from model.contract import latest_version
    from model.local import redis_for

    try:
        with redis_for(redis_url, cache_dir) as url:
            if latest_version(model_dir) is None:
                train(model_dir=model_dir, dataset=dataset, data_dir=data_dir, cache_dir=cache_dir)
            load_features(redis_url=url, dataset=dataset, data_dir=data_dir, cache_dir=cache_dir)
            typer.echo(
                f"serving http://{host}:{port}  (page: /ui, API docs: /docs; Ctrl-C stops)\n"
                f"try: curl -s -X POST http://{host}:{port}/score -H 'content-type: "
                'application/json\' -d \'{"user_id": 1, "movie_ids": [1, 2, 3]}\'',
                err=True,
            )
            serve(model_dir=model_dir, redis_url=url, host=host, port=port)
    except AfmError as exc:
        raise _fail(exc) from None


if __name__ == "__main__":
    app()
