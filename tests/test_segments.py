"""Date-trigger segments (TX5) and their consent/push gates (TX4) on fixed dates.

Every test builds an in-memory `member_profile` with the canonical column types (birthday DATE,
datetimes TIMESTAMPTZ, flags BOOLEAN) and a session timezone that is neither UTC nor Moscow, so a
result that leaned on the machine's zone would show.
"""

from __future__ import annotations

from datetime import date, datetime

import duckdb
import pytest
from pydantic import ValidationError

from memberflow.segments import SegmentError, SegmentSettings, build_segments

COLUMNS = {
    "match_key": "VARCHAR",
    "birthday": "DATE",
    "card_installed_at": "TIMESTAMPTZ",
    "last_visit_at": "TIMESTAMPTZ",
    "consent_mailing": "BOOLEAN",
    "push_allowed": "BOOLEAN",
    "visits_total": "DOUBLE",
    "withdrawn": "BOOLEAN",
}
MOSCOW = "Europe/Moscow"


def profile(rows: list[dict], columns: dict[str, str] = COLUMNS) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'America/Los_Angeles'")
    conn.execute(
        "CREATE TABLE member_profile (" + ", ".join(f'"{n}" {t}' for n, t in columns.items()) + ")"
    )
    for row in rows:
        names = list(row)
        conn.execute(
            f"INSERT INTO member_profile ({', '.join(names)}) "
            f"VALUES ({', '.join('?' for _ in names)})",
            [row[n] for n in names],
        )
    return conn


def segment(name: str, requires: str | list[str] | None = None, **rule) -> SegmentSettings:
    raw: dict = {"name": name, "rule": rule}
    if requires is not None:
        raw["requires"] = requires
    return SegmentSettings.model_validate(raw)


def members_of(
    conn: duckdb.DuckDBPyConnection, seg: SegmentSettings, today: date, tz: str = "UTC"
) -> set[str]:
    build_segments(conn, [seg], today, tz)
    rows = conn.execute(
        "SELECT match_key FROM segment_members WHERE group_name = ?", [seg.name]
    ).fetchall()
    return {r[0] for r in rows}


def birthdays(**by_key: str) -> duckdb.DuckDBPyConnection:
    return profile([{"match_key": k, "birthday": v} for k, v in by_key.items()])


# --- anniversary: this month ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (date(2026, 3, 1), {"mar1", "mar31"}),
        (date(2026, 3, 31), {"mar1", "mar31"}),
        (date(2026, 4, 1), {"apr1"}),
        (date(2026, 2, 28), {"feb29"}),
        (date(2026, 12, 31), set()),
    ],
)
def test_birthday_this_month_follows_the_calendar_month(today, expected):
    conn = birthdays(mar1="1980-03-01", mar31="1975-03-31", apr1="1990-04-01", feb29="1992-02-29")
    seg = segment("birthday_this_month", anniversary_of="birthday", within="month")
    assert members_of(conn, seg, today) == expected


# --- anniversary: within N days ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "inside"),
    [
        (date(2026, 3, 3), False),  # the 10th is 7 days away: today+6 is the 9th
        (date(2026, 3, 4), True),  # enters: today+6 is the 10th
        (date(2026, 3, 7), True),
        (date(2026, 3, 10), True),  # the day itself
        (date(2026, 3, 11), False),  # leaves the day after
    ],
)
def test_birthday_enters_and_leaves_the_7_day_window(today, inside):
    conn = birthdays(anna="1988-03-10")
    seg = segment("birthday_next_7_days", anniversary_of="birthday", within_days=7)
    assert members_of(conn, seg, today) == ({"anna"} if inside else set())


def test_birthday_window_crosses_a_month_boundary():
    conn = birthdays(feb_end="1990-02-27", mar_start="1990-03-02", mar_late="1990-03-04")
    seg = segment("soon", anniversary_of="birthday", within_days=7)
    assert members_of(conn, seg, date(2026, 2, 26)) == {"feb_end", "mar_start", "mar_late"}
    assert members_of(conn, seg, date(2026, 2, 28)) == {"mar_start", "mar_late"}


def test_birthday_window_wraps_from_december_into_january():
    conn = birthdays(
        dec27="1970-12-27", dec28="1970-12-28", dec31="1999-12-31", jan3="2001-01-03",
        jan4="2001-01-04",
    )  # fmt: skip
    seg = segment("soon", anniversary_of="birthday", within_days=7)
    assert members_of(conn, seg, date(2026, 12, 28)) == {"dec28", "dec31", "jan3"}
    assert members_of(conn, seg, date(2026, 12, 29)) == {"dec31", "jan3", "jan4"}
    assert members_of(conn, seg, date(2027, 1, 4)) == {"jan4"}


