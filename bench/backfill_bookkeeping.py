"""Dagster's bookkeeping in a long backfill: where a 1,000-day single-run backfill spends its time.

Each option runs in its own process, on its own sandbox (`memberflow sandbox --no-rate-limits`
in a child process), data dir and fresh SQLite Dagster instance: one backfill of the FlexPOS demo
integration (`integrations/demo_flexpos.yaml`, its history start moved back so the range has
`--days` days) through `app.runner.run_sync`, as `memberflow sync --from --to` runs it. It reads
the run's event log back and prints, per option:

- before 1st step: from calling run_sync to the first STEP_START (run creation, the planned
  events, run start);
- steps: from the first STEP_START to the last STEP_SUCCESS/FAILURE (the work, plus the
  materialization events each step writes for its days);
- after: from the last step's end until run_sync returned;
- the run's events by type, their serialised size, and how many days Dagster marks
  materialized afterwards (`get_materialized_partitions`), i.e. what the UI shows.

An option is a label, the code it runs (this tree, or `--base-ref`'s tree via `git archive`)
and environment variables:

    .venv/bin/python bench/backfill_bookkeeping.py                     # 300 customers, 1000 days
    .venv/bin/python bench/backfill_bookkeeping.py --days 200 --options before,after
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"

SUBSET = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"
BATCH = "DAGSTER_EVENT_BATCH_SIZE"


@dataclass(frozen=True)
class Option:
    label: str
    code: str  # "base": --base-ref's tree; "here": this tree
    env: dict[str, str]
    what: str


OPTIONS = {
    o.label: o
    for o in (
        Option("before", "base", {}, "the code before this change, Dagster's defaults"),
        Option("before+subset", "base", {SUBSET: "1"}, f"same, {SUBSET}=1"),
        Option("before+batch", "base", {BATCH: "1000"}, f"same, {BATCH}=1000"),
        Option(
            "before+both",
            "base",
            {SUBSET: "1", BATCH: "1000"},
            "same, both variables",
        ),
        Option("after", "here", {}, "this tree: memberflow's defaults"),
        Option(
            "after-env-off",
            "here",
            {SUBSET: "0", BATCH: "0"},
            "this tree with Dagster's defaults forced (the asset-side change alone)",
        ),
    )
}
DEFAULT_OPTIONS = "before,before+subset,before+batch,after,after-env-off"


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


@dataclass
class Figures:
    label: str
    success: bool = False
    days: int = 0
    wall_s: float = 0.0
    before_first_step_s: float = 0.0
    steps_s: float = 0.0
    after_last_step_s: float = 0.0
    events: dict[str, int] = field(default_factory=dict)
    event_bytes: int = 0
    storage_s: float = 0.0  # inside the event log's store_event / store_event_batch
    storage_writes: int = 0  # calls of either
    storage_cpu_s: float = 0.0  # this process's CPU seconds inside them
    cpu_s: float = 0.0
    days_marked: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


class StorageTimer:
    """Time spent inside the event log storage's writes (outermost calls only: a batch that
    falls back to single writes is counted once)."""

    def __init__(self, storage_class: type) -> None:
        self.storage_class = storage_class
        self.seconds = 0.0
        self.cpu_s = 0.0
        self.calls = 0
        self._depth = 0
        self._saved: dict[str, object] = {}

    def _wrap(self, original):  # noqa: ANN001, ANN202
        def timed(storage, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            self._depth += 1
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return original(storage, *args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - started
                    self.cpu_s += time.process_time() - cpu
                    self.calls += 1

        return timed

    def __enter__(self) -> StorageTimer:
        for name in ("store_event", "store_event_batch"):
            original = getattr(self.storage_class, name)
            self._saved[name] = original
            setattr(self.storage_class, name, self._wrap(original))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(self.storage_class, name, original)


# --- one option, in its own process ---------------------------------------------------------


def child(label: str, customers: int, days: int, seed: int, run_dir: Path, out: Path) -> int:
    """One backfill on a fresh sandbox, data dir and Dagster home; figures to `out` as JSON."""
    sys.path.insert(0, str(BENCH_DIR))
    import dagster as dg
    import full_sync as fs  # the sandbox helpers of the full-sync benchmark

    from app import runner
    from memberflow.config import INTEGRATIONS_DIR, load_all
    from pipelines.factory import build_definitions

    port = fs.free_port()
    url = f"http://127.0.0.1:{port}"
    sandbox = fs.start_sandbox(customers, port, seed, run_dir / "sandbox.log")
    figures = Figures(label=label, days=days)
    try:
        fs.wait_healthy(url, sandbox, 120)
        fs.prepare_environment(url, run_dir)
        (integration,) = load_all([INTEGRATIONS_DIR / "demo_flexpos.yaml"])
        end = date.today()
        start = end - timedelta(days=days - 1)
        schedule = integration.schedule.model_copy(update={"history_start": start})
        integration = integration.model_copy(update={"schedule": schedule})
        defs = build_definitions([integration])
        instance = dg.DagsterInstance.get()
        timer = StorageTimer(type(instance.event_log_storage))
        log(f"{label}: backfill {start} .. {end} ({days} days)")
        cpu = time.process_time()
        called = time.time()
        with timer:
            result = runner.run_sync(defs, integration, instance, start=start, end=end, quiet=True)
        returned = time.time()
        figures.cpu_s = time.process_time() - cpu
        figures.storage_s, figures.storage_writes = timer.seconds, timer.calls
        figures.storage_cpu_s = timer.cpu_s
        figures.success = result.success
        figures.failures = runner.failure_messages(result)
        figures.wall_s = returned - called
        windows = fs.step_windows(instance, result.run_id)
        first = min(b for b, _, _ in windows.values())
        last = max(e for _, e, _ in windows.values())
        figures.before_first_step_s = first - called
        figures.steps_s = last - first
        figures.after_last_step_s = returned - last
        kinds: Counter[str] = Counter()
        size = 0
        for entry in instance.all_logs(result.run_id):
            event = entry.dagster_event
            kinds[event.event_type_value if event else "log message"] += 1
            size += len(dg.serialize_value(entry))
        figures.events = dict(kinds.most_common())
        figures.event_bytes = size
        for spec in defs.resolve_all_asset_specs():
            if spec.partitions_def is not None:
                marked = instance.get_materialized_partitions(spec.key)
                figures.days_marked[spec.key.to_user_string()] = len(marked)
    finally:
        fs.stop_sandbox(sandbox)
    out.write_text(json.dumps(asdict(figures), indent=2))
    log(f"{label}: {'ok' if figures.success else 'FAILED'} in {figures.wall_s:.1f} s")
    return 0 if figures.success else 1


# --- the options side by side ---------------------------------------------------------------


def base_tree(ref: str, where: Path) -> Path:
    """`ref`'s committed tree, unpacked once under bench/out/ (the code before a change)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", ref], check=True, capture_output=True, text=True
    ).stdout.strip()
    tree = where / f"code-{commit[:10]}"
    if not tree.exists():
        archive = where / f"{commit[:10]}.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        archive.unlink()
    return tree


