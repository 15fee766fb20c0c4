"""The pull-back's cursor on the target's clock (issue 10, no-change run): a list whose clock is
ten minutes off loses no unsubscribe, and a pull right after a pull re-reads only what changed,
not the last two minutes of the list's writes. Real HTTP to the Heyloyalty emulator (uvicorn)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from memberflow import delivery
from resources.heyloyalty import HeyloyaltyClient
from sandbox.server import SandboxServer
from tests.list_state import heyloyalty_client

LIST = 4711


@pytest.fixture
def sandbox():
    with SandboxServer(seed=5, customers=10, rate_limits=False) as server:
        yield server


def make_client(sandbox: SandboxServer) -> HeyloyaltyClient:
    return heyloyalty_client(sandbox, LIST)


def fill(sandbox: SandboxServer, n: int, age_seconds: float) -> list[str]:
    """`n` members on the list, their last change `age_seconds` ago on the list's clock."""
    emails = [f"m{i}@clock.dk" for i in range(n)]
    for email in emails:
        sandbox.heyloyalty.add_member(LIST, {"email": email})
        sandbox.heyloyalty.backdate(LIST, email, age_seconds)
    return emails


@pytest.mark.parametrize("ahead_minutes", [-10, 10])
def test_the_client_reads_the_lists_clock_from_its_date_header(sandbox, ahead_minutes):
    sandbox.heyloyalty.set_clock_ahead(ahead_minutes * 60)
    client = make_client(sandbox)
    assert client.clock_ahead() is None  # nothing answered yet
    client.member_count()
    ahead = client.clock_ahead()
    assert ahead is not None
    # Never above the truth (a lower bound), and the list's own clock, not the machine's: the
    # sandbox's answers carry the list's Date only (uvicorn's is off). Minutes tell the two
    # apart; the seconds of rounding and a loaded machine are not asserted.
    truth = timedelta(minutes=ahead_minutes)
    assert ahead <= truth
    assert abs(ahead - truth) < timedelta(minutes=5)


@pytest.mark.parametrize("ahead_minutes", [-10, 10])
def test_a_list_clock_ten_minutes_off_loses_no_unsubscribe(sandbox, ahead_minutes):
    sandbox.heyloyalty.set_clock_ahead(ahead_minutes * 60)
    emails = fill(sandbox, 5, age_seconds=3600)
    conn = duckdb.connect()
    client = make_client(sandbox)
    first = delivery.pull_feedback(conn, client, "email")
    assert first["pulled"] == 5

    sandbox.heyloyalty.unsubscribe(LIST, email=emails[2])  # stamped on the list's clock
    started = datetime.now(UTC)
    second = delivery.pull_feedback(conn, make_client(sandbox), "email")

    assert second == {"pulled": 1, "unsubscribed": 1, "bounced": 0}
    (status,) = conn.execute(
        "SELECT status FROM remote_members WHERE match_key = ?", [emails[2]]
    ).fetchone()
    assert status == "unsubscribed"
    # the stored cursor is on the list's clock (where this read began there, less a few
    # seconds), never past the list's present; not our clock less the two-minute fallback a
    # target without a Date gets. Minutes tell these apart; seconds are not asserted.
    cursor = datetime.fromisoformat(delivery.list_state(conn, "last_pull"))
    list_started = started + timedelta(minutes=ahead_minutes)
    assert cursor <= datetime.now(UTC) + timedelta(minutes=ahead_minutes)
    assert cursor > list_started - delivery.PULL_OVERLAP / 2


def test_a_pull_right_after_a_pull_rereads_only_what_changed(sandbox):
    """The list's writes of a minute ago (e.g. a large first sync) are not read again: the
    window starts where the last read began on the list's clock, less seconds, not minutes."""
    emails = fill(sandbox, 20, age_seconds=60)
    conn = duckdb.connect()
    assert delivery.pull_feedback(conn, make_client(sandbox), "email")["pulled"] == 20
    assert delivery.pull_feedback(conn, make_client(sandbox), "email")["pulled"] == 0
    sandbox.heyloyalty.hard_bounce(LIST, emails[7])
    assert delivery.pull_feedback(conn, make_client(sandbox), "email") == {
        "pulled": 1,
        "unsubscribed": 0,
        "bounced": 1,
    }
