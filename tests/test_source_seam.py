"""The source seam against the real FlexPOS emulator: webhook runs re-read and tombstone, complete
scans of a full-scan entity see deletions, and the reusable auth and paging parts."""

from __future__ import annotations

import base64
import json
import sys
import types
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import httpx
import pyarrow.parquet as pq
import pytest

from assets import extract
from memberflow import landing
from resources import auth, paging
from resources.flexpos import ENTITIES, FlexPOSClient
from resources.http import VendorHttp
from resources.source import DELETED_FLAG, EntitySpec
from sandbox.credentials import FLEXPOS_CLIENT_ID, FLEXPOS_CLIENT_SECRET

# --- a stand-in for the receiver's webhook store (the real one is memberflow/webhook_store.py) --


@dataclass
class StoredEvent:
    seq: int
    kind: str
    entity: str
    record_id: str
    payload: dict[str, Any]
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class StandInStore:
    """Same API as WebhookStore (pending / mark_consumed), kept in memory per integration."""

    stores: dict[str, StandInStore] = {}

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self.consumed = 0
        self.consumed_by: str | None = None

    @classmethod
    def for_integration(cls, name: str) -> StandInStore:
        return cls.stores.setdefault(name, cls())

    def add_event(self, kind: str, record_id: Any, payload: dict[str, Any] | None = None) -> int:
        seq = len(self.events) + 1
        self.events.append(StoredEvent(seq, kind, "customers", str(record_id), payload or {}))
        return seq

    def pending(self, through: int | None = None) -> list[StoredEvent]:
        return [
            e
            for e in self.events
            if e.seq > self.consumed and (through is None or e.seq <= through)
        ]

    def last_seq(self) -> int:
        return len(self.events)

    def mark_consumed(self, through: int, run_id: str, entities: object = None) -> None:
        self.consumed, self.consumed_by = max(self.consumed, through), run_id


@pytest.fixture
def store(monkeypatch, tmp_path) -> StandInStore:
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    module = types.ModuleType("memberflow.webhook_store")
    module.WebhookStore = StandInStore  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "memberflow.webhook_store", module)
    StandInStore.stores.clear()
    return StandInStore.for_integration("fp")


def pos_client(sandbox, cls: type[FlexPOSClient] = FlexPOSClient, **kw: Any) -> FlexPOSClient:
    return cls(
        pos_base_url=f"{sandbox.url}/flexpos/pos",
        client_id=FLEXPOS_CLIENT_ID,
        client_secret=FLEXPOS_CLIENT_SECRET,
        **kw,
    )


def landed(entity: str = "customers") -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for path in landing.day_files("fp", entity):
        table = pq.read_table(path, columns=["record_id", "payload"]).to_pylist()
        rows += [(row["record_id"], json.loads(row["payload"])) for row in table]
    return rows


# --- webhook runs -------------------------------------------------------------------------------

# Just what a webhook run reads of an integration and its member mapping.
FP = types.SimpleNamespace(name="fp", source=types.SimpleNamespace(kind="flexpos"), tracking=[])
CUSTOMERS = types.SimpleNamespace(entity="customers")


def test_webhook_run_rereads_named_records_tombstones_deletes_and_consumes(sandbox, store):
    ids = [c["CustomerId"] for c in sandbox.data.flexpos_customers[:3]]
    sandbox.flexpos.upsert_customer({"CustomerId": ids[0], "FirstName": "Webhooked"})
    store.add_event("update", ids[0], {"CustomerId": ids[0], "FirstName": "stale hint"})
    store.add_event("create", ids[1])
    store.add_event("delete", ids[2], {"CustomerId": ids[2], "Email": "gone@example.com"})
    store.add_event("update", 99_999_999)  # named by a hook, gone at the source since
    store.add_event("update", ids[1])  # after `through`: stays pending
    client = pos_client(sandbox)
    context = dg.build_asset_context()

    stats, mode, meta = extract._run_webhooks(
        context, client, FP, CUSTOMERS, events=False, through=4
    )

    assert meta == {"webhook_events": 4, "records_reread": 3, "tombstones": 2}
    assert "#4" in mode and stats.high_water_mark is not None
    by_id = dict(landed())
    assert by_id[str(ids[0])]["FirstName"] == "Webhooked"  # the source's truth, not the hint
    assert not by_id[str(ids[1])].get(DELETED_FLAG)
    assert by_id[str(ids[2])] == {
        "CustomerId": ids[2],
        "Email": "gone@example.com",
        DELETED_FLAG: True,
    }
    assert by_id["99999999"] == {"CustomerId": "99999999", DELETED_FLAG: True}
    assert [e.seq for e in store.pending()] == [5]
    assert store.consumed_by == context.run_id
    assert client.calls.by_endpoint()["customers/{id}"] == 3
    assert landing.read_source_cursor("fp", "customers") is None  # a hint never moves it


