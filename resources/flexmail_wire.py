"""Flexmail's wire formats (FM-A1, FM-A6, FM-A11, FM-A13): HAL collections, problem+json errors,
a contact both ways, and the language map.

Kept apart from the client so the rules that decide what a contact looks like on the wire can be
read (and tested) without HTTP: HAL's `_embedded` is left out for an empty collection, custom
fields are keyed by their *placeholder* and typed by the field's type, and a member's language is
the source's own value (Admin's `N`, `F`, ...) mapped to an ISO code, and back when listing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from resources.base import ListField, RemoteMember, VendorError

# The contact's own fields (FM-A2, section 2.1), with their ListField format.
STANDARD_FIELDS: dict[str, str] = {
    "email": "text",
    "first_name": "text",
    "name": "text",
    "language": "text",
}
# FM-A6: custom field types -> ListField formats.
CUSTOM_FORMATS = {
    "free_text": "text",
    "numeric": "number",
    "date": "date",
    "multiple_choice": "multi",
}
MONTHLY_CAP_DETAIL = "Monthly API call limit reached"  # FM-A10
EXISTS_DETAIL = "contact already exists"  # FM-A2, compared casefolded
BLACKLISTED_DETAIL = "contact is blacklisted"  # FM-A4, compared casefolded


class WireRefused(ValueError):
    """A canonical value this field's wire form cannot take; the message says why."""


# --- HAL (FM-A1) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Collection:
    """One HAL collection page: its `total` (None when the answer has none: the caller then
    pages until a short page) and the rows of `_embedded.item`."""

    total: int | None
    items: list[dict[str, Any]]


def hal_collection(body: Any) -> Collection:
    """`{total, _embedded: {item: [...]}}`; `_embedded` missing means an empty collection
    (FM-A1). Raises ValueError for anything else, so VendorHttp retries an unreadable page."""
    if not isinstance(body, dict):
        raise ValueError("collection answer is not an object")
    embedded = body.get("_embedded")
    if embedded is not None and not isinstance(embedded, dict):
        raise ValueError("collection with an unreadable _embedded")
    rows = (embedded or {}).get("item", [])
    if not isinstance(rows, list):
        raise ValueError("collection with an unreadable _embedded.item")
    items = [row for row in rows if isinstance(row, dict)]
    return Collection(as_int(body.get("total")), items)


def as_int(value: Any) -> int | None:
    """An id or count sent as a number or as digits; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


# --- problem+json (FM-A11) -----------------------------------------------------------------------


def detail(exc: VendorError) -> str:
    """The problem's `detail` (the vendor's words), else the message VendorHttp made."""
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("detail") or exc.message)


def problem_reason(exc: VendorError) -> str:
    """A refusal in the vendor's words: the detail, then each violation `path: message`."""
    body = exc.body if isinstance(exc.body, dict) else {}
    violations = body.get("violations")
    parts = [
        f"{v.get('propertyPath') or '?'}: {v.get('message') or 'invalid'}"
        for v in (violations if isinstance(violations, list) else [])
        if isinstance(v, dict)
    ]
    said_ = detail(exc)
    extra = [part for part in parts if part not in said_]  # some details list them already
    return f"{said_} ({'; '.join(extra)})" if extra else said_


def said(exc: VendorError, words: str) -> bool:
    """Does the problem's detail say `words` (casefolded)?"""
    return words.casefold() in detail(exc).casefold()


def is_monthly_cap(status: int, body: Any) -> bool:
    """FM-A10: the 429 whose detail says the month's calls are spent (final, never retried)."""
    said_ = str(body.get("detail") or "") if isinstance(body, dict) else ""
    return status == 429 and MONTHLY_CAP_DETAIL.casefold() in said_.casefold()


# --- languages (FM-A13) --------------------------------------------------------------------------


