"""AxleClient against the real Axle emulator over HTTP (AX-A1..AX-A4), and its wire conversion."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from resources.axle import AccountMismatch, AxleClient, AxleTarget
from resources.axle_pace import Pacer, shared_pacer
from resources.axle_wire import parse_client, wire_client
from resources.base import VendorError
from resources.target import MemberAck, MemberChange, WritePolicy

PREFIX = "/axle/api/v1"
BY_EXTERNAL_ID = WritePolicy(
    match_on="external_id", import_type="create_and_update", reimport_unsubscribed=False
)
BY_MOBILE = WritePolicy(
    match_on="mobile", import_type="create_and_update", reimport_unsubscribed=False
)


@pytest.fixture(scope="module")
def server() -> Iterator:
    from sandbox.server import SandboxServer

    with SandboxServer(seed=3, customers=5, days=5, rate_limits=False) as running:
        yield running


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    from sandbox.credentials import SANDBOX_ENV

    return {"demo": SANDBOX_ENV["AXLE_API_KEY"], "other": SANDBOX_ENV["AXLE_OTHER_API_KEY"]}


@pytest.fixture
def axle(server):
    """The emulator's state, emptied for each test."""
    state = server.emulator("axle")
    state.reset()
    server.faults.clear()
    return state


def make_client(server, key: str, account: str = "acc_demo", **kw) -> AxleClient:
    return AxleClient(base_url=server.url + PREFIX, api_key=key, account=account, **kw)


@pytest.fixture
def client(server, keys, axle) -> Iterator[AxleClient]:
    made = make_client(server, keys["demo"])
    yield made
    made.close()


def card(user_id, barcode: str | None = None, template: str = "Макет1") -> dict:
    return {
        "source": "teyca",
        "user_id": user_id,
        "barcode": barcode or f"BC{user_id}",
        "template": template,
        "wallet_link": None,
    }


def change(
    key: str, action: str = "create", member_id: str | None = None, **values
) -> MemberChange:
    return MemberChange(match_key=key, action=action, values=values, member_id=member_id)


def person(n: int, **extra) -> MemberChange:
    return change(
        f"teyca:{n}",
        external_id=f"teyca:{n}",
        phone=f"+7900{n:07d}",
        first_name="Иван",
        birthday=date(1990, 1, 1 + n % 28),
        consent_mailing=True,
        **extra,
    )


def write(client: AxleClient, changes, policy: WritePolicy = BY_EXTERNAL_ID) -> list[MemberAck]:
    acks = list(client.write_members(changes, policy))
    assert len(acks) == len(changes)
    return acks


def requests(axle, method: str, path: str) -> int:
    return axle.request_count(method, path)


# --- connection check (AX-A1) -------------------------------------------------------------------


def test_ping_passes_for_the_configured_account(client, axle):
    client.check_connection()
    assert requests(axle, "GET", "/ping") == 1
    assert client.label == "axle account acc_demo"


def test_ping_fails_naming_both_accounts(server, keys, axle):
    wrong = make_client(server, keys["other"], account="acc_demo")
    with pytest.raises(AccountMismatch) as caught:
        wrong.check_connection()
    assert "'acc_other'" in str(caught.value) and "'acc_demo'" in str(caught.value)
    assert keys["other"] not in str(caught.value)


def test_bad_key_is_refused_with_axles_words_and_no_key(server, axle):
    bad = make_client(server, "not-a-real-key-123")
    with pytest.raises(VendorError) as caught:
        bad.check_connection()
    assert caught.value.status == 401
    assert "Invalid API key" in str(caught.value)
    assert "not-a-real-key-123" not in str(caught.value)


# --- batches (AX-A3) ------------------------------------------------------------------------------


def test_700_members_go_in_two_batch_calls_with_one_ack_each(client, axle):
    changes = [person(n) for n in range(700)]
    acks = write(client, changes)
    assert requests(axle, "POST", "/clients/batch") == 2
    assert {a.outcome for a in acks} == {"created"}
    assert sorted(a.match_key for a in acks) == sorted(c.match_key for c in changes)
    assert len({a.member_id for a in acks}) == 700
    assert len(axle.clients()) == 700

    again = write(client, changes)  # an upsert: sending it again changes nothing
    assert {a.outcome for a in again} == {"updated"}
    assert {a.member_id for a in again} == {a.member_id for a in acks}
    assert len(axle.clients()) == 700


