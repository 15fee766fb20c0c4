"""Full-sync benchmark: the FlexPOS demo integration against a sandbox of N generated customers.

The sandbox runs in its own process (`memberflow sandbox --no-rate-limits`), so the emulator
does not share the pipeline's GIL. Two Dagster runs on a fresh data dir and Dagster instance:

1. the initial import: a backfill over the last 365 days (customers, journals, tickets);
2. two incremental runs with nothing changed at the source (X2: calls and time should collapse);
3. a 1%-changed run: 1% of the customers changed at the till (the sandbox's batch control route)
   just before it, so its cost can be set against the no-change runs (O(changes), not O(list)).

Every run's target calls are also shown by purpose (fields, count, pull, guard reads, import,
read-back, upsert, lookups, events: `api_calls_by_purpose` of the delivery step), one column a run.

Then a mapping baseline over the landed customer Parquet: a naive per-record Python loop
(json.loads + dict walking) against memberflow's DuckDB mapping SQL (`mapping.rule_sql`).

    .venv/bin/python bench/full_sync.py --customers 2000      # quick check
    .venv/bin/python bench/full_sync.py                       # 100000 customers
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import faulthandler
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import httpx
import pyarrow.parquet as pq

from app import runner
from memberflow.config import INTEGRATIONS_DIR, Integration, load_all
from memberflow.mapping import EntityMapping, FieldRule, rule_sql
from pipelines.factory import build_definitions, feed_of
from sandbox.credentials import SANDBOX_ENV

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
INTEGRATION_FILE = INTEGRATIONS_DIR / "demo_flexpos.yaml"
STAGES = ("extract", "stage", "model", "deliver")
STAGE_TAG = "memberflow/stage"


_ROW_KEYS = ("run_records_landed", "run_rows_staged", "sent_this_run", "dagster/row_count")


def unpaced(*integrations: Integration) -> list[Integration]:
    """The integrations with client-side pacing off (`requests_per_second: 0`), as the sandbox
    runs with --no-rate-limits: the benchmark measures memberflow, not the vendors' limits."""
    out = []
    for integration in integrations:
        update = {}
        for role in ("source", "target"):
            section = getattr(integration, role)
            if "requests_per_second" in type(section).model_fields:
                update[role] = section.model_copy(update={"requests_per_second": 0})
        out.append(integration.model_copy(update=update))
    return out


def log(message: str) -> None:
    """Progress on stderr, so a backgrounded run can be followed with `tail -f`."""
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --- the sandbox in its own process -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: the sandbox gets SIGTERM if this process dies without reaching its `finally`."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def sandbox_command(customers: int, port: int, seed: int, lean: bool = False) -> list[str]:
    script = Path(sys.executable).with_name("memberflow")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    return [
        *base,
        "sandbox",
        "--customers",
        str(customers),
        "--port",
        str(port),
        "--seed",
        str(seed),
        "--no-rate-limits",
        *(["--lean"] if lean else []),
    ]


def start_sandbox(
    customers: int, port: int, seed: int, log_path: Path, lean: bool = False
) -> subprocess.Popen:
    command = sandbox_command(customers, port, seed, lean)
    log(f"starting sandbox: {' '.join(command)}")
    with log_path.open("wb") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until `GET /_sandbox/health` answered 200; raises after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"sandbox exited with {proc.returncode} before becoming healthy")
        try:
            if httpx.get(f"{url}/_sandbox/health", timeout=2.0).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"sandbox not healthy at {url} after {timeout:.0f} s")


