"""The incremental model equals a full build: members, member_profile and tracking_events built
batch by batch (only what staging touched) are the tables a fresh warehouse builds once from the
same landing files. Random batches re-key customers, share emails across records and
integrations, withdraw and give consent, and add, change and re-date journals.
"""

from __future__ import annotations

import random
from typing import Any

import duckdb
import pytest

from memberflow import landing, model, staging
from memberflow.mapping import DELETED_FLAG
from tests.test_model import (
    FEEDS,
    FP_CUSTOMERS,
    FP_JOURNALS,
    FP_SETTINGS,
    TM_CUSTOMERS,
    TM_SETTINGS,
    FakeSource,
    fp_customer,
    tm_customer,
)

EMAILS = [f"person{i}@example.dk" for i in range(12)]


@pytest.fixture()
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(model, "FULL_SHARE", 1e9)  # incremental however much changed
    return tmp_path


def stage_and_build(conn: duckdb.DuckDBPyConnection) -> None:
    staging.stage_members(conn, FP_CUSTOMERS, FP_SETTINGS)
    staging.stage_members(conn, TM_CUSTOMERS, TM_SETTINGS)
    staging.stage_events(conn, FP_JOURNALS, FP_SETTINGS)
    model.build_members(conn, FEEDS)
    model.build_tracking_events(conn, FEEDS)


def table(conn: duckdb.DuckDBPyConnection, name: str) -> list[tuple]:
    columns = [
        c for (c,) in conn.execute(f"SELECT name FROM pragma_table_info('{name}')").fetchall()
    ]
    rows = conn.execute(f"SELECT * FROM {name}").fetchall()
    return sorted((tuple(zip(columns, row, strict=True)) for row in rows), key=repr)


def land_batch(rng: random.Random, batch: int) -> None:
    minute = f"2025-0{1 + batch // 3}-{10 + batch % 3}T10:{batch:02d}:00"
    fp = [
        fp_customer(
            rng.randrange(1, 15),
            minute,
            Email=rng.choice([*EMAILS, "broken"]),  # "broken": quarantined, no member
            FirstName=rng.choice(["Anna", "Bo", None, f"Name{batch}"]),
            City=rng.choice(["Køge", "Aarhus", None]),
        )
        for _ in range(rng.randrange(1, 6))
    ]
    if batch and rng.random() < 0.5:  # deleted at the source
        fp.append({"CustomerId": rng.randrange(1, 15), "Modified": minute, DELETED_FLAG: True})
    tm = [
        tm_customer(
            f"t{rng.randrange(1, 10)}",
            minute + "Z",
            consent=rng.random() < 0.7,
            email=rng.choice(EMAILS),
        )
        for _ in range(rng.randrange(0 if batch else 1, 4))
    ]
    journals = [
        {
            "JournalId": f"J{rng.randrange(1, 25)}",
            "CustomerId": rng.randrange(1, 16),
            "Date": f"2025-03-{rng.randrange(1, 6):02d}T12:30:00",
            "Lines": [{"ProductId": f"P{rng.randrange(9)}", "Amount": str(batch)}],
            "Modified": minute,
        }
        for _ in range(rng.randrange(0 if batch else 1, 5))
    ]
    for records, source, entity in (
        (_unique(fp, "CustomerId"), FakeSource("CustomerId", "Modified"), "customers"),
        (
            _unique(journals, "JournalId"),
            FakeSource("JournalId", "Modified", day="Date"),
            "journals",
        ),
    ):
        if records:
            landing.land_pages(source, "fp", entity, [records])
    if tm := _unique(tm, "customerId"):
        landing.land_pages(FakeSource("customerId", "modifiedDate"), "tm", "customers", [tm])


def _unique(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """One version of a record per page (two at once with different content are ambiguous)."""
    return list({r[key]: r for r in records}.values())


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_building_batch_by_batch_equals_building_once(data_dir, seed):
    rng = random.Random(seed)
    incremental = duckdb.connect(str(data_dir / "incremental.duckdb"))
    kinds = []
    for batch in range(8):
        land_batch(rng, batch)
        stage_and_build(incremental)
        kinds.append(
            (model.rebuilt(incremental, "members"), model.rebuilt(incremental, "tracking"))
        )
    once = duckdb.connect(str(data_dir / "once.duckdb"))
    stage_and_build(once)
    for name in ("members", "member_profile", "tracking_events"):
        assert table(incremental, name) == table(once, name), name
    # the first build is full (nothing built yet); the later ones rebuild only what changed
    assert kinds[0] == ("all", "all")
    assert all(m != "all" and t != "all" for m, t in kinds[1:]), kinds
    incremental.close()
    once.close()


def test_nothing_staged_rebuilds_nothing_and_a_mapping_change_rebuilds_all(data_dir):
    conn = duckdb.connect(str(data_dir / "w.duckdb"))
    land_batch(random.Random(5), 0)
    stage_and_build(conn)
    stage_and_build(conn)
    assert model.rebuilt(conn, "members") == "0"
    assert model.rebuilt(conn, "tracking") == "changed days and keys"
    renamed = [model.Feed(f.integration, f.members, f.events, None) for f in FEEDS]
    model.build_members(conn, renamed)  # other target fields: every member is rebuilt
    assert model.rebuilt(conn, "members") == "all"
    conn.close()


def test_the_change_log_is_pruned_once_both_tables_read_it(data_dir):
    conn = duckdb.connect(str(data_dir / "w.duckdb"))
    rng = random.Random(6)
    for batch in range(3):
        land_batch(rng, batch)
        stage_and_build(conn)
    assert conn.execute(f"SELECT count(*) FROM {staging.CHANGES}").fetchone()[0] == 0
    assert conn.execute(f"SELECT count(*) FROM {model.MODEL_CHANGES}").fetchone()[0] == 0
    conn.close()


def test_segments_build_in_full_and_dropping_them_drops_the_groups(data_dir):
    from datetime import date

    from memberflow import segments

    conn = duckdb.connect(str(data_dir / "w.duckdb"))
    land_batch(random.Random(7), 0)
    stage_and_build(conn)
    soon = segments.SegmentSettings.model_validate(
        {"name": "soon", "rule": {"anniversary_of": "birthday", "within_days": 7}}
    )
    model.build_members(conn, FEEDS, [soon], date(2025, 3, 1))
    model.build_members(conn, FEEDS, [soon], date(2025, 3, 2))  # the day rolled over
    assert model.rebuilt(conn, "members") == "all"
    model.build_members(conn, FEEDS)
    assert model.rebuilt(conn, "members") == "all"
    columns = {
        c for (c,) in conn.execute("SELECT name FROM pragma_table_info('members')").fetchall()
    }
    assert "groups" not in columns
    conn.close()


def test_a_staging_call_that_dies_half_way_makes_the_next_build_a_full_one(data_dir, monkeypatch):
    conn = duckdb.connect(str(data_dir / "w.duckdb"))
    rng = random.Random(7)
    land_batch(rng, 0)
    stage_and_build(conn)
    land_batch(rng, 1)

    def dies(*args, **kwargs):
        raise RuntimeError("killed between chunks")

    with monkeypatch.context() as patched:
        patched.setattr(staging, "_process_chunks", dies)
        with pytest.raises(RuntimeError):
            staging.stage_members(conn, FP_CUSTOMERS, FP_SETTINGS)
    model.build_members(conn, FEEDS)  # e.g. another integration's run, no re-stage of this one
    model.build_tracking_events(conn, FEEDS)
    assert model.rebuilt(conn, "members") == "all"
    assert model.rebuilt(conn, "tracking") == "all"
    conn.close()
