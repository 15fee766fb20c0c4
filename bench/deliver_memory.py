"""Peak memory, CPU and calls of the delivery steps alone, each in a fresh process.

The warehouse is built once from landing files already on disk (staging and model by
bench/stage_memory.py's steps, each in its own process), then for each checkout (`--tree`) a
copy of it gets a fresh Heyloyalty emulator (`memberflow sandbox`, its own process, an empty
list) and the two delivery steps run one after the other, each in a fresh child process:

- members_delivered: what the asset does (check_mapping, pull_feedback, reconcile,
  deliver_members), by the same functions, no Dagster run around it;
- events_delivered: deliver_events.
- with `--rerun`: members_delivered again with nothing changed and a full listing forced
  (full_listing_hours 0): the periodic reconciliation that reads the whole list.

Each step's peak RSS (ru_maxrss), CPU (user + system), wall seconds and API calls are printed,
and the emulator's CPU seconds and peak RSS (VmHWM) beside them: the emulator's memory is its
own, not the pipeline's. `--profile DIR` writes a cProfile of each step there.

    PYTHONPATH=$PWD .venv/bin/python bench/deliver_memory.py <data dir holding landing/>
    PYTHONPATH=$PWD .venv/bin/python bench/deliver_memory.py <data> --tree /work/main --tree .
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
STEPS = ("members", "events")
MODEL_STEPS = ("customers", "journals", "tickets", "members", "tracking_events")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mb() -> float:
    page = os.sysconf("SC_PAGE_SIZE")
    return int(Path("/proc/self/statm").read_text().split()[1]) * page / 2**20


def _cap(client, batches: int) -> None:
    """Only the first `batches` member batches and event batches go out (a bench at a size the
    machine cannot send in time): later member batches are answered `error` (no verdict, sent
    again next run) without a call; the event batch after them ends the step as an uncertain
    outcome does (the run stops sending). The core still plans, selects and reads every batch."""
    from resources.base import UncertainOutcome
    from resources.target import MemberAck

    writes, sends = client.write_members, client.send_events
    count = {"members": 0, "events": 0}

    def write_members(changes, policy):
        count["members"] += 1
        if count["members"] > batches:
            return iter([MemberAck(c.match_key, "error", reason="bench cap") for c in changes])
        return writes(changes, policy)

    def send_events(match_on, columns, rows):
        count["events"] += 1
        if count["events"] > batches:
            raise UncertainOutcome("heyloyalty", 0, "bench cap: not sent")
        return sends(match_on, columns, rows)

    client.write_members, client.send_events = write_members, send_events


def child(step: str, profile: str | None, send_batches: int = 0) -> None:
    """One delivery step in this process, on MEMBERFLOW_DATA_DIR's warehouse."""
    sys.path.insert(0, str(BENCH))
    import duckdb
    from full_sync import unpaced  # noqa: PLC0415 (bench/ is not a package)

    from assets.deliver import DeliverConfig, acknowledged_on_list, delivery_settings
    from memberflow import delivery, event_delivery, model, reconcile
    from memberflow.config import INTEGRATIONS_DIR, load_all
    from memberflow.warehouse import warehouse_config
    from pipelines.factory import feed_of, warehouse_path

    (integration,) = unpaced(*load_all([INTEGRATIONS_DIR / "demo_flexpos.yaml"]))
    feeds = [feed_of(integration)]
    path = warehouse_path(integration.list_key)
    client = integration.target.resource().client()
    if send_batches:
        _cap(client, send_batches)
    phases: dict[str, float] = {}
    figures: dict[str, object] = {}
    profiler = cProfile.Profile() if profile else None
    started, cpu0 = time.perf_counter(), _cpu()
    if profiler:
        profiler.enable()
    with duckdb.connect(str(path), config=warehouse_config(path)) as conn:
        if step in ("members", "rerun"):
            config = DeliverConfig(full_listing_hours=0.0 if step == "rerun" else 24.0)
            settings = delivery_settings(integration, f"bench-{step}", config)
            delivery.check_mapping(client, model.member_fields(feeds), model.field_types(feeds))
            pulled = delivery.pull_feedback(conn, client, settings.match_on)
            phases["after_pull"] = _rss_mb()
            found = reconcile.reconcile(conn, client, settings.match_on, config.full_listing_hours)
            phases["after_reconcile"] = _rss_mb()
            report = delivery.deliver_members(
                conn, client, settings, model.member_fields(feeds), found.missing
            )
            phases["after_deliver"] = _rss_mb()
            figures = {
                **report.counts(),
                "pulled": pulled,
                "full_listing": found.full_listing,
                "on_list": acknowledged_on_list(conn),
                **client.run_figures(),
            }
            rows = report.created + report.updated + report.removed
        else:
            settings = delivery_settings(integration, "bench-events")
            report = event_delivery.deliver_events(
                conn, client, settings, model.event_columns(feeds)
            )
            phases["after_deliver"] = _rss_mb()
            figures = report.metadata()
            rows = report.sent
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    client.close()
    out = {
        "step": step,
        "rows": int(rows),
        "wall_s": time.perf_counter() - started,
        "cpu_s": _cpu() - cpu0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "calls": client.calls.total,
        "calls_by_endpoint": client.calls.by_endpoint(),
        "rss_at": {k: round(v) for k, v in phases.items()},
        "figures": {k: v for k, v in figures.items() if not isinstance(v, list)},
    }
    print("RESULT " + json.dumps(out, default=str), flush=True)


