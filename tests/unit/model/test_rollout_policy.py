"""The rollout policy spec: file format, validation, user hash, steps, and `afm-ctr rollout`."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from model.cli.main import app
from model.contracts import export_format, rollout
from model.contracts.rollout import PolicyError, RolloutPolicy

runner = CliRunner(env={"COLUMNS": "300"})


def _versions(root: Path, *versions: int) -> Path:
    """Version dirs with a valid metadata.json (what `afm-ctr rollout` checks)."""
    for version in versions:
        (root / str(version)).mkdir()
        metadata = export_format.ModelMetadata(
            version=version,
            fields=list(export_format.SEED_FIELDS),
            pairs=[list(p) for p in export_format.pairs(export_format.SEED_FIELDS)],
            hyperparameters={},
            protocol="next-item",
            data={},
            metrics={},
            tensorflow_version="2",
            created_at="2026-01-01T00:00:00+00:00",
        )
        (root / str(version) / export_format.METADATA_FILE).write_text(metadata.model_dump_json())
    return root


# The user hash: golden values any client must reproduce.


def test_user_bucket_golden_values() -> None:
    assert rollout.user_bucket(1, 2) == 260
    assert rollout.user_bucket(1, 3) == 7193
    assert rollout.user_bucket(42, 2) == 6417
    assert rollout.user_bucket(2**63 - 1, 7) == 812


def test_user_bucket_follows_the_documented_recipe() -> None:
    for user_id in (0, 5, 123_456):
        digest = hashlib.sha256(f"9:{user_id}".encode()).hexdigest()
        assert rollout.user_bucket(user_id, 9) == int(digest[:16], 16) % 10_000


def test_canary_share_matches_percent_and_growing_it_only_adds_users() -> None:
    users = range(20_000)
    at_5 = {u for u in users if rollout.in_canary(u, 4, 5)}
    at_20 = {u for u in users if rollout.in_canary(u, 4, 20)}
    assert len(at_5) / 20_000 == pytest.approx(0.05, abs=0.005)
    assert len(at_20) / 20_000 == pytest.approx(0.20, abs=0.01)
    assert at_5 < at_20
    assert not any(rollout.in_canary(u, 4, 0) for u in users)
    assert all(rollout.in_canary(u, 4, 100) for u in users)


def test_each_canary_version_picks_its_own_users() -> None:
    first = {u for u in range(10_000) if rollout.in_canary(u, 4, 10)}
    second = {u for u in range(10_000) if rollout.in_canary(u, 5, 10)}
    assert len(first & second) < len(first) / 2  # independent draws overlap by ~10 %


# The file: validation, atomic write, read errors.


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"stable": 1, "percent": 5}, "percent is 5.0 but no canary is set"),
        ({"stable": 1, "canary": 1, "percent": 5}, "canary and stable are both version 1"),
        ({"stable": 2, "previous": 2}, "previous version 2 also has another role"),
        ({"stable": 1, "canary": 2, "percent": 101}, "less than or equal to 100"),
        ({"stable": -1}, "greater than or equal to 0"),
        ({"stable": 1, "canary_percent": 5}, "Extra inputs are not permitted"),
        ({"stable": 1, "format_version": 3}, "Input should be 1 or 2"),
        ({"stable": 1, "canary_since": "2026-01-01T00:00:00+00:00"}, "but no canary is"),
        ({}, "Field required"),
    ],
)
def test_broken_policy_files_are_refused_with_the_reason(
    tmp_path: Path, fields: dict, message: str
) -> None:
    rollout.policy_path(tmp_path).write_text(json.dumps(fields))
    with pytest.raises(PolicyError, match=message) as raised:
        rollout.read_policy(tmp_path)
    assert str(raised.value).startswith(f"{tmp_path / 'rollout.json'}: ")


def test_unparsable_policy_file_is_refused(tmp_path: Path) -> None:
    rollout.policy_path(tmp_path).write_text('{"stable": 1,')
    with pytest.raises(PolicyError, match="rollout.json: Invalid JSON"):
        rollout.read_policy(tmp_path)


def test_no_policy_file_reads_as_none(tmp_path: Path) -> None:
    assert rollout.read_policy(tmp_path) is None


def test_policy_round_trips_atomically_and_readably(tmp_path: Path) -> None:
    policy = RolloutPolicy(stable=3, canary=4, percent=12.5, previous=2)
    path = rollout.write_policy(tmp_path, policy)
    read = rollout.read_policy(tmp_path)
    stamps = {"updated_at", "canary_since", "format_version"}
    assert read is not None and read.model_dump(exclude=stamps) == policy.model_dump(exclude=stamps)
    assert read.updated_at.endswith("+00:00") and read.canary_since == read.updated_at
    assert [p.name for p in tmp_path.iterdir()] == ["rollout.json"]  # no temporary file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text())["format_version"] == 2


def test_policy_file_is_not_a_version(tmp_path: Path) -> None:
    _versions(tmp_path, 1)
    rollout.write_policy(tmp_path, RolloutPolicy(stable=1))
    assert export_format.list_versions(tmp_path) == [1]


# The steps.


def test_first_canary_keeps_the_newest_older_version_stable() -> None:
    policy = rollout.start_canary(None, [1, 2, 3], canary=3, percent=5)
    assert (policy.stable, policy.canary, policy.percent, policy.previous) == (2, 3, 5.0, None)


def test_canary_share_can_be_changed() -> None:
    policy = rollout.start_canary(RolloutPolicy(stable=2, previous=1), [1, 2, 3], 3, 5)
    policy = rollout.start_canary(policy, [1, 2, 3], 3, 50)
    assert (policy.stable, policy.canary, policy.percent, policy.previous) == (2, 3, 50.0, 1)


def test_promote_makes_the_canary_stable_and_keeps_the_old_one_as_previous() -> None:
    policy = rollout.promote(RolloutPolicy(stable=2, canary=3, percent=5, previous=1))
    assert (policy.stable, policy.canary, policy.percent, policy.previous) == (3, None, 0.0, 2)


def test_rollback_drops_a_canary_first_then_returns_to_previous() -> None:
    policy = RolloutPolicy(stable=3, canary=4, percent=5, previous=2)
    policy = rollout.rollback(policy, [1, 2, 3, 4])
    assert (policy.stable, policy.canary, policy.previous) == (3, None, 2)
    policy = rollout.rollback(policy, [1, 2, 3, 4])
    assert (policy.stable, policy.canary, policy.previous) == (2, None, None)
    with pytest.raises(PolicyError, match="no previous stable version"):
        rollout.rollback(policy, [1, 2, 3, 4])


def test_rollback_to_a_named_version() -> None:
    policy = rollout.rollback(RolloutPolicy(stable=3, canary=4, percent=5), [1, 2, 3, 4], 1)
    assert (policy.stable, policy.canary, policy.previous) == (1, None, 3)
    assert rollout.rollback(None, [1, 2], 1).model_dump(exclude={"updated_at"}) == {
        "format_version": 2, "stable": 1, "canary": None, "percent": 0.0, "previous": 2,
        "canary_since": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (lambda: rollout.promote(None), "no canary to promote"),
        (lambda: rollout.promote(RolloutPolicy(stable=1)), "no canary to promote"),
        (lambda: rollout.start_canary(None, [1, 2], 5, 10), "version 5 is not in the model"),
        (lambda: rollout.start_canary(None, [2], 2, 10), "no version older than 2"),
        (
            lambda: rollout.start_canary(RolloutPolicy(stable=2), [1, 2], 2, 10),
            "already the stable version",
        ),
        (lambda: rollout.rollback(None, [1, 2]), "name the version: --rollback VERSION"),
    ],
)
def test_impossible_steps_say_why(step, message: str) -> None:  # noqa: ANN001
    with pytest.raises(PolicyError, match=message):
        step()


# When the canary started: kept by every write that leaves the canary as it was.

EARLIER = "2026-01-01T00:00:00+00:00"


def test_a_written_canary_gets_its_start_and_keeps_it_while_it_stays(tmp_path: Path) -> None:
    _versions(tmp_path, 1, 2, 3, 4)
    assert _rollout(tmp_path, "--canary", "3", "--percent", "5").exit_code == 0
    first = rollout.read_policy(tmp_path)
    assert first.canary_since is not None and first.canary_since == first.updated_at
    rollout.write_policy(tmp_path, first.model_copy(update={"canary_since": EARLIER}))
    for args in (["--canary", "3", "--percent", "50"], ["--canary", "3", "--percent", "50"]):
        assert _rollout(tmp_path, *args).exit_code == 0
        policy = rollout.read_policy(tmp_path)
        assert (policy.canary, policy.percent, policy.canary_since) == (3, 50.0, EARLIER)
    assert _rollout(tmp_path, "--canary", "4", "--percent", "50").exit_code == 0
    assert rollout.read_policy(tmp_path).canary_since not in (None, EARLIER)  # a new canary
    assert _rollout(tmp_path, "--rollback").exit_code == 0
    assert rollout.read_policy(tmp_path).canary_since is None
    assert _rollout(tmp_path, "--canary", "4", "--percent", "5").exit_code == 0
    assert rollout.read_policy(tmp_path).canary_since not in (None, EARLIER)  # started again


def test_a_format_1_file_is_read_and_its_last_write_stands_for_the_canary_start(
    tmp_path: Path,
) -> None:
    _versions(tmp_path, 1, 2, 3)
    old = {"format_version": 1, "stable": 2, "canary": 3, "percent": 5.0, "previous": 1,
           "updated_at": EARLIER}  # fmt: skip
    rollout.policy_path(tmp_path).write_text(json.dumps(old))
    read = rollout.read_policy(tmp_path)
    assert (read.format_version, read.canary, read.canary_since) == (1, 3, None)
    assert _rollout(tmp_path, "--canary", "3", "--percent", "10").exit_code == 0
    written = json.loads(rollout.policy_path(tmp_path).read_text())
    assert (written["format_version"], written["canary_since"]) == (2, EARLIER)
    assert written["updated_at"] != EARLIER


# The command line.


def _rollout(model_dir: Path, *args: str):  # noqa: ANN202
    return runner.invoke(app, ["rollout", "--model-dir", str(model_dir), *args])


def test_rollout_command_walks_canary_promote_rollback(tmp_path: Path) -> None:
    _versions(tmp_path, 1, 2, 3)
    assert "no rollout policy" in _rollout(tmp_path, "--status").output
    result = _rollout(tmp_path, "--canary", "3", "--percent", "10")
    assert result.exit_code == 0, result.output
    assert "stable 2, canary 3 for 10% of users" in result.output
    assert _rollout(tmp_path).output.strip() == "stable 2, canary 3 for 10% of users"
    assert _rollout(tmp_path, "--promote").exit_code == 0
    assert rollout.read_policy(tmp_path).model_dump(include={"stable", "previous"}) == {
        "stable": 3,
        "previous": 2,
    }
    assert "stable 2" in _rollout(tmp_path, "--rollback").output
    result = _rollout(tmp_path, "--rollback", "1")
    assert result.exit_code == 0 and "stable 1, previous 2" in result.output


def test_rollout_refuses_a_version_a_service_would_refuse(tmp_path: Path) -> None:
    _versions(tmp_path, 1)
    (tmp_path / "2").mkdir()  # no metadata.json
    result = _rollout(tmp_path, "--canary", "2", "--percent", "10")
    assert result.exit_code == 1
    assert "version 2 cannot be served" in result.output
    assert rollout.read_policy(tmp_path) is None


def test_rollout_reports_a_broken_policy_file(tmp_path: Path) -> None:
    _versions(tmp_path, 1, 2)
    rollout.policy_path(tmp_path).write_text("[]")
    result = _rollout(tmp_path, "--status")
    assert result.exit_code == 1 and "rollout.json" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--canary", "2"], "--canary VERSION and --percent P go together"),
        (["--promote", "--rollback"], "give one action, not --promote and --rollback"),
        (["--promote", "2"], "a VERSION argument goes with --rollback"),
        (["--canary", "2", "--percent", "120"], "Invalid value for '--percent'"),
    ],
)
def test_rollout_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = _rollout(_versions(tmp_path, 1, 2), *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
