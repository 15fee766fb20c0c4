"""Amero/FlexPOS source client: customers and journals from the POS API, tickets and memberships
from the optional Attractions API (FP4).

FlexPOS publishes no API documentation: everything about the wire is memberflow's designed
contract, the labelled assumptions FP-A* (summarised in the README) that this client and the
emulator in sandbox/ both implement; when real documentation arrives, change it here.
"""

from __future__ import annotations

import functools
import json
import operator
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo

import dagster as dg
import httpx
import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from resources import paging
from resources.auth import CachedToken, client_credentials
from resources.base import VendorError
from resources.http import (
    EnvVarName,
    HttpUrlStr,
    VendorHttp,
    as_utc,
    date_windows,
    resolve_secret,
)
from resources.pacing import requests_per_second_pace
from resources.record_fields import record_datetime, record_id
from resources.registry import SourceSectionBase
from resources.source import (
    DELETED_FLAG,
    EntitySpec,
    PageMeta,
    RawPage,
    RecordMeta,
    SourceClient,
)

COPENHAGEN = ZoneInfo("Europe/Copenhagen")  # FP-A3: datetimes are local time without offset
LOCAL_FORMAT = "%Y-%m-%dT%H:%M:%S"
TOKEN_MARGIN_SECONDS = 60.0  # FP-A2: refresh 60 s before expiry
REQUESTS_PER_SECOND = 10.0  # FP-A8: per client id
MAX_PAGE_SIZE = 500  # FP-A3


# The one declaration of FlexPOS's entities (the section's ClassVar below reads it).
ENTITIES = (
    EntitySpec("customers", "members", "POS customers", id_field="CustomerId"),
    EntitySpec("journals", "events", "POS sales", id_field="JournalId"),
    EntitySpec("tickets", "events", "Attractions tickets", id_field="TicketId"),
    EntitySpec("memberships", "events", "Attractions memberships", id_field="MembershipId"),
)


@dataclass(frozen=True)
class _Wire:
    """Where an entity lives on the wire: which API, path, and business date field (FP-A5..A7)."""

    api: Literal["pos", "attractions"]
    path: str
    date_field: str | None  # None for customers


_WIRE: dict[str, _Wire] = {
    "customers": _Wire("pos", "customers", None),
    "journals": _Wire("pos", "journals", "Date"),
    "tickets": _Wire("attractions", "tickets", "BookingDate"),
    "memberships": _Wire("attractions", "memberships", "PurchaseDate"),
}


@dataclass(frozen=True)
class _Entity:
    spec: EntitySpec
    wire: _Wire

    @property
    def api(self) -> str:
        return self.wire.api

    @property
    def path(self) -> str:
        return self.wire.path

    @property
    def date_field(self) -> str | None:
        return self.wire.date_field

    @property
    def id_field(self) -> str:
        return str(self.spec.id_field)


_ENTITIES: dict[str, _Entity] = {spec.name: _Entity(spec, _WIRE[spec.name]) for spec in ENTITIES}