def test_webhook_run_that_fails_leaves_events_pending(sandbox, store):
    store.add_event("update", sandbox.data.flexpos_customers[0]["CustomerId"])
    client = FlexPOSClient(
        pos_base_url=f"{sandbox.url}/flexpos/pos",
        client_id=FLEXPOS_CLIENT_ID,
        client_secret="wrong-secret",
    )
    with pytest.raises(Exception, match="401"):
        extract._run_webhooks(
            dg.build_asset_context(), client, FP, CUSTOMERS, events=False, through=1
        )
    assert len(store.pending()) == 1 and landed() == []


# --- full-scan entities: deletions seen by a complete scan --------------------------------------


class FullScanFlexPOS(FlexPOSClient):
    """FlexPOS with customers read as a full-scan entity (as a source without a modified filter)."""

    complete = True

    def entities(self):
        return [
            EntitySpec(e.name, e.role, e.description, e.id_field, full_scan=e.name == "customers")
            for e in ENTITIES
            if e.name in ("customers", "journals")
        ]

    def scan_complete(self, entity: str) -> bool:
        return self.complete


def scan(client: FlexPOSClient) -> landing.LandingStats:
    pages = client.iter_changed("customers", None)
    return landing.land_pages(client, "fp", "customers", pages, collect_ids=True)


def test_complete_scan_tombstones_ids_landed_before_and_missing_now(sandbox, store):
    everyone = pos_client(sandbox, FullScanFlexPOS)
    first = scan(everyone)
    assert (
        extract._land_deletions(dg.build_asset_context(), everyone, "fp", "customers", first)[
            "tombstones"
        ]
        == 0
    )
    # The club-member filter makes the others vanish from the scan, as deleted records would.
    members = pos_client(sandbox, FullScanFlexPOS, only_club_members=True)
    second = scan(members)
    gone = first.record_ids - second.record_ids
    assert gone and second.records
    meta = extract._land_deletions(dg.build_asset_context(), members, "fp", "customers", second)
    assert meta == {"tombstones": len(gone)}
    assert landing.live_ids("fp", "customers") == second.record_ids
    # A later scan sees nothing new gone: tombstoned ids are not tombstoned again.
    third = scan(members)
    again = extract._land_deletions(dg.build_asset_context(), members, "fp", "customers", third)
    assert again == {"tombstones": 0}


@pytest.mark.parametrize("why", ["cut short", "no records", "unreadable"])
def test_no_deletions_from_a_scan_that_is_not_trustworthy(sandbox, store, why):
    client = pos_client(sandbox, FullScanFlexPOS)
    before = scan(client)
    stats = landing.LandingStats(records=5, record_ids={next(iter(before.record_ids))})
    if why == "cut short":
        client.complete = False
    elif why == "no records":
        stats.records, stats.record_ids = 0, set()
    else:
        stats.unreadable = 1
    meta = extract._land_deletions(dg.build_asset_context(), client, "fp", "customers", stats)
    assert meta["tombstones"] == 0 and why.split()[0] in meta["deletions_skipped"]
    assert landing.live_ids("fp", "customers") == before.record_ids


def test_cursor_file_of_older_versions_still_reads(store):
    path = landing._cursor_path("fp", "customers")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"high_water_mark": "2024-06-01T10:00:00+00:00"}))
    assert landing.read_source_cursor("fp", "customers") == "2024-06-01T10:00:00+00:00"
    landing.write_source_cursor("fp", "customers", "opaque-token-17")
    assert landing.read_source_cursor("fp", "customers") == "opaque-token-17"
    assert landing.read_cursor("fp", "customers") is None  # not a datetime: no datetime view


