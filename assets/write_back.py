"""The feedback asset of an integration whose list reports back (AF3-AF6): the list's
unsubscribes, clicks, bounces and members only there, carried into the source when the
integration is two-way, bounced addresses mailed, and a summary mailed after a full sync.

It runs last in the sync job (after the members are delivered) and alone in the integration's
feedback job, which the feedback sensor starts when the receiver stored webhook feedback.
Feedback is gathered from every route (the receiver's store, the target's readable feedback,
unsubscribes the target answered while being written) into the warehouse, decided once, and
written back through the source's write-back capability (memberflow/write_back.py).
"""

import smtplib
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from assets import metadata, naming
from memberflow import feedback_log, model, progress, write_back
from memberflow.config import Integration
from memberflow.delivery import ensure_state, list_state, set_list_state
from memberflow.mapping import available_entities
from memberflow.masking import mask_text
from memberflow.member_events import table_exists
from memberflow.staging import stage_table
from memberflow.webhook_store import WebhookStore, feedback_webhook
from resources.base import VendorError
from resources.mailer import ErrorReportMailer
from resources.source import SourceClient
from resources.target import TargetClient

FEEDBACK_READ = "feedback_read_at"  # list_state key: when the target's feedback was last read
READ_OVERLAP = timedelta(minutes=10)  # re-read a little: `record` keeps one row per key
FEEDBACK_RUN = "feedback"  # `memberflow/changed` tag of a run the feedback sensor started
# A source down makes the run fail with the write-backs open; the feedback sensor only starts a
# run for new webhooks, so the asset retries by itself a few times before the next sync does.
WRITE_BACK_RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL)


def wants_feedback_asset(integration: Integration) -> bool:
    """Does this integration handle its list's feedback (two-way, mails, or pushed feedback)?"""
    settings = integration.feedback
    if settings.write_back or settings.bounces_to or settings.summary_to:
        return True
    try:
        return feedback_webhook(integration) is not None
    except Exception:  # a missing token env var: the receiver reports it, the asset still runs
        return True


def feedback_key(integration: Integration) -> dg.AssetKey:
    return dg.AssetKey([integration.name, "feedback_applied"])


