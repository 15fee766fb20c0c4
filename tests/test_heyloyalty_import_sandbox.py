"""The Heyloyalty emulator's CSV member import (HL 2.4, HL-A11) over real sockets: strict about
its parameters, per-row refusals, reactivation of unsubscribed members, updated_at for HL-A5."""

from __future__ import annotations

import time

import httpx
import pytest

from sandbox.credentials import SANDBOX_ENV
from sandbox.server import SandboxServer
from tests.test_sandbox_heyloyalty import HeyloyaltyAuth

V1 = "/heyloyalty/loyalty/v1"
LIST = 4711
KEY, SECRET = SANDBOX_ENV["HEYLOYALTY_API_KEY"], SANDBOX_ENV["HEYLOYALTY_API_SECRET"]


@pytest.fixture
def sandbox():
    with SandboxServer(seed=4, customers=20, rate_limits=False) as server:
        yield server


@pytest.fixture
def client(sandbox):
    with httpx.Client(base_url=sandbox.url, auth=HeyloyaltyAuth(KEY, SECRET), timeout=10) as http:
        yield http


def post_import(client, columns, lines, list_id=LIST, **params):
    form = {
        "duplicate_field": "email",
        "handle_existing": "update",
        "date_format": "Y-m-d",
        "skip_header_line": "1",
        "delimiter": ",",
        "fields_selected[]": columns,
        **params,
    }
    text = "\n".join([",".join(columns), *lines]) + "\n"
    files = {"file": ("members.csv", text.encode(), "text/csv")}
    return client.post(f"{V1}/lists/{list_id}/import", data=form, files=files)


def test_import_creates_and_updates_and_answers_hl_a11(sandbox, client):
    hl = sandbox.heyloyalty
    hl.add_member(LIST, {"email": "old@x.dk", "firstname": "Old"})
    answer = post_import(
        client,
        ["email", "firstname", "birthdate", "sex"],
        ["new@x.dk,Ny,1990-02-03,2", "OLD@x.dk,Gammel,,1"],
        trigger_autoresponder="0",
        sendErrorsTo="ops@example.com",
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "status": "success",
        "message": "2 rows imported",
        "imported": 2,
        "created": 1,
        "updated": 1,
        "skipped": 0,
        "failed": [],
    }
    new = hl.member_by_email(LIST, "new@x.dk")
    assert new["fields"]["birthdate"] == "1990-02-03" and new["fields"]["sex"] == "2"
    assert new["created_at"] == new["updated_at"]
    assert hl.member_by_email(LIST, "old@x.dk")["fields"]["firstname"] == "Gammel"
    [logged] = hl.member_imports
    assert logged["sendErrorsTo"] == "ops@example.com" and logged["trigger_autoresponder"] == "0"


def test_dates_are_read_with_date_format(sandbox, client):
    answer = post_import(
        client,
        ["email", "birthdate"],
        ["d@x.dk,24-05-2013", "e@x.dk,2013-05-24"],
        date_format="d-m-Y",
    )
    assert answer.json()["failed"] == [
        {"row": 2, "error": "Invalid date for field birthdate: 2013-05-24 (date_format d-m-Y)"}
    ]
    assert sandbox.heyloyalty.member_by_email(LIST, "d@x.dk")["fields"]["birthdate"] == "2013-05-24"


@pytest.mark.parametrize(
    ("columns", "params", "error"),
    [
        (["email", "shoe_size"], {}, "Unknown field: shoe_size"),
        (["firstname"], {}, "duplicate_field email is not among fields_selected[]"),
        (
            ["email"],
            {"duplicate_field": "cardnumber"},
            "duplicate_field must be one of email, mobile",
        ),
        (["email"], {"handle_existing": "merge"}, "handle_existing must be one of update, skip"),
        (["email"], {"sendErrorsTo": "nobody"}, "sendErrorsTo must be an email address"),
    ],
)
def test_a_parameter_the_list_cannot_honour_refuses_the_file(
    sandbox, client, columns, params, error
):
    answer = post_import(client, columns, ["a@x.dk" + ",x" * (len(columns) - 1)], **params)
    assert answer.status_code == 400 and answer.json() == {"error": error}
    assert sandbox.heyloyalty.members(LIST) == []


def test_fields_selected_is_required(sandbox, client):
    files = {"file": ("m.csv", b"email\na@x.dk\n", "text/csv")}
    answer = client.post(
        f"{V1}/lists/{LIST}/import",
        data={"duplicate_field": "email", "handle_existing": "update"},
        files=files,
    )
    assert answer.status_code == 400 and "fields_selected[]" in answer.json()["error"]


def test_a_bad_row_fails_alone_and_a_broken_file_stores_nothing(sandbox, client):
    hl = sandbox.heyloyalty
    hl.add_member(LIST, {"email": "twin@x.dk"})
    hl.add_member(LIST, {"email": "TWIN@x.dk"})  # the demo list allows duplicates
    answer = post_import(
        client,
        ["email", "sex", "postalcode"],
        ["ok@x.dk,1,4000", "bad@x.dk,Female,4000", "no-at-sign,1,4000", ",1,4000", "twin@x.dk,2,"],
    )
    body = answer.json()
    assert answer.status_code == 200
    assert body["imported"] == 1 and body["created"] == 1
    assert body["failed"] == [
        {"row": 2, "error": "Invalid option for field sex: Female"},
        {"row": 3, "error": "Invalid email"},
        {"row": 4, "error": "email is required (duplicate_field)"},
        {"row": 5, "error": "Multiple members match"},
    ]
    assert {m["email"] for m in hl.members(LIST)} == {"ok@x.dk", "twin@x.dk", "TWIN@x.dk"}

    broken = post_import(client, ["email", "firstname"], ["c@x.dk,C", "d@x.dk"])
    assert broken.status_code == 400 and broken.json()["status"] == "error"
    assert hl.member_by_email(LIST, "c@x.dk") is None


