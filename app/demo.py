"""The demo: sandbox up, demo integrations synced once (initial import over the last
MEMBERFLOW_DEMO_HISTORY_DAYS days of daily partitions, 92 by default), then one incremental tick
that shows only-what-changed (X2), and a printed summary.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Protocol

import dagster as dg
import httpx

from app import lanes as lane_processes
from app import runner
from app.receiver import build_app, feedback_hooks_of, register, serving
from assets.write_back import feedback_key
from memberflow import landing, progress
from memberflow.config import INTEGRATIONS_DIR, Integration, load_all
from memberflow.mapping import available_entities
from memberflow.webhook_store import WebhookStore, feedback_webhook
from pipelines.factory import build_definitions, warehouse_path
from pipelines.list_jobs import sync_job_name
from sandbox.credentials import SANDBOX_ENV
from sandbox.server import SandboxServer

DEMO_FILES = (
    "demo_flexpos.yaml",
    "demo_ticketmaster.yaml",
    "demo_teyca_axle.yaml",
    "demo_amilia_cyberimpact.yaml",
    "demo_admin_flexmail.yaml",
)


@dataclass
class DemoRun:
    """One run of the demo, for the closing table: which integration, what kind of run."""

    integration: str
    label: str
    run_id: str
    seconds: float
    ok: bool = True
    quarantined: int = 0


@dataclass
class DemoOutcome:
    lines: list[str]
    ok: bool
    runs: list[DemoRun] = field(default_factory=list)


def demo_files() -> list[Path]:
    return [INTEGRATIONS_DIR / name for name in DEMO_FILES if (INTEGRATIONS_DIR / name).exists()]


# Demo-sized settings the demo files read (each within the vendor's limits): Heyloyalty's first
# sync of a few hundred members as one CSV import rather than single upserts paced at 20/s, and
# Cyberimpact batches and Flexmail imports polled every second, not every 5 s.
DEMO_SETTINGS_ENV = {"MEMBERFLOW_DEMO_BULK_THRESHOLD": "100", "MEMBERFLOW_DEMO_POLL_SECONDS": "1"}

# The demo's initial imports read the last this-many days of history, not the integrations' whole
# history (X5 leaves a real first sync uncapped; `memberflow sync --from` and backfills still read
# any range). A shorter window means fewer daily partitions to book and, for Amilia, fewer
# contacts, groups and consent calls at Cyberimpact's 10 calls/s. `all` (or 0): the whole history.
DEMO_HISTORY_ENV = "MEMBERFLOW_DEMO_HISTORY_DAYS"
DEMO_HISTORY_DAYS = "92"

# The demo's runs print no Dagster console lines: a run's warnings and errors are among its own
# lines (describe_run), readable; every line stays in the run's log in the instance.
QUIET_LEVEL = "CRITICAL"
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": QUIET_LEVEL}}}}


def prepare_environment(sandbox_url: str) -> None:
    """Point integration files at the sandbox and hand them the sandbox's demo credentials."""
    os.environ["MEMBERFLOW_SANDBOX_URL"] = sandbox_url
    settings = {**SANDBOX_ENV, **DEMO_SETTINGS_ENV, DEMO_HISTORY_ENV: DEMO_HISTORY_DAYS}
    for name, value in settings.items():
        os.environ.setdefault(name, value)


def history_window(integration: Integration, end: date) -> dict[str, date]:
    """The initial import's window: from the integration's `history_start`, or the last
    MEMBERFLOW_DEMO_HISTORY_DAYS days when that is later; none without tracked events."""
    start = integration.schedule.history_start if integration.tracking else None
    if start is None:
        return {}
    days = os.environ.get(DEMO_HISTORY_ENV, "").strip().lower()
    if days not in ("", "all", "0"):
        if not days.isdigit():
            raise ValueError(f"{DEMO_HISTORY_ENV} must be a number of days or 'all', not {days!r}")
        start = max(start, end - timedelta(days=int(days) - 1))
    return {"start": start, "end": end}