# --- reusable auth parts ----------------------------------------------------------------------


def test_cached_token_renews_inside_the_margin_and_after_invalidate():
    issued: list[str] = []

    def fetch() -> tuple[str, float | None]:
        issued.append(f"t{len(issued) + 1}")
        return issued[-1], 100.0

    now = [0.0]
    token = auth.CachedToken(fetch, margin=10, clock=lambda: now[0])
    assert token.headers() == {"Authorization": "Bearer t1"}
    now[0] = 89.0
    assert token.token() == "t1"
    now[0] = 90.0
    assert token.token() == "t2"
    token.invalidate("t1")  # an old token: the current one stays
    assert token.token() == "t2"
    token.invalidate("t2")
    assert token.token() == "t3"


def test_client_credentials_posts_the_grant_and_reads_expiry():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "abc", "expires_in": 3600})

    http = VendorHttp(vendor="x", transport=httpx.MockTransport(handler), sleep=lambda s: None)
    now = [0.0]
    token = auth.client_credentials(
        http, "http://x/oauth/token", "id", "sec", endpoint="token", clock=lambda: now[0]
    )
    assert token.token() == "abc" and token.token() == "abc"
    assert len(seen) == 1
    assert seen[0].content.decode() == (
        "grant_type=client_credentials&client_id=id&client_secret=sec"
    )
    now[0] = 3540.0  # 60 s left: inside the default margin, renewed
    token.token()
    assert len(seen) == 2


def test_token_answer_without_a_token_is_a_garbled_answer():
    with pytest.raises(ValueError, match="without a token"):
        auth.token_answer()({"error": "nope"})


def test_fixed_headers():
    request = next(httpx.BasicAuth("user", "pässword").auth_flow(httpx.Request("GET", "http://x/")))
    assert auth.basic("user", "pässword")["Authorization"] == request.headers["Authorization"]
    assert auth.bearer("t") == {"Authorization": "Bearer t"}
    assert auth.raw_key("X-Api-Key", "k") == {"X-Api-Key": "k"}


def test_hmac_signer_hex_and_base64_and_constant_time_verify():
    hexed = auth.HmacSigner("secret").sign("message")
    assert hexed == "8b5f48702995c1598c573db1e21866a9b825d4a794d169d7060a03605796360b"
    b64 = auth.HmacSigner(b"secret", encoding="base64").sign(b"message")
    assert base64.b64decode(b64).hex() == hexed
    assert auth.HmacSigner("secret").verify("message", hexed + "\n")
    assert not auth.HmacSigner("other").verify("message", hexed)


# --- reusable paging parts --------------------------------------------------------------------

ROWS = [{"id": i} for i in range(7)]


def test_page_numbers_until_a_short_page():
    asked: list[int] = []

    def fetch(page: int) -> list[dict[str, Any]]:
        asked.append(page)
        return ROWS[(page - 1) * 3 : page * 3]

    pages = list(paging.page_numbers(fetch, lambda body: body, page_size=3))
    assert [len(p) for p in pages] == [3, 3, 1] and asked == [1, 2, 3]


def test_page_numbers_until_total_and_on_an_empty_page_despite_the_total():
    def fetch(page: int) -> dict[str, Any]:
        return {"items": ROWS[(page - 1) * 3 : page * 3], "total": 99}

    pages = list(paging.page_numbers(fetch, lambda b: b["items"], page_size=3, total=lambda b: 6))
    assert [len(p) for p in pages] == [3, 3]
    lying = list(paging.page_numbers(fetch, lambda b: b["items"], page_size=3, total=lambda b: 99))
    assert sum(map(len, lying)) == 7


def test_offsets_with_a_meta_size_total():
    asked: list[tuple[int, int]] = []

    def fetch(offset: int, limit: int) -> dict[str, Any]:
        asked.append((offset, limit))
        return {"data": ROWS[offset : offset + limit], "meta": {"size": len(ROWS)}}

    pages = list(
        paging.offsets(fetch, lambda b: b["data"], limit=3, total=lambda b: b["meta"]["size"])
    )
    assert [len(p) for p in pages] == [3, 3, 1] and asked == [(0, 3), (3, 3), (6, 3)]
    short = list(paging.offsets(fetch, lambda b: b["data"], limit=5))
    assert [len(p) for p in short] == [5, 2]


