"""Dagster's own cost of a run on this machine: in-process runs of a job of N assets that do
nothing (each returns MaterializeResult with one metadata entry, as memberflow's steps do), on a
SQLite instance in a temp dir like the benchmark's. What a no-change run of the list job (10 steps)
cannot go below, and what running only the steps with work (e.g. 4) would save.

    PYTHONPATH=$PWD .venv/bin/python bench/dagster_floor.py --steps 10 4 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import dagster as dg


def job_of(steps: int) -> tuple[dg.Definitions, str]:
    assets = []
    previous: dg.AssetKey | None = None
    for n in range(steps):
        deps = [previous] if previous is not None else []

        @dg.asset(name=f"step_{n}", deps=deps)
        def _step() -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata={"rows": 0})

        assets.append(_step)
        previous = dg.AssetKey(f"step_{n}")
    name = f"noop_{steps}"
    return dg.Definitions(assets=assets, jobs=[dg.define_asset_job(name)]), name


def measure(instance: dg.DagsterInstance, steps: int) -> tuple[float, float]:
    defs, name = job_of(steps)
    job = defs.resolve_job_def(name)
    wall, cpu = time.perf_counter(), time.process_time()
    result = job.execute_in_process(instance=instance)
    assert result.success
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 4])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        with dg.DagsterInstance.local_temp(home) as instance:
            measure(instance, 1)  # warm imports
            figures: dict[int, list[tuple[float, float]]] = {s: [] for s in args.steps}
            for _ in range(args.runs):  # alternating
                for steps in args.steps:
                    figures[steps].append(measure(instance, steps))
    print("| steps | wall median (s) | CPU median (s) | CPU per step (s) |")
    print("| ---: | ---: | ---: | ---: |")
    for steps, runs in figures.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"| {steps} | {wall:.2f} | {cpu:.2f} | {cpu / steps:.3f} |")


if __name__ == "__main__":
    main()
