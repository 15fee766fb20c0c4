"""Event delivery against the real Heyloyalty emulator, with the BI import's answer lost in the
client's transport: after the server stored the events (read timeout, reset, cut-off body, a kill
between send and bookkeeping) nothing is sent twice; refused before processing (429, 503, no
connection) it is retried and sent exactly once (issue 6 item 4)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import duckdb
import httpx
import pytest

from memberflow.delivery import DeliverySettings, ensure_state
from memberflow.event_delivery import deliver_events
from resources.base import UpsertFlags
from resources.heyloyalty import HeyloyaltyClient
from sandbox.credentials import HEYLOYALTY_API_KEY, HEYLOYALTY_API_SECRET
from sandbox.heyloyalty import BI_PREFIX, LOYALTY_PREFIX

LIST, TRACKING = 4711, 99
COLUMNS = ["product_name", "amount", "date"]
EVENTS = 10
BATCH = 4
Fault = Callable[[httpx.BaseTransport, httpx.Request], httpx.Response]


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs, no handler catches it."""


def stored_then(raise_: Exception | type[BaseException]) -> Fault:
    """The server stores the import; the client never sees the answer."""

    def fault(inner: httpx.BaseTransport, request: httpx.Request) -> httpx.Response:
        inner.handle_request(request).read()
        raise raise_

    return fault