def proc_figures(pid: int) -> tuple[float, float]:
    """CPU seconds and peak RSS (MB) of another process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cpu, peak


def build_warehouse(data: Path, work: Path) -> None:
    """Staging and model on `data`'s landing files into `work`, each step a fresh process."""
    (work / "landing").symlink_to(data.resolve() / "landing")
    env = dict(os.environ, MEMBERFLOW_DATA_DIR=str(work))
    for step in MODEL_STEPS:
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(BENCH / "stage_memory.py"), "--child", step],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode:
            raise RuntimeError(f"{step}: {proc.stderr.strip().splitlines()[-3:]}")
        print(f"built {step} in {time.perf_counter() - started:.0f} s", flush=True)


def run_tree(
    tree: Path, built: Path, steps: list[str], profile: Path | None, send_batches: int = 0
) -> list[dict]:
    sys.path.insert(0, str(BENCH))
    from full_sync import free_port, start_sandbox, stop_sandbox, wait_healthy  # noqa: PLC0415

    from sandbox.credentials import SANDBOX_ENV

    work = Path(tempfile.mkdtemp(prefix="deliver_memory-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sandbox = start_sandbox(100, port, 42, work / "sandbox.log", lean=True)
    try:
        wait_healthy(url, sandbox, 300)
        shutil.copytree(built / "warehouse", work / "warehouse", symlinks=True)
        env = dict(
            os.environ,
            **SANDBOX_ENV,
            PYTHONPATH=str(tree),
            MEMBERFLOW_DATA_DIR=str(work),
            MEMBERFLOW_SANDBOX_URL=url,
        )
        results = []
        for step in steps:
            before = proc_figures(sandbox.pid)
            args = [sys.executable, __file__, "--child", step]
            if send_batches:
                args += ["--send-batches", str(send_batches)]
            if profile:
                profile.mkdir(parents=True, exist_ok=True)
                args += ["--profile", str(profile / f"{tree.name}-{step}.prof")]
            proc = subprocess.run(
                args, env=env, cwd=tree, capture_output=True, text=True, check=False
            )
            after = proc_figures(sandbox.pid)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                tail = " / ".join(proc.stderr.strip().splitlines()[-5:])
                print(f"{tree}  {step:8} FAILED: {tail}", flush=True)
                results.append({"step": step, "failed": tail})
                break
            result = json.loads(line[len("RESULT ") :])
            result["sandbox_cpu_s"] = after[0] - before[0]
            result["sandbox_peak_rss_mb"] = after[1]
            results.append(result)
            print(
                f"{tree}  {step:8} rows {result['rows']:>10,}  wall {result['wall_s']:7.1f} s  "
                f"cpu {result['cpu_s']:7.1f} s  peak RSS {result['peak_rss_mb']:7,.0f} MB  "
                f"calls {result['calls']:>6,}  | sandbox cpu {result['sandbox_cpu_s']:6.1f} s  "
                f"peak {result['sandbox_peak_rss_mb']:6,.0f} MB",
                flush=True,
            )
            print("  " + json.dumps({k: result[k] for k in ("rss_at", "figures")}), flush=True)
        return results
    finally:
        stop_sandbox(sandbox)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", type=Path, help="a data dir holding landing/")
    parser.add_argument("--tree", type=Path, action="append", help="checkout(s) to run")
    parser.add_argument("--steps", default=",".join(STEPS), help="members,events[,rerun]")
    parser.add_argument("--built", type=Path, help="a data dir with the warehouse built already")
    parser.add_argument("--keep-built", type=Path, help="build the warehouse here and keep it")
    parser.add_argument("--profile", type=Path, help="write a cProfile of each step here")
    parser.add_argument(
        "--send-batches", type=int, default=0, help="send only this many batches (0: all)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, str(args.profile) if args.profile else None, args.send_batches)
        return
    built = args.built
    scratch = None
    if built is None:
        built = args.keep_built or Path(tempfile.mkdtemp(prefix="deliver_memory-built-"))
        scratch = None if args.keep_built else built
        built.mkdir(parents=True, exist_ok=True)
        build_warehouse(args.data, built)
    try:
        for tree in args.tree or [Path.cwd()]:
            print(f"-- {tree.resolve()}", flush=True)
            run_tree(tree.resolve(), built, args.steps.split(","), args.profile, args.send_batches)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
