import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from model.cli.main import app

runner = CliRunner(env={"COLUMNS": "300"})  # keep rich from wrapping error messages


def test_help_shows_the_global_logging_flags() -> None:
    result = runner.invoke(app, ["--help"])
    assert "--verbose" in result.output and "--log-format" in result.output


def test_help_lists_every_command_without_importing_tensorflow() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from model.cli.main import app;"
        "r = CliRunner().invoke(app, ['--help']); print(r.output);"
        "print('TF-LOADED' if 'tensorflow' in sys.modules else 'TF-NOT-LOADED')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    for command in ("train", "synth", "load-features", "serve"):
        assert command in out
    assert "TF-NOT-LOADED" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--dataset", "ml-1m", "--train-file", "a", "--valid-file", "b", "--test-file", "c"],
            "give --dataset (ml-1m, ml-100k, synthetic) or the three seed row files, not both",
        ),
        (["--train-file", "a"], "all three of --train-file"),
        (["--dataset", "ml-20m"], "'ml-20m' is not one of 'ml-1m', 'ml-100k', 'synthetic'"),
        (
            ["--dataset", "synthetic", "--protocol", "random"],
            "'random' is not one of 'next-item', 'rating'",
        ),
        (["--dataset", "synthetic", "--dropout", "1.5"], "dropout"),
        (["--from-logs", "l", "--data-dir", "d"], "--from-logs holds the rows already; "
         "drop --data-dir"),
        (["--from-logs", "l", "--holdout-movies", "0.1"], "--from-logs splits by time; drop "
         "--holdout-movies"),
        (["--prepared", "p", "--from-logs", "l"], "--prepared holds the rows already; drop "
         "--from-logs"),
    ],
)  # fmt: skip
def test_train_rejects_bad_flag_combinations(args: list[str], message: str, tmp_path) -> None:
    result = runner.invoke(app, ["train", "--model-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_load_features_and_serve_default_to_the_same_redis() -> None:
    import inspect

    from model.cli import options, serving, training

    defaults = {
        command.__name__: inspect.signature(command).parameters["redis_url"].default
        for command in (training.load_features, serving.serve)
    }
    assert set(defaults.values()) == {options.DEFAULT_REDIS_URL}
    from service.settings import Settings

    assert Settings.model_fields["redis_url"].default == options.DEFAULT_REDIS_URL


def test_every_command_defaults_to_the_same_dataset() -> None:
    import inspect

    from model.cli import options, serving, training

    for command in (training.load_features, serving.up):
        assert inspect.signature(command).parameters["dataset"].default == "ml-1m"
    assert options.DEFAULT_DATASET == "ml-1m"
    compose = (Path(__file__).resolve().parents[3] / "compose.yaml").read_text()
    assert "AFM_DATASET: ${DATASET:-ml-1m}" in compose


def test_the_console_script_keeps_the_exit_code_and_freezes_objects_for_a_quick_exit() -> None:
    # run() is what `afm-ctr` calls; gc.freeze() spares the interpreter's final collections
    code = (
        "import gc, sys; from model.cli.main import run; sys.argv = ['afm-ctr', 'nonsense']\n"
        "try:\n    run()\nexcept SystemExit as exc:\n"
        "    print('code', exc.code, 'frozen', gc.get_freeze_count() > 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == "code 2 frozen True"


def test_train_without_prepared_rows_refuses_a_tf_config_cluster(tmp_path: Path) -> None:
    # Each worker would read the data, train alone and export a version of its own.
    tf_config = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    code = (
        "import sys; from typer.testing import CliRunner; from model.cli.main import app;"
        "r = CliRunner().invoke(app, sys.argv[1:]); print(r.output); print('exit', r.exit_code,"
        "'TF-LOADED' if 'tensorflow' in sys.modules else 'TF-NOT-LOADED')"
    )
    args = ["train", "--dataset", "synthetic", "--data-dir", str(tmp_path / "no-data"),
            "--model-dir", str(tmp_path / "models")]  # fmt: skip
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "COLUMNS": "300"}
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
    ).stdout
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert "`afm-ctr prepare" in errors[0] and "--prepared" in errors[0]
    assert "Traceback" not in out
    assert out.strip().endswith("exit 1 TF-NOT-LOADED")
    assert not (tmp_path / "models").exists()


def _command_names() -> list[str]:
    """Every command, a group's as "group command" ("logs export")."""
    names = []
    for name, command in typer.main.get_command(app).commands.items():
        group = getattr(command, "commands", None)
        names += [f"{name} {sub}" for sub in group] if group else [name]
    return names


@pytest.mark.parametrize("command", ["", *_command_names()])
def test_help_at_80_columns_shows_every_option_name_whole(command: str) -> None:
    args = [*command.split(), "--help"]
    result = CliRunner(env={"COLUMNS": "80"}).invoke(app, args)
    assert result.exit_code == 0, result.output
    click_command = typer.main.get_command(app)
    for name in command.split():
        click_command = click_command.commands[name]
    names = [n for p in click_command.params for n in (*p.opts, *p.secondary_opts)]
    assert names
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", result.output), (
            f"{name} not whole in:\n{result.output}"
        )
    assert max(len(line) for line in result.output.splitlines()) <= 80, result.output


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.mark.parametrize("command", ["serve", "up"])
def test_serve_and_up_refuse_a_busy_port_before_loading_anything(
    command: str, busy_port: int, tmp_path: Path
) -> None:
    args = [command, "--model-dir", str(tmp_path / "models"), "--port", str(busy_port)]
    if command == "up":
        args += ["--dataset", "synthetic", "--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1, result.output
    assert f"port {busy_port} on 127.0.0.1 is in use" in errors[0]
    assert "--port" in errors[0] and "AFM_PORT" in errors[0]
    assert "Traceback" not in result.output and "serving" not in result.output
    assert list(tmp_path.iterdir()) == []  # no data synthesized, nothing trained, no Redis


def test_up_offline_suggests_the_synthetic_dataset(tmp_path: Path) -> None:
    with socket.socket() as closed:  # bound, never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        mirror = f"http://127.0.0.1:{closed.getsockname()[1]}/"
        result = CliRunner(env={"AFM_MOVIELENS_URL": mirror, "COLUMNS": "300"}).invoke(
            app,
            ["up", "--dataset", "ml-1m", "--model-dir", str(tmp_path / "models"),
             "--cache-dir", str(tmp_path / "cache"), "--port", str(_free_port())],
        )  # fmt: skip
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1, result.output
    assert "cannot fetch the checksum" in errors[0]
    assert "--dataset synthetic" in errors[0] and "make up DATASET=synthetic" in errors[0]
    assert not (tmp_path / "models").exists() and not (tmp_path / "cache" / "redis").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
