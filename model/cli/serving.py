"""The serving commands: serve, rollout, up.

``serve`` starts uvicorn by import string (``service.app:create_app``), so the CLI never
imports service code; ``rollout`` writes the policy the services follow; ``up`` trains,
loads features and serves in one command.
"""

from __future__ import annotations

import errno
import http.client
import logging
import os
import socket
import threading
import urllib.parse
from pathlib import Path
from typing import Annotated

import typer

from model.cli import logs
from model.cli.options import (
    DEFAULT_DATASET,
    DEFAULT_REDIS_URL,
    CacheDirOpt,
    DataDirOpt,
    PrefixOpt,
    RedisClusterOpt,
    RedisUrlOpt,
    fail,
)
from model.cli.training import load_features, train
from model.config import DataConfig, Dataset
from model.contracts.feature_layout import DEFAULT_PREFIX
from model.errors import AfmError, DownloadError, one_line
from model.online.settings import JudgeSettings

log = logging.getLogger(__name__)


HostOpt = Annotated[str, typer.Option(help="Address to listen on.", envvar="AFM_HOST")]
PortOpt = Annotated[
    int, typer.Option(min=1, max=65535, help="Port to listen on.", envvar="AFM_PORT")
]
READY_POLL_SECONDS = (0.5, 5.0)
"""The first and the longest wait between the GET /readyz that wait for the service to be
ready, doubling in between: each is an access line, and a service may wait long for its
first model."""


def serve(
    model_dir: Annotated[
        Path,
        typer.Option(help="Export root to serve the newest version of.", envvar="AFM_MODEL_DIR"),
    ],
    redis_url: RedisUrlOpt = DEFAULT_REDIS_URL,
    prefix: PrefixOpt = DEFAULT_PREFIX,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="Server processes (uvicorn workers).", envvar="AFM_WORKERS")
    ] = 1,
    redis_cluster: RedisClusterOpt = False,
) -> None:
    """Run the scoring API (uvicorn). Every flag is also an AFM_* environment variable."""
    try:
        check_port_free(host, port)
    except AfmError as exc:
        raise fail(exc) from None
    run_service(
        model_dir=model_dir,
        redis_url=redis_url,
        prefix=prefix,
        redis_cluster=redis_cluster,
        host=host,
        port=port,
        workers=workers,
    )
    log.info("stopped the service on %s", local_url(host, port))