def stop_sandbox(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly on SIGINT
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class ProcStats:
    """CPU seconds and peak RSS of another process, from /proc (Linux)."""

    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0


def proc_stats(pid: int) -> ProcStats:
    stats = ProcStats()
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        stats.cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                stats.peak_rss_mb = int(line.split()[1]) / 1024
    return stats


class RssSampler:
    """Resident memory of this process every 50 ms (cheap: /proc/self/statm), so the peak can be
    attributed to the step that reached it; ru_maxrss only gives the peak of the whole process."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        statm = Path("/proc/self/statm")
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError, IndexError):
                pages = int(statm.read_text().split()[1])
                self.samples.append((time.time(), pages * self._page))
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        if Path("/proc/self/statm").exists():
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def peak_mb(self, start: float, end: float) -> float:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside, default=0) / 2**20


def self_stats() -> ProcStats:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return ProcStats(cpu_s=usage.ru_utime + usage.ru_stime, peak_rss_mb=usage.ru_maxrss / 1024)


# --- the pipeline runs ------------------------------------------------------------------------


def prepare_environment(sandbox_url: str, run_dir: Path) -> None:
    """Like app.demo.prepare_environment, plus a throw-away Dagster home."""
    os.environ["MEMBERFLOW_SANDBOX_URL"] = sandbox_url
    os.environ["MEMBERFLOW_DATA_DIR"] = str(run_dir / "data")
    os.environ["DAGSTER_HOME"] = str(run_dir / "dagster_home")
    for name, value in SANDBOX_ENV.items():
        os.environ.setdefault(name, value)
    runner.ensure_dagster_home()


def dagster_instance() -> dg.DagsterInstance:
    """The instance in DAGSTER_HOME, with the project's dagster.yaml."""
    return dg.DagsterInstance.get()


@dataclass
class StepFigure:
    asset: str
    stage: str
    seconds: float
    rows: int
    peak_rss_mb: float
    api_calls: int
    ok: bool


@dataclass
class RunFigures:
    label: str
    success: bool
    wall_s: float
    cpu_s: float
    sandbox_cpu_s: float
    peak_rss_mb: float
    steps: list[StepFigure] = field(default_factory=list)
    source_calls: int = 0
    target_calls: int = 0
    # the target's calls by what they were for (pull, guard read, import, read-back, upsert...)
    target_purposes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def stage_seconds(self, stage: str) -> float:
        return sum(s.seconds for s in self.steps if s.stage == stage)

    def stage_rows(self, stage: str) -> int:
        return sum(s.rows for s in self.steps if s.stage == stage)

    @property
    def overhead_s(self) -> float:
        return self.wall_s - sum(s.seconds for s in self.steps)


def asset_stages(defs: dg.Definitions) -> dict[str, tuple[str, str]]:
    """Step key -> (asset key string, memberflow stage tag)."""
    out = {}
    for spec in defs.resolve_all_asset_specs():
        step_key = "__".join(spec.key.path)
        out[step_key] = (spec.key.to_user_string(), spec.tags.get(STAGE_TAG, "other"))
    return out


def step_windows(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float, bool]]:
    """Step key -> (STEP_START time, STEP_SUCCESS/FAILURE time, succeeded), epoch seconds."""
    kinds = {
        dg.DagsterEventType.STEP_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.STEP_FAILURE,
    }
    starts: dict[str, float] = {}
    out: dict[str, tuple[float, float, bool]] = {}
    for entry in instance.all_logs(run_id, of_type=kinds):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.step_key in starts:
            ok = event.event_type == dg.DagsterEventType.STEP_SUCCESS
            out[event.step_key] = (starts[event.step_key], entry.timestamp, ok)
    return out


def run_once(
    label: str,
    defs: dg.Definitions,
    integration: Integration,
    instance: dg.DagsterInstance,
    sandbox_pid: int,
    run_config: dict[str, Any],
    rss: RssSampler,
    **window: date,
) -> RunFigures:
    log(f"run: {label} ...")
    before, sandbox_before = self_stats(), proc_stats(sandbox_pid)
    started = time.perf_counter()
    result = runner.run_sync(defs, integration, instance, run_config=run_config, **window)
    wall = time.perf_counter() - started
    after, sandbox_after = self_stats(), proc_stats(sandbox_pid)
    summary = runner.summarise(result)
    figures = RunFigures(
        label=label,
        success=result.success,
        wall_s=wall,
        cpu_s=after.cpu_s - before.cpu_s,
        sandbox_cpu_s=sandbox_after.cpu_s - sandbox_before.cpu_s,
        peak_rss_mb=after.peak_rss_mb,
        failures=runner.failure_messages(result),
        summary={k: _jsonable(v) for k, v in summary.assets.items()},
    )
    stages = asset_stages(defs)
    for step_key, (begin, end, ok) in sorted(step_windows(instance, result.run_id).items()):
        asset, stage = stages.get(step_key, (step_key, "other"))
        meta = summary.assets.get(asset, {})
        figures.steps.append(
            StepFigure(
                asset=asset,
                stage=stage,
                seconds=end - begin,
                peak_rss_mb=rss.peak_mb(begin, end),
                rows=next(  # this run's rows: run totals before the table's row count
                    (int(meta[k] or 0) for k in _ROW_KEYS if k in meta),
                    0,
                ),
                api_calls=int(meta.get("api_calls", 0) or 0),
                ok=ok,
            )
        )
    figures.source_calls = sum(s.api_calls for s in figures.steps if s.stage == "extract")
    figures.target_calls = sum(s.api_calls for s in figures.steps if s.stage == "deliver")
    figures.target_purposes = target_purposes(
        {s.asset: summary.assets.get(s.asset, {}) for s in figures.steps if s.stage == "deliver"}
    )
    log(f"run: {label} {'ok' if result.success else 'FAILED'} in {wall:.1f} s")
    return figures


