"""`topgun sim`."""

from __future__ import annotations

from click.testing import CliRunner

from topgun.cli import build_cli
from topgun.hooks import make_plugin_manager


def run(*args: str) -> tuple[int, str, str]:
    pm = make_plugin_manager(entry_points=(), environ={})
    result = CliRunner().invoke(build_cli(pm), ["sim", *args], obj=pm)
    return result.exit_code, result.stdout, result.stderr


def test_a_passing_campaign_says_so() -> None:
    code, out, _ = run("--seeds", "3", "--ops", "20")
    assert code == 0
    assert "3 seed(s) passed (0..2, 3 clients, 20 ops" in out


def test_a_failing_seed_prints_its_violations_and_replay_command() -> None:
    code, _, err = run("--seeds", "200", "--bug", "lww-equal-lower-node")
    assert code == 1
    assert "FAILED" in err
    assert "replay: topgun sim --seeds 1 --seed " in err
    assert "--bug lww-equal-lower-node --trace" in err


def test_replaying_one_seed_prints_its_trace() -> None:
    code, out, _ = run("--seeds", "1", "--seed", "4", "--ops", "10", "--trace")
    assert code == 0
    assert "final m/" in out or "settled" in out
    again = run("--seeds", "1", "--seed", "4", "--ops", "10", "--trace")[1]
    assert again == out


def test_unknown_faults_are_a_usage_error() -> None:
    code, _, err = run("--faults", "latency,meteor")
    assert code == 2
    assert "unknown fault(s) meteor" in err