class FlexPOSClient(SourceClient):
    """Reads FlexPOS records page by page (FP-A3); knows the customer filters of FP2."""

    vendor: ClassVar[str] = "flexpos"
    default_date_format: ClassVar[str] = LOCAL_FORMAT

    def __init__(
        self,
        *,
        pos_base_url: str,
        client_id: str,
        client_secret: str,
        attractions_base_url: str | None = None,
        attractions_client_id: str | None = None,
        attractions_client_secret: str | None = None,
        only_active: bool = False,
        only_club_members: bool = False,
        only_newsletter: bool = False,
        page_size: int = 500,
        timeout: float | None = None,  # None: MEMBERFLOW_HTTP_TIMEOUT or 30 s
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        requests_per_second: float | None = REQUESTS_PER_SECOND,  # 0 or None: no pacing
    ) -> None:
        attractions = (attractions_base_url, attractions_client_id, attractions_client_secret)
        if any(attractions) and not all(attractions):
            raise ValueError("Attractions needs base URL, client id and client secret together")
        # FP-A8: 10 requests/s per client id: one pace per API's client id, chosen by URL
        paces = [
            (
                base.rstrip("/"),
                requests_per_second_pace(self.vendor, f"{base}\0{cid}", rps),
            )
            for base, cid, rps in (
                (pos_base_url, client_id, requests_per_second),
                (attractions_base_url, attractions_client_id, requests_per_second),
            )
            if base and cid
        ]
        self._http = VendorHttp(
            vendor=self.vendor,
            timeout=timeout,
            max_tries=max_tries,
            transport=transport,
            sleep=sleep,
            secrets=[client_secret, attractions_client_secret or ""],
            pace=lambda url: next((p for base, p in paces if url.startswith(base)), None),
        )
        self.calls = self._http.calls
        self._bases = {"pos": pos_base_url.rstrip("/")}
        self._tokens = {
            "pos": self._token(self._bases["pos"], "pos", client_id, client_secret, clock)
        }
        if all(attractions):
            base = str(attractions_base_url).rstrip("/")
            self._bases["attractions"] = base
            self._tokens["attractions"] = self._token(
                base,
                "attractions",
                str(attractions_client_id),
                str(attractions_client_secret),
                clock,
            )
        self._customer_filters = _customer_filters(only_active, only_club_members, only_newsletter)
        self._page_size = max(1, min(page_size, MAX_PAGE_SIZE))

    def _token(
        self, base: str, api: str, client_id: str, secret: str, clock: Callable[[], float]
    ) -> CachedToken:
        """One OAuth2 client-credentials token per base URL, renewed 60 s early (FP-A2)."""
        return client_credentials(
            self._http,
            f"{base}/oauth/token",
            client_id,
            secret,
            endpoint=f"{api}/oauth/token",
            margin=TOKEN_MARGIN_SECONDS,
            clock=clock,
        )

    # --- SourceClient --------------------------------------------------------------------------

    def entities(self) -> Sequence[EntitySpec]:
        """Tickets and memberships only with Attractions credentials (FP-A6)."""
        return [e.spec for e in _ENTITIES.values() if e.api in self._bases]

    def check_connection(self) -> None:
        """Token(s) plus one customer (FP-A2, FP-A4)."""
        for tokens in self._tokens.values():
            tokens.token()
        self._get_page(_ENTITIES["customers"], {"page": 1, "pageSize": 1})

    def iter_modified(self, entity: str, since: datetime | None) -> Iterator[list[dict[str, Any]]]:
        spec = self._entity(entity)
        return self._pages(spec, self._base_params(spec, since))

    def iter_range(self, entity: str, start: date, end: date) -> Iterator[list[dict[str, Any]]]:
        """Event pages by business date, one ≤366-day window per request series (FP-A3)."""
        spec = self._entity(entity)
        if spec.date_field is None:
            raise ValueError(f"flexpos {entity} has no business date; use iter_changed")
        for window_start, window_end in date_windows(start, end):
            params = {"fromDate": window_start.isoformat(), "toDate": window_end.isoformat()}
            yield from self._pages(spec, params)

    def has_modified(self, entity: str, since: datetime | None) -> bool:
        """One call, pageSize=1: TotalCount > 0 (AF sensor probe)."""
        spec = self._entity(entity)
        params = {**self._base_params(spec, since), "page": 1, "pageSize": 1}
        body = self._get_page(spec, params)
        return int(body.get("TotalCount") or 0) > 0 or bool(body.get("Items"))

    def fetch_records(self, entity: str, ids: Sequence[str]) -> Iterator[list[dict[str, Any]]]:
        """Customers read again one by one (FP-A4: `GET customers/{id}`); a 404 is a deletion."""
        spec = self._entity(entity)
        if spec.path != "customers":
            raise NotImplementedError(f"flexpos reads only customers by id, not {entity}")
        page: list[dict[str, Any]] = []
        for customer_id in ids:
            url = f"{self._bases[spec.api]}/api/v1/customers/{customer_id}"
            try:
                page.append(self._get(spec, url, None, "customers/{id}"))
            except VendorError as exc:
                if exc.status != 404:
                    raise
                page.append(self.tombstone(entity, str(customer_id)))
            if len(page) >= self._page_size:
                yield page
                page = []
        if page:
            yield page

    def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
        """Id, modification time and business date; a ValueError naming the field when a record
        lacks one or it is not a date, so landing can quarantine just that record."""
        spec = self._entity(entity)
        business = None
        if spec.date_field is not None:
            business = _local_datetime(record, spec.date_field).astimezone(COPENHAGEN).date()
        return RecordMeta(
            record_id=record_id(record, spec.id_field),
            modified=_local_datetime(record, "Modified"),
            business_date=business,
        )

    def page_meta(self, entity: str, page: list[dict[str, Any]]) -> PageMeta | None:
        """`record_meta` of every record at once, read by Arrow and numpy per page rather than
        per record in Python (issue 10: record_meta was a third of the extract's CPU). Only for
        pages where every id is an integer (or non-blank text) and every `Modified` (and
        business date) is exactly `YYYY-MM-DDTHH:MM:SS` from 1900 on; any other page: None,
        and landing asks record_meta record by record, as before."""
        try:
            spec = self._entity(entity)
        except ValueError:
            return None

        def column(name: str) -> list[Any] | None:
            try:
                return list(map(operator.itemgetter(name), page))
            except (KeyError, TypeError):  # a record without the field, or not a JSON object
                return None

        return _columns_meta(
            column(spec.id_field),
            column("Modified"),
            column(spec.date_field) if spec.date_field is not None else None,
        )

    def close(self) -> None:
        self._http.close()

    # --- internals -----------------------------------------------------------------------------

    def _entity(self, name: str) -> _Entity:
        spec = _ENTITIES.get(name)
        if spec is None:
            raise ValueError(f"flexpos has no entity {name!r}; known: {sorted(_ENTITIES)}")
        if spec.api not in self._bases:
            raise ValueError(f"flexpos {name} needs the Attractions API credentials (FP4)")
        return spec

    def _base_params(self, spec: _Entity, since: datetime | None) -> dict[str, Any]:
        """modifiedSince in Copenhagen local time (FP-A3) plus the FP2 filters for customers."""
        params: dict[str, Any] = {}
        if since is not None:
            params["modifiedSince"] = format_local(since)
        if spec.path == "customers":
            params.update(self._customer_filters)
        return params

    def _pages(self, spec: _Entity, params: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        """Page until Page*PageSize >= TotalCount, or an empty page (FP-A3)."""
        size = self._page_size
        return paging.page_numbers(
            lambda page: self._get_page(spec, {**params, "page": page, "pageSize": size}, True),
            lambda body: body.get("Items") or [],
            page_size=size,
            total=lambda body: int(body.get("TotalCount") or 0),
            covered=lambda body, page: (
                int(body.get("Page") or page) * int(body.get("PageSize") or size)
            ),
            read_ahead=True,  # one request in flight at a time, as FP-A8 allows
        )

    def _get_page(self, spec: _Entity, params: dict[str, Any], raw: bool = False) -> dict[str, Any]:
        """One page of the entity's collection (a paging envelope, FP-A3); with `raw`, its
        `Items` a `RawPage` when the body allows (see `_raw_envelope`)."""
        url = f"{self._bases[spec.api]}/api/v1/{spec.path}"
        return self._get(spec, url, params, spec.path, spec if raw else None)

    def _get(
        self,
        spec: _Entity,
        url: str,
        params: dict[str, Any] | None,
        endpoint: str,
        raw: _Entity | None = None,
    ) -> dict[str, Any]:
        """GET with a bearer token; on a 401 fetch a new token once and try again (FP-A2)."""
        tokens = self._tokens[spec.api]
        for attempt in (1, 2):
            token = tokens.token()
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            try:
                body = self._get_json(url, endpoint, params, headers, raw)
            except VendorError as exc:
                if exc.status != 401 or attempt == 2:
                    raise
                tokens.invalidate(token)
                continue
            if not isinstance(body, dict):
                raise VendorError(self.vendor, 200, f"{endpoint}: expected a JSON object")
            return body
        raise AssertionError("unreachable")

    def _get_json(
        self,
        url: str,
        endpoint: str,
        params: dict[str, Any] | None,
        headers: dict[str, str],
        raw: _Entity | None = None,
    ) -> Any:
        """GET and parse the body with `loads` (with `raw`, first as `_raw_envelope` of that
        entity); a body that is not JSON (cut off, an HTML error page) is asked for again
        through `get_json`, which retries it and gives up as VendorError like any unreadable
        answer (one call more than get_json alone)."""
        response = self._http.request("GET", url, endpoint=endpoint, params=params, headers=headers)
        if raw is not None:
            envelope = _raw_envelope(response.content, raw)
            if envelope is not None:
                return envelope
        try:
            return loads(response.content)
        except ValueError:
            return self._http.get_json(url, endpoint=endpoint, params=params, headers=headers)


_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_WIDE_NUMBER = b"0" * 19  # 19 digits in a row may be an integer beyond 64 bits


def loads(content: bytes) -> Any:
    """A JSON body parsed as the standard library would, ~3x faster: orjson, unless the body
    holds a run of 19 or more digits (orjson reads an integer beyond 64 bits as a float, losing
    digits) or is something orjson refuses (NaN, 1e400, a lone surrogate, not UTF-8), which the
    standard library reads as it always did. A ValueError when neither can read it."""
    if content.translate(_DIGITS_AS_ZEROS).find(_WIDE_NUMBER) < 0:
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
    return json.loads(content)


# --- a page as it came (RawPage) -----------------------------------------------------------------


class _Envelope(msgspec.Struct):
    """FP-A3's paging envelope with each record's JSON text left as it came."""

    Items: list[msgspec.Raw]
    Page: Any = None
    PageSize: Any = None
    TotalCount: Any = None


@functools.cache
def _meta_decoder(id_field: str, date_field: str | None) -> msgspec.json.Decoder:
    """Reads an envelope's records' id, `Modified`, business date and tombstone flag only (the
    other fields are skipped, no object made for them); a record without one of the first three,
    or with an id that is not an integer or text, fails the decoding (ValidationError)."""
    fields: list[tuple[Any, ...]] = [("id", int | str), ("modified", Any)]
    names = {"id": id_field, "modified": "Modified", "deleted": DELETED_FLAG}
    if date_field is not None:
        fields.append(("day", Any))
        names["day"] = date_field
    fields.append(("deleted", Any, None))
    record = msgspec.defstruct("FlexPOSRecordMeta", fields, rename=names)
    envelope = msgspec.defstruct("FlexPOSMetaEnvelope", [("Items", list[record])])
    return msgspec.json.Decoder(envelope)


_ENVELOPE = msgspec.json.Decoder(_Envelope)
# Whitespace between tokens: a raw tab, CR or LF (never inside a string, where they are escaped),
# a space before a quote (inside a string a quote is escaped) or after a key's colon.
_WHITESPACE = (b"\n", b"\r", b"\t", b' "', b'": ')
# Escapes orjson writes otherwise (\u00e5 as the letter, \/ as /); a lone surrogate (\ud800)
# is one of them, which landing quarantines as text that is not Unicode.
_ESCAPES = (b"\\u", b"\\/")


def _compact(content: bytes) -> bool:
    """Is the body JSON as orjson writes it, as far as whitespace and escapes go? (Numbers are
    not looked at: a record's text keeps them as the source wrote them, the same values.)"""
    if any(map(content.__contains__, _WHITESPACE)):
        return False
    return b"\\" not in content or not any(map(content.__contains__, _ESCAPES))


def _raw_envelope(content: bytes, entity: _Entity) -> dict[str, Any] | None:
    """The body as an envelope whose `Items` is a `RawPage` (each record's text as it came,
    metadata read without a Python object per record: issue 10), or None, and the body is read
    by `loads` as before, unless the body is compact JSON (`_compact`) with nothing unusual: a
    record's text then is what orjson writes for it, but for how a number is written (`1.50`,
    `1E2`: kept as sent; the same value to staging).

    None for: whitespace between tokens or an escape orjson would write otherwise, text that is
    not UTF-8, an empty page, a record with a truthy tombstone flag, or any record whose
    metadata `page_meta` would not read column by column."""
    if not _compact(content):
        return None
    try:
        envelope = _ENVELOPE.decode(content)
        records = _meta_decoder(entity.id_field, entity.date_field).decode(content).Items
    except msgspec.MsgspecError:  # not JSON, not this envelope, an id of another kind
        return None
    texts = envelope.Items
    if not texts or len(texts) != len(records):
        return None
    if any(map(operator.attrgetter("deleted"), records)):
        return None  # a tombstone (or a flag merely truthy): record by record, as before
    meta = _columns_meta(
        list(map(operator.attrgetter("id"), records)),
        list(map(operator.attrgetter("modified"), records)),
        None if entity.date_field is None else list(map(operator.attrgetter("day"), records)),
    )
    if meta is None:
        return None
    offsets = np.zeros(len(texts) + 1, np.int32)  # a page is far below 2 GiB
    np.cumsum(np.fromiter(map(len, texts), np.int32, len(texts)), out=offsets[1:])
    payloads = pa.StringArray.from_buffers(
        len(texts), pa.py_buffer(offsets), pa.py_buffer(b"".join(texts))
    )
    try:
        payloads.validate(full=True)  # UTF-8 (msgspec does not check text it skips)
    except pa.ArrowInvalid:
        return None
    page = RawPage(payloads, meta, functools.partial(_items, content))
    return {
        "Items": page,
        "Page": envelope.Page,
        "PageSize": envelope.PageSize,
        "TotalCount": envelope.TotalCount,
    }


def _items(content: bytes) -> list[dict[str, Any]]:
    """A RawPage's records as dicts, as `loads` reads them (only if someone asks)."""
    return loads(content)["Items"]


def _customer_filters(active: bool, club: bool, newsletter: bool) -> dict[str, str]:
    """FP2 switches (FP-A4): a switched-off filter is not sent at all."""
    filters = {}
    if active:
        filters["isActive"] = "true"
    if club:
        filters["isClubMember"] = "1"
    if newsletter:
        filters["getsNewsletter"] = "1"
    return filters


def format_local(moment: datetime) -> str:
    """Aware (or naive UTC) datetime -> Copenhagen wall time without offset (FP-A3)."""
    return as_utc(moment).astimezone(COPENHAGEN).strftime(LOCAL_FORMAT)


def _local_datetime(record: dict[str, Any], name: str) -> datetime:
    return record_datetime(record, name, _utc_from_local)


def parse_local(value: str) -> datetime:
    """FlexPOS datetime text -> aware datetime; no offset means Copenhagen local (FP-A3)."""
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=COPENHAGEN)
    return moment