class LanguageMap:
    """The source's language values <-> Flexmail ISO codes, from the integration config.

    Source values are matched exactly, then casefolded; an ISO code the map produces is taken as
    it is (a source that already speaks ISO). Anything else is the default language."""

    def __init__(self, languages: Mapping[str, str], default: str) -> None:
        self._to = {str(k): str(v).lower() for k, v in languages.items()}
        self._folded = {k.casefold(): v for k, v in self._to.items()}
        self._back: dict[str, str] = {}
        for source_value, code in self._to.items():
            self._back.setdefault(code, source_value)  # the first source value per code wins
        self.default = default.lower()

    def to_flexmail(self, value: Any) -> tuple[str, bool]:
        """(ISO code, known): known is False when the default stood in for `value`."""
        text = str(value).strip() if value is not None else ""
        found = self._to.get(text) or self._folded.get(text.casefold())
        if found:
            return found, True
        if text.lower() in self._back or text.lower() == self.default:
            return text.lower(), True
        return self.default, False

    def codes(self) -> set[str]:
        """Every ISO code the map sends (not the default)."""
        return set(self._to.values())

    def from_flexmail(self, code: Any) -> Any:
        """The source's value for an ISO code; a code the map does not name stays as it is."""
        if not isinstance(code, str):
            return code
        return self._back.get(code.lower(), code)


class LanguageNotEnabled(ValueError):
    """A language memberflow would send is not one of the account's contact languages."""


def enabled_languages(body: Any) -> set[str]:
    """`GET /account-contact-languages` `{languages: [...]}` (FM-formie): ISO codes, each given
    as text or as an object with a `code` (the item's shape is not documented, [I])."""
    rows = body.get("languages") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise ValueError("account-contact-languages answer without a languages list")
    codes = (_language_code(row) for row in rows)
    return {code.strip().lower() for code in codes if isinstance(code, str) and code.strip()}


def _language_code(row: Any) -> Any:
    if not isinstance(row, dict):
        return row
    return next((row[k] for k in ("code", "iso", "language", "id") if row.get(k)), None)


def check_languages(languages: LanguageMap, enabled: set[str]) -> None:
    """FM-A13: the default and every mapped code must be enabled on the account, else Flexmail
    refuses each contact that carries one; raised before anything is sent, naming them."""
    wanted = {languages.default, *languages.codes()}
    missing = sorted(wanted - enabled)
    if missing and enabled:  # none read: an answer we could not read proves nothing
        raise LanguageNotEnabled(
            f"flexmail: language(s) {', '.join(missing)} (default_language or languages:) are "
            f"not enabled on the account, which has {', '.join(sorted(enabled)) or 'none'}; "
            "enable them in Flexmail or change the integration's language settings. "
            "Nothing was sent."
        )


# --- custom fields (FM-A6) -----------------------------------------------------------------------


@dataclass(frozen=True)
class CustomField:
    """One custom field of the account: contacts key it by `placeholder`."""

    id: str
    placeholder: str
    type: str


def custom_fields(body: Any) -> list[CustomField]:
    """`GET /custom-fields` rows `{id, name, placeholder, type}` (all in one answer)."""
    rows = body if isinstance(body, list) else hal_collection(body).items  # plain or HAL
    return [
        CustomField(str(row.get("id")), str(row["placeholder"]), str(row.get("type") or ""))
        for row in rows
        if isinstance(row, dict) and row.get("placeholder")
    ]


def list_fields(custom: Mapping[str, CustomField]) -> dict[str, ListField]:
    """Standard fields and every custom field by placeholder (AF2), formats from their types."""
    out = {name: ListField(name, fmt) for name, fmt in STANDARD_FIELDS.items()}
    for placeholder, spec in custom.items():
        out[placeholder] = ListField(placeholder, CUSTOM_FORMATS.get(spec.type, "text"))
    return out


def wire_custom(kind: str, value: Any) -> Any:
    """FM-A6: date -> `YYYY-MM-DD`, numeric -> a JSON number, multiple_choice -> an array of
    strings (a text is split on commas), free_text (and unknown types) -> text."""
    if kind == "date":
        return wire_date(value)
    if kind == "numeric":
        return wire_number(value)
    if kind == "multiple_choice":
        many = isinstance(value, list | tuple | set | frozenset)
        items = value if many else str(value).split(",")
        chosen = sorted(items) if isinstance(items, set | frozenset) else items
        return [text(item).strip() for item in chosen if item is not None and text(item).strip()]
    return text(value)


