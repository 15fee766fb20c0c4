"""`memberflow check`: does each integration reach its vendors, and does its mapping fit? (TX1)

Per integration, without moving any member: one cheap authenticated call to the source, one to
the target (which also proves its list or account exists), every mapped member field exists on
the target, and the calls left today in each side's capped rate window. One PASS/FAIL line per
check; a failure never stops the other checks. Messages are the vendors' own words with the
integration's secret values and any email or phone masked, so the output can be pasted into a
ticket.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from memberflow.config import Integration
from memberflow.delivery import MappingCheckError, check_mapping
from memberflow.masking import mask_text
from memberflow.model import field_types, member_fields
from pipelines.factory import feed_of


@dataclass(frozen=True)
class CheckResult:
    integration: str
    subject: str  # "source", "target", "fields", "source budget", "target budget"
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.integration} {self.subject}: {self.detail}"


def mapped_target_fields(integration: Integration) -> list[str]:
    """The target field names the integration's member mapping writes (the one place to change
    when target names are derived from a target mapping file instead)."""
    return member_fields([feed_of(integration)])


ClientOf = Callable[[Any], Any]  # an integration-file section -> its vendor client


def section_client(section: Any) -> Any:
    """The vendor client a source or target section configures (credentials from env vars)."""
    return section.resource().client()


def run_checks(
    integrations: list[Integration], client_of: ClientOf | None = None
) -> Iterator[CheckResult]:
    """Every check of every integration, in order, as each finishes; tests pass `client_of`."""
    for integration in integrations:
        yield from check_integration(integration, client_of or section_client)


def check_integration(integration: Integration, client_of: ClientOf) -> Iterator[CheckResult]:
    """Source connection, target connection (its list or account), fields, budgets."""
    results = _Results(integration.name, _secret_values(integration))
    source, source_failure = _client(client_of, integration.source)
    target, target_failure = _client(client_of, integration.target)
    try:
        if source_failure is not None:
            yield results.fail("source", f"{integration.source.kind}: {source_failure}")
        else:
            yield results.attempt("source", lambda: _source_reachable(source, integration))
        if target_failure is not None:
            yield results.fail("target", f"{integration.target.kind}: {target_failure}")
            yield results.fail("fields", "not checked: no target client")
        else:
            reached = results.attempt("target", lambda: _target_exists(target))
            yield reached
            if reached.ok:
                yield results.attempt("fields", lambda: _fields_exist(target, integration))
            else:
                yield results.fail("fields", "not checked: the target check failed")
        for side, client in (("source", source), ("target", target)):
            if client is not None:
                budget = results.attempt(f"{side} budget", lambda c=client: _budget(c))
                if budget.detail:  # no line for a vendor without a capped window
                    yield budget
    finally:
        for client in (source, target):
            if client is not None:
                _close(client)


class _Results:
    """Builds results for one integration; an exception becomes a FAIL with a safe message."""

    def __init__(self, integration: str, secrets: list[str]) -> None:
        self.integration, self.secrets = integration, secrets

    def fail(self, subject: str, detail: str) -> CheckResult:
        return CheckResult(self.integration, subject, False, self._safe(detail))

    def attempt(self, subject: str, check: Callable[[], str | tuple[bool, str]]) -> CheckResult:
        try:
            outcome = check()
        except Exception as exc:  # each check reports its own failure; the others still run
            return self.fail(subject, _reason(exc))
        ok, detail = outcome if isinstance(outcome, tuple) else (True, outcome)
        return CheckResult(self.integration, subject, ok, self._safe(detail))

    def _safe(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return mask_text(text)


def _client(client_of: ClientOf, section: Any) -> tuple[Any, str | None]:
    try:
        return client_of(section), None
    except Exception as exc:  # a missing env var, a bad setting: say so, don't crash the run
        return None, _reason(exc)


def _source_reachable(client: Any, integration: Integration) -> str:
    client.check_connection()
    return f"{integration.source.kind} connection"


def _target_exists(client: Any) -> str:
    client.check_connection()
    return f"{client.label} exists"


def _fields_exist(client: Any, integration: Integration) -> tuple[bool, str]:
    """Every mapped field exists on the target; one that can add custom fields creates the
    missing ones now (AC10: before the first sync), or fails naming those it has no room for."""
    wanted = mapped_target_fields(integration)
    capabilities = getattr(client, "capabilities", None)
    if not getattr(capabilities, "creates_fields", False):
        known = client.target_fields()
        missing = [name for name in wanted if name not in known]
        if missing:
            return False, f"missing on {client.label}: {', '.join(missing)}"
        return True, f"all {len(wanted)} mapped fields exist on {client.label}"
    try:
        created = check_mapping(client, wanted, field_types([feed_of(integration)]))
    except MappingCheckError as exc:
        return False, str(exc)
    made = f"created {', '.join(created)}; " if created else ""
    return True, f"{made}all {len(wanted)} mapped fields exist on {client.label}"


def _budget(client: Any) -> tuple[bool, str]:
    """'5000/day, 4983 left' (a FAIL when nothing is left); '' when the vendor has no cap."""
    budget = client.rate_budget() if hasattr(client, "rate_budget") else None
    if budget is None:
        return True, ""
    return budget.left > 0, f"{budget.limit}/{budget.window}, {budget.left} left"


def _close(client: Any) -> None:
    try:
        client.close()
    except Exception:  # closing is best effort; the checks are already reported
        pass


def _reason(exc: BaseException) -> str:
    summary = getattr(exc, "summary", None)
    text = summary() if callable(summary) else str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _secret_values(integration: Integration) -> list[str]:
    """The values of the integration's credential env vars, longest first (never printed)."""
    names = integration.source.env_vars() + integration.target.env_vars()
    values = [os.environ[n] for n in names if len(os.environ.get(n, "")) >= 4]
    return sorted(set(values), key=len, reverse=True)
