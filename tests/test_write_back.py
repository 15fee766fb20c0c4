"""Feedback kept once and written back once (AF3-AF5), with a fake two-way source: a click seen
three times is one write-back; a crash between a call and its bookkeeping resumes with a look;
a member only on the list is created unless the source has it; write-back off decides, never
replays; members created at the source are adopted, not created again on the list."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import duckdb
import pytest

from memberflow import feedback_log, write_back
from memberflow.delivery import ensure_state
from memberflow.webhook_store import WebhookStore, feedback_events
from resources.base import VendorError
from resources.feedback import Feedback
from resources.source import WriteBack, WriteBackResult

AT = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)
MEMBERS = "stg_demo__customers"


class FakeSource:
    """Applies write-backs to dicts; `fail_after` raises a transient error after N results."""

    vendor = "fake"
    write_back_actions = frozenset({"unsubscribe", "record_click", "create"})

    def __init__(self) -> None:
        self.flags: dict[str, bool] = {"11": True, "12": True}
        self.clicks: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.seen: list[WriteBack] = []
        self.fail_after: int | None = None

    def write_back(
        self, changes: Sequence[WriteBack]
    ) -> Iterator[tuple[WriteBack, WriteBackResult]]:
        for wb in changes:
            if self.fail_after is not None and len(self.seen) >= self.fail_after:
                raise VendorError("fake", 0, "could not reach fake: connection refused")
            self.seen.append(wb)
            yield wb, self._apply(wb)

    def _apply(self, wb: WriteBack) -> WriteBackResult:
        if wb.action == "unsubscribe":
            was = self.flags.get(wb.record_id or "")
            self.flags[wb.record_id or ""] = False
            return WriteBackResult("done" if was else "already", wb.record_id)
        if wb.action == "record_click":
            click = (wb.record_id or "", wb.detail["link_url"])
            if wb.resumed and click in self.clicks:
                return WriteBackResult("already", wb.record_id)
            self.clicks.append(click)
            return WriteBackResult("done", str(len(self.clicks)))
        self.created.append(dict(wb.values))
        self.flags[f"new-{len(self.created)}"] = True  # created with the flag set
        return WriteBackResult("done", f"new-{len(self.created)}")


@pytest.fixture
def conn() -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    conn.execute(
        f"""CREATE TABLE {MEMBERS} AS SELECT * FROM (VALUES
            ('11', 'anna@kantoor.be', false), ('12', 'anna@kantoor.be', false),
            ('13', 'bart@kantoor.be', false), ('14', 'gone@kantoor.be', true))
            t(record_id, match_key, deleted)"""
    )
    ensure_state(conn)
    return conn


def setup(enabled: bool = True) -> write_back.WriteBackSetup:
    return write_back.WriteBackSetup(
        integration="demo",
        enabled=enabled,
        members_table=MEMBERS,
        actions=FakeSource.write_back_actions,
        to_source=lambda values: {"Email": values.get("email"), "Name": values.get("name")},
    )


def click(email: str = "bart@kantoor.be", at: datetime = AT) -> Feedback:
    detail = {"campaign_id": "7", "campaign_name": "Nieuwsbrief", "link_url": "https://x.be"}
    return Feedback("clicked", email, "501", at, detail)


def run(conn, source, enabled: bool = True, run_id: str = "r1") -> write_back.WriteBackReport:
    report = write_back.WriteBackReport()
    write_back.plan(conn, setup(enabled), run_id, report)
    write_back.apply(conn, source, "demo", run_id, report)
    return report


def test_a_click_seen_three_times_is_recorded_once(conn):
    source = FakeSource()
    for run_id in ("r1", "r2", "r3"):
        feedback_log.record(conn, [click()], "webhook", run_id)
        run(conn, source, run_id=run_id)
    assert source.clicks == [("13", "https://x.be")]
    seen = conn.execute("SELECT seen FROM feedback").fetchall()
    assert seen == [(3,)]


def test_two_clicks_at_different_moments_are_two_records(conn):
    source = FakeSource()
    feedback_log.record(conn, [click(), click(at=AT.replace(minute=45))], "webhook", "r1")
    run(conn, source)
    assert len(source.clicks) == 2


def test_an_unsubscribe_reaches_every_live_record_of_the_member(conn):
    source = FakeSource()
    feedback_log.record(
        conn, [Feedback("unsubscribed", "anna@kantoor.be", "9", AT)], "webhook", "r"
    )
    report = run(conn, source)
    assert source.flags == {"11": False, "12": False}
    assert report.results == {"unsubscribe": {"done": 2}}


def test_a_crash_between_the_call_and_its_bookkeeping_resumes_with_a_look(conn):
    source = FakeSource()
    feedback_log.record(conn, [click()], "webhook", "r1")
    report = write_back.WriteBackReport()
    write_back.plan(conn, setup(), "r1", report)
    # the first run marked the write-back attempted, the source recorded the click, the process
    # died before the result was kept
    conn.execute("UPDATE write_backs SET state = 'attempted', attempts = 1")
    source.clicks.append(("13", "https://x.be"))
    report = write_back.WriteBackReport()
    write_back.apply(conn, source, "demo", "r2", report)
    assert source.seen[0].resumed is True
    assert source.clicks == [("13", "https://x.be")]
    assert report.results == {"record_click": {"already": 1}} and report.resumed == 1


def test_a_transient_failure_leaves_the_rest_open_for_the_next_run(conn):
    source = FakeSource()
    source.fail_after = 1
    feedback_log.record(
        conn,
        [Feedback("unsubscribed", "anna@kantoor.be", "9", AT), click()],
        "webhook",
        "r1",
    )
    report = run(conn, source)
    assert report.transient_error and "could not reach fake" in report.transient_error
    assert write_back.open_count(conn, "demo") == 2
    source.fail_after = None
    report = run(conn, source, run_id="r2")
    assert write_back.open_count(conn, "demo") == 0
    assert source.flags == {"11": False, "12": False} and len(source.clicks) == 1


def test_a_member_only_on_the_list_is_created_and_adopted(conn):
    source = FakeSource()
    only = Feedback("only_on_target", "new@firma.be", "777", AT, values={"name": "Peeters"})
    feedback_log.record(conn, [only], "listing", "r1")
    run(conn, source)
    assert source.created == [{"Email": "new@firma.be", "Name": "Peeters"}]
    state = conn.execute("SELECT member_id, fields_hash, action FROM sync_state").fetchall()
    assert state == [("777", None, "adopt")]


def test_a_member_only_on_the_list_the_source_has_is_not_created(conn):
    source = FakeSource()
    only = Feedback("only_on_target", "gone@kantoor.be", "778", AT)
    feedback_log.record(conn, [only], "listing", "r1")
    report = run(conn, source)
    assert source.created == []
    assert list(report.not_written) == ["the source has this member already (record 14)"]


def test_with_write_back_off_feedback_is_decided_and_never_replayed(conn):
    source = FakeSource()
    feedback_log.record(conn, [click()], "webhook", "r1")
    run(conn, source, enabled=False)
    run(conn, source, enabled=True, run_id="r2")
    assert source.seen == []
    (decided,) = conn.execute("SELECT decided FROM feedback_decisions").fetchall()
    assert decided == ("write-back off",)


def test_bounces_are_not_written_back_and_mailed_once(conn):
    bounce = Feedback("bounced", "bart@kantoor.be", "501", AT, {"bounce_type": "hard"})
    feedback_log.record(conn, [bounce], "read", "r1")
    run(conn, FakeSource())
    rows = feedback_log.unmailed_bounces(conn)
    assert [(r["email"], r["bounce_type"]) for r in rows] == [("bart@kantoor.be", "hard")]
    feedback_log.mark_mailed(conn, [r["key"] for r in rows])
    assert feedback_log.unmailed_bounces(conn) == []


def test_webhook_feedback_is_copied_once_then_consumed(conn, tmp_path):
    store = WebhookStore(tmp_path / "fb.sqlite")
    store.add("sha-1", feedback_events([click()]), AT)
    assert feedback_log.ingest_webhooks(conn, store, "r1") == 1
    assert store.last_pending_seq() is None
    store.add("sha-2", feedback_events([click()]), AT)  # the same click in another body
    assert feedback_log.ingest_webhooks(conn, store, "r2") == 0


def test_an_unsubscribe_is_noted_for_delivery(conn):
    feedback_log.record(conn, [Feedback("unsubscribed", "bart@kantoor.be", "501", AT)], "w", "r")
    assert feedback_log.note_unsubscribes(conn) == 1
    rows = conn.execute("SELECT member_id, match_key, status FROM remote_members").fetchall()
    assert rows == [("501", "bart@kantoor.be", "unsubscribed")]
    assert feedback_log.note_unsubscribes(conn) == 0
    derived = feedback_log.from_remote_unsubscribes(conn)
    assert [(f.kind, f.email) for f in derived] == [("unsubscribed", "bart@kantoor.be")]


def test_the_key_of_feedback_ignores_how_it_arrived_but_not_when():
    assert click().key == click().key
    assert click().key != click(at=AT.replace(second=1)).key
    only = Feedback("only_on_target", "X@firma.be", "1", AT)
    assert only.key == Feedback("only_on_target", "x@firma.be", "2", AT.replace(hour=1)).key


def test_values_of_a_listed_member_are_inverted_to_source_field_names():
    from memberflow.mapping import EntityMapping, FieldRule
    from memberflow.target_mapping import TargetField

    columns = [
        TargetField("name", "last_name"),
        TargetField("language", "language", values=(("N", "nl"), ("F", "fr"))),
    ]
    members = EntityMapping(
        source="fake",
        entity="customers",
        role="members",
        record_id="Id",
        fields=(
            FieldRule("last_name", path="Name"),
            FieldRule("language", path="Language"),
            FieldRule("email", path="Email", type="email"),
            FieldRule("city", path="Address.City"),
        ),
    )
    convert = write_back.source_values_of(columns, members)
    values = {"name": "Claes", "language": "fr", "email": "c@x.be", "city": "Gent"}
    assert convert(values) == {"Name": "Claes", "Language": "F", "Email": "c@x.be"}


def test_each_integration_on_a_list_decides_the_lists_feedback_for_itself(conn):
    """A one-way integration sharing the list never decides (or applies) for a two-way one."""
    feedback_log.record(conn, [click()], "webhook", "r1")
    one_way = write_back.WriteBackSetup(
        integration="other",
        enabled=False,
        members_table="stg_other__customers",
        actions=frozenset(),
        to_source=dict,
    )
    write_back.plan(conn, one_way, "r1", write_back.WriteBackReport())
    source = FakeSource()
    run(conn, source)
    assert source.clicks == [("13", "https://x.be")]
    decided = conn.execute("SELECT integration, decided FROM feedback_decisions ORDER BY 1")
    assert decided.fetchall() == [
        ("demo", "planned: record_click on 1 record(s)"),
        ("other", "write-back off"),
    ]


def test_feedback_for_a_member_just_created_at_the_source_waits_for_its_record(conn):
    """An unsubscribe right after the member was created at the source from the list: the
    record is not extracted yet, so the one the create made is used; without either, the
    feedback waits (undecided) instead of being given up."""
    source = FakeSource()
    only = Feedback("only_on_target", "new@firma.be", "777", AT)
    feedback_log.record(conn, [only], "listing", "r1")
    run(conn, source)
    now = datetime.now(UTC)
    feedback_log.record(conn, [Feedback("unsubscribed", "new@firma.be", "777", now)], "w", "r2")
    report = run(conn, source, run_id="r2")
    assert report.results == {"unsubscribe": {"done": 1}} and source.flags["new-1"] is False
    feedback_log.record(conn, [Feedback("clicked", "later@firma.be", "778", now)], "w", "r3")
    report = run(conn, source, run_id="r3")
    assert report.waiting == 1 and write_back.open_count(conn, "demo") == 0
    assert feedback_log.undecided(conn, "demo")[0]["email"] == "later@firma.be"


def test_a_refused_or_skipped_write_back_is_reported_with_its_reason(conn):
    class Refusing(FakeSource):
        def _apply(self, wb: WriteBack) -> WriteBackResult:
            return WriteBackResult("skipped", reason="Newsletter not writable: read-only field")

    feedback_log.record(conn, [Feedback("unsubscribed", "bart@kantoor.be", "9", AT)], "w", "r")
    report = run(conn, Refusing())
    assert report.problems == [
        {
            "action": "unsubscribe",
            "status": "skipped",
            "record": "13",
            "reason": "Newsletter not writable: read-only field",
        }
    ]


def test_a_click_goes_on_the_record_that_consents_now(conn):
    """Two relations share the email, the lower one unticked: the click belongs to the one the
    member was sent for."""
    conn.execute(
        f"""CREATE OR REPLACE TABLE {MEMBERS} AS SELECT * FROM (VALUES
            ('21', 'duo@kantoor.be', false, false), ('22', 'duo@kantoor.be', false, true))
            t(record_id, match_key, deleted, consent)"""
    )
    source = FakeSource()
    feedback_log.record(conn, [click("duo@kantoor.be")], "webhook", "r1")
    run(conn, source)
    assert source.clicks == [("22", "https://x.be")]


def test_an_integration_joining_a_list_later_never_replays_old_feedback(conn):
    """Feedback the list reported before an integration first handled it is decided as such;
    what arrives in its first run and after is handled."""
    feedback_log.record(conn, [click()], "webhook", "earlier-run")
    assert feedback_log.join(conn, "demo", "r1") == 1
    feedback_log.record(conn, [click(at=AT.replace(minute=50))], "webhook", "r1")
    assert feedback_log.join(conn, "demo", "r1") == 0
    source = FakeSource()
    report = write_back.WriteBackReport()
    write_back.plan(conn, setup(), "r1", report)
    write_back.apply(conn, source, "demo", "r1", report)
    assert len(source.clicks) == 1
    assert feedback_log.join(conn, "demo", "r2") == 0  # joined once, for good
