"""The monthly call ledger (AF8): calls kept per account and calendar month across clients and
processes, by endpoint, checked against a budget before a call; the file never names the
account."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from resources.base import CallCounter
from resources.call_ledger import MonthlyBudgetSpent, MonthlyCallLedger, month_of


def test_calls_add_up_per_month_and_endpoint_across_clients(tmp_path):
    ledger = MonthlyCallLedger.for_account("flexmail", "204518", root=tmp_path)
    first, second = CallCounter(ledger=ledger), CallCounter(ledger=ledger)
    first.add("contacts/create")
    first.add("contacts/create")
    second.add("contacts")
    again = MonthlyCallLedger.for_account("flexmail", "204518", root=tmp_path)
    assert again.used() == 3
    assert again.by_endpoint() == {"contacts": 1, "contacts/create": 2}
    assert first.total == 2 and second.total == 1  # each run still reports its own
    last_month = datetime(2026, 10, 31, 23, 59, tzinfo=UTC)
    again.add("contacts", 5, at=last_month)
    assert again.used() == 3 and again.used(month_of(last_month)) == 5
    assert "204518" not in again.path.name


def test_the_budget_is_checked_before_a_call(tmp_path):
    ledger = MonthlyCallLedger.for_account("flexmail", "1", root=tmp_path)
    ledger.add("contacts", 9)
    ledger.check("flexmail", 10)  # one more fits
    ledger.check("flexmail", None, needed=1000)  # no budget: never refused
    with pytest.raises(MonthlyBudgetSpent, match="monthly budget of 10 API calls is spent"):
        ledger.check("flexmail", 10, needed=2)
