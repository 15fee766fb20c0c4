"""Cyberimpact's wire format of a member (CI-A9, CI-A12), both ways: canonical values in,
RemoteMember out.

The core hands members over with canonical values (ISO dates and datetimes, booleans, decimals as
text or numbers, lists); Cyberimpact wants `Y-m-d` dates, `m|f|o` genders, `en_ca|fr_ca`
languages, ISO alpha-2 countries in upper case and custom fields keyed by their id as a string,
each in its field's type (CI-A9). A value the wire cannot take is not sent: the field is named in
the member's `dropped` with why, and the member goes without it (one bad birthday must not cost a
member its other values, and a 400 would refuse the whole member).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from resources.base import ListField, RemoteMember
from resources.http import parse_iso_utc as parse_stamp

# Standard member fields of POST/PATCH /members (section 2.1), with their ListField format.
STANDARD_FIELDS: dict[str, str] = {
    "email": "text",
    "firstname": "text",
    "lastname": "text",
    "gender": "choice",
    "language": "choice",
    "birthdate": "date",
    "postalCode": "text",
    "country": "text",
    "company": "text",
    "note": "text",
}
# The inputs of the consent call (CI-A10), not member fields: they travel in PUT .../consent.
CONSENT_DATE, CONSENT_PROOF = "consentDate", "consentProof"
CONSENT_FIELDS: dict[str, str] = {CONSENT_DATE: "date", CONSENT_PROOF: "text"}
GENDER_OPTIONS = {"m": "m", "f": "f", "o": "o"}
LANGUAGE_OPTIONS = {"en_ca": "en_ca", "fr_ca": "fr_ca"}
CUSTOM_TYPES = ("text", "date", "integer", "decimal")  # CI-A8
_LIST_FORMAT = {"text": "text", "date": "date", "integer": "number", "decimal": "number"}
_GENDERS = {
    "m": "m", "male": "m", "man": "m", "h": "m", "homme": "m",
    "f": "f", "female": "f", "woman": "f", "femme": "f",
    "o": "o", "other": "o", "x": "o", "autre": "o",
}  # fmt: skip
_LANGUAGES = {"en": "en_ca", "fr": "fr_ca"}  # by the first two letters: en, en-US, fr_CA, ...


class WireRefused(ValueError):
    """A canonical value this field's wire form cannot take; the message says why."""


@dataclass(frozen=True)
class CustomField:
    """One custom field of the account (CI-A8): its id (the key members carry) and type."""

    id: int
    name: str
    type: str


@dataclass
class WireMember:
    """A member ready to send: its standard fields, custom fields by id, the consent inputs, and
    the fields left out with why."""

    email: str
    fields: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, str] = field(default_factory=dict)  # consentDate / consentProof
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def body(self, *, with_email: bool) -> dict[str, Any]:
        """The JSON body of POST/PATCH /members or of one batch item."""
        body: dict[str, Any] = {"email": self.email} if with_email else {}
        body.update(self.fields)
        if self.custom:
            body["customFields"] = dict(self.custom)
        return body


def list_fields(custom: Mapping[str, CustomField]) -> dict[str, ListField]:
    """Every writable name: standard fields, custom fields by NAME, and the consent inputs."""
    out = {name: ListField(name, fmt, _options(name)) for name, fmt in STANDARD_FIELDS.items()}
    for name, spec in custom.items():
        out[name] = ListField(name, _LIST_FORMAT.get(spec.type, "text"))
    out.update({name: ListField(name, fmt) for name, fmt in CONSENT_FIELDS.items()})
    return out


def _options(name: str) -> dict[str, str]:
    return {"gender": GENDER_OPTIONS, "language": LANGUAGE_OPTIONS}.get(name, {})


def wire_member(
    email: str, values: Mapping[str, Any], custom: Mapping[str, CustomField]
) -> WireMember:
    """The member as Cyberimpact takes it.

    A None value (empty at the source) is left out, so Cyberimpact keeps what it has: PATCH
    changes only what is sent, and a batch's empty value keeps the stored one (2.4); clearing
    would take `__EMPTY__` on one path and an empty string on the other, and an emptied Amilia
    field is no reason to wipe what the account holds. A name that is no field of the account is
    dropped, as is a value its field cannot take.
    """
    member = WireMember(email=email)
    for name, value in values.items():
        if value is None or name == "email":
            continue
        try:
            if name in STANDARD_FIELDS:
                member.fields[name] = _STANDARD[name](value)
            elif name in CONSENT_FIELDS:
                member.consent[name] = wire_date(value) if name == CONSENT_DATE else text(value)
            elif name in custom:
                spec = custom[name]
                member.custom[str(spec.id)] = wire_custom(spec.type, value)
            else:
                member.dropped.append((name, "no such field on the Cyberimpact account"))
        except WireRefused as refused:
            member.dropped.append((name, str(refused)))
    return member