def test_a_batch_whose_answer_failed_is_sent_again(server, keys, axle):
    """The batch is an upsert, so a 502 (the vendor may have acted) is retried, not held."""
    waits: list[float] = []
    retrying = make_client(server, keys["demo"], sleep=waits.append)
    server.faults.add("/clients/batch", 502, times=1)
    acks = write(retrying, [person(1), person(2)])
    assert {a.outcome for a in acks} == {"created"} and len(waits) == 1
    assert len(axle.clients()) == 2 and retrying.calls.retries == 1


def test_a_batch_without_a_verdict_gives_error_acks(server, keys, axle):
    failing = make_client(server, keys["demo"], sleep=lambda s: None, max_tries=2)
    server.faults.add("/clients/batch", 503, times=2)
    acks = write(failing, [person(1), person(2)])
    assert {a.outcome for a in acks} == {"error"} and all(a.reason for a in acks)
    assert axle.clients() == []


def test_a_bad_birthday_is_refused_next_to_good_members(client, axle):
    bad = change("teyca:9", external_id="teyca:9", birthday="2001-02-30")
    acks = write(client, [person(1), bad, person(2)])
    by_key = {a.match_key: a for a in acks}
    assert by_key["teyca:1"].outcome == by_key["teyca:2"].outcome == "created"
    refused = by_key["teyca:9"]
    assert refused.outcome == "refused" and refused.member_id is None
    assert "birthday" in refused.reason and "valid calendar date" in refused.reason
    assert axle.client_by_external_id("teyca:9") is None
    assert requests(axle, "POST", "/clients/batch") == 1


def test_a_phone_used_by_another_client_is_dropped_and_the_client_kept(client, axle):
    [first] = write(client, [person(1)])
    taken = change("teyca:2", external_id="teyca:2", phone="+79000000001", first_name="Пётр")
    [ack] = write(client, [taken])
    assert ack.outcome == "created" and ack.member_id != first.member_id
    [(field, reason)] = ack.dropped
    assert field == "phone" and reason.startswith("already used by another client")
    stored = axle.client_by_external_id("teyca:2")
    assert stored["phone"] is None and stored["first_name"] == "Пётр"
    assert axle.client_by_phone("+79000000001")["external_id"] == "teyca:1"
    assert requests(axle, "POST", "/clients/batch") == 3  # first, the batch, the resend


def test_matched_by_phone_the_phone_is_the_key(client, axle):
    acks = write(client, [change("+79000000001", phone="+79000000001", first_name="A")], BY_MOBILE)
    again = write(client, [change("+79000000001", last_name="B")], BY_MOBILE)  # key not in values
    assert acks[0].outcome == "created" and again[0].outcome == "updated"
    assert acks[0].member_id == again[0].member_id
    stored = axle.client_by_phone("+79000000001")
    assert (stored["first_name"], stored["last_name"]) == ("A", "B")


def test_two_clients_holding_the_phone_refuse_a_match_by_phone(client, axle):
    for n in (1, 2):
        axle.add_client({"external_id": f"x{n}", "phone": "+79000000001"}, allow_shared_phone=True)
    [ack] = write(client, [change("+79000000001", first_name="A")], BY_MOBILE)
    assert ack.outcome == "refused" and ack.dropped == ()
    assert "2 clients match this phone" in ack.reason
    assert requests(axle, "POST", "/clients/batch") == 1  # a refusal, not resent without phone


def test_cards_merge_by_source_and_user_id(client, axle):
    write(client, [person(1, cards=[card(101), card(102)])])
    write(client, [person(1, cards=[card(102, barcode="NEW"), card("103")])])
    stored = axle.client_by_external_id("teyca:1")
    assert [(c["user_id"], c["barcode"]) for c in stored["cards"]] == [
        (101, "BC101"),
        (102, "NEW"),
        (103, "BC103"),  # a digit text id goes as the source's integer id
    ]


def test_groups_become_sorted_tags_replacing_the_old_ones(client, axle):
    with_groups = MemberChange(
        "teyca:1", "create", person(1).values, groups=("birthday_month", "active")
    )
    write(client, [with_groups])
    assert axle.client_by_external_id("teyca:1")["tags"] == ["active", "birthday_month"]
    write(client, [MemberChange("teyca:1", "update", person(1).values, groups=())])
    assert axle.client_by_external_id("teyca:1")["tags"] == []


def test_import_type_follows_the_cores_plan(client, axle):
    policy = WritePolicy("external_id", "update_only", reimport_unsubscribed=False)
    [ack] = write(client, [person(1)], policy)
    assert ack.outcome == "import_type"
    assert axle.clients() == [] and requests(axle, "POST", "/clients/batch") == 0