def clear_demo_data(integrations: list[Integration]) -> list[Path]:
    """The demo starts over in the shared data folder: its integrations' landing files and
    cursors, webhook stores, list warehouses and reports go; other integrations' data stay.
    Returns what was removed."""
    root = landing.data_dir()
    removed: list[Path] = []
    for integration in integrations:
        paths = [root / "landing" / integration.name, root / "reports" / integration.list_key]
        paths += (root / "webhooks").glob(f"{integration.name}.*")
        paths += (root / "warehouse").glob(f"{integration.list_key}.duckdb*")
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            removed.append(path)
    return removed


class DemoListener(progress.Listener, Protocol):
    """What the demo's caller shows: the steps of this process (memberflow.progress) and the
    figures of steps working in the lanes' processes, relayed here."""

    def remote_started(self, step: str) -> None: ...
    def remote_active(self, lane: int, snapshots: list[progress.Snapshot]) -> None: ...


def run_demo(
    customers: int = 300,
    seed: int = 42,
    port: int = 0,
    emit: Callable[[list[str]], None] | None = None,
    listener: DemoListener | None = None,
) -> DemoOutcome:
    """The demo's runs, a lane per target list, the lanes at once; `emit` gets each run's lines
    as soon as it ends, `listener` the lanes' step progress."""
    lane_processes.start_server()  # the CLI started it already; a no-op then
    runner.ensure_dagster_home()
    outcome = DemoOutcome(lines=[], ok=True)

    def say(lines: list[str]) -> None:
        outcome.lines.extend(lines)
        if emit is not None:
            emit(lines)

    with SandboxServer(seed=seed, customers=customers, port=port) as sandbox:
        prepare_environment(sandbox.url)
        integrations = load_all(demo_files())
        clear_demo_data(integrations)
        say([f"sandbox at {sandbox.url}: {customers} generated customers, seed {seed}"])
        say([f"data folder {landing.data_dir()}, Dagster instance {os.environ['DAGSTER_HOME']}"])
        # Lists are independent (a run holds only its own list's pool), so each list's
        # integrations run in their own lane, the lanes at once: the demo takes about as long as
        # its slowest list, not the sum of them. Within a lane runs stay one after another. A
        # lane is a process of its own: Dagster's SQLite storage is shared by processes (the UI
        # and its daemon do), not by threads of one. Lanes relay their progress through a queue.
        lanes = [[i.name for i in lane] for lane in _lanes(integrations)]
        _create_storage()
        # Lanes are forks of a server that imported their code once (app.lanes), with this
        # process's environment handed over: the sandbox's address and credentials set above.
        start = lane_processes.context()
        environment = dict(os.environ)
        with start.Manager() as manager:
            relay = manager.Queue()
            drained = threading.Thread(
                target=_drain, args=(relay, outcome, say, listener), daemon=True
            )
            drained.start()
            with ProcessPoolExecutor(max_workers=len(lanes), mp_context=start) as pool:
                done = list(
                    pool.map(
                        _run_lane,
                        [sandbox.url] * len(lanes),
                        lanes,
                        range(len(lanes)),
                        [relay] * len(lanes),
                        [environment] * len(lanes),
                    )
                )
            relay.put(None)
            drained.join()
        lane_processes.stop_server()
        outcome.ok &= all(done)
        order = [i.name for i in integrations]
        outcome.runs.sort(key=lambda r: (r.label != "initial import", order.index(r.integration)))
        say(_merge_lines(integrations))
    return outcome


def _create_storage() -> None:
    """Create the instance's SQLite tables here, once: lanes starting at once on a new instance
    would each try to create them, and all but one fail."""
    instance = dg.DagsterInstance.get()
    instance.get_runs(limit=1)
    instance.all_instigator_state()
    instance.get_latest_materialization_events([dg.AssetKey("memberflow_demo")])


def _lanes(integrations: list[Integration]) -> list[list[Integration]]:
    """The integrations grouped by target list, in file order (one lane per list)."""
    lanes: dict[str, list[Integration]] = {}
    for integration in integrations:
        lanes.setdefault(integration.list_key, []).append(integration)
    return list(lanes.values())