def run_option(option: Option, args: argparse.Namespace, run_dir: Path, base: Path) -> Figures:
    code = ROOT if option.code == "here" else base
    env = {k: v for k, v in os.environ.items() if k not in (SUBSET, BATCH, "DAGSTER_HOME")}
    env.update(option.env)
    env["PYTHONPATH"] = str(code)
    out = run_dir / f"{option.label}.json"
    option_dir = run_dir / option.label
    option_dir.mkdir(parents=True)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        option.label,
        "--customers",
        str(args.customers),
        "--days",
        str(args.days),
        "--seed",
        str(args.seed),
        "--run-dir",
        str(option_dir),
        "--json",
        str(out),
    ]
    log(f"option {option.label}: {option.what} (code: {code})")
    proc = subprocess.run(command, cwd=code, env=env, check=False)
    if proc.returncode != 0 and not out.exists():
        return Figures(label=option.label, failures=[f"exit code {proc.returncode}"])
    return Figures(**json.loads(out.read_text()))


def report(figures: list[Figures], args: argparse.Namespace, base_ref: str) -> list[str]:
    lines = [
        f"### {args.days}-day backfill of demo_flexpos, {args.customers} customers "
        f"({date.today()}; base {base_ref})",
        "",
        "| option | ok | wall s | CPU s | before 1st step s | steps s | after s "
        "| event log writes s (share of wall) | their CPU s (share of CPU) | writes | events "
        "| planned | materializations | event MB | days marked |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | --- |",
    ]
    for f in figures:
        total = sum(f.events.values())
        planned = f.events.get("ASSET_MATERIALIZATION_PLANNED", 0)
        mats = f.events.get("ASSET_MATERIALIZATION", 0)
        marked = ", ".join(f"{v}" for v in f.days_marked.values()) or "-"
        lines.append(
            f"| {f.label} | {'yes' if f.success else 'NO'} | {f.wall_s:.1f} | {f.cpu_s:.1f} "
            f"| {f.before_first_step_s:.1f} | {f.steps_s:.1f} | {f.after_last_step_s:.1f} "
            f"| {f.storage_s:.1f} ({f.storage_s / max(f.wall_s, 1e-9):.0%}) "
            f"| {f.storage_cpu_s:.1f} ({f.storage_cpu_s / max(f.cpu_s, 1e-9):.0%}) "
            f"| {f.storage_writes} | {total} | {planned} | {mats} "
            f"| {f.event_bytes / 2**20:.1f} | {marked} |"
        )
    lines.append("")
    for f in figures:
        option = OPTIONS[f.label]
        lines.append(f"- {f.label}: {option.what}")
        for failure in f.failures:
            lines.append(f"  - failure: {failure}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--options", default=DEFAULT_OPTIONS, help=f"of {', '.join(OPTIONS)}")
    parser.add_argument("--base-ref", default="main", help="the 'before' code (a git ref)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args.child, args.customers, args.days, args.seed, args.run_dir, args.json)
    chosen = [OPTIONS[name] for name in args.options.split(",") if name]
    run_dir = OUT_DIR / f"bookkeeping-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = base_tree(args.base_ref, OUT_DIR) if any(o.code == "base" for o in chosen) else ROOT
    figures = [run_option(option, args, run_dir, base) for option in chosen]
    text = "\n".join(report(figures, args, args.base_ref))
    print(text)
    (run_dir / "report.md").write_text(text + "\n")
    return 0 if all(f.success for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
