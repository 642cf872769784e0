"""``afm-ctr simulate``: traffic played against a running service, clicking by a known truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from model.cli.options import fail
from model.errors import AfmError


def simulate(
    url: Annotated[str, typer.Option(help="The running service.", envvar="AFM_URL")],
    data_dir: Annotated[
        Path,
        typer.Option(
            help="The synthetic data the service's feature set was loaded from (its "
            "planted.json is the truth clicks follow).",
            envvar="AFM_DATA_DIR",
        ),
    ],
    requests: Annotated[int, typer.Option(min=1, help="How many /score requests.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seeds users, candidates and clicks.")] = 0,
    candidates: Annotated[int, typer.Option(min=1, help="Candidates per request.")] = 50,
    top_k: Annotated[int, typer.Option(min=1, help="Movies shown per request.")] = 10,
    max_seconds: Annotated[float, typer.Option(min=1, help="Stop after this long.")] = 600.0,
    api_key: Annotated[
        str | None, typer.Option(help="Sent as X-API-Key.", envvar="AFM_API_KEY")
    ] = None,
) -> None:
    """Play a recommender frontend against a running service: simulated users of a synthetic
    feature set ask /score for candidate lists, click by the planted truth with position
    bias, and post the clicks to /events. Prints the realised CTR per version and arm."""
    import httpx

    from model.online.traffic import simulate as play

    try:
        report = play(
            url,
            data_dir,
            requests=requests,
            seed=seed,
            candidates=candidates,
            top_k=top_k,
            max_seconds=max_seconds,
            api_key=api_key,
            progress_every=max(1, requests // 10),
        )
    except AfmError as exc:
        raise fail(exc) from None
    except httpx.TransportError as exc:
        raise fail(AfmError(f"cannot reach {url}: {exc}")) from None
    typer.echo(f"{sum(t.requests for t in report.arms.values())} requests in {report.seconds:.1f}s")
    for line in report.lines():
        typer.echo(line)
