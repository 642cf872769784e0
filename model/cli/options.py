"""What the ``afm-ctr`` commands share: option types, defaults, option groups and the
one-line failure.

Each option carries its help and environment variable (``AFM_*``), so a container sets env
where a person passes flags.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from model.config import Dataset, FieldSet, Protocol

log = logging.getLogger(__name__)

DEFAULT_DATASET: Dataset = "ml-1m"  # as compose's DATASET; `synthetic` works offline
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # the service's default too (service/settings.py)

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
RedisUrlOpt = Annotated[
    str, typer.Option(help="Redis holding the user features.", envvar="AFM_REDIS_URL")
]
PrefixOpt = Annotated[
    str, typer.Option(help="Key prefix of the feature set.", envvar="AFM_REDIS_PREFIX")
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
        "and genres; history: all, and the user's last 20 watched movies and how long "
        "before the row the latest was (not with seed row files). Default: all for a "
        "dataset, seed for seed row files."
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
        help="--redis-url names any node of a Redis Cluster (docs/operations.md#redis-cluster).",
        envvar="AFM_REDIS_CLUSTER",
    ),
]


def fail(exc: Exception) -> typer.Exit:
    """Log ``exc`` as one error line; raise the result ``from None``: exit 1, no traceback."""
    log.error("%s", exc)
    return typer.Exit(code=1)


def with_option_groups(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with its option groups spelled out for Typer, which has none of its own
    (fastapi/typer#153).

    A parameter of ``command`` annotated with a dataclass whose fields are options (their
    ``Annotated`` types and defaults, as a command's parameters are written) stands, in its
    place, for those options; ``command`` gets them back as one instance of the dataclass.
    Called directly, the options of a group default as its fields do.
    """
    groups: dict[str, tuple[type, list[inspect.Parameter]]] = {}
    parameters: list[inspect.Parameter] = []
    for parameter in inspect.signature(command, eval_str=True).parameters.values():
        group = parameter.annotation
        if dataclasses.is_dataclass(group) and isinstance(group, type):
            options = list(inspect.signature(group, eval_str=True).parameters.values())
            groups[parameter.name] = (group, options)
            parameters += options
        else:
            parameters.append(parameter)

    @functools.wraps(command)
    def grouped(**kwargs: Any) -> None:
        for name, (group, options) in groups.items():
            kwargs[name] = group(**{o.name: kwargs.pop(o.name, o.default) for o in options})
        command(**kwargs)

    grouped.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return grouped