def _drain(
    relay: queue.Queue,
    outcome: DemoOutcome,
    say: Callable[[list[str]], None],
    listener: DemoListener | None,
) -> None:
    """The parent's side of the lanes' queue: runs' lines and records, step progress."""
    while (message := relay.get()) is not None:
        kind, *rest = message
        if kind == "run":
            lines, run = rest
            outcome.runs.append(run)
            say(lines)
        elif kind == "scene":
            lines, ok = rest
            outcome.ok &= ok
            say(lines)
        elif listener is None:
            continue
        elif kind == "started":
            listener.remote_started(rest[0])
        elif kind == "line":
            listener.step_line(rest[0])
        elif kind == "finished":
            listener.step_finished(rest[0])
        elif kind == "active":
            listener.remote_active(*rest)


class _Relay:
    """A lane's progress listener: every step event goes to the parent through the queue."""

    def __init__(self, relay: queue.Queue) -> None:
        self.relay = relay

    def step_started(self, step: progress.StepProgress) -> None:
        self.relay.put(("started", step.step))

    def step_line(self, text: str) -> None:
        self.relay.put(("line", text))

    def step_finished(self, snapshot: progress.Snapshot) -> None:
        self.relay.put(("finished", snapshot))


def _relay_active(relay: queue.Queue, lane: int, stop: threading.Event) -> None:
    """The lane's working steps' running figures, four times a second, for a live display."""
    while not stop.wait(0.25):
        relay.put(("active", lane, [s.snapshot() for s in progress.active()]))
    relay.put(("active", lane, []))


def _run_lane(
    sandbox_url: str,
    names: list[str],
    lane: int,
    relay: queue.Queue,
    environment: dict[str, str] | None = None,
) -> bool:
    """One list's integrations (by name): each initial import (with its feedback scene), then
    each tick. Runs in a process of its own (with the caller's `environment`), which loads the
    demo files again."""
    if environment is not None:
        lane_processes.adopt_environment(environment)
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")  # as the CLI does
    runner.ensure_dagster_home()
    integrations = load_all(demo_files())
    defs = build_definitions(integrations)
    instance = dg.DagsterInstance.get()
    chosen = [i for i in integrations if i.name in names]
    ok = True
    stop = threading.Event()
    ticker = threading.Thread(target=_relay_active, args=(relay, lane, stop), daemon=True)
    ticker.start()
    try:
        with progress.listening(_Relay(relay)):
            end = date.today()
            for integration in chosen:
                window = history_window(integration, end)
                first = _timed_run(relay, defs, integration, instance, "initial import", window)
                ok &= first.success
                if first.success and feedback_webhook(integration) is not None:
                    scene, done = _feedback_scene(sandbox_url, defs, integration, instance)
                    relay.put(("scene", scene, done))
                    ok &= done
            for integration in chosen:
                tick = _timed_run(relay, defs, integration, instance, "five-minute tick", {})
                ok &= tick.success
    finally:
        stop.set()
        ticker.join()
    return ok


def _timed_run(
    relay: queue.Queue,
    defs: dg.Definitions,
    integration: Integration,
    instance: dg.DagsterInstance,
    label: str,
    window: dict,
) -> dg.ExecuteInProcessResult:
    """One run, its lines and its record sent to the parent as soon as it ends."""
    started, cpu = time.monotonic(), time.process_time()
    result = runner.run_sync(defs, integration, instance, console_level=QUIET_LEVEL, **window)
    took, cpu = time.monotonic() - started, time.process_time() - cpu
    withheld = runner.summarise(result).total("_staged", "quarantined")
    run = DemoRun(integration.name, label, result.run_id, took, result.success, withheld)
    start, end = window.get("start"), window.get("end")
    lines = describe_run(integration, label, result, start, end, took, cpu, instance)
    relay.put(("run", lines, run))
    return result