def test_more_than_50000_rows_is_refused_whole(sandbox, client):
    lines = [f"m{i}@x.dk" for i in range(50_001)]
    answer = post_import(client, ["email"], lines)
    assert answer.status_code == 400
    assert answer.json() == {
        "status": "error",
        "message": "Too many rows: 50001 (max 50000 per file)",
    }
    assert sandbox.heyloyalty.members(LIST) == []


def test_an_update_reactivates_an_unsubscribed_member_and_bumps_updated_at(sandbox, client):
    hl = sandbox.heyloyalty
    hl.add_member(LIST, {"email": "gone@x.dk", "firstname": "A"})
    before = hl.unsubscribe(LIST, email="gone@x.dk")
    time.sleep(1.1)  # updated_at has whole seconds (HL-A3)
    post_import(client, ["email", "firstname"], ["gone@x.dk,B"])
    after = hl.member_by_email(LIST, "gone@x.dk")
    assert after["status"] == "active" and after["unsubscribed_at"] is None  # as an upsert does
    assert after["updated_at"] > before["updated_at"]
    listed = client.get(
        f"{V1}/lists/{LIST}/members",
        params={"filter[updated_at][gte][]": after["updated_at"], "perpage": 5000},
    ).json()["members"]
    assert [m["id"] for m in listed] == [after["id"]]  # HL-A5 finds what the import changed


def test_skip_leaves_existing_members_alone(sandbox, client):
    hl = sandbox.heyloyalty
    hl.add_member(LIST, {"email": "keep@x.dk", "firstname": "Keep"})
    hl.unsubscribe(LIST, email="keep@x.dk")
    answer = post_import(
        client, ["email", "firstname"], ["keep@x.dk,Other"], handle_existing="skip"
    )
    assert answer.json()["skipped"] == 1 and answer.json()["imported"] == 0
    member = hl.member_by_email(LIST, "keep@x.dk")
    assert member["status"] == "unsubscribed" and member["fields"]["firstname"] == "Keep"


def test_import_on_mobile_and_an_empty_cell_empties_the_field(sandbox, client):
    hl = sandbox.heyloyalty
    hl.add_member(LIST, {"mobile": "4512345678", "city": "Aarhus"})
    answer = post_import(
        client, ["mobile", "city", "firstname"], ["4512345678,,Mo"], duplicate_field="mobile"
    )
    assert answer.json()["updated"] == 1
    member = hl.member_by_mobile(LIST, "4512345678")
    assert member["fields"]["city"] is None and member["fields"]["firstname"] == "Mo"


def test_rows_can_be_lost_silently_for_read_back_tests(sandbox, client):
    sandbox.heyloyalty.lose_import_rows("Lost@x.dk")
    answer = post_import(client, ["email"], ["lost@x.dk", "kept@x.dk"])
    assert answer.json()["imported"] == 2  # the answer claims both
    assert [m["email"] for m in sandbox.heyloyalty.members(LIST)] == ["kept@x.dk"]


def test_the_emulator_is_as_strict_as_the_documented_parameters(sandbox, client):
    columns = ["email", "firstname"]
    # no skip_header_line: the header line is a row like any other (refused: no valid email)
    answer = post_import(client, columns, ["a@x.dk,A"], skip_header_line="0").json()
    assert answer["imported"] == 1 and [f["row"] for f in answer["failed"]] == [1]
    # a blank line is a row (refused), so the numbering counts it
    answer = post_import(client, columns, ["", "b@x.dk,B"]).json()
    assert answer["failed"] == [{"row": 1, "error": "Empty row"}] and answer["imported"] == 1
    for params, words in (
        ({"delimiter": "semicolon"}, "Invalid delimiter"),
        ({"date_format": ""}, "date_format is required"),
        ({"skip_header_line": "yes"}, "skip_header_line must be 0 or 1"),
        ({"trigger_autoresponder": "true"}, "trigger_autoresponder must be 0 or 1"),
    ):
        refused = post_import(client, columns, ["c@x.dk,C"], **params)
        assert refused.status_code == 400 and words in refused.text, params
    form = {"duplicate_field": "email", "handle_existing": "update", "date_format": "Y-m-d"}
    text = b"email\nd@x.dk\n"
    plain = client.post(
        f"{V1}/lists/{LIST}/import",
        data={**form, "fields_selected": ["email"]},  # without [] : not the documented name
        files={"file": ("m.csv", text, "text/csv")},
    )
    assert plain.status_code == 400 and "fields_selected[] is required" in plain.text
    octet = client.post(
        f"{V1}/lists/{LIST}/import",
        data={**form, "fields_selected[]": ["email"], "skip_header_line": "1"},
        files={"file": ("m.csv", text, "application/octet-stream")},
    )
    assert octet.status_code == 400 and "text/csv" in octet.text
    assert sandbox.heyloyalty.member_by_email(LIST, "d@x.dk") is None