def test_unknown_fields_are_dropped_not_sent(client, axle):
    [ack] = write(client, [person(1, city="Москва")])
    assert ack.outcome == "created"
    assert ack.dropped == (("city", "not a field of Axle clients; not sent"),)


# --- removal ----------------------------------------------------------------------------------


def test_remove_deletes_and_a_missing_client_counts_as_removed(client, axle):
    [created] = write(client, [person(1), person(2)])[:1]
    member_id = created.member_id
    [ack] = write(client, [change(created.match_key, "remove", member_id)])
    assert ack.outcome == "removed" and ack.member_id == member_id
    assert axle.client_by_external_id(created.match_key) is None
    [again] = write(client, [change(created.match_key, "remove", member_id)])  # 404
    assert again.outcome == "removed"
    assert axle.request_count("DELETE") == 2

    [by_key] = write(client, [change("teyca:2", "remove")])  # no id: found by its key first
    assert by_key.outcome == "removed"
    assert axle.clients() == []


# --- listing --------------------------------------------------------------------------------------


def test_listing_since_a_moment_compares_instants_across_offsets(client, axle):
    write(client, [person(1), person(2)])
    time.sleep(0.05)
    between = datetime.now(UTC)
    time.sleep(0.05)
    write(client, [person(3)])

    every = list(client.iter_members(None))
    assert sorted(m.fields["external_id"] for m in every) == ["teyca:1", "teyca:2", "teyca:3"]
    raw = axle.client_by_external_id("teyca:3")
    assert raw["updated_at"].endswith("+03:00")  # Axle stamps in Moscow time
    [newest] = [m for m in every if m.fields["external_id"] == "teyca:3"]
    assert newest.updated_at == datetime.fromisoformat(raw["updated_at"])
    assert newest.updated_at.tzinfo == UTC and newest.status == "active"
    assert newest.mobile == "+79000000003" and newest.member_id == raw["id"]

    moscow = between.astimezone(timezone(timedelta(hours=3)))  # the same instant, other offset
    for since in (between, moscow):
        assert [m.fields["external_id"] for m in client.iter_members(since)] == ["teyca:3"]
    assert client.has_member_changes(between)
    future = datetime.now(UTC) + timedelta(minutes=5)  # nothing changed after it
    assert not client.has_member_changes(future)


def test_listing_pages_by_offset_until_meta_size(client, axle):
    write(client, [person(n) for n in range(1, 1203)])
    before = requests(axle, "GET", "/clients")
    listed = list(client.iter_members(None))
    assert len(listed) == 1202 and len({m.member_id for m in listed}) == 1202
    assert requests(axle, "GET", "/clients") - before == 3


def test_member_count_is_meta_size(client, axle):
    assert client.member_count() == 0
    write(client, [person(n) for n in range(7)])
    assert client.member_count() == 7


# --- the 5/s limit (AX-A4) -----------------------------------------------------------------------


@pytest.fixture
def limited(axle):
    """The emulator's own 5/s limit switched on for one test."""
    axle.limiter.limit = 5
    yield axle
    axle.limiter.limit = None


def test_a_burst_stays_under_five_per_second(client, limited):
    for _ in range(12):
        client.member_count()
    statuses = [r.status for r in limited.requests()]
    assert statuses == [200] * 12
    assert client.calls.throttled == 0


def test_a_429_is_waited_out_with_retry_after(server, keys, limited):
    unpaced = make_client(server, keys["demo"], pacer=None)
    for _ in range(8):
        assert unpaced.member_count() == 0
    statuses = [r.status for r in limited.requests()]
    assert 429 in statuses and statuses.count(200) == 8
    assert unpaced.calls.throttled == statuses.count(429)


def test_pacer_holds_slots_until_one_window_after_the_answer():
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    pacer = Pacer(2, 1.0, clock=lambda: now[0], sleep=sleep)
    pacer.acquire()
    pacer.acquire()
    now[0] = 0.5
    pacer.release()  # answered at 0.5: free again at 1.5
    now[0] = 0.7
    pacer.release()
    pacer.acquire()
    # whole milliseconds, and a stamp exactly one window old still counts: 1 ms more at most
    assert now[0] == pytest.approx(1.5, abs=0.002) and waits == [pytest.approx(0.8, abs=0.002)]
    assert shared_pacer("http://a", "k", 5) is shared_pacer("http://a", "k", 5)
    assert shared_pacer("http://a", "k", 5) is not shared_pacer("http://a", "k2", 5)