@pytest.mark.parametrize(
    ("today", "inside"),
    [
        (date(2027, 2, 21), False),  # window 21..27: 2027 has no 29 Feb, the day is the 28th
        (date(2027, 2, 22), True),  # window 22..28 reaches the 28th
        (date(2027, 2, 28), True),
        (date(2027, 3, 1), False),  # passed; the next one is 29 Feb 2028
        (date(2028, 2, 22), False),  # leap year: window 22..28 stops before the 29th
        (date(2028, 2, 23), True),
        (date(2028, 2, 29), True),
        (date(2028, 3, 1), False),
    ],
)
def test_born_on_29_february(today, inside):
    conn = birthdays(leap="1996-02-29")
    seg = segment("soon", anniversary_of="birthday", within_days=7)
    assert members_of(conn, seg, today) == ({"leap"} if inside else set())


def test_one_day_window_is_today_only_and_empty_birthdays_stay_out():
    conn = profile(
        [
            {"match_key": "today", "birthday": "1990-06-15"},
            {"match_key": "unknown", "birthday": None},
        ]
    )
    seg = segment("birthday_today", anniversary_of="birthday", within_days=1)
    assert members_of(conn, seg, date(2026, 6, 15)) == {"today"}
    assert members_of(conn, seg, date(2026, 6, 14)) == set()


def test_anniversary_of_a_datetime_uses_the_local_date():
    # Card installed 2025-02-28 21:30 UTC = 2025-03-01 00:30 Moscow: its anniversary is 1 March.
    conn = profile([{"match_key": "m", "card_installed_at": "2025-02-28 21:30:00+00"}])
    seg = segment("card_anniversary", anniversary_of="card_installed_at", within_days=1)
    assert members_of(conn, seg, date(2026, 3, 1), MOSCOW) == {"m"}
    assert members_of(conn, seg, date(2026, 2, 28), MOSCOW) == set()
    assert members_of(conn, seg, date(2026, 2, 28), "UTC") == {"m"}


# --- since: within N days ---------------------------------------------------------------------


def test_card_installed_in_the_last_n_days_counts_today_and_the_days_before():
    conn = profile(
        [
            {"match_key": "mar1", "card_installed_at": "2026-03-01 09:00:00+03"},
            {"match_key": "mar7", "card_installed_at": "2026-03-07 23:59:00+03"},
            {"match_key": "feb28", "card_installed_at": "2026-02-28 12:00:00+03"},
            {"match_key": "future", "card_installed_at": "2026-03-08 10:00:00+03"},
            {"match_key": "never", "card_installed_at": None},
        ]
    )
    seg = segment("new_card_7_days", since="card_installed_at", within_days=7)
    assert members_of(conn, seg, date(2026, 3, 7), MOSCOW) == {"mar1", "mar7"}
    assert members_of(conn, seg, date(2026, 3, 8), MOSCOW) == {"mar7", "future"}


def test_timezone_edge_moscow_midnight_is_the_previous_day_in_utc():
    # 2026-03-01 00:30 in Moscow is 2026-02-28 21:30 UTC.
    conn = profile([{"match_key": "m", "card_installed_at": "2026-03-01 00:30:00+03:00"}])
    seg = segment("installed_today", since="card_installed_at", within_days=1)
    assert members_of(conn, seg, date(2026, 3, 1), MOSCOW) == {"m"}
    assert members_of(conn, seg, date(2026, 2, 28), MOSCOW) == set()
    assert members_of(conn, seg, date(2026, 2, 28), "UTC") == {"m"}
    assert members_of(conn, seg, date(2026, 3, 1), "UTC") == set()


# --- since: older than N days -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (date(2026, 1, 30), set()),  # 29 days since the visit
        (date(2026, 1, 31), {"jan1"}),  # 30 days: in
        (date(2026, 2, 1), {"jan1", "jan2"}),
    ],
)
def test_no_visit_for_n_days(today, expected):
    conn = profile(
        [
            # 2026-01-01 22:30 UTC is already 2 January in Moscow
            {"match_key": "jan2", "last_visit_at": "2026-01-01 22:30:00+00"},
            {"match_key": "jan1", "last_visit_at": "2026-01-01 20:30:00+00"},
            {"match_key": "never_visited", "last_visit_at": None},
        ]
    )
    seg = segment("no_visit_30_days", since="last_visit_at", older_than_days=30)
    assert members_of(conn, seg, today, MOSCOW) == expected