def _feedback_scene(
    sandbox_url: str, defs: dg.Definitions, integration: Integration, instance: dg.DagsterInstance
) -> tuple[list[str], bool]:
    """Subscribers at work on the list (the sandbox's control routes): one unsubscribes, one
    clicks a newsletter link (the vendor delivers that webhook three times), one bounces. The
    receiver stores the webhooks, the feedback job carries them back as the feedback sensor would
    start it; the tick after shows the source's side coming round."""
    keys = _acknowledged_keys(integration, 3)
    if len(keys) < 3:
        return ["   (too few members on the list for the feedback scene)"], True
    control = f"{sandbox_url}/_sandbox/{integration.target.kind}"
    store = WebhookStore.for_feedback(integration.name)
    app = build_app({}, feedback=feedback_hooks_of([integration]))
    with serving(app) as url, httpx.Client(timeout=10, trust_env=False) as http:
        register([integration], url)
        http.post(f"{control}/unsubscribe", json={"email": keys[0]}).raise_for_status()
        click = {
            "email": keys[1],
            "campaign_id": 9001,
            "campaign_name": "Nieuwsbrief",
            "link_url": "https://boekhouding-demo.be/btw-2027",
        }
        http.post(f"{control}/click", json=click).raise_for_status()
        http.post(f"{control}/redeliver", json={"times": 2}).raise_for_status()
        http.post(f"{control}/bounce", json={"email": keys[2], "bounce_type": "hard"})
        deadline = time.monotonic() + 15
        while len(store.pending()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    stored = len(store.pending())
    # what the feedback sensor asks for: the list's job, the integration's feedback asset only
    job = defs.resolve_job_def(sync_job_name(defs, integration))
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[feedback_key(integration)],
        tags={
            "memberflow/list": integration.list_key,
            "memberflow/integration": integration.name,
            "memberflow/changed": "feedback",
        },
        run_config=QUIET_CONSOLE,
        raise_on_error=False,
    )
    s = runner.summarise(result)
    status = "ok" if s.success else "FAILED"
    results = s.get("feedback_applied", "write_back_results", {})
    lines = [
        f"== {integration.name}: feedback from the list (receiver + feedback run) — {status}",
        f"   webhooks: an unsubscribe, a click delivered 3 times, a bounce -> {stored} stored",
        f"   new feedback: {counts_text(s.get('feedback_applied', 'feedback_new_this_run', {}))}",
        f"   written back to {integration.source.kind}: {counts_text(results)}",
        f"   bounces mailed: {s.get('feedback_applied', 'bounces_mailed')}",
    ]
    lines += [f"   error: {m}" for m in runner.failure_messages(result)]
    lines += [f"   warning: {m}" for m in runner.warning_messages(instance, result.run_id)]
    return lines, s.success


def _acknowledged_keys(integration: Integration, count: int) -> list[str]:
    """Members the list acknowledged, in key order (the demo's subscribers)."""
    import duckdb

    with duckdb.connect(str(warehouse_path(integration.list_key)), read_only=True) as conn:
        rows = conn.execute(
            "SELECT match_key FROM sync_state WHERE NOT removed AND action <> 'adopt'"
            " ORDER BY match_key LIMIT ?",
            [count],
        ).fetchall()
    return [key for (key,) in rows]


