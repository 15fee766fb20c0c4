"""What members take from their events: the `required` filter and `latest` fields."""

from __future__ import annotations

import duckdb
import pytest
from pydantic import ValidationError

from memberflow import member_events as facts
from memberflow.mapping import EntityMapping, FieldRule
from memberflow.member_events import LatestFields, MemberEventSettings
from memberflow.model import Feed

NAME = "club"


def _feed(settings: MemberEventSettings | None) -> Feed:
    members = EntityMapping("src", "persons", "members", "Id", (FieldRule("email", "Email"),))
    events = EntityMapping(
        "src",
        "registrations",
        "events",
        "Id",
        (FieldRule("date", "Date"), FieldRule("proof", "Id"), FieldRule("name", "Name")),
        customer_id="PersonId",
        customer_ids=("PersonId", "OwnerId"),
        cancelled="Cancelled",
    )
    return Feed(NAME, members, (events,), member_events=settings)


def _events(conn: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    conn.execute(
        """CREATE TABLE member_events (match_key VARCHAR, integration VARCHAR, entity VARCHAR,
               event_id VARCHAR, live BOOLEAN, date VARCHAR, proof VARCHAR, name VARCHAR)"""
    )
    conn.executemany("INSERT INTO member_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("CREATE TABLE member_profile AS SELECT DISTINCT match_key FROM member_events")


def test_latest_reads_every_field_from_one_event_the_newest_live_one():
    conn = duckdb.connect()
    _events(
        conn,
        [
            ("a@x", NAME, "registrations", "e1", True, "2026-01-05", "AC-1", "Old"),
            ("a@x", NAME, "registrations", "e2", True, "2026-03-01", "AC-2", None),  # newest
            ("a@x", NAME, "registrations", "e3", False, "2026-06-01", "AC-3", "Cancelled"),
            ("b@x", "other", "registrations", "e4", True, "2026-05-01", "AC-4", "Not ours"),
        ],
    )
    rule = LatestFields(
        entities=["registrations"], by="date", fields={"last_date": "date", "last_name": "name"}
    )
    facts.apply_latest(conn, [_feed(MemberEventSettings(latest=[rule]))])
    rows = dict(
        (k, (d, n))
        for k, d, n in conn.execute(
            "SELECT match_key, last_date, last_name FROM member_profile"
        ).fetchall()
    )
    # the newest live event's name is empty: it stays empty, never an older event's value
    assert rows["a@x"] == ("2026-03-01", None)
    assert rows["b@x"] == (None, None)  # another integration's events are not this rule's


def test_a_tie_on_the_date_is_broken_the_same_way_every_time():
    conn = duckdb.connect()
    _events(
        conn,
        [
            ("a@x", NAME, "memberships", "m1", True, "2026-03-01", "Gold", "Gold"),
            ("a@x", NAME, "registrations", "r1", True, "2026-03-01", "AC-9", "Swim"),
        ],
    )
    rule = LatestFields(
        entities=["registrations", "memberships"], by="date", fields={"proof_of": "proof"}
    )
    facts.apply_latest(conn, [_feed(MemberEventSettings(latest=[rule]))])
    ((proof,),) = conn.execute("SELECT proof_of FROM member_profile").fetchall()
    assert proof == "Gold"  # ties: by entity name, then the highest event id


def test_required_counts_live_events_and_members_already_on_the_target():
    conn = duckdb.connect()
    conn.execute(
        """CREATE TEMP TABLE event_links AS SELECT * FROM (VALUES
               ('club', 'registrations', '1', 'e1', true),
               ('club', 'registrations', '2', 'e2', false)) t(integration, entity, customer,
               event_id, live)"""
    )
    feed = _feed(MemberEventSettings(required=["registrations"]))
    condition = facts.required_filter(conn, [feed])
    conn.execute(
        """CREATE TABLE records AS SELECT * FROM (VALUES
               ('club', '1', 'one@x'), ('club', '2', 'two@x'), ('club', '3', 'three@x'))
               t(integration, record_id, match_key)"""
    )
    kept = {
        r for (r,) in conn.execute(f"SELECT record_id FROM records WHERE {condition}").fetchall()
    }
    assert kept == {"1"}  # a cancelled registration alone makes nobody a contact
    conn.execute("CREATE TABLE sync_state (match_key VARCHAR, removed BOOLEAN)")
    conn.execute("INSERT INTO sync_state VALUES ('two@x', false)")
    condition = facts.required_filter(conn, [feed])
    kept = {
        r for (r,) in conn.execute(f"SELECT record_id FROM records WHERE {condition}").fetchall()
    }
    assert kept == {"1", "2"}  # once on the target, kept (and taken out of its groups)


def test_settings_refuse_names_memberflow_keeps_itself():
    with pytest.raises(ValidationError):
        MemberEventSettings(
            latest=[LatestFields(entities=["registrations"], by="date", fields={"withdrawn": "x"})]
        )
    with pytest.raises(ValidationError):
        MemberEventSettings(required=["Registrations; DROP"])


def test_a_member_qualifies_as_a_whole_so_its_profile_does_not_change_once_on_the_target():
    """Two people sharing an email, one of them registered: both records make the member,
    before and after it reaches the target (a second run must send nothing)."""
    from memberflow import model

    conn = duckdb.connect()
    conn.execute(
        """CREATE TABLE stg_club_persons AS SELECT * FROM (VALUES
               ('1', 'a@x', TIMESTAMPTZ '2026-01-01', true, true, false, 'a@x', NULL),
               ('2', 'a@x', TIMESTAMPTZ '2026-02-01', true, true, false, 'a@x', NULL),
               ('3', 'c@x', TIMESTAMPTZ '2026-01-01', true, true, false, 'c@x', NULL))
               t(record_id, match_key, modified, consent, ever_consented, deleted, email,
                 external_id)"""
    )
    conn.execute(
        """CREATE TEMP TABLE event_links AS SELECT * FROM (VALUES
               ('club', 'registrations', '1', 'e1', true)) t(integration, entity, customer,
               event_id, live)"""
    )
    feed = _feed(MemberEventSettings(required=["registrations"]))
    model._build_member_records(conn, [feed], facts.required_filter(conn, [feed]))
    records = conn.execute("SELECT record_id FROM member_records ORDER BY 1").fetchall()
    assert records == [("1",), ("2",)]  # c@x was never registered: no contact