# --- gates: consent, push, withdrawn ----------------------------------------------------------


def gated_profile() -> duckdb.DuckDBPyConnection:
    rows = []
    for key, consent, push, withdrawn in [
        ("both", True, True, False),
        ("mail_only", True, False, False),
        ("push_only", False, True, False),
        ("unknown", None, None, None),
        ("withdrawn", True, True, True),
    ]:
        rows.append(
            {
                "match_key": key,
                "birthday": "1990-05-05",
                "consent_mailing": consent,
                "push_allowed": push,
                "withdrawn": withdrawn,
            }
        )
    return profile(rows)


@pytest.mark.parametrize(
    ("requires", "expected"),
    [
        (None, {"both", "mail_only", "push_only", "unknown"}),
        ("consent_mailing", {"both", "mail_only"}),
        (["push_allowed"], {"both", "push_only"}),
        (["consent_mailing", "push_allowed"], {"both"}),
    ],
)
def test_requires_gates_on_every_named_flag_and_withdrawn_is_never_in(requires, expected):
    conn = gated_profile()
    seg = segment("may_birthdays", requires, anniversary_of="birthday", within="month")
    assert members_of(conn, seg, date(2026, 5, 1)) == expected


def test_text_columns_as_staged_today_are_read_the_same_way():
    """Staging stores values as text (dates ISO, datetimes UTC without offset, flags 'true')."""
    text = {n: "VARCHAR" for n in COLUMNS}
    conn = profile(
        [
            {
                "match_key": "naive_utc",
                "birthday": "1990-03-05",
                "card_installed_at": "2026-02-28 21:30:00",
                "consent_mailing": "true",
            },
            {
                "match_key": "with_offset",
                "birthday": "1990-03-05",
                "card_installed_at": "2026-03-01T00:30:00+03:00",
                "consent_mailing": "false",
            },
        ],
        text,
    )
    installed = segment("installed", since="card_installed_at", within_days=1)
    assert members_of(conn, installed, date(2026, 3, 1), MOSCOW) == {"naive_utc", "with_offset"}
    mailing = segment("march", "consent_mailing", anniversary_of="birthday", within="month")
    assert members_of(conn, mailing, date(2026, 3, 1), MOSCOW) == {"naive_utc"}


# --- tables and counts ------------------------------------------------------------------------


def test_tables_are_replaced_and_every_group_is_listed_with_its_count():
    conn = birthdays(a="1990-03-10", b="1990-03-20", c="1990-04-01")
    segs = [
        segment(
            "birthday_this_month", "consent_mailing", anniversary_of="birthday", within="month"
        ),
        segment("all_march", anniversary_of="birthday", within="month"),
        segment("soon", anniversary_of="birthday", within_days=7),
    ]
    assert build_segments(conn, segs, date(2026, 3, 5)) == {
        "birthday_this_month": 0,
        "all_march": 2,
        "soon": 1,
    }
    groups = conn.execute("SELECT * FROM segment_groups ORDER BY group_name").fetchall()
    assert groups == [
        ("all_march", '{"anniversary_of": "birthday", "within": "month"}', [], 2),
        (
            "birthday_this_month",
            '{"anniversary_of": "birthday", "within": "month"}',
            ["consent_mailing"],
            0,
        ),
        ("soon", '{"anniversary_of": "birthday", "within_days": 7}', [], 1),
    ]
    # Next day's run replaces both tables: a leaves "soon", nobody is counted twice.
    assert build_segments(conn, segs[1:], date(2026, 3, 28))["soon"] == 1
    rows = conn.execute("SELECT * FROM segment_members ORDER BY ALL").fetchall()
    assert rows == [("a", "all_march"), ("b", "all_march"), ("c", "soon")]
    assert conn.execute("SELECT count(*) FROM segment_groups").fetchall() == [(2,)]


def test_today_may_be_an_iso_text_or_a_datetime():
    conn = birthdays(a="1990-03-10")
    seg = segment("soon", anniversary_of="birthday", within_days=7)
    assert build_segments(conn, [seg], "2026-03-04") == {"soon": 1}
    assert build_segments(conn, [seg], datetime(2026, 3, 3, 23, 59)) == {"soon": 0}


def test_no_segments_gives_empty_tables():
    conn = birthdays(a="1990-03-10")
    assert build_segments(conn, [], date(2026, 3, 5)) == {}
    assert conn.execute("SELECT count(*) FROM segment_members").fetchall() == [(0,)]
    assert conn.execute("SELECT count(*) FROM segment_groups").fetchall() == [(0,)]


