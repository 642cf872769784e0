"""``python -m model.cli``: the ``afm-ctr`` command."""

from model.cli.main import run

run()
