"""Sensor-tick benchmark: how long one evaluation of each demo integration's sensor takes.

Starts the sandbox in its own process (like bench/full_sync.py, `--no-rate-limits`), builds the
definitions of every demo integration (integrations/*.yaml), commits a source cursor for each
entity (as an extract would, so the tick makes its real "anything new?" probes), then evaluates
`<integration>_sensor` N times in a row with `dg.build_sensor_context(instance=, resources=,
cursor=)`, each tick handed the cursor the previous one left (the steady state of the daemon),
and prints p50/p95 per integration, of wall time and of this process's CPU time (less shaken
by other processes on a busy machine). Client-side pacing is off unless `--paced`: ticks evaluated
back to back would otherwise wait for the vendors' per-second limits, which a tick every five
minutes never meets. The first tick of each integration is reported apart: it is
the one that pays for what a process builds once (TLS context, tokens).

    PYTHONPATH=$PWD .venv/bin/python bench/sensor_tick.py --ticks 30
    PYTHONPATH=$PWD .venv/bin/python bench/sensor_tick.py --ticks 30 --profile out.prof

Not a test: no limit is asserted; the figures go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from bench.full_sync import (
    dagster_instance,
    free_port,
    log,
    prepare_environment,
    start_sandbox,
    stop_sandbox,
    unpaced,
    wait_healthy,
)
from memberflow import landing
from memberflow.config import INTEGRATIONS_DIR, load_all
from memberflow.mapping import available_entities
from pipelines.factory import build_definitions


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (fraction in 0..1)."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def commit_cursors(integration) -> None:
    """A cursor for each probed entity, as the last extract would have left: now."""
    now = datetime.now(UTC).replace(microsecond=0)
    entities = sorted(available_entities(integration.source.kind).members) + list(
        integration.tracking
    )
    for entity in entities:
        landing.write_source_cursor(integration.name, entity, now.isoformat())


def tick(sensor: dg.SensorDefinition, defs: dg.Definitions, instance, cursor: str | None):
    # the daemon builds only the resources a sensor requires: so does the benchmark
    resources = {key: defs.resources[key] for key in sensor.required_resource_keys}
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources=resources,
        repository_def=defs.get_repository_def(),
    )
    started, cpu = time.perf_counter(), time.process_time()
    result = sensor.evaluate_tick(context)
    return time.perf_counter() - started, time.process_time() - cpu, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=30, help="evaluations per integration")
    parser.add_argument("--customers", type=int, default=300, help="sandbox size")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", default="", help="comma-separated integration names")
    parser.add_argument("--profile", default="", help="write a cProfile of the ticks here")
    parser.add_argument(
        "--paced",
        action="store_true",
        help="keep client-side pacing on (back-to-back ticks then wait for the vendors' limits, "
        "which ticks five minutes apart never do)",
    )
    args = parser.parse_args(argv)

    run_dir = Path(tempfile.mkdtemp(prefix="sensor_tick_"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_sandbox(args.customers, port, args.seed, run_dir / "sandbox.log")
    try:
        wait_healthy(url, proc, 120)
        prepare_environment(url, run_dir)
        integrations = load_all(sorted(INTEGRATIONS_DIR.glob("*.yaml")))
        if not args.paced:
            integrations = unpaced(*integrations)
        if args.only:
            wanted = set(args.only.split(","))
            integrations = [i for i in integrations if i.name in wanted]
        defs = build_definitions(integrations)
        instance = dagster_instance()
        for integration in integrations:
            commit_cursors(integration)
        profiler = cProfile.Profile() if args.profile else None
        rows = []
        for integration in integrations:
            sensor = defs.resolve_sensor_def(f"{integration.name}_sensor")
            cursor = None
            times: list[float] = []
            cpu_times: list[float] = []
            outcome = ""
            if profiler:
                profiler.enable()
            for _ in range(args.ticks):
                seconds, cpu, result = tick(sensor, defs, instance, cursor)
                cursor = result.cursor or cursor
                times.append(seconds)
                cpu_times.append(cpu)
                outcome = "run" if result.run_requests else (result.skip_message or "skip")[:40]
            if profiler:
                profiler.disable()
            steady, steady_cpu = times[1:] or times, cpu_times[1:] or cpu_times
            rows.append(
                (
                    integration.name,
                    times[0],
                    percentile(steady, 0.5),
                    percentile(steady, 0.95),
                    percentile(steady_cpu, 0.5),
                    percentile(steady_cpu, 0.95),
                    outcome,
                )
            )
            log(f"{integration.name}: {len(times)} ticks done")
        if profiler:
            profiler.dump_stats(args.profile)
    finally:
        stop_sandbox(proc)
    print(f"sensor ticks: {args.ticks} per integration, sandbox {args.customers} customers")
    print(
        "| integration | first tick (s) | p50 (s) | p95 (s) | CPU p50 (s) | CPU p95 (s) "
        "| last outcome |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, first, p50, p95, cpu50, cpu95, outcome in rows:
        print(
            f"| {name} | {first:.3f} | {p50:.3f} | {p95:.3f} | {cpu50:.3f} | {cpu95:.3f} "
            f"| {outcome} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
