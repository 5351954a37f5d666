"""`topgun sim`: run simulation campaigns and replay seeds."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import click

from topgun.dst.bugs import BUGS
from topgun.dst.faults import ALL_FAULTS, DEFAULT_FAULTS

if TYPE_CHECKING:
    from topgun.dst.scenario import SimResult


def _faults(value: str | None) -> frozenset[str]:
    if value is None:
        return DEFAULT_FAULTS
    if value in ("", "none"):
        return frozenset()
    chosen = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = chosen - ALL_FAULTS
    if unknown:
        known = ", ".join(sorted(ALL_FAULTS))
        raise click.BadParameter(f"unknown fault(s) {', '.join(sorted(unknown))}; known: {known}")
    return chosen


@click.command()
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="How many seeds to run (from --seed on).",
)
@click.option(
    "--seed",
    "first",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The first seed (with --seeds 1: replay exactly this one).",
)
@click.option("--clients", type=click.IntRange(min=1, max=50), default=3, show_default=True)
@click.option(
    "--ops", type=click.IntRange(min=0), default=60, show_default=True, help="Random steps per run."
)
@click.option(
    "--faults",
    "faults_text",
    default=None,
    help=f"Comma-separated faults (default: {','.join(sorted(DEFAULT_FAULTS))}; "
    f"also: {','.join(sorted(ALL_FAULTS - DEFAULT_FAULTS))}; 'none' for none).",
)
@click.option(
    "--bug",
    type=click.Choice(sorted(BUGS)),
    default=None,
    help="Inject a deliberate bug (to see the simulator catch it).",
)
@click.option(
    "--trace",
    "show_trace",
    is_flag=True,
    help="Print the trace of each failing run (of every run, with --seeds 1).",
)
@click.option("--keep-going", is_flag=True, help="Run every seed even after a failure.")
def sim(
    seeds: int,
    first: int,
    clients: int,
    ops: int,
    faults_text: str | None,
    bug: str | None,
    show_trace: bool,
    keep_going: bool,
) -> None:
    """Deterministic simulation: run the real server and clients on virtual time with
    faults chosen by each seed, and check the invariants. Exit status 1 if any run failed."""
    from rich.progress import Progress

    from topgun.dst.scenario import Scenario, ScenarioRunner

    faults = _faults(faults_text)
    logging.disable(logging.WARNING)  # faults make the code under test log; the trace tells
    failures: list[SimResult] = []
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("simulating", total=seeds)
        for seed in range(first, first + seeds):
            scenario = Scenario(seed=seed, clients=clients, ops=ops, faults=faults, bug=bug)
            result = ScenarioRunner(scenario).run()
            progress.advance(task)
            if seeds == 1 and show_trace and result.ok:
                click.echo("\n".join(result.trace))
            if not result.ok:
                failures.append(result)
                _report(result, show_trace)
                if not keep_going:
                    break
    if failures:
        click.echo(f"{len(failures)} failing seed(s)", err=True)
        raise SystemExit(1)
    click.echo(
        f"{seeds} seed(s) passed ({first}..{first + seeds - 1}, {clients} clients, "
        f"{ops} ops, faults: {','.join(sorted(faults)) or 'none'})"
    )


def _report(result: SimResult, show_trace: bool) -> None:
    scenario = result.scenario
    if show_trace:
        click.echo("\n".join(result.trace), err=True)
    click.echo(f"seed {scenario.seed} FAILED:", err=True)
    for violation in result.violations:
        click.echo(f"  {violation}", err=True)
    click.echo(f"  replay: {scenario.replay_command()}", err=True)