def wire_date(value: Any) -> str:
    """`YYYY-MM-DD` from a date, a datetime (its own day) or ISO date/datetime text."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10]).isoformat()
        except ValueError:
            pass
    raise WireRefused(f"not a date: {value!r}")


def wire_number(value: Any) -> int | float:
    if isinstance(value, bool) or value is None:
        raise WireRefused(f"not a number: {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise WireRefused(f"not a number: {value!r}") from None
    if not number.is_finite() or (isinstance(value, float) and not math.isfinite(value)):
        raise WireRefused(f"not a number: {value!r}")
    return int(number) if number == number.to_integral_value() else float(number)


def text(value: Any) -> str:
    """Plain text: booleans `true`/`false`, dates ISO, lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(text(item) for item in value if item is not None)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


# --- a contact, out and back ---------------------------------------------------------------------


@dataclass
class WireContact:
    """A contact ready to send: its fields, custom fields by placeholder, what was left out."""

    email: str
    fields: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    language_defaulted: bool = False

    def body(self, *, with_email: bool) -> dict[str, Any]:
        """The JSON body of POST /contacts (with email) or PATCH /contacts/{id} (without)."""
        body: dict[str, Any] = {"email": self.email} if with_email else {}
        body.update(self.fields)
        if self.custom:
            body["custom_fields"] = dict(self.custom)
        return body


def wire_contact(
    email: str,
    values: Mapping[str, Any],
    custom: Mapping[str, CustomField],
    languages: LanguageMap,
    *,
    create: bool,
) -> WireContact:
    """The contact as Flexmail takes it (FM-A3: email lowercased).

    A None value (empty at the source) is left out, so Flexmail keeps what it holds (PATCH is
    partial); a create always carries a language (required, FM-A13: the default when the
    source's value is unknown or empty). A name that is no field of the account is dropped, as
    is a value its custom field's type cannot take."""
    contact = WireContact(email=email.strip().lower())
    for name, value in values.items():
        if name == "email" or value is None:
            continue
        if name == "language":
            contact.fields["language"], known = languages.to_flexmail(value)
            contact.language_defaulted = not known
        elif name in STANDARD_FIELDS:
            contact.fields[name] = text(value)
        elif name in custom:
            try:
                contact.custom[name] = wire_custom(custom[name].type, value)
            except WireRefused as refused:
                contact.dropped.append((name, str(refused)))
        else:
            contact.dropped.append((name, "no custom field with this placeholder in Flexmail"))
    if create and "language" not in contact.fields:
        contact.fields["language"] = languages.default
    return contact


def parse_contact(
    raw: Mapping[str, Any], languages: LanguageMap, custom: Mapping[str, CustomField]
) -> RemoteMember:
    """A listed contact as an active RemoteMember: its standard fields (language back in the
    source's values) and custom fields by placeholder (only those the account defines)."""
    email = raw.get("email")
    fields: dict[str, Any] = {k: raw.get(k) for k in ("first_name", "name")}
    fields["language"] = languages.from_flexmail(raw.get("language"))
    values = raw.get("custom_fields")
    if isinstance(values, dict):
        fields.update({k: v for k, v in values.items() if not custom or k in custom})
    return RemoteMember(
        member_id=str(raw.get("id") or ""),
        email=str(email).strip().lower() if email else None,
        mobile=None,
        status="active",
        email_status=None,
        unsubscribed_at=None,
        updated_at=None,
        fields=fields,
    )


def id_text(value: Any) -> str | None:
    """An id as text (`17` and `"17"` alike), so feedback keys match whichever route sent it."""
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        return None
    return str(value).strip()


def url_id(value: Any) -> str | None:
    """A contact id fit for a URL: digits only (ids are numeric, section 2.1). Anything else,
    such as the synthetic `email:<addr>` a blacklisted member is known by, is None."""
    found = as_int(value)
    return str(found) if found is not None else None


def location_id(location: str | None) -> str | None:
    """The id in a create's `Location` (FM-A2): the last path segment of a relative or absolute
    URL, when it is numeric."""
    if not location:
        return None
    path = location.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return url_id(path.rsplit("/", 1)[-1])
