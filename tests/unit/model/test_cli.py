import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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
    ],
)
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
