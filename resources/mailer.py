"""The mailer: error reports (C6: when an import refuses members, the integration's
`error_report_to` address gets a mail listing them), bounce notices and sync summaries (AF6).

SMTP settings come from the environment only (MEMBERFLOW_SMTP_HOST, _PORT, _USER, _PASSWORD,
_FROM, _STARTTLS), read when a report is sent, never at import time and never logged.
"""

from __future__ import annotations

import csv
import io
import os
import smtplib
from email.message import EmailMessage

import dagster as dg


class ErrorReportMailer(dg.ConfigurableResource):
    """Sends error reports over SMTP; without MEMBERFLOW_SMTP_HOST it reports that it cannot."""

    sender_default: str = "memberflow@localhost"

    def configured(self) -> bool:
        return bool(os.environ.get("MEMBERFLOW_SMTP_HOST"))

    def send_report(self, to: str, subject: str, summary: str, rows: list[dict[str, str]]) -> bool:
        """Mail `summary` plus the failed rows as a CSV attachment; False when SMTP is not set."""
        listing = "\n".join(
            f"- {r.get('match_key') or r.get('record_id')}: {r['reason']}" for r in rows[:200]
        )
        more = f"\n… and {len(rows) - 200} more (see the attachment)" if len(rows) > 200 else ""
        return self.send_mail(to, subject, f"{summary}\n\n{listing}{more}\n", {"failed.csv": rows})

    def send_mail(
        self,
        to: str,
        subject: str,
        body: str,
        attachments: dict[str, list[dict[str, str]]] | None = None,
    ) -> bool:
        """Mail `body` with each non-empty row list attached as CSV (file name -> rows); False
        when SMTP is not set. SMTP errors propagate: the caller decides what a failed mail means."""
        host = os.environ.get("MEMBERFLOW_SMTP_HOST")
        if not host:
            return False
        message = EmailMessage()
        message["From"] = os.environ.get("MEMBERFLOW_SMTP_FROM", self.sender_default)
        message["To"] = to
        message["Subject"] = subject
        message.set_content(body)
        for name, rows in (attachments or {}).items():
            if rows:
                message.add_attachment(
                    _csv(rows).encode("utf-8"), maintype="text", subtype="csv", filename=name
                )
        port = int(os.environ.get("MEMBERFLOW_SMTP_PORT", "25"))
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            if os.environ.get("MEMBERFLOW_SMTP_STARTTLS", "").lower() in ("1", "true", "yes"):
                smtp.starttls()
            user = os.environ.get("MEMBERFLOW_SMTP_USER")
            if user:
                smtp.login(user, os.environ.get("MEMBERFLOW_SMTP_PASSWORD", ""))
            smtp.send_message(message)
        return True


def _csv(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    names = sorted({k for r in rows for k in r})
    writer = csv.DictWriter(out, fieldnames=names)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