def describe_run(
    integration: Integration,
    label: str,
    result: dg.ExecuteInProcessResult,
    start: date | None,
    end: date | None,
    seconds: float,
    cpu: float | None = None,
    instance: dg.DagsterInstance | None = None,
) -> list[str]:
    """A run in a few readable lines: what was fetched, sent, withheld, and the calls spent;
    `cpu`: the CPU seconds the run's process spent on it (a busy machine stretches the wall
    time, not this); with the `instance`, the warnings its steps logged, one line each (the
    demo keeps Dagster's own console lines off)."""
    s = runner.summarise(result)
    window = f" {start} .. {end}" if start else ""
    status = "ok" if s.success else "FAILED"
    run = f"run {s.run_id[:8]}, {seconds:.1f} s" + (f", {cpu:.1f} s CPU" if cpu is not None else "")
    out = [f"== {integration.name}: {label}{window} — {status} ({run})"]
    (entity,) = sorted(available_entities(integration.source.kind).members)
    members_raw = f"{entity}_raw"
    events_fetched = sum(
        s.rows(k) for k in s.assets if k.endswith("_raw") and not k.endswith(members_raw)
    )
    out.append(f"   fetched: {s.rows(members_raw)} {entity}, {events_fetched} event records")
    out.append(
        f"   members: {s.get('members_delivered', 'created')} created, "
        f"{s.get('members_delivered', 'updated')} updated, "
        f"{s.get('members_delivered', 'unchanged')} unchanged (no call), "
        f"{s.get('members_delivered', 'skipped_unsubscribed')} skipped as unsubscribed, "
        f"{s.get('members_delivered', 'removed')} removed, "
        f"{s.get('members_delivered', 'refused')} refused by the list"
    )
    held = s.get("events_delivered", "held_uncertain")
    if integration.tracking and not s.get("events_delivered", "target_has_activity_feed", True):
        out.append("   tracking events: kept in the warehouse (the target has no activity feed)")
    elif integration.tracking:
        out.append(
            f"   tracking events sent: {s.get('events_delivered', 'sent_this_run')}"
            + (f", {held} held (answer lost; see no_uncertain_event_batches)" if held else "")
        )
    reasons = runner.quarantine_reasons(s)
    quarantined = s.total("_staged", "quarantined")
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "none"
    out.append(f"   rows withheld: {quarantined} ({detail})")
    drops = runner.quarantine_reasons(s, key="field_drop_reasons")
    dropped = s.total("_staged", "fields_dropped") + s.get("members_delivered", "fields_dropped")
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(drops.items())) or "none"
    out.append(f"   fields dropped, rows kept: {dropped} ({detail})")
    withheld = s.get("members", "withheld_shared_keys", None)
    if withheld is not None:
        out.append(f"   shared emails withheld (see the asset check and its report): {withheld}")
    if any(k.endswith("feedback_applied") for k in s.assets):
        new = counts_text(s.get("feedback_applied", "feedback_new_this_run", {}))
        written = counts_text(s.get("feedback_applied", "write_back_results", {}))
        out.append(
            f"   feedback: new {new}; written back {written}"
            f"; bounces mailed {s.get('feedback_applied', 'bounces_mailed')}"
            f"; calls {counts_text(s.get('feedback_applied', 'api_calls', {}), names_first=True)}"
        )
    consents = s.get("members_delivered", "consents_sent", None)
    if consents is not None:
        out.append(
            f"   consents sent: {consents} "
            f"({s.get('members_delivered', 'consents_kept_stronger')} kept a stronger one), "
            f"bulk jobs: {s.get('members_delivered', 'batches')}"
        )
    source_calls = s.total("_raw", "api_calls")
    target_calls = s.total("_delivered", "api_calls")
    out.append(
        f"   API calls: {integration.source.kind} {source_calls}, "
        f"{integration.target.kind} {target_calls}"
    )
    for message in runner.failure_messages(result):
        out.append(f"   error: {message}")
    if instance is not None:
        out += [f"   warning: {m}" for m in runner.warning_messages(instance, result.run_id)]
    return out


def counts_text(counts: object, *, names_first: bool = False) -> str:
    """A run's counts in words: {'bounced': 1, 'only_on_target': 4} -> '1 bounced, 4 only on
    target'; by action, {'create': {'done': 4, 'failed': 1}, 'unsubscribe': {'done': 1}} ->
    'create: 4 done, 1 failed; unsubscribe: 1 done'; `names_first`: {'admin': 15} -> 'admin 15'.
    'none' when there are none."""
    if not isinstance(counts, dict):
        return str(counts)
    parts, nested = [], False
    for key, value in counts.items():
        name = str(key).replace("_", " ")
        if isinstance(value, dict):
            parts.append(f"{name}: {counts_text(value)}")
            nested = True
        else:
            parts.append(f"{name} {value}" if names_first else f"{value} {name}")
    return ("; " if nested else ", ").join(parts) or "none"


def _merge_lines(integrations: list) -> list[str]:
    import duckdb

    lines = [""]
    for list_key in sorted({i.list_key for i in integrations}):
        with duckdb.connect(str(warehouse_path(list_key)), read_only=True) as conn:
            total, merged, records = conn.execute(
                """SELECT count(*), count(*) FILTER (WHERE len(sources) > 1),
                          count(*) FILTER (WHERE source_records > 1) FROM members"""
            ).fetchall()[0]
            groups = _groups_line(conn)
        lines.append(
            f"list {list_key}: {total} members, {merged} of them merged across sources (X6), "
            f"{records} made of several source records (one email or phone){groups}"
        )
    return lines


def _groups_line(conn: object) -> str:
    """', 57 groups (1024 memberships)' when the list keeps groups; '' otherwise."""
    try:
        groups, members = conn.execute(  # type: ignore[attr-defined]
            "SELECT count(*), coalesce(sum(members), 0) FROM segment_groups WHERE members > 0"
        ).fetchall()[0]
    except Exception:  # no segments on this list
        return ""
    return f", {groups} groups ({members} group memberships)"