def build_feedback_asset(integration: Integration, feed: model.Feed) -> dg.AssetsDefinition:
    list_key = integration.list_key
    warehouse_key = naming.warehouse_resource_key(list_key)
    target_key = naming.target_resource_key(list_key)
    source_key = naming.source_resource_key(integration)
    members_table = stage_table(integration.name, feed.members.entity)
    to_source = write_back.source_values_of(model.target_columns([feed]), feed.members)

    @dg.asset(
        key=feedback_key(integration),
        group_name=integration.name,
        deps=[naming.list_asset_key(list_key, "members_delivered")],
        description=(
            "The list's feedback for this integration: unsubscribes, clicks, bounces and members "
            "only on the list, kept once each; written back into the source when "
            "`feedback.write_back` is on (an unsubscribe clears the source's flag, a click is "
            "recorded, a member only on the list is created); bounces mailed, and a summary "
            "mailed after a full sync."
        ),
        required_resource_keys={warehouse_key, target_key, source_key, "mailer"},
        pool=naming.pool(list_key),
        retry_policy=WRITE_BACK_RETRY,
        kinds={integration.source.kind, integration.target.kind},
        tags={"memberflow/stage": "feedback"},
    )
    @progress.reported
    def _feedback(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        warehouse: DuckDBResource = getattr(context.resources, warehouse_key)
        target: TargetClient = getattr(context.resources, target_key).client()
        source: SourceClient = getattr(context.resources, source_key).client()
        report = write_back.WriteBackReport()
        sync_run = context.run.tags.get("memberflow/changed") != FEEDBACK_RUN
        try:
            with warehouse.get_connection() as conn:
                gathered = _gather(context, conn, integration, target, read=sync_run)
                feedback_log.note_unsubscribes(conn)
                feedback_log.join(conn, integration.name, context.run_id)
                setup = write_back.WriteBackSetup(
                    integration=integration.name,
                    enabled=integration.feedback.write_back,
                    members_table=members_table,
                    actions=frozenset(source.write_back_actions),
                    to_source=to_source,
                )
                write_back.plan(conn, setup, context.run_id, report)
                write_back.apply(
                    conn,
                    source,
                    integration.name,
                    context.run_id,
                    report,
                    lambda done, total: context.log.info(f"write-back: {done} of {total}"),
                )
                # bounces are mailed by sync runs only: a feedback run every 15 s during a
                # campaign would send a mail each
                mailed = _mail_bounces(context, conn, integration) if sync_run else 0
                summary = _mail_summary(context, conn, integration, report, target, source)
                new = feedback_log.run_counts(conn, context.run_id)
                still_open = write_back.open_count(conn, integration.name)
        finally:
            target.close()
            source.close()
        if report.transient_error:
            raise dg.Failure(
                description=f"write-back stopped: {mask_text(report.transient_error)}; "
                f"{still_open} write-back(s) stay open and are sent next run",
            )
        for item in report.problems[:20]:
            context.log.warning(
                f"write-back {item['status']}: {item['action']} on record {item['record']}: "
                f"{mask_text(item['reason'])}"
            )
        return dg.MaterializeResult(
            metadata={
                "feedback_new_this_run": new,
                "feedback_gathered": gathered,
                "write_back": "on" if integration.feedback.write_back else "off (opt-in off)",
                "write_backs_planned": report.planned,
                "write_back_results": report.results,
                "write_backs_resumed": report.resumed,
                "write_backs_open": still_open,
                "feedback_waiting_for_source_record": report.waiting,
                "not_written_back": report.not_written,
                "bounces_mailed": mailed,
                "summary_mailed": summary,
                "api_calls": {
                    source.vendor: source.calls.total,
                    target.vendor: target.calls.total,
                },
                "api_calls_by_endpoint": {
                    source.vendor: source.calls.by_endpoint(),
                    target.vendor: target.calls.by_endpoint(),
                },
                "api_calls_this_run": source.calls.total + target.calls.total,
                **metadata.api_calls(source.calls.by_endpoint(), vendor=source.vendor),
                **metadata.api_calls(target.calls.by_endpoint(), vendor=target.vendor),
                **metadata.breakdown(
                    "write_back_results_this_run",
                    {f"{a}/{s}": n for a, by in report.results.items() for s, n in by.items()},
                ),
                "not_written_sample": dg.MetadataValue.json(
                    [{k: mask_text(v) for k, v in r.items()} for r in report.problems[:10]]
                ),
            }
        )

    return _feedback


def _gather(
    context: dg.AssetExecutionContext,
    conn: duckdb.DuckDBPyConnection,
    integration: Integration,
    target: TargetClient,
    read: bool,
) -> dict[str, int | str]:
    """Feedback from every route into the warehouse; new pieces per route. The target is read
    (e.g. bounces) only when `read`; a failed read is reported and the rest goes on, so a
    target out of calls for the month never holds up the write-backs, which cost it none."""
    run_id = context.run_id
    store = WebhookStore.for_feedback(integration.name)
    gathered: dict[str, int | str] = {"webhook": feedback_log.ingest_webhooks(conn, store, run_id)}
    ensure_state(conn)
    if read:
        gathered["read"] = _read_feedback(context, conn, target)
    gathered["write"] = feedback_log.record(
        conn, feedback_log.from_remote_unsubscribes(conn), "write", run_id
    )
    return gathered


def _read_feedback(
    context: dg.AssetExecutionContext, conn: duckdb.DuckDBPyConnection, target: TargetClient
) -> int | str:
    last = list_state(conn, FEEDBACK_READ)
    since = datetime.fromisoformat(last) - READ_OVERLAP if last else None
    started = datetime.now(UTC)
    try:
        new = feedback_log.record(conn, target.iter_feedback(since), "read", context.run_id)
    except VendorError as exc:
        context.log.warning(f"{target.label}: feedback not read this run: {exc.summary()}")
        return f"not read: {exc.summary()}"
    set_list_state(conn, FEEDBACK_READ, started.isoformat())
    return new


def _mail_bounces(
    context: dg.AssetExecutionContext, conn: duckdb.DuckDBPyConnection, integration: Integration
) -> int:
    """Mail the bounces not mailed yet to `feedback.bounces_to` (AF6); returns how many."""
    to = integration.feedback.bounces_to
    rows = feedback_log.unmailed_bounces(conn)
    if not to or not rows:
        return 0
    mailer: ErrorReportMailer = context.resources.mailer
    listing = "\n".join(f"- {r['email']} ({r['bounce_type']}, {r['occurred_at']})" for r in rows)
    body = (
        f"memberflow run {context.run_id}: {len(rows)} address(es) on {integration.name}'s list "
        f"bounced since the last notice.\n\n{listing}\n"
    )
    subject = f"memberflow: {len(rows)} bounced address(es) — {integration.name}"
    if not _send(context, mailer, to, subject, body, {"bounces.csv": _plain(rows)}):
        return 0
    feedback_log.mark_mailed(conn, [r["key"] for r in rows])
    context.log.info(f"{len(rows)} bounced address(es) mailed to {to}")
    return len(rows)


def _mail_summary(
    context: dg.AssetExecutionContext,
    conn: duckdb.DuckDBPyConnection,
    integration: Integration,
    report: write_back.WriteBackReport,
    target: TargetClient,
    source: SourceClient,
) -> bool:
    """After a full sync (the members read whole this run), mail the account owner a summary:
    counts, duplicates, refusals, calls spent (AF6)."""
    to = integration.feedback.summary_to
    if not to or not _full_sync(context, integration):
        return False
    sent_key = f"summary_mailed:{integration.name}"
    if list_state(conn, sent_key) == context.run_id:
        return False  # a retry of this step: mailed once already
    lines, attachments = _summary(context, conn, integration, report)
    calls = _run_calls(context, integration)
    calls[integration.source.kind] += source.calls.total
    calls[integration.target.kind] += target.calls.total
    lines.append("calls this run: " + ", ".join(f"{k} {v}" for k, v in sorted(calls.items())))
    budget = target.rate_budget()
    if budget is not None:
        lines.append(f"{target.vendor} calls this month: {budget.used} of {budget.limit}")
    subject = f"memberflow: full sync of {integration.name} done"
    mailer: ErrorReportMailer = context.resources.mailer
    sent = _send(context, mailer, to, subject, "\n".join(lines) + "\n", attachments)
    if sent:
        set_list_state(conn, sent_key, context.run_id)
    return sent


def _full_sync(context: dg.AssetExecutionContext, integration: Integration) -> bool:
    """Was the member entity read whole in this run (a first or a manual full sync)?"""
    (entity,) = sorted(available_entities(integration.source.kind).members)
    event = context.instance.get_latest_materialization_event(naming.raw_key(integration, entity))
    if event is None or event.run_id != context.run_id:
        return False
    mat = event.asset_materialization
    mode = str(mat.metadata.get("mode").value) if mat and mat.metadata.get("mode") else ""
    return mode == "full" or mode.endswith("since the beginning")


def _summary(
    context: dg.AssetExecutionContext,
    conn: duckdb.DuckDBPyConnection,
    integration: Integration,
    report: write_back.WriteBackReport,
) -> tuple[list[str], dict[str, list[dict[str, str]]]]:
    delivered = _latest_metadata(
        context, naming.list_asset_key(integration.list_key, "members_delivered")
    )
    counts = {
        k: delivered.get(k, 0)
        for k in ("created", "updated", "removed", "unchanged", "refused", "skipped_unsubscribed")
    }
    shared = _shared_keys(conn, integration.name)
    lines = [
        f"memberflow run {context.run_id}: full sync of {integration.name} "
        f"({integration.source.kind} -> {integration.target.kind}).",
        "",
        "members: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        f"duplicates (one address on several records, not synced): {len(shared)}",
        f"write-backs: {report.results or 'none'}",
        f"write-backs refused or skipped: {len(report.problems)} (attached)",
    ]
    return lines, {"duplicates.csv": shared, "not_written_back.csv": report.problems}


def _run_calls(context: dg.AssetExecutionContext, integration: Integration) -> Counter[str]:
    """API calls of this run's other steps, by vendor kind: the extracts count the source's,
    the deliveries the target's."""
    per_asset: dict[str, int] = {}  # an extract repeats its run's calls on every day it touched
    records = context.instance.all_logs(
        context.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    )
    for record in records:
        mat = record.asset_materialization
        if mat is None or not isinstance(_value(mat.metadata.get("api_calls")), int):
            continue
        per_asset[mat.asset_key.to_user_string()] = int(_value(mat.metadata["api_calls"]))
    calls: Counter[str] = Counter()
    for key, n in per_asset.items():
        calls[integration.source.kind if key.endswith("_raw") else integration.target.kind] += n
    return calls


def _value(entry: Any) -> Any:
    return getattr(entry, "value", entry)


def _latest_metadata(context: dg.AssetExecutionContext, key: dg.AssetKey) -> dict[str, Any]:
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.run_id != context.run_id or event.asset_materialization is None:
        return {}
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def _shared_keys(conn: duckdb.DuckDBPyConnection, integration: str) -> list[dict[str, str]]:
    """The shared-key report rows of this integration (memberflow/shared_keys.py), if any."""
    if not table_exists(conn, "shared_match_keys"):
        return []
    rows = conn.execute(
        """SELECT match_key, array_to_string(record_ids, ' '), array_to_string(names, '; ')
           FROM shared_match_keys WHERE integration = ? ORDER BY match_key""",
        [integration],
    ).fetchall()
    return [{"shared": k, "records": r, "names": n} for k, r, n in rows]


def _send(
    context: dg.AssetExecutionContext,
    mailer: ErrorReportMailer,
    to: str,
    subject: str,
    body: str,
    attachments: dict[str, list[dict[str, str]]],
) -> bool:
    try:
        sent = mailer.send_mail(to, subject, body, attachments)
    except (OSError, smtplib.SMTPException) as exc:
        context.log.error(f"mail to {to} not sent: {type(exc).__name__}")
        return False
    if not sent:
        context.log.warning(f"mail to {to} not sent: MEMBERFLOW_SMTP_HOST is not set")
    return sent


def _plain(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in r.items() if k != "key"} for r in rows]
