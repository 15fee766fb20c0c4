"""Definitions-load benchmark (issue 12): N integrations in one code location.

For each N (default 50 and 200) writes N integration files into a temporary folder (copies of
the demo files, `integrations/*.yaml`, round-robin, each copy `bNNN_<demo name>` with its own
target list: Heyloyalty list 5000+k, Flexmail account 300000+k, Axle account `acc_demo_k`,
Cyberimpact account `Centre sportif démo k`), points MEMBERFLOW_INTEGRATIONS at it and measures:

(a) the import of `pipelines.definitions` in a fresh process, plus the resolution of every job
    (what the webserver and `definitions validate` also do), wall and CPU time, with the counts
    of assets, jobs, sensors and schedules;
(b) `dagster definitions validate -m pipelines.definitions` (the executable next to this
    Python), wall time and its CPU time;
(c) sensor ticks: the sandbox is started in its own process (like bench/sensor_tick.py), a
    source cursor is committed for every entity, and each generated integration's
    `<name>_sensor` is evaluated `--ticks` times in a row, each tick handed the cursor the
    previous one left; p50/p95 over the steady ticks (all but each sensor's first) of wall and
    CPU time. Client pacing is off (ticks five minutes apart never wait for it).

    PYTHONPATH=$PWD .venv/bin/python bench/definitions_load.py --counts 50,200 --ticks 3

`--before REF` measures (a) and (b) also on the tree of git revision REF (extracted with
`git archive` into the run's folder), alternating REF and the working tree `--repeat` times on
the same generated files, so that both sides see the same machine load:

    PYTHONPATH=$PWD .venv/bin/python bench/definitions_load.py --counts 200 --ticks 0 \
        --before 9b4fcde --repeat 3

Not a test: no limit is asserted; the figures go to bench/RESULTS.md by hand. On a machine
shared with other work, the CPU figures are the steadier ones.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from memberflow.config import INTEGRATIONS_DIR

REPO = Path(__file__).resolve().parents[1]
_MEASURE_IMPORT = """
import json, time, warnings
warnings.simplefilter("ignore")
wall, cpu = time.perf_counter(), time.process_time()
import pipelines.definitions as module
imported = (time.perf_counter() - wall, time.process_time() - cpu)
module.defs.resolve_all_job_defs()
resolved = (time.perf_counter() - wall, time.process_time() - cpu)
defs = module.defs
print(json.dumps({
    "import_s": imported[0], "import_cpu_s": imported[1],
    "resolved_s": resolved[0], "resolved_cpu_s": resolved[1],
    "assets": len(defs.resolve_asset_graph().get_all_asset_keys()),
    "jobs": len(list(defs.jobs)), "sensors": len(list(defs.sensors)),
    "schedules": len(list(defs.schedules)),
}))
"""


def generate_integrations(count: int, folder: Path) -> list[Path]:
    """`count` integration files in `folder`: the demo files, copied round-robin, each copy on
    lists of its own (integrations of one copy share lists as the demo ones do)."""
    folder.mkdir(parents=True, exist_ok=True)
    demos = sorted(INTEGRATIONS_DIR.glob("*.yaml"))
    written: list[Path] = []
    for index in range(count):
        copy, demo = divmod(index, len(demos))
        text = demos[demo].read_text(encoding="utf-8")
        text = text.replace('list_id: "4711"', f'list_id: "{5000 + copy}"')
        text = text.replace("account: acc_demo", f"account: acc_demo_{copy}")
        text = text.replace("account: Centre sportif démo", f"account: Centre sportif démo {copy}")
        text = text.replace("${MEMBERFLOW_FLEXMAIL_ACCOUNT:-204518}", str(300000 + copy))
        path = folder / f"b{copy:03d}_{demos[demo].stem}.yaml"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _env(folder: Path, data_dir: Path, repo: Path = REPO) -> dict[str, str]:
    """A child's environment: the generated files, a data dir and a Dagster home of its own,
    the code of `repo` (this checkout, or the `--before` tree)."""
    home = data_dir.parent / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(repo / "dagster.yaml", home / "dagster.yaml")
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MEMBERFLOW_INTEGRATIONS": str(folder),
        "MEMBERFLOW_DATA_DIR": str(data_dir),
        "PYTHONPATH": str(repo),
        "PYTHONWARNINGS": "ignore",
    }


def extract_revision(ref: str, into: Path) -> Path:
    """The tree of git revision `ref` of this repository, written to `into`."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure_import(folder: Path, data_dir: Path, repo: Path = REPO) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE_IMPORT],
        env=_env(folder, data_dir, repo),
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_validate(folder: Path, data_dir: Path, repo: Path = REPO) -> dict[str, float]:
    dagster = Path(sys.executable).parent / "dagster"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "pipelines.definitions"],
        env=_env(folder, data_dir, repo),
        cwd=repo,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"dagster definitions validate failed:\n{done.stderr[-3000:]}")
    return {"validate_s": wall, "validate_cpu_s": cpu}


