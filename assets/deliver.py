"""Deliver assets of one target list: pull unsubscribes and bounces back (when the target reports
them by being read), notice members the list lost (when it can list them), push only what changed
(X2); mail an error report when members are refused (C6).
"""

import smtplib

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from assets import metadata, naming
from assets.run_config import config_of, schema_of
from memberflow import delivery, feedback_log, model, progress, reconcile
from memberflow.config import Integration
from memberflow.masking import mask_text
from memberflow.webhook_store import WebhookStore
from resources.base import UpsertFlags
from resources.mailer import ErrorReportMailer
from resources.target import TargetClient

KEPT_CHECK = "list_kept_its_members"
KEPT_MEANS = (
    "Yellow: the list no longer held members it had acknowledged (emptied, restored from an "
    "older backup, deleted by hand); they were created again this run and their events sent "
    "again, except members who had unsubscribed (missing_on_list, full_listing). Nothing is "
    "lost; find out who removed them. Targets that cannot list their members are not compared."
)


class DeliverConfig(dg.Config):
    """Per-run overrides of the integration's import settings (C5); None keeps the file's value."""

    reimport_unsubscribed: bool | None = None
    send_optin: bool | None = None
    send_automations: bool | None = None
    full_listing_hours: float = Field(
        default=reconcile.FULL_LISTING_HOURS,
        description="Read the whole list to reconcile it at least this often (hours), even "
        "when its member count looks right.",
    )


def delivery_settings(
    integration: Integration, run_id: str, config: DeliverConfig | None = None
) -> delivery.DeliverySettings:
    imp = integration.import_
    config = config or DeliverConfig()

    def pick(override: bool | None, default: bool) -> bool:
        return default if override is None else override

    return delivery.DeliverySettings(
        match_on=integration.match_on,
        import_type=imp.type.value,
        reimport_unsubscribed=pick(config.reimport_unsubscribed, imp.reimport_unsubscribed),
        flags=UpsertFlags(
            send_optin=pick(config.send_optin, imp.send_optin),
            send_automations=pick(config.send_automations, imp.send_automations),
            send_webhooks=imp.send_webhooks,
        ),
        track_events=bool(integration.tracking),
        run_id=run_id,
    )


def kept_check(found: reconcile.Reconciliation) -> dg.AssetCheckResult:
    """The reconciliation's verdict: did the list still hold every member it acknowledged?"""
    if found.on_list is None:
        text = "not compared: the target cannot count or list its members"
    elif found.missing:
        text = f"{len(found.missing)} acknowledged member(s) were missing and sent again"
    else:
        text = "the list holds every member it acknowledged"
    return dg.AssetCheckResult(
        check_name=KEPT_CHECK,
        passed=not found.missing,
        severity=dg.AssetCheckSeverity.WARN,
        description=text,
        metadata=found.metadata(),
    )


