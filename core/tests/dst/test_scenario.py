"""Whole simulated runs: determinism, the default campaign, and a bug the checks must catch."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from topgun.dst.faults import ALL_FAULTS
from topgun.dst.scenario import Scenario, ScenarioRunner

CAMPAIGN_SEEDS = 200


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    """Faults make the code under test log warnings; the trace is what tells."""
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def test_the_same_seed_gives_the_same_trace_byte_for_byte() -> None:
    first = ScenarioRunner(Scenario(seed=5)).run()
    again = ScenarioRunner(Scenario(seed=5)).run()
    assert first.trace == again.trace
    assert first.trace_digest() == again.trace_digest()
    assert first.virtual_seconds == again.virtual_seconds
    other = ScenarioRunner(Scenario(seed=6)).run()
    assert other.trace != first.trace


def test_the_default_campaign_holds_every_invariant() -> None:
    """200 seeds with the default faults (drops, partitions, restarts, crashes, skew)."""
    failures = []
    for seed in range(CAMPAIGN_SEEDS):
        result = ScenarioRunner(Scenario(seed=seed)).run()
        if not result.ok:
            failures.append(
                f"seed {seed}: {'; '.join(map(str, result.violations))}\n"
                f"  replay: {result.scenario.replay_command()}"
            )
    assert not failures, "\n".join(failures)


def test_frame_faults_hold_too() -> None:
    """Loss, duplication and reordering of frames, which TCP never does, on top."""
    failures = [
        seed
        for seed in range(1000, 1040)
        if not ScenarioRunner(Scenario(seed=seed, faults=ALL_FAULTS)).run().ok
    ]
    assert not failures, f"failing seeds: {failures}"


def test_an_injected_lww_bug_is_caught_within_200_seeds() -> None:
    """A simulator that cannot fail proves nothing: with an LWW merge that lets the last
    arrival win a timestamp tie, some seed must fail, and its replay command names the bug."""
    for seed in range(CAMPAIGN_SEEDS):
        result = ScenarioRunner(Scenario(seed=seed, bug="lww-equal-lower-node")).run()
        if not result.ok:
            break
    else:
        pytest.fail("the injected bug went unnoticed for 200 seeds")
    kinds = {violation.invariant for violation in result.violations}
    assert kinds & {"convergence", "acked-write-lost"}
    assert "--bug lww-equal-lower-node" in result.scenario.replay_command()
    assert not ScenarioRunner(Scenario(seed=seed)).run().violations  # the bug, not the seed


def test_a_run_gives_the_checks_something_to_check() -> None:
    runner = ScenarioRunner(Scenario(seed=3, ops=120))
    result = runner.run()
    assert result.ok
    checker = runner.checker
    assert len(checker.acked) > 20
    assert checker.increments > 0
    assert checker.fencing
    assert len(checker.issued) >= 4  # the server and three clients stamped
    assert any("final m/" in line for line in result.trace)


def test_bad_scenarios_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        Scenario(seed=1, faults=frozenset({"meteor"}))
    with pytest.raises(ValueError, match="clients must be"):
        Scenario(seed=1, clients=0)
    with pytest.raises(ValueError, match="unknown bug"):
        ScenarioRunner(Scenario(seed=1, bug="nope")).run()


@pytest.mark.parametrize(
    ("seed", "ops", "found"),
    [
        (31, 10, "a change between SYNC_INIT and the map's subscription was never delivered"),
        (285, 10, "map.synced() waited on the event of a sync a reconnect had abandoned"),
    ],
)
def test_seeds_that_found_bugs_stay_fixed(seed: int, ops: int, found: str) -> None:
    result = ScenarioRunner(Scenario(seed=seed, ops=ops)).run()
    assert result.ok, f"{found}: {'; '.join(map(str, result.violations))}"