def wire_custom(kind: str, value: Any) -> Any:
    """CI-A9: date -> `Y-m-d`, integer -> JSON integer, decimal -> JSON number, text -> str.

    Only a custom text field turns a `true`/`false` text into `True`/`False` (Amilia.IsArchived):
    a standard field such as a first name keeps the text it was given."""
    if kind == "date":
        return wire_date(value)
    if kind == "integer":
        return wire_integer(value)
    if kind == "decimal":
        return wire_decimal(value)
    return _boolean_text(value) if isinstance(value, str) else text(value)


def wire_date(value: Any) -> str:
    """`Y-m-d` from a date, a datetime (its own calendar day) or ISO date/datetime text."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:  # `2024-05-01` or the day part of `2024-05-01T13:45:00-04:00`
            return date.fromisoformat(value.strip()[:10]).isoformat()
        except ValueError:
            pass
    raise WireRefused(f"not a date: {value!r}")


def wire_integer(value: Any) -> int:
    number = _number(value)
    if number != number.to_integral_value():
        raise WireRefused(f"not a whole number: {value!r}")
    return int(number)


def wire_decimal(value: Any) -> int | float:
    number = _number(value)
    return int(number) if number == number.to_integral_value() else float(number)


def _number(value: Any) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise WireRefused(f"not a number: {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise WireRefused(f"not a number: {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise WireRefused(f"not a number: {value!r}") from None
    if not number.is_finite():
        raise WireRefused(f"not a number: {value!r}")
    return number


def text(value: Any) -> str:
    """Text as CI-A9 wants it: booleans `True`/`False` (Amilia.IsArchived), lists
    comma-separated (Amilia.Skills), dates ISO, numbers without a trailing `.0`. A text is sent
    as it is (see `wire_custom` for the `true`/`false` texts of custom fields)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return ",".join(text(item) for item in items if item is not None)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float | Decimal):
        return str(wire_decimal(value))
    return str(value)


def _boolean_text(value: str) -> str:
    """`true`/`false` texts (any case) become `True`/`False`; other text goes as it is.

    The digits "1"/"0" are left alone here: they are as likely a count as a flag, and a boolean
    reaches this function as a real bool (the canonical form) unless a CSV flattened it."""
    lowered = value.strip().lower()
    if lowered == "true":
        return "True"
    if lowered == "false":
        return "False"
    return value


def _gender(value: Any) -> str:
    found = _GENDERS.get(str(value).strip().lower())
    if found is None:
        raise WireRefused(f"not a gender Cyberimpact knows (m, f, o): {value!r}")
    return found


def _language(value: Any) -> str:
    """`en`, `en_CA`, `en-US`, `English` -> `en_ca`; `fr*` -> `fr_ca` (the first two letters)."""
    found = _LANGUAGES.get(str(value).strip().lower()[:2])
    if found is None:
        raise WireRefused(f"not a language Cyberimpact knows (en_ca, fr_ca): {value!r}")
    return found


def _country(value: Any) -> str:
    code = str(value).strip().upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise WireRefused(f"not an ISO 3166 alpha-2 country code: {value!r}")
    return code


_STANDARD: dict[str, Callable[[Any], Any]] = {
    "firstname": text,
    "lastname": text,
    "gender": _gender,
    "language": _language,
    "birthdate": wire_date,
    "postalCode": text,
    "country": _country,
    "company": text,
    "note": text,
}


# --- reading back --------------------------------------------------------------------------------

# A bounced row's timestamp: `bouncedOn` (CI-A11), or `hardBouncedOn` as some accounts name it.
BOUNCE_STAMPS = ("bouncedOn", "hardBouncedOn")


def bounce_stamp(raw: Mapping[str, Any]) -> datetime | None:
    """When a bounced row bounced, from the first of BOUNCE_STAMPS that reads as a timestamp."""
    for key in BOUNCE_STAMPS:
        when = parse_stamp(raw.get(key))
        if when is not None:
            return when
    return None


def parse_member(
    raw: Mapping[str, Any],
    *,
    status: str = "active",
    email_status: str | None = None,
    unsubscribed_at: datetime | None = None,
) -> RemoteMember:
    """A member object (or an unsubscribed/bounced row) as a RemoteMember, keyed by its
    lowercase email (CI-A3); `updated_at` is the newest of its own stamps."""
    stamps = [parse_stamp(raw.get(key)) for key in ("updatedOn", "unsubscribedOn", *BOUNCE_STAMPS)]
    known = [s for s in stamps if s is not None]
    email = raw.get("email")
    return RemoteMember(
        member_id=str(raw.get("id") or ""),
        email=str(email).strip().lower() if email else None,
        mobile=None,
        status=status,
        email_status=email_status,
        unsubscribed_at=unsubscribed_at,
        updated_at=max(known) if known else None,
        fields={k: v for k, v in raw.items() if k not in ("id", "email")},
    )
