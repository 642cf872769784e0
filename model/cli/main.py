"""The ``afm-ctr`` command line: train, prepare, synth, load-features, serve, rollout, up, and
logs export.

Commands are thin: they build configs and call one function each. The data and training
commands are in ``model/cli/training.py``, the serving ones in ``model/cli/serving.py``, the
``logs`` group in ``model/cli/click_logs.py``, the options they share in
``model/cli/options.py``. Heavy imports (TensorFlow, the service) happen inside the commands,
so ``afm-ctr --help`` stays instant.
"""

from __future__ import annotations

import gc
from typing import Annotated

import typer

from model.cli import click_logs, logs, online, serving, training

app = typer.Typer(
    help="Attentional Factorization Machines for click-through-rate scoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Click's plain help: rich's option table cuts long option names short ("--attention-fac…")
    # in an 80-column terminal; click's puts the help under a long name instead.
    rich_markup_mode=None,
)
COMMANDS = (
    training.synth,
    training.train,
    training.prepare,
    training.load_features,
    serving.serve,
    serving.rollout,
    serving.up,
    online.simulate,
)
for command in COMMANDS:
    app.command()(command)
app.add_typer(click_logs.app, name="logs")


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


def run() -> None:
    """The ``afm-ctr`` console script: ``app``, then a quick exit."""
    try:
        app()
    finally:
        # Exempt every object from the interpreter's final garbage collections: with
        # TensorFlow imported they walk hundreds of thousands of objects (~0.7 s of exit).
        # Not in ``app`` itself, which tests invoke in their own process.
        gc.freeze()


if __name__ == "__main__":
    run()