def stored_cut_off(inner: httpx.BaseTransport, request: httpx.Request) -> httpx.Response:
    """The server stores the import; its 200 answer arrives cut off half way."""
    body = inner.handle_request(request).read()
    return httpx.Response(200, content=body[: len(body) // 2])


def answered(status: int, **headers: str) -> Fault:
    """Answer without reaching the server (a proxy, a throttle, a restart)."""
    return lambda inner, request: httpx.Response(status, headers=headers, json={"error": "x"})


def unreachable(inner: httpx.BaseTransport, request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused")


class FaultyTransport(httpx.BaseTransport):
    """Forwards every request to the sandbox; the next BI imports meet `faults` in turn."""

    def __init__(self, *faults: Fault) -> None:
        self.inner = httpx.HTTPTransport()
        self.faults = list(faults)
        self.imports = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "/transaction/import/" not in request.url.path:
            return self.inner.handle_request(request)
        self.imports += 1
        if self.faults:
            return self.faults.pop(0)(self.inner, request)
        return self.inner.handle_request(request)


def client_for(sandbox, *faults: Fault, cls=HeyloyaltyClient) -> HeyloyaltyClient:
    return cls(
        base_url=sandbox.url + LOYALTY_PREFIX,
        bi_base_url=sandbox.url + BI_PREFIX,
        api_key=HEYLOYALTY_API_KEY,
        api_secret=HEYLOYALTY_API_SECRET,
        list_id=str(LIST),
        tracking_id=str(TRACKING),
        transport=FaultyTransport(*faults),
        sleep=lambda _: None,
        events_per_batch=BATCH,
    )


def settings(run_id: str) -> DeliverySettings:
    return DeliverySettings(
        match_on="email",
        import_type="create_and_update",
        reimport_unsubscribed=True,
        flags=UpsertFlags(),
        track_events=True,
        run_id=run_id,
    )


@pytest.fixture
def warehouse(sandbox):
    """A list warehouse with EVENTS events of members who are on the emulated list."""
    conn = duckdb.connect(":memory:")
    ensure_state(conn)
    conn.execute(
        """CREATE TABLE quarantine (integration VARCHAR, entity VARCHAR, stage VARCHAR,
               record_id VARCHAR, match_key VARCHAR, reason VARCHAR, payload VARCHAR,
               quarantined_at TIMESTAMPTZ DEFAULT current_timestamp, run_id VARCHAR);
           CREATE TABLE tracking_events (event_id VARCHAR, match_key VARCHAR, business_date DATE,
               product_name VARCHAR, amount VARCHAR, date VARCHAR, event_hash VARCHAR)"""
    )
    for n in range(3):
        email = f"kunde{n}@mail.dk"
        member = sandbox.heyloyalty.add_member(LIST, {"email": email})
        conn.execute(
            "INSERT INTO sync_state (match_key, member_id, fields_hash, action, acked_at, removed) "
            "VALUES (?, ?, 'h', 'create', current_timestamp, false)",
            [email, member["id"]],
        )
    for n in range(EVENTS):
        conn.execute(
            "INSERT INTO tracking_events VALUES (?, ?, DATE '2025-01-02', ?, '42.00', ?, ?)",
            [f"ev{n:02}", f"kunde{n % 3}@mail.dk", f"ev{n:02}", "2025-01-02 10:00:00", f"h{n}"],
        )
    yield conn
    conn.close()


def on_the_list(sandbox) -> Counter[str]:
    """How many times each event (by its product name) is in the list's activity feed."""
    return Counter(e["product_name"] for e in sandbox.heyloyalty.events(TRACKING))


def duplicates(sandbox) -> int:
    return sum(n - 1 for n in on_the_list(sandbox).values() if n > 1)


def run(conn, client, run_id: str, **kw):
    try:
        return deliver_events(conn, client, settings(run_id), COLUMNS, **kw)
    finally:
        client.close()


LOST_AFTER_STORING = [
    stored_then(httpx.ReadTimeout("timed out")),
    stored_then(httpx.RemoteProtocolError("Server disconnected without sending a response.")),
    stored_then(httpx.ReadError("[Errno 104] Connection reset by peer")),
    stored_cut_off,
]


@pytest.mark.parametrize("lost", LOST_AFTER_STORING, ids=["timeout", "closed", "reset", "cut"])
def test_a_lost_answer_after_the_list_stored_the_batch_duplicates_nothing(sandbox, warehouse, lost):
    first = run(warehouse, client_for(sandbox, lost), "run-1")
    assert (first.sent, first.uncertain, first.held) == (0, BATCH, BATCH)
    assert first.batches == 1  # it stopped at the uncertain batch: the rest is certainly unsent
    assert first.warnings and "resend_uncertain" in first.warnings[0]
    again = run(warehouse, client_for(sandbox), "run-2")
    assert (again.sent, again.uncertain, again.held) == (EVENTS - BATCH, 0, BATCH)
    assert again.acknowledged == EVENTS - BATCH  # the held ones are not claimed as acknowledged
    assert set(on_the_list(sandbox)) == {f"ev{n:02}" for n in range(EVENTS)}
    assert duplicates(sandbox) == 0
    assert run(warehouse, client_for(sandbox), "run-3").sent == 0


def test_a_kill_between_send_and_bookkeeping_resends_nothing(sandbox, warehouse):
    with pytest.raises(Killed):
        run(warehouse, client_for(sandbox, stored_then(Killed)), "run-1")
    [(status,)] = warehouse.execute("SELECT status FROM event_batches").fetchall()
    assert status == "in_flight"  # booked, committed, before the POST
    after = run(warehouse, client_for(sandbox), "run-2")
    assert (after.uncertain, after.held, after.sent) == (BATCH, BATCH, EVENTS - BATCH)
    assert duplicates(sandbox) == 0 and sum(on_the_list(sandbox).values()) == EVENTS


@pytest.mark.parametrize(
    "refused",
    [answered(503), answered(429, **{"Retry-After": "0"}), unreachable],
    ids=["503", "429", "connect"],
)
def test_an_import_refused_before_processing_is_retried_and_sent_exactly_once(
    sandbox, warehouse, refused
):
    client = client_for(sandbox, refused)
    report = run(warehouse, client, "run-1")
    assert (report.sent, report.uncertain, report.held) == (EVENTS, 0, 0)
    assert client.calls.retries == 1
    assert sorted(on_the_list(sandbox).values()) == [1] * EVENTS


def test_held_events_are_resent_only_when_a_user_asks(sandbox, warehouse):
    lost = run(warehouse, client_for(sandbox, answered(502)), "run-1")  # the list stored nothing
    assert lost.uncertain == BATCH and sum(on_the_list(sandbox).values()) == 0
    kept = run(warehouse, client_for(sandbox), "run-2")
    assert (kept.sent, kept.held, kept.released) == (EVENTS - BATCH, BATCH, 0)
    resent = run(warehouse, client_for(sandbox), "run-3", resend_uncertain=True)
    assert (resent.released, resent.sent, resent.held) == (BATCH, BATCH, 0)
    assert sorted(on_the_list(sandbox).values()) == [1] * EVENTS
    statuses = dict(
        warehouse.execute("SELECT status, count(*) FROM event_batches GROUP BY 1").fetchall()
    )
    assert statuses == {"released": 1, "done": 3}


def test_resend_uncertain_releases_only_batches_held_before_the_run(sandbox, warehouse):
    """A user who checked batch A and asks to resend it must not also resend batch B, which a
    run killed after the list stored it left in flight meanwhile."""
    run(warehouse, client_for(sandbox, answered(502)), "run-1")  # A: uncertain, nothing stored
    with pytest.raises(Killed):  # B: stored by the list, the run dies before booking it
        run(warehouse, client_for(sandbox, stored_then(Killed)), "run-2")
    resent = run(warehouse, client_for(sandbox), "run-3", resend_uncertain=True)
    assert (resent.released, resent.uncertain) == (BATCH, BATCH)  # A released, B found and held
    assert duplicates(sandbox) == 0
    assert sorted(on_the_list(sandbox).values()) == [1] * EVENTS


class ReadableFeed(HeyloyaltyClient):
    """A target that can read its feed back (as a future one might): resolves exactly."""

    feed: Callable[[], Counter[str]]

    def events_present(self, match_on, events):
        stored = self.feed()
        return {event_id for event_id, row in events.items() if row["product_name"] in stored}


@pytest.mark.parametrize("stored", [True, False], ids=["list-has-them", "list-has-none"])
def test_a_target_that_can_tell_resolves_an_uncertain_batch_exactly(sandbox, warehouse, stored):
    fault = stored_then(httpx.ReadTimeout("timed out")) if stored else answered(504)
    run(warehouse, client_for(sandbox, fault), "run-1")
    ReadableFeed.feed = staticmethod(lambda: on_the_list(sandbox))
    report = run(warehouse, client_for(sandbox, cls=ReadableFeed), "run-2")
    assert report.resolved_present == (BATCH if stored else 0)
    assert report.released == (0 if stored else BATCH)
    assert report.held == 0 and report.acknowledged == EVENTS
    assert sorted(on_the_list(sandbox).values()) == [1] * EVENTS
