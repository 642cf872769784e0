import json
import logging
import os
from collections.abc import Iterator

import pytest

from model.cli import logs


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``logs.configure`` changes process-wide state: put it back for the next tests."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("tensorflow", "absl")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)
    logging.captureWarnings(False)


def _record(level: int, message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("model.training.train", level, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_text_format_is_the_bare_message_for_info_and_prefixed_above() -> None:
    human = logs.HumanFormatter(timestamps=False, color=False)
    assert human.format(_record(logging.INFO, "epoch 1/3")) == "epoch 1/3"
    assert human.format(_record(logging.ERROR, "no data")) == "error: no data"
    assert human.format(_record(logging.DEBUG, "config")) == "debug: config"
    stamped = logs.HumanFormatter(timestamps=True, color=False).format(_record(20, "up"))
    assert stamped.endswith(" model.training.train: up")


def test_json_format_is_one_object_with_time_level_logger_message_and_fields() -> None:
    line = logs.JsonFormatter().format(
        _record(logging.INFO, "GET /score 200", fields={"status": 200})
    )
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "INFO" and entry["logger"] == "model.training.train"
    assert entry["message"] == "GET /score 200" and entry["status"] == 200
    assert entry["time"].endswith("Z")


def test_configure_quiets_tensorflow_unless_verbose() -> None:
    logs.configure()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert logging.getLogger().level == logging.INFO
    logs.configure(verbose=True)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert logging.getLogger().level == logging.DEBUG


def test_active_dict_config_reproduces_the_configured_format() -> None:
    logs.configure(fmt="json")
    assert logs.json_output()
    assert logs.active_dict_config()["formatters"]["afm"]["()"] is logs.JsonFormatter
    logs.configure(timestamps=True)
    assert not logs.json_output()
    assert logs.active_dict_config()["formatters"]["afm"]["timestamps"] is True


def test_silenced_stderr_drops_writes_to_file_descriptor_2(capfd: pytest.CaptureFixture) -> None:
    with logs._stderr_fd_silenced():
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