def target_purposes(metas: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The delivery steps' calls by purpose (`api_calls_by_purpose`, the members step), else by
    endpoint (`api_calls_this_run/<endpoint>`), named `<asset>: <purpose>` beyond the members
    step; what no breakdown covers is `<asset>: (unlabelled)`."""
    out: dict[str, int] = {}
    for asset, meta in metas.items():
        name = asset.rsplit("/", 1)[-1]
        prefix = "" if name == "members_delivered" else f"{name}: "
        split = meta.get("api_calls_by_purpose")
        if not isinstance(split, dict):
            split = {
                key.split("/", 1)[1]: value
                for key, value in meta.items()
                if key.startswith("api_calls_this_run/") and isinstance(value, int)
            }
        for purpose, n in split.items():
            out[f"{prefix}{purpose}"] = out.get(f"{prefix}{purpose}", 0) + int(n)
        rest = int(meta.get("api_calls", 0) or 0) - sum(int(n) for n in split.values())
        if rest:
            out[f"{name}: (unlabelled)"] = rest
    return out


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if isinstance(v, int | float | str | bool | dict)}


def change_customers(url: str, customers: int, percent: float) -> int:
    """Change `percent` of the sandbox's customers at the till (spread evenly over the ids the
    generator gives, 1000 onwards), in batches through the control route; returns how many."""
    step = max(1, round(100 / percent)) if percent > 0 else 0
    ids = list(range(1000, 1000 + customers, step)) if step else []
    stamp = f"{datetime.now():%H%M%S}"
    for start in range(0, len(ids), 1000):
        batch = [{"CustomerId": i, "City": f"Flyttet {stamp}"} for i in ids[start : start + 1000]]
        response = httpx.post(
            f"{url}/_sandbox/flexpos/customers/batch", json={"customers": batch}, timeout=60
        )
        response.raise_for_status()
    log(f"changed {len(ids):,} customers at the sandbox")
    return len(ids)


# --- mapping baseline: naive Python loop vs DuckDB mapping SQL --------------------------------


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def walk_path(record: Any, path: str, separator: str) -> str | None:
    """A dot-path read the way `mapping.json_path_sql` reads it: arrays on the way are walked
    and their values joined by the option separator."""
    values, crossed = [record], False
    for part in path.split("."):
        step = []
        for value in values:
            if isinstance(value, list):
                crossed = True
                step += [v.get(part) for v in value if isinstance(v, dict)]
            elif isinstance(value, dict):
                step.append(value.get(part))
        values = [v for v in step if v is not None]
    if not values:
        return None
    if not crossed and len(values) == 1:
        return _text(values[0])
    joined = separator.join(t for t in map(_text, values) if t is not None)
    return joined or None


def map_python(payloads: list[str], rules: tuple[FieldRule, ...], separator: str) -> list[dict]:
    out = []
    for payload in payloads:
        record = json.loads(payload)
        out.append(
            {
                r.target: (r.value if r.path is None else walk_path(record, r.path, separator))
                for r in rules
            }
        )
    return out


def mapping_baseline(files: list[str], mapping: EntityMapping, separator: str) -> dict[str, Any]:
    """Both sides read the same landing Parquet and produce every mapped field of every row."""
    log(f"mapping baseline over {len(files)} landing file(s) ...")
    started = time.perf_counter()
    payloads = pq.read_table(files, columns=["payload"]).column("payload").to_pylist()
    python_rows = map_python(payloads, mapping.fields, separator)
    python_s = time.perf_counter() - started

    cols = ", ".join(
        f'{rule_sql(r, "payload", None, separator)} AS "{r.target}"' for r in mapping.fields
    )
    file_list = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
    with duckdb.connect() as conn:
        started = time.perf_counter()
        table = conn.execute(f"SELECT {cols} FROM read_parquet({file_list})").to_arrow_table()
        duckdb_s = time.perf_counter() - started
        threads = conn.execute("SELECT current_setting('threads')").fetchall()[0][0]
    rows = len(python_rows)
    sample = min(rows, 2000)  # same files, same order: compare the first rows field by field
    duck_sample = table.slice(0, sample).to_pylist()
    cells = sample * len(mapping.fields)
    agree = sum(
        python_rows[i][r.target] == duck_sample[i][r.target]
        for i in range(sample)
        for r in mapping.fields
    )
    return {
        "rows": rows,
        "fields": len(mapping.fields),
        "python_s": python_s,
        "duckdb_s": duckdb_s,
        "python_rows_per_s": rows / python_s if python_s else 0.0,
        "duckdb_rows_per_s": table.num_rows / duckdb_s if duckdb_s else 0.0,
        "duckdb_threads": threads,
        "agreement": agree / cells if cells else 1.0,
    }


# --- the report -------------------------------------------------------------------------------


def _stage_order(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f}" if seconds > 0 and rows else "-"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:,.1f}x" if b else "inf"


def purpose_table(runs: list[RunFigures]) -> list[str]:
    """Target calls by purpose, one column per run."""
    names = sorted({name for run in runs for name in run.target_purposes})
    if not names:
        return []
    heads = ["initial", "no-change #1", "no-change #2", "changed"][: len(runs)]
    heads += [f"run {i}" for i in range(len(heads) + 1, len(runs) + 1)]
    lines = [
        "### target calls by purpose (delivery steps)",
        "",
        "| purpose | " + " | ".join(heads) + " |",
        "| --- " + "| ---: " * len(runs) + "|",
    ]
    for name in names:
        cells = " | ".join(f"{run.target_purposes.get(name, 0):,}" for run in runs)
        lines.append(f"| {name} | {cells} |")
    totals = " | ".join(f"**{sum(run.target_purposes.values()):,}**" for run in runs)
    lines += [f"| **all** | {totals} |", ""]
    return lines


def report(
    customers: int,
    sandbox_start_s: float,
    sandbox: ProcStats,
    runs: list[RunFigures],
    mapping: dict[str, Any] | None,
) -> list[str]:
    lines = [f"## memberflow full sync, {customers:,} customers (demo_flexpos -> heyloyalty)", ""]
    lines.append(f"sandbox: generated and healthy in {sandbox_start_s:.1f} s (separate process)")
    lines.append("")
    for run in runs:
        lines += [
            f"### {run.label}: {'ok' if run.success else 'FAILED'}, wall {run.wall_s:.1f} s, "
            f"pipeline CPU {run.cpu_s:.1f} s, sandbox CPU {run.sandbox_cpu_s:.1f} s",
            "",
            "| stage | asset | seconds | rows | rows/s | API calls | peak RSS MB |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for step in sorted(run.steps, key=lambda s: (_stage_order(s.stage), s.asset)):
            flag = "" if step.ok else " (FAILED)"
            lines.append(
                f"| {step.stage} | {step.asset}{flag} | {step.seconds:.2f} | {step.rows:,} | "
                f"{_rate(step.rows, step.seconds)} | {step.api_calls:,} | "
                f"{step.peak_rss_mb:,.0f} |"
            )
        for stage in STAGES:
            secs, rows = run.stage_seconds(stage), run.stage_rows(stage)
            calls = sum(s.api_calls for s in run.steps if s.stage == stage)
            lines.append(
                f"| **{stage}** | (all) | **{secs:.2f}** | {rows:,} | {_rate(rows, secs)} | "
                f"{calls:,} | |"
            )
        lines.append(
            f"| other | Dagster run overhead (wall - steps) | {run.overhead_s:.2f} | | | | |"
        )
        lines.append("")
        lines.append(
            f"API calls: source (flexpos) {run.source_calls:,}, "
            f"target (heyloyalty) {run.target_calls:,}"
        )
        for message in run.failures:
            lines.append(f"error: {message}")
        lines.append("")
    lines += purpose_table(runs)
    full = runs[0]
    rest = [r for r in runs[1:] if r.label.startswith("no-change")]
    changed = [r for r in runs[1:] if r not in rest]
    lines += [
        f"peak RSS: pipeline process {max(r.peak_rss_mb for r in runs):,.0f} MB "
        f"(ru_maxrss, all runs), sandbox process {sandbox.peak_rss_mb:,.0f} MB (VmHWM)",
        "",
        "### full run / no-change runs",
        "",
        "| figure | full | "
        + " | ".join(f"no change #{i}" for i in range(1, len(rest) + 1))
        + " | "
        + " | ".join(f"ratio full / #{i}" for i in range(1, len(rest) + 1))
        + " |",
        "| --- " + "| ---: " * (1 + 2 * len(rest)) + "|",
    ]
    figures = [
        ("wall time (s)", lambda r: r.wall_s, "{:.1f}"),
        ("API calls, source", lambda r: r.source_calls, "{:,}"),
        ("API calls, target", lambda r: r.target_calls, "{:,}"),
        ("API calls, total", lambda r: r.source_calls + r.target_calls, "{:,}"),
    ]
    for name, get, fmt in figures:
        values = " | ".join(fmt.format(get(r)) for r in rest)
        ratios = " | ".join(_ratio(get(full), get(r)) for r in rest)
        lines.append(f"| {name} | {fmt.format(get(full))} | {values} | {ratios} |")
    lines.append("")
    for run in changed:
        last = rest[-1] if rest else full
        lines += [
            f"### no-change / {run.label}",
            "",
            f"no-change wall {last.wall_s:.1f} s / changed wall {run.wall_s:.1f} s "
            f"({_ratio(run.wall_s, last.wall_s)}) / calls {last.source_calls + last.target_calls:,}"
            f" vs {run.source_calls + run.target_calls:,} (source {run.source_calls:,}, target "
            f"{run.target_calls:,}); model {last.stage_seconds('model'):.2f} s vs "
            f"{run.stage_seconds('model'):.2f} s, deliver {last.stage_seconds('deliver'):.2f} s vs "
            f"{run.stage_seconds('deliver'):.2f} s; peak RSS {run.peak_rss_mb:,.0f} MB",
            "",
        ]
    if mapping:
        lines += [
            f"### mapping {mapping['rows']:,} customer payloads x {mapping['fields']} fields "
            "(landing Parquet in, all fields out)",
            "",
            "| method | seconds | rows/s |",
            "| --- | ---: | ---: |",
            f"| naive Python (json.loads + dict walk) | {mapping['python_s']:.2f} | "
            f"{mapping['python_rows_per_s']:,.0f} |",
            f"| DuckDB mapping SQL (rule_sql, {mapping['duckdb_threads']} threads) | "
            f"{mapping['duckdb_s']:.2f} | {mapping['duckdb_rows_per_s']:,.0f} |",
            f"| ratio DuckDB / Python | | "
            f"{_ratio(mapping['duckdb_rows_per_s'], mapping['python_rows_per_s'])} |",
            "",
            f"cells where both agree (first 2,000 rows): {mapping['agreement']:.1%}",
            "",
        ]
    return lines


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--port", type=int, default=0, help="sandbox port (0: a free one)")
    parser.add_argument("--days", type=int, default=365, help="initial import window")
    parser.add_argument(
        "--startup-timeout", type=float, default=900, help="seconds to wait for the sandbox"
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=3600,
        help="seconds before the whole benchmark is abandoned (stacks dumped, sandbox stopped)",
    )
    parser.add_argument(
        "--changed-percent",
        type=float,
        default=1.0,
        help="customers changed before the last run (percent)",
    )
    parser.add_argument(
        "--lean",
        action="store_true",
        help="lean sandbox: FlexPOS records made on demand (needed for 1,000,000 customers)",
    )
    parser.add_argument("--keep", action="store_true", help="keep landing files and warehouse")
    parser.add_argument("--verbose", action="store_true", help="Dagster console logs at INFO")
    return parser.parse_args(argv)


def _watchdog(seconds: float, proc_ref: list[subprocess.Popen]) -> threading.Timer:
    """Bounded wait on the runs too: dump every thread's stack, stop the sandbox, exit 3."""

    def fire() -> None:
        log(f"timeout after {seconds:.0f} s; stacks follow")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        for proc in proc_ref:
            stop_sandbox(proc)
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = OUT_DIR / f"{datetime.now():%Y%m%d-%H%M%S}-{args.customers}"
    run_dir.mkdir(parents=True)
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the sandbox
    procs: list[subprocess.Popen] = []
    timer = _watchdog(args.run_timeout, procs)
    rss = RssSampler().start()
    try:
        sandbox_log = run_dir / "sandbox.log"
        procs.append(start_sandbox(args.customers, port, args.seed, sandbox_log, args.lean))
        sandbox_start_s = wait_healthy(url, procs[0], args.startup_timeout)
        log(f"sandbox healthy at {url} after {sandbox_start_s:.1f} s")

        prepare_environment(url, run_dir)
        (integration,) = unpaced(*load_all([INTEGRATION_FILE]))
        defs = build_definitions([integration])
        instance = dagster_instance()
        level = "INFO" if args.verbose else "WARNING"
        run_config = {"loggers": {"console": {"config": {"log_level": level}}}}
        end = date.today()
        start = max(integration.schedule.history_start, end - timedelta(days=args.days))

        full = run_once(
            f"initial import (backfill {start} .. {end})",
            defs,
            integration,
            instance,
            procs[0].pid,
            run_config,
            rss,
            start=start,
            end=end,
        )
        runs = [full]
        for i in (1, 2):
            runs.append(
                run_once(
                    f"no-change incremental run #{i}",
                    defs,
                    integration,
                    instance,
                    procs[0].pid,
                    run_config,
                    rss,
                )
            )
        changed = change_customers(url, args.customers, args.changed_percent)
        runs.append(
            run_once(
                f"{args.changed_percent:g}%-changed run ({changed:,} customers changed)",
                defs,
                integration,
                instance,
                procs[0].pid,
                run_config,
                rss,
            )
        )
        sandbox = proc_stats(procs[0].pid)

        members = feed_of(integration).members
        files = sorted(
            str(p)
            for p in (run_dir / "data" / "landing" / integration.name / members.entity).glob(
                "[0-9]*/*.parquet"
            )
        )
        mapping = (
            mapping_baseline(files, members, integration.import_.option_separator)
            if files
            else None
        )
    finally:
        timer.cancel()
        rss.stop()
        for proc in procs:
            stop_sandbox(proc)
        log("sandbox stopped")

    lines = report(args.customers, sandbox_start_s, sandbox, runs, mapping)
    lines += [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM, "
        f"Python {platform.python_version()}, duckdb {duckdb.__version__}, "
        f"dagster {dg.__version__}",
    ]
    text = "\n".join(lines)
    print(text)
    (run_dir / "report.md").write_text(text + "\n")
    (run_dir / "figures.json").write_text(
        json.dumps(
            {
                "customers": args.customers,
                "sandbox_start_s": sandbox_start_s,
                "sandbox_peak_rss_mb": sandbox.peak_rss_mb,
                "runs": [_run_json(r) for r in runs],
                "mapping": mapping,
            },
            indent=2,
            default=str,
        )
    )
    if not args.keep:
        shutil.rmtree(run_dir / "data", ignore_errors=True)
        shutil.rmtree(run_dir / "dagster_home", ignore_errors=True)
    log(f"report in {run_dir / 'report.md'}")
    return 0 if all(r.success for r in runs) else 1


def _run_json(run: RunFigures) -> dict[str, Any]:
    return {
        "label": run.label,
        "success": run.success,
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "sandbox_cpu_s": run.sandbox_cpu_s,
        "peak_rss_mb": run.peak_rss_mb,
        "source_calls": run.source_calls,
        "target_calls": run.target_calls,
        "target_purposes": run.target_purposes,
        "steps": [vars(s) for s in run.steps],
        "failures": run.failures,
        "summary": run.summary,
    }


if __name__ == "__main__":
    sys.exit(main())
