"""Source -> canonical -> target, over the Teyca pass mapping and the Axle target mapping: the rule
keys a Russian loyalty source needs (DD.MM.YYYY, Moscow wall time, numbers as strings, consent in
several spellings, a card object) and merge by phone with every card collected. Landing files are
written through a stand-in for the source client; the tests are about mapping and model logic.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest

from memberflow import landing, model, staging
from memberflow.mapping import load_mapping
from memberflow.target_mapping import load_target_mapping
from resources.base import RecordMeta

PASSES = load_mapping("teyca", "passes")
AXLE = load_target_mapping("axle")


class FakeSource:
    def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
        modified = datetime(2025, 1, int(record["day"]), tzinfo=UTC)
        return RecordMeta(str(record["user_id"]), modified, None)


@pytest.fixture()
def conn(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    connection = duckdb.connect(str(tmp_path / "w.duckdb"))
    yield connection
    connection.close()


def card(uid: int, day: int, **fields: Any) -> dict[str, Any]:
    return {
        "user_id": uid,
        "day": day,
        "phone": "79161234567",
        "first_name": "Иван",
        "birthday": "05.03.1990",
        "gender": "м",
        "key1": "Да",
        "bonus": "1250",
        "discount": "10%",
        "created_at": "2025-03-01 00:30:00",
        "barcode": f"B{uid}",
        **fields,
    }


def stage(conn, match_on: str, *records: dict[str, Any]) -> None:
    landing.land_pages(FakeSource(), "ty", "passes", [list(records)])
    settings = staging.StageSettings(
        "ty", ",", "%Y-%m-%d %H:%M:%S", "RU", match_on, "run", source_kind="teyca"
    )
    staging.stage_members(conn, PASSES, settings)


def test_a_russian_pass_becomes_canonical_values(conn):
    stage(conn, "mobile", card(17, 1), card(18, 1, phone="79160000000", key1="нет", o_s="ios"))
    feeds = [model.Feed("ty", PASSES, (), AXLE)]
    model.build_members(conn, feeds)
    profile = conn.execute(
        """SELECT mobile, birthday, gender, consent_mailing, push_allowed, bonus_balance,
                  discount_percent, card_installed_at, external_id, card
           FROM member_profile ORDER BY mobile"""
    ).fetchall()
    assert profile[1][:9] == (
        "+79161234567",
        "1990-03-05",
        "m",
        "1",
        "0",
        "1250",
        "10",
        "2025-02-28 21:30:00",  # 00:30 Moscow time is 21:30 UTC the day before
        "teyca:17",
    )
    assert json.loads(profile[1][9]) == {"source": "teyca", "user_id": "17", "barcode": "B17"}
    assert profile[0][3:5] == ("0", "1")  # consent spelled "нет"; a wallet card installed


def test_merge_by_phone_collects_every_card_and_merge_off_keeps_one_client_per_card(conn):
    feeds = [model.Feed("ty", PASSES, (), AXLE)]
    stage(conn, "mobile", card(17, 1), card(5, 2, first_name="Пётр"))
    model.build_members(conn, feeds)
    rows = conn.execute("SELECT match_key, phone, first_name, cards, external_id FROM members")
    ((key, phone, first, cards, external),) = rows.fetchall()
    assert (key, phone, first) == ("+79161234567", "+79161234567", "Пётр")  # newest wins
    assert [json.loads(c)["user_id"] for c in cards] == ["5", "17"]  # by record id
    assert external == "teyca:5"  # the survivor's own id
    assert model.match_field(feeds, "mobile") == "phone"

    stage(conn, "external_id")  # the same records, one client per card
    model.build_members(conn, feeds)
    found = conn.execute("SELECT match_key, phone FROM members ORDER BY 1").fetchall()
    assert found == [("teyca:17", "+79161234567"), ("teyca:5", "+79161234567")]