def _utc_from_local(text: str) -> datetime:
    """`parse_local(text)` in UTC, the same instant, without asking the time zone per record:
    Copenhagen's offset is looked up once per day, or per hour on a day it changes (its changes
    fall on the hour)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        return moment.astimezone(UTC)
    offset = _day_offset(moment.year, moment.month, moment.day)
    if offset is None:
        offset = _hour_offset(moment.year, moment.month, moment.day, moment.hour)
        if offset is None:
            return moment.replace(tzinfo=COPENHAGEN).astimezone(UTC)
    return (moment - offset).replace(tzinfo=UTC)


# --- a page's metadata at once (page_meta) ------------------------------------------------------

MICROS_PER_DAY = 86_400_000_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# page_meta's range: Copenhagen's offsets are whole hours from here on (before 1894 local mean
# time, +0:50:20), and no date near datetime's ends, where record_meta's arithmetic overflows
_FIRST_FAST = np.datetime64("1900-01-01T00:00:00", "us").astype(np.int64)
_LAST_FAST = np.datetime64("9999-12-01T00:00:00", "us").astype(np.int64)
_LOCAL_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}$"  # LOCAL_FORMAT
_NO_OFFSET = np.iinfo(np.int64).min
_BLOCK_DAYS = 512  # a day whose offset changes: its records go one by one


def _columns_meta(
    ids: list[Any] | None, modified: list[Any] | None, business: list[Any] | None
) -> PageMeta | None:
    """A page's metadata from its id, `Modified` and business date values (`business` None for
    customers), or None unless `_page_ids` and `_page_local_times` read every one."""
    record_ids = None if ids is None else _page_ids(ids)
    local = None if modified is None else _page_local_times(modified)
    if record_ids is None or local is None:
        return None
    days = None
    if business is not None:
        business_local = _page_local_times(business)
        if business_local is None:
            return None
        days = pa.array(_business_days(*business_local), pa.date32())
    return PageMeta(
        record_id=record_ids,
        modified=pa.array(_utc_micros(*local), pa.timestamp("us", tz="UTC")),
        business_date=days,
    )


def _page_ids(values: list[Any]) -> pa.Array | None:
    """The page's ids as text (`record_id` of each record), or None unless every id is an
    integer within 64 bits or non-blank text (`str(id)` of those, which Arrow writes alike)."""
    kinds = set(map(type, values))
    try:
        if kinds == {int}:  # not bool, not float: record_id writes those differently
            return pa.array(values, pa.int64()).cast(pa.string())
        if kinds == {str} and all(map(str.strip, values)):
            return pa.array(values, pa.string())
    except (pa.ArrowException, OverflowError, UnicodeError):
        return None  # beyond 64 bits, or text that is not Unicode
    return None


def _page_local_times(texts: list[Any]) -> tuple[np.ndarray, list[str]] | None:
    """The wall times as microseconds since 1970 (naive: Copenhagen's wall clock), with the
    texts, or None unless every one is text exactly `YYYY-MM-DDTHH:MM:SS` naming a real moment
    (Arrow refuses Feb 30, 24:00, a leap second) from 1900 to 9999."""
    if set(map(type, texts)) != {str}:
        return None
    try:
        column = pa.array(texts, pa.string())
        if not pc.all(pc.match_substring_regex(column, _LOCAL_PATTERN)).as_py():
            return None
        micros = column.cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()
    except (pa.ArrowException, UnicodeError):
        return None  # not Unicode text, or not a date
    if micros.min() < _FIRST_FAST or micros.max() > _LAST_FAST:
        return None
    return micros, texts


def _day_offsets(micros: np.ndarray) -> np.ndarray:
    """Copenhagen's UTC offset in microseconds for each wall time's day, `_NO_OFFSET` on a day
    the offset changes; looked up in tables of `_BLOCK_DAYS` days, each made once."""
    days = micros // MICROS_PER_DAY
    blocks = days // _BLOCK_DAYS
    first, last = int(blocks.min()), int(blocks.max())
    if first == last:
        return _block_offsets(first)[days - first * _BLOCK_DAYS]
    table = np.concatenate([_block_offsets(block) for block in range(first, last + 1)])
    return table[days - first * _BLOCK_DAYS]


def _utc_micros(micros: np.ndarray, texts: list[str]) -> np.ndarray:
    """Wall times -> UTC microseconds, as `_utc_from_local` would (that function itself for
    the few on a day the offset changes)."""
    offsets = _day_offsets(micros)
    utc = micros - offsets
    for i in np.flatnonzero(offsets == _NO_OFFSET):
        utc[i] = (_utc_from_local(texts[i]) - _EPOCH) // timedelta(microseconds=1)
    return utc


def _business_days(micros: np.ndarray, texts: list[str]) -> np.ndarray:
    """The Copenhagen date of each wall time, days since 1970, as record_meta's business date:
    the wall time's own date on a day whose offset holds, `record_meta`'s way on the others."""
    offsets = _day_offsets(micros)
    days = micros // MICROS_PER_DAY
    for i in np.flatnonzero(offsets == _NO_OFFSET):
        day = _utc_from_local(texts[i]).astimezone(COPENHAGEN).date()
        days[i] = day.toordinal() - _EPOCH_ORDINAL
    return days.astype(np.int32)


@functools.lru_cache(maxsize=256)
def _block_offsets(block: int) -> np.ndarray:
    """`_day_offset` in microseconds (or _NO_OFFSET) of the `_BLOCK_DAYS` days from day
    `block * _BLOCK_DAYS` after 1970-01-01 (each table is made once: ~1 ms)."""
    offsets = np.empty(_BLOCK_DAYS, np.int64)
    for i in range(_BLOCK_DAYS):
        moment = date.fromordinal(_EPOCH_ORDINAL + block * _BLOCK_DAYS + i)
        offset = _offset_between(
            datetime(moment.year, moment.month, moment.day),
            datetime(moment.year, moment.month, moment.day, 23, 59, 59),
        )
        offsets[i] = _NO_OFFSET if offset is None else offset // timedelta(microseconds=1)
    offsets.setflags(write=False)
    return offsets


@functools.lru_cache(maxsize=16_384)
def _day_offset(year: int, month: int, day: int) -> timedelta | None:
    """Copenhagen's UTC offset for the whole day, or None on a day the offset changes."""
    return _offset_between(datetime(year, month, day), datetime(year, month, day, 23, 59, 59))


@functools.lru_cache(maxsize=1_024)
def _hour_offset(year: int, month: int, day: int, hour: int) -> timedelta | None:
    """Copenhagen's offset for every wall time of this hour (fold 0, as `parse_local`), or None
    when it changes inside the hour (1894's switch from local mean time)."""
    return _offset_between(datetime(year, month, day, hour), datetime(year, month, day, hour, 59))


def _offset_between(first: datetime, last: datetime) -> timedelta | None:
    start = first.replace(tzinfo=COPENHAGEN).utcoffset()
    end = last.replace(second=59, microsecond=999_999, tzinfo=COPENHAGEN).utcoffset()
    return start if start == end else None


# --- integration file section and Dagster resource ---------------------------------------------


class FlexPOSAttractionsSection(BaseModel):
    """The optional Attractions API credentials (FP4, FP-A1)."""

    model_config = ConfigDict(extra="forbid")

    base_url: HttpUrlStr
    client_id_env: EnvVarName
    client_secret_env: EnvVarName


class FlexPOSCustomerFilters(BaseModel):
    """FP2 customer filters; all off by default."""

    model_config = ConfigDict(extra="forbid")

    only_active: bool = False
    only_club_members: bool = False
    only_newsletter: bool = False


class FlexPOSResource(dg.ConfigurableResource):
    """FlexPOS settings with secrets as `dg.EnvVar`, resolved only when a client is built."""

    pos_base_url: str
    client_id: str
    client_secret: str
    attractions_base_url: str | None = None
    attractions_client_id: str | None = None
    attractions_client_secret: str | None = None
    only_active: bool = False
    only_club_members: bool = False
    only_newsletter: bool = False
    page_size: int = 500
    requests_per_second: float | None = REQUESTS_PER_SECOND

    def client(self) -> FlexPOSClient:
        return FlexPOSClient(
            pos_base_url=self.pos_base_url,
            client_id=resolve_secret(self.client_id, "flexpos client_id") or "",
            client_secret=resolve_secret(self.client_secret, "flexpos client_secret") or "",
            attractions_base_url=self.attractions_base_url,
            attractions_client_id=resolve_secret(
                self.attractions_client_id, "flexpos attractions client_id"
            ),
            attractions_client_secret=resolve_secret(
                self.attractions_client_secret, "flexpos attractions client_secret"
            ),
            only_active=self.only_active,
            only_club_members=self.only_club_members,
            only_newsletter=self.only_newsletter,
            page_size=self.page_size,
            requests_per_second=self.requests_per_second,
        )


class FlexPOSSource(SourceSectionBase):
    """`source:` section with `kind: flexpos`; credentials are env var names."""

    entities: ClassVar[tuple[EntitySpec, ...]] = ENTITIES

    kind: Literal["flexpos"]
    pos_base_url: HttpUrlStr
    client_id_env: EnvVarName
    client_secret_env: EnvVarName
    attractions: FlexPOSAttractionsSection | None = None
    customers: FlexPOSCustomerFilters = Field(default_factory=FlexPOSCustomerFilters)
    # client-side pacing per client id (FP-A8: 10 requests/s); 0 or null: off
    requests_per_second: float | None = Field(default=REQUESTS_PER_SECOND, ge=0)

    def unavailable_entities(self) -> dict[str, str]:
        """Entities this configuration cannot fetch, with why: checked when the file loads."""
        if self.attractions is not None:
            return {}
        why = "needs the `attractions:` section (Attraction API url and credentials, FP4)"
        return {"tickets": why, "memberships": why}

    def env_vars(self) -> list[str]:
        names = [self.client_id_env, self.client_secret_env]
        if self.attractions is not None:
            names += [self.attractions.client_id_env, self.attractions.client_secret_env]
        return names

    def resource(self) -> FlexPOSResource:
        attractions = self.attractions
        return FlexPOSResource(
            pos_base_url=self.pos_base_url,
            client_id=dg.EnvVar(self.client_id_env),
            client_secret=dg.EnvVar(self.client_secret_env),
            attractions_base_url=attractions.base_url if attractions else None,
            attractions_client_id=dg.EnvVar(attractions.client_id_env) if attractions else None,
            attractions_client_secret=(
                dg.EnvVar(attractions.client_secret_env) if attractions else None
            ),
            only_active=self.customers.only_active,
            only_club_members=self.customers.only_club_members,
            only_newsletter=self.customers.only_newsletter,
            requests_per_second=self.requests_per_second,
        )
