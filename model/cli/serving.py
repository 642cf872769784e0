"""The serving commands: serve, rollout, up.

``serve`` starts uvicorn by import string (``service.app:create_app``), so the CLI never
imports service code; ``rollout`` writes the policy the services follow; ``up`` trains,
loads features and serves in one command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from model.cli import logs
from model.cli.options import (
    DEFAULT_DATASET,
    DEFAULT_REDIS_URL,
    CacheDirOpt,
    DataDirOpt,
    RedisClusterOpt,
    RedisUrlOpt,
    fail,
)
from model.cli.training import load_features, train
from model.config import DataConfig, Dataset
from model.errors import AfmError


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
        raise fail(exc) from None
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
        raise fail(AfmError("--redis-cluster needs --redis-url naming a node of the cluster"))
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
        raise fail(exc) from None