def test_a_repeated_identical_segment_counts_once():
    conn = birthdays(a="1990-03-10")
    seg = segment("march", anniversary_of="birthday", within="month")
    assert build_segments(conn, [seg, seg], date(2026, 3, 5)) == {"march": 1}


# --- errors -----------------------------------------------------------------------------------


def test_unknown_field_names_the_segment_and_the_field():
    conn = birthdays(a="1990-03-10")
    seg = segment("birthday_soon", anniversary_of="birthdate", within_days=7)
    with pytest.raises(SegmentError, match=r"segment 'birthday_soon': 'birthdate' is not a field"):
        build_segments(conn, [seg], date(2026, 3, 5))


def test_unknown_required_flag_names_the_segment():
    conn = birthdays(a="1990-03-10")
    seg = segment("mailing", "consent", anniversary_of="birthday", within="month")
    with pytest.raises(SegmentError, match=r"segment 'mailing': 'consent' is not a field"):
        build_segments(conn, [seg], date(2026, 3, 5))


def test_wrong_column_types_are_refused():
    conn = birthdays(a="1990-03-10")
    not_a_date = segment("visits", since="visits_total", within_days=3)
    with pytest.raises(SegmentError, match=r"'visits'.*DOUBLE, not a date"):
        build_segments(conn, [not_a_date], date(2026, 3, 5))
    not_a_flag = segment("gated", "birthday", anniversary_of="birthday", within="month")
    with pytest.raises(SegmentError, match=r"'gated': requires 'birthday', a DATE column"):
        build_segments(conn, [not_a_flag], date(2026, 3, 5))


def test_missing_profile_bad_timezone_and_redefined_names_are_errors():
    seg = segment("march", anniversary_of="birthday", within="month")
    with pytest.raises(SegmentError, match="member_profile"):
        build_segments(duckdb.connect(), [seg], date(2026, 3, 5))
    conn = birthdays(a="1990-03-10")
    with pytest.raises(SegmentError, match="unknown timezone 'Mars/Olympus'"):
        build_segments(conn, [seg], date(2026, 3, 5), "Mars/Olympus")
    other = segment("march", anniversary_of="birthday", within_days=31)
    with pytest.raises(SegmentError, match="'march' is defined twice"):
        build_segments(conn, [seg, other], date(2026, 3, 5))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "x", "rule": {"birthday": "month"}}, "expected {anniversary_of"),
        ({"name": "x", "rule": {"anniversary_of": "birthday"}}, "exactly one of within"),
        (
            {
                "name": "x",
                "rule": {"since": "last_visit_at", "within_days": 1, "older_than_days": 9},
            },
            "exactly one of within_days",
        ),
        ({"name": "x", "rule": {"since": "last_visit_at", "within_days": 0}}, "greater than"),
        ({"name": "x", "rule": {"anniversary_of": "birthday", "within": "week"}}, "'month'"),
        ({"name": "Birthday", "rule": {"since": "a", "within_days": 1}}, "name"),
        ({"name": "x", "rule": {"since": "a", "within_days": 1}, "when": "daily"}, "when"),
        ({"name": "x", "rule": {"since": "a", "within_days": 1}, "requires": ["A B"]}, "requires"),
    ],
)
def test_settings_are_validated_strictly(raw, message):
    with pytest.raises(ValidationError, match=message):
        SegmentSettings.model_validate(raw)


def test_requires_accepts_one_name_or_a_list():
    one = SegmentSettings.model_validate(
        {"name": "x", "rule": {"since": "a", "within_days": 1}, "requires": "push_allowed"}
    )
    assert one.requires == ["push_allowed"]


# --- everyone, unless and groups from events (AC7, AC4) ---------------------------------------

EVENT_COLUMNS = ("program", "category", "subcategory", "activity", "name")
ACTIVITY = r"{program} \ {category} \ {subcategory} \ {activity}"
HIERARCHY = {
    "program": "{program}",
    "category": r"{program} \ {category}",
    "subcategory": r"{program} \ {category} \ {subcategory}",
    "activity": ACTIVITY,
}


def members(**archived: bool | None) -> duckdb.DuckDBPyConnection:
    """A profile of match keys with their `is_archived` flag (None: never said)."""
    columns = {"match_key": "VARCHAR", "is_archived": "BOOLEAN", "withdrawn": "BOOLEAN"}
    return profile([{"match_key": k, "is_archived": v} for k, v in archived.items()], columns)


