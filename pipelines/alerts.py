"""The run-failure alert: a mail to the people responsible when a run fails.

Dagster's `run_failure_sensor` finds the failed runs; the mail goes through memberflow's own
mailer (resources/mailer.py) rather than `make_email_on_run_failure_sensor`, for three reasons:
the built-in always speaks SSL or STARTTLS and always logs in, so it cannot talk to a plain
relay on the host or port 25 of a private network; it takes its password as a value when the
definitions load, where memberflow reads secrets from the environment only when it sends; and it
mails one fixed list, where a deployment running many client accounts wants each failure mailed
to its operators plus the owners of that integration.

Recipients: every address in MEMBERFLOW_ALERT_TO (comma-separated, read when a mail is sent)
plus the failed run's integration's `alerts.email_on_failure`. The SMTP settings are the
mailer's (MEMBERFLOW_SMTP_*). A mail that cannot be sent fails the sensor's tick, naming the
run, so the failure still shows in the UI.
"""

from __future__ import annotations

import os
import smtplib

import dagster as dg

from assets import naming
from memberflow.config import Integration
from memberflow.masking import mask_text
from resources.mailer import ErrorReportMailer

SENSOR_NAME = "run_failure_email"
ALERT_TO_ENV = "MEMBERFLOW_ALERT_TO"
UI_URL_ENV = "MEMBERFLOW_UI_URL"
WILL_RETRY_TAG = "dagster/will_retry"  # set by Dagster on a failed run it will re-execute
MAX_ERROR_CHARS = 2000


def deployment_recipients() -> list[str]:
    """The deployment's operators: MEMBERFLOW_ALERT_TO, comma-separated."""
    raw = os.environ.get(ALERT_TO_ENV, "")
    return [a.strip() for a in raw.split(",") if a.strip()]


def recipients_for(
    run: dg.DagsterRun, owners: dict[str, list[str]], on_list: dict[str, list[str]]
) -> list[str]:
    """Who hears of this run's failure: the operators, then its integration's owners; a run of
    a whole list (launched from the UI, no integration tag) tells the owners of every
    integration on the list."""
    integration = run.tags.get(naming.INTEGRATION_TAG)
    names = [integration] if integration else on_list.get(run.tags.get(naming.LIST_TAG, ""), [])
    wanted = deployment_recipients() + [a for name in names for a in owners.get(name, [])]
    return list(dict.fromkeys(wanted))  # once each, in order


def failure_mail(context: dg.RunFailureSensorContext) -> tuple[str, str]:
    """Subject and body: what failed, where to look, and the first error of each failed step
    (emails and phone numbers masked: vendors quote the records they refuse)."""
    run = context.dagster_run
    integration = run.tags.get(naming.INTEGRATION_TAG)
    what = f"{run.job_name}" + (f" ({integration})" if integration else " (the whole list)")
    lines = [
        f"The run {run.run_id} of {what} failed.",
        f"List: {run.tags.get(naming.LIST_TAG, '-')}",
    ]
    if partition := run.tags.get("dagster/partition"):
        lines.append(f"Partition: {partition}")
    if base := os.environ.get(UI_URL_ENV, "").rstrip("/"):
        lines.append(f"Open it: {base}/runs/{run.run_id}")
    lines += ["", f"Run: {mask_text(context.failure_event.message or '')}"]
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error
        text = error.to_string() if error else (event.message or "")
        lines.append(f"\nStep {event.step_key}:\n{mask_text(text)[:MAX_ERROR_CHARS]}")
    return f"memberflow: run of {what} failed", "\n".join(lines) + "\n"


def build_failure_alert(integrations: list[Integration]) -> dg.SensorDefinition:
    """One sensor for the code location: every failed run is mailed to its recipients.

    It starts running when the integration files or MEMBERFLOW_ALERT_TO name anyone to tell."""
    owners = {i.name: list(i.alerts.email_on_failure) for i in integrations}
    on_list: dict[str, list[str]] = {}
    for integration in integrations:
        on_list.setdefault(integration.list_key, []).append(integration.name)
    anyone = bool(deployment_recipients()) or any(owners.values())

    @dg.run_failure_sensor(
        name=SENSOR_NAME,
        default_status=(
            dg.DefaultSensorStatus.RUNNING if anyone else dg.DefaultSensorStatus.STOPPED
        ),
        description=(
            f"Mails each failed run to {ALERT_TO_ENV} and its integration's "
            "alerts.email_on_failure over the MEMBERFLOW_SMTP_* server."
        ),
    )
    def _alert(context: dg.RunFailureSensorContext) -> None:
        run = context.dagster_run
        if run.tags.get(WILL_RETRY_TAG) == "true":  # run_retries: only the last attempt mails
            context.log.info(f"run {run.run_id} failed; Dagster retries it, no mail yet")
            return
        to = recipients_for(run, owners, on_list)
        if not to:
            context.log.info(f"run {context.dagster_run.run_id} failed; nobody to mail")
            return
        subject, body = failure_mail(context)
        run_id = context.dagster_run.run_id
        try:
            sent = ErrorReportMailer().send_mail(", ".join(to), subject, body)
        except (OSError, smtplib.SMTPException) as exc:
            # The exception class only: an SMTP error can echo the login.
            raise dg.Failure(
                f"run {run_id} failed; its alert mail failed: {type(exc).__name__}"
            ) from None
        if not sent:
            raise dg.Failure(f"run {run_id} failed; no alert mailed: MEMBERFLOW_SMTP_HOST is unset")
        context.log.info(f"run {context.dagster_run.run_id} failed; mailed {len(to)} address(es)")

    return _alert