def measure_ticks(folder: Path, run_dir: Path, ticks: int, customers: int) -> dict[str, float]:
    """Each generated sensor ticked `ticks` times against the sandbox (bench/sensor_tick.py)."""
    from bench.full_sync import (
        dagster_instance,
        free_port,
        prepare_environment,
        start_sandbox,
        stop_sandbox,
        unpaced,
        wait_healthy,
    )
    from bench.sensor_tick import commit_cursors, percentile, tick
    from memberflow.config import load_all
    from pipelines.factory import build_definitions

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_sandbox(customers, port, 42, run_dir / "sandbox.log")
    try:
        wait_healthy(url, proc, 120)
        prepare_environment(url, run_dir)
        integrations = unpaced(*load_all(sorted(folder.glob("*.yaml"))))
        defs = build_definitions(integrations)
        instance = dagster_instance()
        walls, cpus, firsts, outcomes = [], [], [], {}
        for integration in integrations:
            commit_cursors(integration)
            sensor = defs.resolve_sensor_def(f"{integration.name}_sensor")
            cursor = None
            for index in range(ticks):
                wall, cpu = time.perf_counter(), time.process_time()
                try:
                    _, _, result = tick(sensor, defs, instance, cursor)
                except Exception as exc:  # e.g. a sandbox without the generated list: counted
                    result, outcome = None, f"error: {type(exc).__name__}"
                else:
                    cursor = result.cursor or cursor
                    outcome = "run" if result.run_requests else (result.skip_message or "skip")
                (firsts if index == 0 else walls).append(time.perf_counter() - wall)
                if index:
                    cpus.append(time.process_time() - cpu)
                outcomes[outcome[:50]] = outcomes.get(outcome[:50], 0) + 1
    finally:
        stop_sandbox(proc)
    return {
        "ticks": len(walls) + len(firsts),
        "first_tick_p50_s": percentile(firsts, 0.5),
        "tick_p50_s": percentile(walls, 0.5),
        "tick_p95_s": percentile(walls, 0.95),
        "tick_cpu_p50_s": percentile(cpus, 0.5),
        "tick_cpu_p95_s": percentile(cpus, 0.95),
        "outcomes": outcomes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="50,200", help="integration counts, comma-separated")
    parser.add_argument("--ticks", type=int, default=3, help="evaluations per sensor (0: none)")
    parser.add_argument("--customers", type=int, default=100, help="sandbox size")
    parser.add_argument("--no-validate", action="store_true", help="skip `definitions validate`")
    parser.add_argument("--ticks-only", action="store_true", help="skip (a) and (b)")
    parser.add_argument("--before", metavar="REF", help="also measure git revision REF")
    parser.add_argument("--repeat", type=int, default=1, help="alternations with --before")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    rows = []
    for count in (int(c) for c in args.counts.split(",")):
        run_dir = Path(tempfile.mkdtemp(prefix=f"definitions_load_{count}_"))
        folder = run_dir / "integrations"
        generate_integrations(count, folder)
        if args.before and not args.ticks_only:
            rows += compare(args, count, folder, run_dir)
            if not args.ticks:
                continue
        row: dict[str, object] = {"integrations": count}
        if not args.ticks_only:
            row.update(measure_import(folder, run_dir / "data"))
            print(json.dumps(row), flush=True)
        if not (args.no_validate or args.ticks_only):
            row.update(measure_validate(folder, run_dir / "data"))
            print(json.dumps(row), flush=True)
        if args.ticks:
            row.update(measure_ticks(folder, run_dir, args.ticks, args.customers))
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(json.dumps(rows, indent=2))
    return 0


def compare(args: argparse.Namespace, count: int, folder: Path, run_dir: Path) -> list[dict]:
    """(a) and (b) on the `--before` tree and on this one, alternately, each with a data dir
    and Dagster home of its own (both warmed by the same steps), then the medians."""
    trees = {"before": extract_revision(args.before, run_dir / "before"), "after": REPO}
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.repeat):
        for name, repo in trees.items():
            data_dir = run_dir / name / "data" if name == "after" else run_dir / "before_data"
            row = {"integrations": count, "tree": name, **measure_import(folder, data_dir, repo)}
            if not args.no_validate:
                row.update(measure_validate(folder, data_dir, repo))
            print(json.dumps(row), flush=True)
            measured[name].append(row)
    out = []
    for name, found in measured.items():
        median = {"integrations": count, "tree": name, "runs": len(found)}
        for key in found[0]:
            if key not in median:
                values = sorted(f[key] for f in found)
                median[key] = values[len(values) // 2]
        out.append(median)
    return out


if __name__ == "__main__":
    sys.exit(main())