# --- wire conversion (AX-A2) ----------------------------------------------------------------------


def test_canonical_values_become_axle_wire_values():
    values = {
        "phone": "+79161234567",
        "birthday": date(1990, 5, 17),
        "card_installed_at": datetime(2026, 3, 18, 9, 0, tzinfo=UTC),
        "last_visit_at": "2026-03-18T12:00:00+03:00",
        "consent_mailing": "true",
        "push_allowed": False,
        "bonus_balance": Decimal("120.50"),
        "discount_percent": "10",
        "visits_total": Decimal("12"),
        "purchases_total": 1500.0,
        "gender": "F",
        "email": None,
        "cards": '[{"source": "teyca", "user_id": 1, "barcode": "B", "template": null, '
        '"wallet_link": null}]',
        "external_id": "teyca:1",
    }
    client, dropped = wire_client(values, ["b", "a"])
    assert dropped == []
    assert client == {
        "phone": "+79161234567",
        "birthday": "1990-05-17",
        "card_installed_at": "2026-03-18T09:00:00+00:00",
        "last_visit_at": "2026-03-18T12:00:00+03:00",
        "consent_mailing": True,
        "push_allowed": False,
        "bonus_balance": 120.5,
        "discount_percent": 10,
        "visits_total": 12,
        "purchases_total": 1500,
        "gender": "f",
        "email": None,  # empty at the source: cleared, AX-A2 lets it be null
        "cards": [
            {"source": "teyca", "user_id": 1, "barcode": "B", "template": None, "wallet_link": None}
        ],
        "external_id": "teyca:1",
        "tags": ["b", "a"],  # as given: the client sorts groups before
    }
    assert isinstance(client["visits_total"], int) and isinstance(client["bonus_balance"], float)


def test_values_that_do_not_convert_go_as_they_are():
    client, _ = wire_client(
        {"birthday": "31.02.2001", "visits_total": "many", "last_visit_at": "yesterday"}, None
    )
    assert client == {
        "birthday": "31.02.2001",
        "visits_total": "many",
        "last_visit_at": "yesterday",
    }
    naive, _ = wire_client({"last_visit_at": datetime(2026, 1, 2, 3, 4, 5)}, None)
    assert naive == {"last_visit_at": "2026-01-02T03:04:05+00:00"}  # naive is UTC


def test_parse_client_reads_moscow_stamps_as_utc():
    member = parse_client(
        {
            "id": "c1",
            "phone": "+79000000001",
            "email": "",
            "updated_at": "2026-03-18T12:00:00.000+03:00",
        }
    )
    assert member.updated_at == datetime(2026, 3, 18, 9, 0, tzinfo=UTC)
    assert member.email is None and member.mobile == "+79000000001" and member.status == "active"


def test_section_has_one_client_base_per_account():
    section = AxleTarget(
        kind="axle", account="acc_demo", base_url="http://h/axle/api/v1", api_key_env="AXLE_KEY"
    )
    assert section.list_id == "clients"
    assert section.env_vars() == ["AXLE_KEY"]
    assert section.resource().account == "acc_demo"
    with pytest.raises(ValueError):
        AxleTarget(kind="axle", account="a", base_url="http://h", api_key_env="secret-value")


def test_a_card_without_barcode_or_wallet_link_is_sent_with_them_null(client, axle):
    [ack] = write(client, [person(7, cards=['{"source":"teyca","user_id":"7"}'])])
    assert ack.outcome == "created", ack.reason
    [card] = axle.client_by_external_id("teyca:7")["cards"]
    assert card == {
        "source": "teyca",
        "user_id": 7,
        "barcode": None,
        "template": None,
        "wallet_link": None,
    }


def test_a_removal_by_phone_that_finds_two_clients_deletes_neither(client, axle):
    for n in (1, 2):
        axle.add_client({"external_id": f"x{n}", "phone": "+79000000009"}, allow_shared_phone=True)
    removal = MemberChange("+79000000009", "remove")
    [ack] = list(client.write_members([removal], BY_MOBILE))
    assert ack.outcome == "refused" and "2 clients match" in ack.reason
    assert len(axle.clients()) == 2


def test_an_empty_value_clears_only_a_field_axle_lets_be_null():
    client, _ = wire_client({"birthday": None, "loyalty_level": None, "phone": None}, None)
    assert client == {"birthday": None, "loyalty_level": None}  # phone: kept as Axle has it