def build_deliver_assets(
    list_key: str, integrations: list[Integration], feeds: list[model.Feed]
) -> list[dg.AssetsDefinition]:
    warehouse_key = naming.warehouse_resource_key(list_key)
    target_key = naming.target_resource_key(list_key)
    first = integrations[0]
    fields = model.member_fields(feeds)
    types = model.field_types(feeds)
    report_to = sorted(
        {i.import_.error_report_to for i in integrations if i.import_.error_report_to}
    )
    members_delivered = naming.list_asset_key(list_key, "members_delivered")
    two_way = any(i.feedback.write_back for i in integrations)

    @dg.asset(
        key=members_delivered,
        group_name=list_key,
        deps=[naming.list_asset_key(list_key, "members")],
        description=(
            "Members pushed to the target list: first the list's unsubscribes and bounces are "
            "pulled back (targets that report them when read), then only new or changed members "
            "are sent in batches (X2); a mapped field missing on the list stops delivery before "
            "any send (C7)."
        ),
        required_resource_keys={warehouse_key, target_key, "mailer"},
        pool=naming.pool(list_key),
        kinds={first.target.kind},
        tags={"memberflow/stage": "deliver"},
        check_specs=[
            dg.AssetCheckSpec(
                KEPT_CHECK, asset=members_delivered, blocking=False, description=KEPT_MEANS
            )
        ],
        config_schema=schema_of(DeliverConfig),
    )
    @progress.reported
    def _members_delivered(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        config = config_of(DeliverConfig, context)
        settings = delivery_settings(first, context.run_id, config)
        warehouse: DuckDBResource = getattr(context.resources, warehouse_key)
        client: TargetClient = getattr(context.resources, target_key).client()
        caps = client.capabilities
        try:
            created = delivery.check_mapping(client, fields, types)
            if created:
                context.log.info(f"created on {client.label}: {', '.join(created)}")
            with warehouse.get_connection() as conn:
                pulled: dict[str, int] | str = "the target does not report them when read"
                if caps.feedback == "polled":
                    pulled = delivery.pull_feedback(conn, client, settings.match_on)
                elif caps.feedback == "pushed":
                    pulled = _pushed_feedback(conn, integrations, context.run_id)
                found = (
                    reconcile.reconcile(
                        conn,
                        client,
                        settings.match_on,
                        config.full_listing_hours,
                        notice_additions=two_way,
                    )
                    if caps.listing
                    else reconcile.unlisted(conn)
                )
                _warn_missing(context, client, found)
                if found.only_on_list:
                    feedback_log.record(conn, found.only_on_list, "listing", context.run_id)
                _check_month_budget(conn, client, settings)
                report = delivery.deliver_members(conn, client, settings, fields, found.missing)
                on_list = acknowledged_on_list(conn)
        finally:
            client.close()
        _mail_report(context, report_to, client.label, report)
        if report.transient_errors:
            raise dg.Failure(
                description=f"{len(report.transient_errors)} member(s) could not be sent after "
                "retries; acknowledged ones are recorded and will not be resent",
                metadata={"first_errors": [mask_text(e) for e in report.transient_errors[:5]]},
            )
        return dg.MaterializeResult(
            check_results=[kept_check(found)],
            metadata={
                # the table this asset stands for: members on the list, as it acknowledged them
                "dagster/row_count": on_list,
                **report.counts(),
                "sent_this_run": report.created + report.updated,
                "pulled_back": pulled,
                **found.metadata(),
                "unsubscribe_guard_calls": report.guard_calls(),
                "api_calls": client.calls.total,
                "api_calls_by_endpoint": client.calls.by_endpoint(),
                # the same calls by what they were for (pull, guard read, import, read-back...)
                "api_calls_by_purpose": client.calls.by_purpose(),
                **metadata.api_calls(client.calls.by_endpoint()),
                **_member_figures(report, integrations),
                **client.calls.pacing(),  # throttled_waits, throttled_seconds
                **_month_figures(client),
                **({"fields_created": created} if created else {}),
                **client.run_figures(),
                "refused_sample": dg.MetadataValue.json(_masked_rows(report.refused[:10])),
                "fields_dropped_sample": dg.MetadataValue.json(
                    _masked_rows(report.dropped_fields[:10])
                ),
            },
        )

    return [_members_delivered]


def _member_figures(
    report: delivery.MemberReport, integrations: list[Integration]
) -> dict[str, int]:
    """This run's members by outcome as plottable keys, and per integration when several feed
    the list (a member merged from two counts under both)."""
    figures = {
        "members_created_this_run": report.created,
        "members_updated_this_run": report.updated,
        "members_removed_this_run": report.removed,
        "members_unchanged_this_run": report.unchanged,
        "members_refused_this_run": len(report.refused),
    }
    if len(integrations) > 1:
        figures |= metadata.per_integration(
            {i.name: report.source_counts(i.name) for i in integrations}
        )
    return figures


def _pushed_feedback(
    conn: duckdb.DuckDBPyConnection, integrations: list[Integration], run_id: str
) -> dict[str, int]:
    """Feedback the receiver stored for the list's integrations, into the warehouse before the
    plan, so a member who unsubscribed a minute ago is not written again this run."""
    new = sum(
        feedback_log.ingest_webhooks(conn, WebhookStore.for_feedback(i.name), run_id)
        for i in integrations
    )
    return {"new_from_webhooks": new, "unsubscribes_noted": feedback_log.note_unsubscribes(conn)}


def _check_month_budget(
    conn: duckdb.DuckDBPyConnection, client: TargetClient, settings: delivery.DeliverySettings
) -> None:
    """Stop before any send when the planned writes would need more calls than the month's
    budget has left (AF8); nothing is sent, nothing is lost: the next month's runs send it."""
    budget = client.rate_budget()
    if budget is None or budget.window != "month":
        return
    actions = delivery.planned_actions(conn, settings)
    needed = client.estimate_calls(actions) or 0
    if needed > budget.left:
        raise dg.Failure(
            description=(
                f"{client.label}: this run would need about {needed} API calls "
                f"({', '.join(f'{n} {a}' for a, n in sorted(actions.items()))}), but only "
                f"{budget.left} of the monthly budget of {budget.limit} are left "
                f"({budget.used} spent this month). Nothing was sent; raise "
                "monthly_call_budget in the integration file or wait for the month to turn."
            ),
            metadata={"calls_needed": needed, "calls_left_this_month": budget.left},
        )


def _month_figures(client: TargetClient) -> dict[str, int]:
    budget = client.rate_budget()
    if budget is None or budget.window != "month":
        return {}
    return {"api_calls_this_month": budget.used, "monthly_call_budget": budget.limit}


def acknowledged_on_list(conn: duckdb.DuckDBPyConnection) -> int:
    """Members on the list as the list acknowledged them (not removed since)."""
    return int(conn.execute("SELECT count(*) FROM sync_state WHERE NOT removed").fetchall()[0][0])


def _warn_missing(
    context: dg.AssetExecutionContext, client: TargetClient, found: reconcile.Reconciliation
) -> None:
    if found.missing:
        context.log.warning(
            f"{client.label}: {len(found.missing)} acknowledged member(s) are missing "
            f"on the list ({found.full_listing}); they are created again this run and "
            f"{found.events_to_resend} of their events sent again"
        )
    if found.left_unsubscribed:
        context.log.info(
            f"{client.label}: {len(found.left_unsubscribed)} member(s) unsubscribed there are "
            "no longer in its listing; forgotten, not sent again"
        )


def _masked_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: mask_text(v) if v is not None else v for k, v in row.items()} for row in rows]


def _mail_report(
    context: dg.AssetExecutionContext,
    report_to: list[str],
    label: str,
    report: delivery.MemberReport,
) -> None:
    failed = report.refused + [{"match_key": "", "reason": e} for e in report.transient_errors]
    if not failed or not report_to:
        return
    mailer: ErrorReportMailer = context.resources.mailer
    summary = (
        f"memberflow run {context.run_id}: {len(failed)} member(s) were not imported into "
        f"{label}. Counts: {report.counts()}"
    )
    for address in report_to:
        try:
            sent = mailer.send_report(
                address, f"memberflow: import errors on {label}", summary, failed
            )
        except (OSError, smtplib.SMTPException) as exc:
            # The members' fate is recorded either way; a mail server down must not stop the
            # events step. The exception class only: SMTP errors can echo the login.
            context.log.error(f"error report to {address} not sent: {type(exc).__name__}")
            continue
        if sent:
            context.log.info(f"error report with {len(failed)} member(s) mailed to {address}")
        else:
            context.log.warning("error report not mailed: MEMBERFLOW_SMTP_HOST is not set")