def add_events(conn: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    """`member_events` as the model builds it; a row names its entity, live flag and fields."""
    extra = ", ".join(f"{c} VARCHAR" for c in EVENT_COLUMNS)
    conn.execute(
        "CREATE TABLE member_events (match_key VARCHAR, entity VARCHAR, event_id VARCHAR, "
        f"live BOOLEAN, {extra})"
    )
    for i, row in enumerate(rows):
        full = {"entity": "registrations", "event_id": str(i), "live": True, **row}
        marks = ", ".join("?" for _ in full)
        conn.execute(
            f"INSERT INTO member_events ({', '.join(full)}) VALUES ({marks})", list(full.values())
        )


def registration(key: str, activity: str, live: bool = True, **fields: str | None) -> dict:
    base = {"program": "Sports", "category": "Aquatique", "subcategory": "Natation"}
    return {"match_key": key, "activity": activity, "live": live, **base, **fields}


def from_events(name: str, title: str, entity: str = "registrations", **gates) -> SegmentSettings:
    return segment_with(name, {"from_events": entity, "title": title}, **gates)


def segment_with(name: str, rule: dict, **gates: str | list[str]) -> SegmentSettings:
    return SegmentSettings.model_validate({"name": name, "rule": rule, **gates})


def groups_of(conn: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    """Each member's groups after build_segments."""
    found: dict[str, set[str]] = {}
    for key, group in conn.execute("SELECT match_key, group_name FROM segment_members").fetchall():
        found.setdefault(key, set()).add(group)
    return found


DAY = date(2026, 3, 5)


def test_everyone_is_every_member_but_the_withdrawn_and_names_may_be_text():
    conn = members(ana=False, ben=True, cleo=None)
    conn.execute("INSERT INTO member_profile VALUES ('gone', false, true), (NULL, false, false)")
    everyone = segment_with("Clients Amilia", {"everyone": True})
    archived = segment_with("Clients Amilia archivés", {"everyone": True}, requires="is_archived")
    assert build_segments(conn, [everyone, archived], DAY) == {
        "Clients Amilia": 3,
        "Clients Amilia archivés": 1,
    }
    assert groups_of(conn) == {
        "ana": {"Clients Amilia"},
        "ben": {"Clients Amilia", "Clients Amilia archivés"},
        "cleo": {"Clients Amilia"},
    }
    rows = conn.execute("SELECT * FROM segment_groups ORDER BY group_name").fetchall()
    assert rows == [
        ("Clients Amilia", '{"everyone": true}', [], 3),
        ("Clients Amilia archivés", '{"everyone": true}', ["is_archived"], 1),
    ]


@pytest.mark.parametrize(
    ("gates", "expected"),
    [
        ({}, {"ana", "ben", "cleo", "dan"}),
        ({"unless": "is_archived"}, {"ana", "cleo"}),
        ({"unless": ["is_archived", "is_staff"]}, {"cleo"}),
        ({"requires": "consent_mailing", "unless": "is_archived"}, {"ana"}),
    ],
)
def test_unless_keeps_out_every_member_with_a_true_flag(gates, expected):
    columns = {
        "match_key": "VARCHAR",
        "is_archived": "BOOLEAN",
        "is_staff": "VARCHAR",  # staged text is read as a flag too
        "consent_mailing": "BOOLEAN",
    }
    conn = profile(
        [
            {"match_key": "ana", "is_archived": False, "is_staff": "true", "consent_mailing": True},
            {"match_key": "ben", "is_archived": True, "is_staff": "false", "consent_mailing": True},
            {"match_key": "cleo", "is_archived": None, "is_staff": " no ", "consent_mailing": None},
            {"match_key": "dan", "is_archived": True, "is_staff": None, "consent_mailing": False},
        ],
        columns,
    )
    seg = segment_with("all", {"everyone": True}, **gates)
    assert members_of(conn, seg, DAY) == expected


def test_each_live_event_gives_its_group_and_a_cancelled_one_none():
    conn = members(ana=False, ben=False)
    add_events(
        conn,
        [
            registration("ana", "Crawl 1"),
            registration("ana", "Dos crawlé", program="Été 2026", category="Plein air"),
            registration("ana", "Plongeon", live=False),  # cancelled: no group
            registration("ben", "Crawl 1"),  # shares ana's activity
            registration("ben", "Plongeon", live=None),  # live unknown counts as not live
            {"match_key": "ana", "entity": "memberships", "name": "Annuel"},
        ],
    )
    activity = from_events("activity", ACTIVITY)
    assert build_segments(conn, [activity], DAY) == {
        r"Sports \ Aquatique \ Natation \ Crawl 1": 2,
        r"Été 2026 \ Plein air \ Natation \ Dos crawlé": 1,
    }
    assert groups_of(conn) == {
        "ana": {
            r"Sports \ Aquatique \ Natation \ Crawl 1",
            r"Été 2026 \ Plein air \ Natation \ Dos crawlé",
        },
        "ben": {r"Sports \ Aquatique \ Natation \ Crawl 1"},
    }


def test_hierarchy_titles_one_group_per_level_and_membership_names():
    conn = members(ana=False, ben=False)
    add_events(
        conn,
        [
            registration("ana", "Crawl 1"),
            registration("ana", "Crawl 2"),
            registration("ben", "Plongeon", subcategory="Plongée"),
            {"match_key": "ben", "entity": "memberships", "name": "Membre annuel"},
            {"match_key": "ana", "entity": "memberships", "name": "Famille", "live": False},
        ],
    )
    segs = [from_events(level, title) for level, title in HIERARCHY.items()]
    segs.append(from_events("membership", "{name}", entity="memberships"))
    counts = build_segments(conn, segs, DAY)
    assert counts == {
        "Sports": 2,
        r"Sports \ Aquatique": 2,
        r"Sports \ Aquatique \ Natation": 1,
        r"Sports \ Aquatique \ Plongée": 1,
        r"Sports \ Aquatique \ Natation \ Crawl 1": 1,
        r"Sports \ Aquatique \ Natation \ Crawl 2": 1,
        r"Sports \ Aquatique \ Plongée \ Plongeon": 1,
        "Membre annuel": 1,
    }
    assert groups_of(conn)["ben"] == {
        "Sports",
        r"Sports \ Aquatique",
        r"Sports \ Aquatique \ Plongée",
        r"Sports \ Aquatique \ Plongée \ Plongeon",
        "Membre annuel",
    }


def test_segment_groups_lists_every_title_with_its_template_and_label():
    conn = members(ana=False, ben=True)
    add_events(conn, [registration("ana", "Crawl 1"), registration("ben", "Plongeon")])
    seg = from_events("activity", ACTIVITY, unless="is_archived")
    # ben is archived: out of the activity groups, yet his live activity's group still exists
    assert build_segments(conn, [seg], DAY) == {
        r"Sports \ Aquatique \ Natation \ Crawl 1": 1,
        r"Sports \ Aquatique \ Natation \ Plongeon": 0,
    }
    rule = (
        '{"from_events": "registrations", "segment": "activity", '
        r'"title": "{program} \\ {category} \\ {subcategory} \\ {activity}", '
        '"unless": ["is_archived"]}'
    )
    rows = conn.execute("SELECT * FROM segment_groups ORDER BY group_name").fetchall()
    assert rows == [
        (r"Sports \ Aquatique \ Natation \ Crawl 1", rule, [], 1),
        (r"Sports \ Aquatique \ Natation \ Plongeon", rule, [], 0),
    ]
    assert groups_of(conn) == {"ana": {r"Sports \ Aquatique \ Natation \ Crawl 1"}}


def test_archived_members_leave_activity_and_membership_groups_but_stay_in_the_general_ones():
    conn = members(ana=False, ben=True)
    add_events(
        conn,
        [
            registration("ana", "Crawl 1"),
            registration("ben", "Crawl 1"),
            {"match_key": "ben", "entity": "memberships", "name": "Annuel"},
        ],
    )
    segs = [
        segment_with("Clients Amilia", {"everyone": True}),
        segment_with("Clients Amilia archivés", {"everyone": True}, requires="is_archived"),
        from_events("activity", ACTIVITY, unless="is_archived"),
        from_events("membership", "{name}", entity="memberships", unless="is_archived"),
    ]
    build_segments(conn, segs, DAY)
    assert groups_of(conn) == {
        "ana": {"Clients Amilia", r"Sports \ Aquatique \ Natation \ Crawl 1"},
        "ben": {"Clients Amilia", "Clients Amilia archivés"},
    }


def test_an_event_with_an_empty_placeholder_gives_no_group():
    conn = members(ana=False, ben=False, cleo=False)
    add_events(
        conn,
        [
            registration("ana", "Crawl 1", subcategory=None),
            registration("ben", "Crawl 1", subcategory=" \t "),
            registration("cleo", "  Crawl 1\n", program=" Sports "),  # trimmed, kept
        ],
    )
    segs = [from_events("activity", ACTIVITY), from_events("program", "{program}")]
    assert build_segments(conn, segs, DAY) == {
        r"Sports \ Aquatique \ Natation \ Crawl 1": 1,
        "Sports": 3,  # the program is filled for everyone
    }
    assert groups_of(conn)["cleo"] == {"Sports", r"Sports \ Aquatique \ Natation \ Crawl 1"}


def test_titles_keep_accents_backslashes_quotes_and_literal_braces():
    conn = members(ana=False)
    add_events(
        conn,
        [registration("ana", "L'été \\ plein air", program="Ça {bouge}", category="Œuvres d'art")],
    )
    seg = from_events("activity", "{{{program}}} \\ {category} \\ {activity} (été)")
    assert build_segments(conn, [seg], DAY) == {
        "{Ça {bouge}} \\ Œuvres d'art \\ L'été \\ plein air (été)": 1
    }


def test_a_long_title_is_cut_to_255_characters_without_a_trailing_space():
    conn = members(ana=False)
    activity = "é" * 250 + " " + "x" * 20  # the cut falls right after the space
    add_events(conn, [registration("ana", activity, program="P")])
    seg = from_events("activity", "{program}   {activity}")
    [title] = build_segments(conn, [seg], DAY)
    assert title == "P   " + "é" * 250
    assert len(title) == 254


def test_a_title_two_segments_produce_is_one_group():
    conn = members(ana=False, ben=False)
    add_events(
        conn,
        [
            registration("ana", "Crawl 1", program="Natation"),
            {"match_key": "ben", "entity": "memberships", "name": "Natation"},
        ],
    )
    program = from_events("program", "{program}")
    membership = from_events("membership", "{name}", entity="memberships", requires="is_archived")
    assert build_segments(conn, [program, membership], DAY) == {"Natation": 1}
    [(rule, requires)] = conn.execute("SELECT rule, requires FROM segment_groups").fetchall()
    assert rule == f"[{program.rule_text()}, {membership.rule_text()}]"
    assert requires == ["is_archived"]


def test_no_events_table_or_no_rows_for_the_entity_gives_no_groups():
    conn = members(ana=False)
    segs = [segment_with("all", {"everyone": True}), from_events("activity", ACTIVITY)]
    assert build_segments(conn, segs, DAY) == {"all": 1}
    add_events(conn, [{"match_key": "ana", "entity": "memberships", "name": "Annuel"}])
    assert build_segments(conn, segs, DAY) == {"all": 1}
    assert conn.execute("SELECT count(*) FROM segment_groups").fetchall() == [(1,)]


def test_events_of_unknown_or_withdrawn_members_give_no_membership():
    conn = members(ana=False)
    conn.execute("INSERT INTO member_profile VALUES ('gone', false, true)")
    add_events(conn, [registration("stranger", "Crawl 1"), registration("gone", "Plongeon")])
    seg = from_events("activity", ACTIVITY)
    assert build_segments(conn, [seg], DAY) == {r"Sports \ Aquatique \ Natation \ Plongeon": 0}
    assert groups_of(conn) == {}


def test_a_cancelled_registration_leaves_its_group_on_the_next_run():
    conn = members(ana=False)
    add_events(conn, [registration("ana", "Crawl 1"), registration("ana", "Crawl 2")])
    seg = from_events("activity", "{activity}")
    assert build_segments(conn, [seg], DAY) == {"Crawl 1": 1, "Crawl 2": 1}
    conn.execute("UPDATE member_events SET live = false WHERE activity = 'Crawl 2'")
    assert build_segments(conn, [seg], DAY) == {"Crawl 1": 1}
    assert groups_of(conn) == {"ana": {"Crawl 1"}}


def test_many_events_are_computed_in_sql():
    """50k registrations over 10k members: the rules are SQL, so this stays quick."""
    conn = members()
    conn.execute(
        "INSERT INTO member_profile SELECT 'm' || i, i % 10 = 0, false FROM range(10000) t(i)"
    )
    add_events(conn, [])
    conn.execute(
        """INSERT INTO member_events
        SELECT 'm' || (i % 10000), 'registrations', i::VARCHAR, i % 7 <> 0,
            'Program ' || (i % 3), 'Category ' || (i % 5), 'Sub ' || (i % 11),
            'Activity ' || (i % 200), NULL
        FROM range(50000) t(i)"""
    )
    segs = [from_events(level, title, unless="is_archived") for level, title in HIERARCHY.items()]
    segs.append(segment_with("everyone", {"everyone": True}))
    counts = build_segments(conn, segs, DAY)
    assert counts["everyone"] == 10000
    activities = conn.execute(
        """SELECT count(DISTINCT (program, category, subcategory, activity))
           FROM member_events WHERE live"""
    ).fetchall()[0][0]
    assert len([t for t in counts if t.count(" \\ ") == 3]) == activities > 1000
    assert (
        counts["Program 0"]
        == conn.execute(
            """SELECT count(DISTINCT e.match_key) FROM member_events e JOIN member_profile p
           USING (match_key) WHERE live AND NOT is_archived AND program = 'Program 0'"""
        ).fetchall()[0][0]
    )


# --- errors and settings of the new rules -----------------------------------------------------


def test_unknown_title_field_names_the_segment_the_field_and_the_columns():
    conn = members(ana=False)
    add_events(conn, [registration("ana", "Crawl 1")])
    seg = from_events("activity", r"{programme} \ {activity}")
    message = (
        r"segment 'activity': title field 'programme' is not a column of member_events "
        r"\(columns: activity, category, entity, event_id, name, program, subcategory\)"
    )
    with pytest.raises(SegmentError, match=message):
        build_segments(conn, [seg], DAY)


def test_an_events_table_without_its_key_columns_is_an_error():
    conn = members(ana=False)
    conn.execute("CREATE TABLE member_events (match_key VARCHAR, program VARCHAR)")
    with pytest.raises(SegmentError, match="member_events lacks entity, live"):
        build_segments(conn, [from_events("program", "{program}")], DAY)


def test_unless_flags_are_checked_like_requires():
    conn = members(ana=False)
    with pytest.raises(SegmentError, match=r"segment 'all': 'archived' is not a field"):
        build_segments(conn, [segment_with("all", {"everyone": True}, unless="archived")], DAY)
    conn = birthdays(a="1990-03-10")
    seg = segment_with("all", {"everyone": True}, unless="birthday")
    with pytest.raises(SegmentError, match=r"'all': unless 'birthday', a DATE column"):
        build_segments(conn, [seg], DAY)


def test_a_redefined_event_segment_is_an_error():
    conn = members(ana=False)
    one = from_events("activity", "{activity}")
    other = from_events("activity", "{activity}", unless="is_archived")
    with pytest.raises(SegmentError, match="'activity' is defined twice.*unless"):
        build_segments(conn, [one, other], DAY)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "x", "rule": {"everyone": False}}, "everyone"),
        ({"name": "x", "rule": {"everyone": True, "within": "month"}}, "within"),
        ({"name": "x", "rule": {"from_events": "registrations"}}, "title"),
        ({"name": "x", "rule": {"from_events": "Registrations", "title": "{a}"}}, "from_events"),
        ({"name": "x", "rule": {"from_events": "r", "title": "Program"}}, "names no field"),
        ({"name": "x", "rule": {"from_events": "r", "title": "{{a}}"}}, "names no field"),
        ({"name": "x", "rule": {"from_events": "r", "title": "{Program}"}}, "lowercase field"),
        ({"name": "x", "rule": {"from_events": "r", "title": "{}"}}, "lowercase field"),
        ({"name": "x", "rule": {"from_events": "r", "title": "{a!r}"}}, "lowercase field"),
        ({"name": "x", "rule": {"from_events": "r", "title": "{a:>9}"}}, "lowercase field"),
        ({"name": "x", "rule": {"from_events": "r", "title": "{a.b}"}}, "lowercase field"),
        ({"name": "x", "rule": {"from_events": "r", "title": "{a} }"}}, "Single '}'"),
        ({"name": "x", "rule": {"from_events": "r", "title": "{a"}}, "expected '}'"),
        ({"name": " Clients", "rule": {"everyone": True}}, "starts or ends with a space"),
        ({"name": "Clients\t", "rule": {"everyone": True}}, "starts or ends with a space"),
        ({"name": "Cli\nents", "rule": {"everyone": True}}, "control character"),
        ({"name": "", "rule": {"everyone": True}}, "at least 1 character"),
        ({"name": "x" * 256, "rule": {"everyone": True}}, "at most 255 characters"),
        ({"name": "Anniversaire", "rule": {"since": "a", "within_days": 1}}, "identifier"),
        ({"name": "x", "rule": {"everyone": True}, "unless": ["Is Archived"]}, "unless"),
    ],
)
def test_new_rules_are_validated_strictly(raw, message):
    with pytest.raises(ValidationError, match=message):
        SegmentSettings.model_validate(raw)


def test_settings_read_from_yaml_like_data():
    one = segment_with("Clients Amilia archivés", {"everyone": True}, requires="is_archived")
    assert one.requires == ["is_archived"] and one.unless == []
    two = from_events("activity", ACTIVITY, unless="is_archived")
    assert two.unless == ["is_archived"]
    assert two.rule.fields == ["program", "category", "subcategory", "activity"]
    x255 = segment_with("é" * 255, {"everyone": True})
    assert len(x255.name) == 255
