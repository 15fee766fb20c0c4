"""Axle-CRM's wire format of a client (AX-A2), both ways: canonical values in, RemoteMember out.

The core hands members over with canonical values (ISO dates and datetimes, E.164 phones,
decimals as text or numbers, booleans, lists, card objects); Axle wants JSON numbers, real JSON
booleans, `YYYY-MM-DD` birthdays and ISO 8601 datetimes *with* an offset. A value that cannot be
converted is sent as it came, so Axle judges it and the member's refusal carries Axle's own words.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from resources.base import ListField, RemoteMember
from resources.http import parse_iso_utc as parse_stamp

# AX-A2 fields memberflow may write, with their formats (C7 checks mapped fields against these).
WRITABLE_FIELDS: dict[str, ListField] = {
    name: ListField(name, fmt, options)
    for name, fmt, options in (
        ("external_id", "text", {}),
        ("phone", "text", {}),
        ("email", "text", {}),
        ("first_name", "text", {}),
        ("last_name", "text", {}),
        ("middle_name", "text", {}),
        ("gender", "choice", {"m": "m", "f": "f"}),
        ("birthday", "date", {}),
        ("card_installed_at", "datetime", {}),
        ("last_visit_at", "datetime", {}),
        ("consent_mailing", "boolean", {}),
        ("push_allowed", "boolean", {}),
        ("bonus_balance", "number", {}),
        ("discount_percent", "number", {}),
        ("loyalty_level", "text", {}),
        ("visits_total", "number", {}),
        ("purchases_total", "number", {}),
        ("cards", "list", {}),
        ("tags", "list", {}),
    )
}
# AX-A2 fields typed "| null": the ones an empty source value may clear.
NULLABLE_FIELDS = frozenset(
    {"email", "gender", "birthday", "card_installed_at", "last_visit_at", "loyalty_level"}
)
_TRUE_TEXTS = frozenset({"true", "1", "yes", "y", "t"})
_FALSE_TEXTS = frozenset({"false", "0", "no", "n", "f", ""})
_GENDERS = {"m": "m", "male": "m", "f": "f", "female": "f"}


def wire_date(value: Any) -> Any:
    """`YYYY-MM-DD`; a datetime keeps its own calendar day (a birthday has no zone)."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        text = value.strip()
        try:
            return date.fromisoformat(text[:10]).isoformat() if len(text) >= 10 else text
        except ValueError:
            return value
    return value


def wire_datetime(value: Any) -> Any:
    """ISO 8601 with an offset; a naive value is UTC (the pipeline's convention), kept as such."""
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return value
    elif isinstance(value, date) and not isinstance(value, datetime):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(moment, datetime):
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def wire_number(value: Any) -> Any:
    """A JSON number: an integer when the value is whole (Axle wants `visits_total` as an int)."""
    if isinstance(value, bool):
        return value  # not a number: Axle refuses it with its own message
    try:
        number = Decimal(str(value).strip()) if isinstance(value, str | Decimal) else value
    except InvalidOperation:
        return value
    if isinstance(number, Decimal):
        if not number.is_finite():
            return value
        return int(number) if number == number.to_integral_value() else float(number)
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        return int(number)
    return number


def wire_boolean(value: Any) -> Any:
    """A JSON boolean; the texts a CSV or DuckDB export may carry are read too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE_TEXTS:
            return True
        if text in _FALSE_TEXTS:
            return False
    return value


def wire_gender(value: Any) -> Any:
    """`m` | `f`; anything else goes as is and Axle says why it refuses it."""
    if isinstance(value, str):
        return _GENDERS.get(value.strip().lower(), value)
    return value


def wire_text(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value if isinstance(value, str) else str(value)


def wire_list(value: Any) -> Any:
    """A JSON array of JSON values; a list (or its items) exported as JSON text is read too."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if not isinstance(value, list | tuple):
        return value
    items = [_json_item(item) for item in value]
    return [item for item in items if item is not None]


def _json_item(item: Any) -> Any:
    if isinstance(item, str) and item.strip().startswith(("{", "[")):
        try:
            item = json.loads(item)
        except ValueError:
            return item
    return json_safe(item)


def json_safe(value: Any) -> Any:
    """Plain JSON types: Decimals become numbers, dates ISO text, tuples lists."""
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, Decimal):
        return wire_number(value)
    if isinstance(value, datetime):
        return wire_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "date": wire_date,
    "datetime": wire_datetime,
    "number": wire_number,
    "boolean": wire_boolean,
    "choice": wire_gender,
    "list": wire_list,
    "text": wire_text,
}


def wire_value(name: str, value: Any) -> Any:
    """The AX-A2 wire value of one writable field (the caller drops None and unknown names)."""
    converted = _CONVERT[WRITABLE_FIELDS[name].format](value)
    if name == "cards" and isinstance(converted, list):
        return [wire_card(card) for card in converted]
    return converted


CARD_FIELDS = ("source", "user_id", "barcode", "template", "wallet_link")


def wire_card(card: Any) -> Any:
    """A card with every AX-A2 key (absent ones null), its `user_id` as the source's integer id:
    cards merge by (`source`, `user_id`), and 17145 and "17145" would be two keys to a strict
    server (AX-A3), leaving a card twice."""
    if not isinstance(card, Mapping):
        return card
    # AX-A2 lists five keys per card; a pass without a barcode or wallet link sends them as null
    card = {**dict.fromkeys(CARD_FIELDS), **card}
    user_id = card.get("user_id")
    if isinstance(user_id, str) and user_id.strip().isdigit():
        card["user_id"] = int(user_id.strip())
    return card


def wire_client(
    values: Mapping[str, Any], tags: list[str] | None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The client object to send, and the fields left out with why.

    A None value (empty at the source) is sent as null where AX-A2 lets the field be null, so a
    cleared birthday or email is cleared in Axle too (fields not sent are kept, AX-A3); other
    fields keep what Axle has. A name Axle does not know is left out, not sent: Axle refuses a
    whole client for one unknown field, and a canonical field that passes through unmapped (say
    `city`) must not cost the member its other values.
    """
    client: dict[str, Any] = {}
    dropped: list[tuple[str, str]] = []
    for name, value in values.items():
        if value is None:
            if name in NULLABLE_FIELDS:
                client[name] = None
            continue
        if name not in WRITABLE_FIELDS:
            dropped.append((name, "not a field of Axle clients; not sent"))
            continue
        client[name] = wire_value(name, value)
    if tags is not None:
        client["tags"] = tags
    return client, dropped


def parse_client(raw: Mapping[str, Any]) -> RemoteMember:
    """An AX-A2 client as a RemoteMember: Axle has no unsubscribe state, so always `active`."""
    fields = {key: value for key, value in raw.items() if key != "id"}
    return RemoteMember(
        member_id=str(raw.get("id") or ""),
        email=_text(raw.get("email")),
        mobile=_text(raw.get("phone")),
        status="active",
        email_status=None,
        unsubscribed_at=None,
        updated_at=parse_stamp(raw.get("updated_at")),
        fields=fields,
    )


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