def check_port_free(host: str, port: int) -> None:
    """Raise AfmError, naming --port and AFM_PORT, if ``host:port`` cannot be listened on:
    found before anything is trained or loaded, not by uvicorn once everything is."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # uvicorn sets it too
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AfmError(
                    f"port {port} on {host} is in use by another program; "
                    "pick another with --port or AFM_PORT"
                ) from None
            raise AfmError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another "
                "port with --port or AFM_PORT, or address with --host or AFM_HOST"
            ) from None


def run_service(
    *,
    model_dir: Path,
    redis_url: str,
    prefix: str,
    redis_cluster: bool,
    host: str,
    port: int,
    workers: int = 1,
    example: bool = False,
) -> None:
    """uvicorn serving the app until Ctrl-C. Once GET /readyz answers 200, logs the address
    (and with ``example``, a request to try)."""
    import uvicorn

    # Workers are separate processes that build the app from the environment.
    os.environ["AFM_MODEL_DIR"] = str(model_dir)
    os.environ["AFM_REDIS_URL"] = redis_url
    os.environ["AFM_REDIS_PREFIX"] = prefix
    os.environ["AFM_REDIS_CLUSTER"] = "1" if redis_cluster else "0"
    if workers == 1:  # the app loads models in a thread, while uvicorn writes to stderr
        logs.quiet_tensorflow_import()
    stopped = threading.Event()
    announcer = threading.Thread(
        target=_announce_when_ready,
        args=(local_url(host, port), example, stopped),
        name="announce-when-ready",
        daemon=True,
    )
    announcer.start()
    try:
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
    finally:
        stopped.set()
        announcer.join()


def local_url(host: str, port: int) -> str:
    """The URL of the service from this machine (a wildcard address is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _announce_when_ready(url: str, example: bool, stopped: threading.Event) -> None:
    """Log where the service is once GET /readyz answers 200; return quietly on ``stopped``."""
    address = urllib.parse.urlsplit(url)
    wait, longest = READY_POLL_SECONDS
    while not stopped.wait(wait):
        wait = min(2 * wait, longest)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=2)
        try:
            connection.request("GET", "/readyz")
            status = connection.getresponse().status
        except (OSError, http.client.HTTPException):  # not listening yet, or stopping
            continue
        finally:
            connection.close()
        if status == 200:
            log.info("serving %s  (page: /ui, API docs: /docs; Ctrl-C stops)", url)
            if example:
                log.info(
                    "try: curl -s -X POST %s/score -H 'content-type: application/json' "
                    '-d \'{"user_id": 1, "movie_ids": [1, 2, 3]}\'',
                    url,
                )
            return


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
        bool,
        typer.Option(
            "--status",
            help="Show the policy (the default action); with --redis-url also the online "
            "CTR per version and arm over --window.",
        ),
    ] = False,
    judge: Annotated[
        bool,
        typer.Option(
            "--judge",
            help="Decide the canary by clicks: prints promote, roll back or keep collecting, "
            "and why (needs --redis-url).",
        ),
    ] = False,
    auto: Annotated[
        bool,
        typer.Option("--auto", help="With --judge: write the decision (as --promote/--rollback)."),
    ] = False,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="The Redis the service logs impressions to (its feature store).",
            envvar="AFM_REDIS_URL",
        ),
    ] = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
    redis_cluster: RedisClusterOpt = False,
    window: Annotated[
        str | None,
        typer.Option(
            help="Impressions of the last 30m, 1h, 2d... Default: 1h for --status; for "
            "--judge, since the canary version started.",
        ),
    ] = None,
    metrics_url: Annotated[
        str | None,
        typer.Option(
            help="A service's /metrics: --judge rolls back a canary whose 5xx rate or "
            "latency is worse than stable's, whatever its clicks. Without it those guards "
            "are skipped.",
        ),
    ] = None,
    alpha: Annotated[
        float,
        typer.Option(
            min=0.0001, max=0.5, help="--judge: chance of a false decision between equals."
        ),
    ] = JudgeSettings.alpha,
    min_effect: Annotated[
        float,
        typer.Option(
            min=0.001,
            max=10,
            help="--judge: the relative CTR difference worth finding (0.05: 5 %; the "
            "mixture's tau).",
        ),
    ] = JudgeSettings.min_effect,
    max_impressions: Annotated[
        int,
        typer.Option(
            min=1,
            help="--judge: canary impressions after which, with no difference found, the "
            "canary is rolled back.",
        ),
    ] = JudgeSettings.max_impressions,
    min_users: Annotated[
        int, typer.Option(min=2, help="--judge: users each arm needs before clicks decide.")
    ] = JudgeSettings.min_users,
    max_latency_ratio: Annotated[
        float,
        typer.Option(
            min=1.01,
            help="--judge with --metrics-url: roll back a canary whose mean or p99 /score "
            "latency is more than this times stable's, whatever its clicks.",
        ),
    ] = JudgeSettings.max_latency_ratio,
) -> None:
    """Control which versions serve whom: a canary for a share of users, promotion, rollback,
    and a judge that decides the canary by clicks.

    Writes rollout.json beside the versions (atomically); every service reading the
    directory follows it within its reload interval. Without the file, the newest version
    serves everyone. --judge reads the impression log the service writes to --redis-url and
    asks an always-valid sequential test (asking it often does not raise its error rate).
    """
    from model.cli import canary as online
    from model.contracts import export_format
    from model.contracts import rollout as policies
    from model.contracts.rollout import PolicyError

    chosen = {"--canary": canary is not None, "--promote": promote, "--rollback": rollback}
    actions = [name for name, on in {**chosen, "--status": status, "--judge": judge}.items() if on]
    if len(actions) > 1:
        raise typer.BadParameter(f"give one action, not {' and '.join(actions)}")
    if (canary is None) != (percent is None):
        raise typer.BadParameter("--canary VERSION and --percent P go together")
    if version is not None and not rollback:
        raise typer.BadParameter("a VERSION argument goes with --rollback")
    if (auto or metrics_url is not None) and not judge:
        raise typer.BadParameter(f"{'--auto' if auto else '--metrics-url'} goes with --judge")
    if judge and redis_url is None:
        raise typer.BadParameter(
            "--judge needs --redis-url (or AFM_REDIS_URL): the Redis the service logs "
            "impressions to"
        )
    if window is not None:
        if redis_url is None or not (judge or status or not actions):
            raise typer.BadParameter("--window goes with --redis-url, for --status or --judge")
        online.parse_window(window)  # a usage error before anything is read
    source = online.LogSource(redis_url or "", prefix, redis_cluster)
    try:
        policy = policies.read_policy(model_dir)
        if judge:
            settings = JudgeSettings(
                alpha, min_effect, max_impressions, min_users, max_latency_ratio
            )
            decided = online.judge_canary(policy, model_dir, source, window, settings, metrics_url)
            if not auto:
                return
            if decided is None:
                typer.echo("--auto: nothing to write yet")
                return
            policy = decided
        elif not actions or status:
            if redis_url is None:
                typer.echo(policies.describe(policy, model_dir))
            else:
                online.show_status(policy, model_dir, source, window)
            return
        elif canary is not None:
            assert percent is not None
            versions = export_format.list_versions(model_dir)
            policy = policies.start_canary(policy, versions, canary, percent)
        elif promote:
            policy = policies.promote(policy)
        else:
            policy = policies.rollback(policy, export_format.list_versions(model_dir), version)
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
            raise PolicyError(f"version {version} cannot be served: {one_line(exc)}") from None


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
    prefix: PrefixOpt = DEFAULT_PREFIX,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    redis_cluster: RedisClusterOpt = False,
) -> None:
    """Train a first version if --model-dir has none, load the features, serve. Ctrl-C stops
    everything it started."""
    from model.cli.local import redis_for
    from model.contracts.export_format import latest_version

    if redis_cluster and redis_url is None:
        raise fail(AfmError("--redis-cluster needs --redis-url naming a node of the cluster"))
    try:
        check_port_free(host, port)
        _fetch(DataConfig(dataset=dataset, data_dir=data_dir, cache_dir=cache_dir))
        with redis_for(redis_url, cache_dir) as url:
            if latest_version(model_dir) is None:
                train(model_dir=model_dir, dataset=dataset, data_dir=data_dir, cache_dir=cache_dir)
            load_features(
                redis_url=url,
                dataset=dataset,
                data_dir=data_dir,
                cache_dir=cache_dir,
                prefix=prefix,
                redis_cluster=redis_cluster,
            )
            run_service(
                model_dir=model_dir,
                redis_url=url,
                prefix=prefix,
                redis_cluster=redis_cluster,
                host=host,
                port=port,
                example=True,
            )
    except AfmError as exc:
        raise fail(exc) from None
    if redis_url is None:
        log.info(
            "stopped the service on %s and the embedded Redis (its data stays in %s)",
            local_url(host, port),
            cache_dir / "redis",
        )
    else:
        log.info("stopped the service on %s", local_url(host, port))


def _fetch(config: DataConfig) -> None:
    """Download the dataset if it is not at hand yet (reading its users), before anything
    starts: offline, the one error line then offers the dataset that needs no network."""
    from model.data.movielens import load_users

    try:
        load_users(config)
    except DownloadError as exc:
        raise AfmError(
            f"{exc}; or, offline, use the synthetic dataset: --dataset synthetic "
            "(make up DATASET=synthetic)"
        ) from None
