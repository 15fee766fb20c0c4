"""Peak memory of staging and the model alone, on landing files already on disk.

Each step (stage customers, journals, tickets; build members; build tracking events) runs in a
fresh child process against one fresh warehouse, so each step's peak RSS (VmHWM) is its own;
CPU seconds (user + system) and wall seconds are printed beside it. The landing files come from
a kept full-sync run (`bench/full_sync.py --keep`): no sandbox, no API calls.

    PYTHONPATH=$PWD .venv/bin/python bench/stage_memory.py bench/out/<run>/data
    PYTHONPATH=$PWD .venv/bin/python bench/stage_memory.py <data> --tree /work/main  # other code

`--tree` runs the children on another checkout's code (a before/after pair in one script:
`--tree A --tree B` alternates them, each on its own copy of the warehouse).
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
from pathlib import Path

STEPS = ("customers", "journals", "tickets", "members", "tracking_events")


def child(step: str) -> None:
    """One step in this process, on MEMBERFLOW_DATA_DIR's landing files and warehouse."""
    from memberflow import model, staging
    from memberflow.config import INTEGRATIONS_DIR, load_all
    from pipelines.factory import feed_of, warehouse_path

    try:
        from memberflow.warehouse import warehouse_config
    except ImportError:  # code from before memberflow/warehouse.py
        from pipelines.factory import warehouse_config as _old

        def warehouse_config(_path=None):
            return _old()

    import duckdb

    from assets.model import list_segments, with_settings
    from assets.stage import stage_settings

    (integration,) = load_all([INTEGRATIONS_DIR / "demo_flexpos.yaml"])
    feed = feed_of(integration)
    path = warehouse_path(integration.list_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = warehouse_config(path)
    started, cpu0 = time.perf_counter(), _cpu()
    with duckdb.connect(str(path), config=config) as conn:
        settings = stage_settings(integration, "bench")
        if step == "customers":
            rows = staging.stage_members(conn, feed.members, settings).staged
        elif step in ("journals", "tickets"):
            (mapping,) = [m for m in feed.events if m.entity == step]
            rows = staging.stage_events(conn, mapping, settings).staged
        elif step == "members":
            feeds = with_settings([integration], [feed])
            segments = list_segments([integration])
            today = None
            if segments:
                from assets.model import resolve_today

                today = resolve_today(None, integration.timezone)
            rows = model.build_members(conn, feeds, segments, today, integration.timezone)[
                "members"
            ]
        else:
            feeds = with_settings([integration], [feed])
            rows = model.build_tracking_events(conn, feeds)["events"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "step": step,
        "rows": int(rows),
        "wall_s": time.perf_counter() - started,
        "cpu_s": _cpu() - cpu0,
        "peak_rss_mb": peak,
        "config": config,
    }
    print("RESULT " + json.dumps(out), flush=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_tree(tree: Path, data: Path, steps: list[str]) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="stage_memory-"))
    try:
        (work / "landing").symlink_to(data.resolve() / "landing")
        env = dict(os.environ, PYTHONPATH=str(tree), MEMBERFLOW_DATA_DIR=str(work))
        results = []
        for step in steps:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", step],
                env=env,
                cwd=tree,
                capture_output=True,
                text=True,
                check=False,
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                tail = proc.stderr.strip().splitlines()[-3:]
                results.append({"step": step, "failed": " / ".join(tail)})
                print(f"{tree}  {step:16} FAILED: {' / '.join(tail)}", flush=True)
                break
            result = json.loads(line[len("RESULT ") :])
            results.append(result)
            print(
                f"{tree}  {step:16} rows {result['rows']:>10,}  wall {result['wall_s']:7.1f} s  "
                f"cpu {result['cpu_s']:7.1f} s  peak RSS {result['peak_rss_mb']:7,.0f} MB",
                flush=True,
            )
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", type=Path, help="a data dir holding landing/")
    parser.add_argument("--tree", type=Path, action="append", help="checkout(s) to run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    trees = args.tree or [Path.cwd()]
    steps = args.steps.split(",")
    for round_no in range(args.rounds):
        for tree in trees:
            print(f"-- round {round_no + 1}: {tree}", flush=True)
            run_tree(tree, args.data, steps)


if __name__ == "__main__":
    main()
