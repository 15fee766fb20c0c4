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