def test_next_links_until_none():
    chain = {None: ("p2", ROWS[:2]), "p2": ("p3", ROWS[2:4]), "p3": (None, ROWS[4:])}
    asked: list[str | None] = []

    def fetch(link: str | None) -> tuple[str | None, list[dict[str, Any]]]:
        asked.append(link)
        return chain[link]

    pages = list(paging.next_links(fetch, lambda b: b[1], lambda b: b[0]))
    assert [len(p) for p in pages] == [2, 2, 3] and asked == [None, "p2", "p3"]


@pytest.mark.e2e
def test_webhook_through_in_run_config_drives_the_member_extract(harness, store):
    """The asset itself: `webhook_through` in its run config makes it a webhook run, with the
    counts in its metadata (what the webhook sensor's run sets)."""
    from memberflow.mapping import load_mapping

    harness.load("demo_flexpos")
    integration = harness.integration("demo_flexpos")
    hooks = StandInStore.for_integration(integration.name)
    customer = harness.sandbox.data.flexpos_customers[5]["CustomerId"]
    hooks.add_event("update", customer)
    hooks.add_event("delete", customer + 1, {"CustomerId": customer + 1})
    asset = extract.build_extract_asset(
        integration, load_mapping("flexpos", "customers"), partitions=None
    )
    result = dg.materialize(
        [asset],
        resources={extract.naming.source_resource_key(integration): integration.source.resource()},
        run_config=dg.RunConfig(
            ops={asset.node_def.name: extract.ExtractConfig(webhook_through=2)}
        ),
        instance=harness.instance,
    )
    [materialization] = result.asset_materializations_for_node(asset.node_def.name)
    meta = {key: value.value for key, value in materialization.metadata.items()}
    assert (meta["webhook_events"], meta["records_reread"], meta["tombstones"]) == (2, 1, 1)
    assert meta["dagster/row_count"] == 2 and hooks.pending() == []


def test_full_scan_defaults_scan_every_interval_and_keep_the_scan_start(sandbox):
    client = pos_client(sandbox, FullScanFlexPOS)
    started = datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
    assert client.has_changes("customers", started.isoformat()) is True
    assert client.calls.total == 0  # no cheap probe: no call spent
    assert client.cursor_after("customers", None, None, started) == started.isoformat()
    assert client.cursor_after("journals", "prev", None, started) == "prev"


def test_a_source_is_read_only_unless_it_declares_write_back():
    from resources.flexpos import FlexPOSClient
    from resources.source import SourceClient, WriteBack

    assert SourceClient.write_back_actions == frozenset()
    assert FlexPOSClient.write_back_actions == frozenset()
    change = WriteBack(action="unsubscribe", key="unsubscribed:1|17", record_id="17")
    with pytest.raises(NotImplementedError, match="takes no write-back"):
        list(SourceClient.write_back(_NoVendor(), [change]))


class _NoVendor:
    vendor = "novendor"


@pytest.mark.parametrize(
    ("started_for", "entity", "due"),
    [
        (None, "passes", True),  # by hand or a backfill: every entity is read
        ("passes", "passes", True),  # the sensor found a scan due
        ("operations,list", "passes", False),  # started for purchases: no rescan of every card
        ("segments", "passes", False),  # the daily segment run recomputes from what is landed
        ("segments", "operations", True),  # not a full-scan entity: its cheap read goes on
    ],
)
def test_a_full_scan_runs_only_in_a_run_started_for_it(started_for, entity, due):
    from types import SimpleNamespace

    from assets.extract import CHANGED_TAG, _scan_due
    from resources.source import EntitySpec

    specs = {
        "passes": EntitySpec("passes", "members", full_scan=True),
        "operations": EntitySpec("operations", "events"),
    }
    client = SimpleNamespace(entity_spec=specs.__getitem__)
    tags = {} if started_for is None else {CHANGED_TAG: started_for}
    context = SimpleNamespace(run=SimpleNamespace(tags=tags))
    assert _scan_due(context, client, entity) is due
