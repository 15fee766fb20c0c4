"""Value normalisation for mapped fields: emails, mobile numbers, dates, numbers, choices, text.

Each function takes a column and returns the normalised column plus a column of problems (None
where the value is fine), so a bad value costs only that value, with a reason, instead of failing
the batch (X4). A value is also checked for what the target accepts (`plain`): at most 255
characters, no control or bidi/format characters, no JSON object or array where a plain value is
expected. Parsing is done once per distinct value: source data repeats values a lot, and Python's
own parsers (not pandas' datetime64, which cannot hold 0001-01-01) decide what a value is.

Reasons never echo a whole long value, nor a whole email or phone number (memberflow.masking).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import phonenumbers
from email_validator import EmailNotValidError, validate_email

from memberflow.masking import mask_email, mask_phone

Result = tuple[str | None, str | None]

MAX_TEXT = 255  # what a list field takes (text ≤ 255 characters)
MAX_EMAIL_LOCAL = 64  # RFC 5321: the part before the @
# C0 and C1 controls (tab and newline too: a list field is one line), bidi embeddings, overrides
# and isolates, the directional marks and the byte-order mark: invisible text that can reorder
# or hide what a reader of the list sees.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
MAX_NUMBER = 1e15  # beyond any amount or quantity a sale has; larger is a unit or parse error
PLAUSIBLE_YEARS = (1900, 2100)  # a POS's 0001-01-01 placeholder means "unknown", not a date


def shown(value: str, limit: int = 40) -> str:
    """A value quoted for a reason, cut to `limit` characters with its full length noted."""
    if len(value) <= limit:
        return repr(value)
    return repr(value[:limit]) + f"... ({len(value)} characters)"


def _per_distinct(series: pd.Series, fn: Callable[[str], Result]) -> tuple[pd.Series, pd.Series]:
    """Apply `fn` once per distinct present value and spread the results back by position."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    results = [fn(value) for value in uniques]
    # One slot more for "missing" (code -1 indexes the last slot): value and problem None.
    values = np.array([r[0] for r in results] + [None], dtype=object)
    problems = np.array([r[1] for r in results] + [None], dtype=object)
    return (
        pd.Series(values[codes], index=series.index, dtype=object),
        pd.Series(problems[codes], index=series.index, dtype=object),
    )


def _plain_one(value: str) -> Result:
    if not isinstance(value, str):
        return None, f"not a text value: {type(value).__name__}"
    text = value.strip()
    if text[:1] in "{[" and text[-1:] in "}]":
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, (dict, list)):
            kind = "object" if isinstance(parsed, dict) else "array"
            return None, f"a JSON {kind} where a plain value is expected: {shown(text, 30)}"
    bad = _FORBIDDEN.search(text)
    if bad:
        return None, f"contains control or bidi character U+{ord(bad.group()):04X}"
    if len(text) > MAX_TEXT:
        return None, f"longer than {MAX_TEXT} characters ({len(text)}): {shown(text, 30)}"
    return text or None, None


def plain(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Trimmed text the target accepts, or a problem: what every field type is checked for."""
    return _per_distinct(series, _plain_one)


@lru_cache(maxsize=200_000)
def email(value: str) -> Result:
    """Syntax-checked, lower-cased email (no DNS look-up: runs must not depend on the network)."""
    text = value.strip()
    if not text:
        return None, None
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        return None, f"invalid email {mask_email(text)!r}: {exc}"
    if len(checked.local_part) > MAX_EMAIL_LOCAL:
        return None, f"invalid email {mask_email(text)!r}: more than 64 characters before the @"
    return checked.normalized.lower(), None


def mobile_for(region: str) -> Callable[[str], Result]:
    @lru_cache(maxsize=200_000)
    def mobile(value: str) -> Result:
        """One canonical international form, E.164 (C3): `+4512345678` for every spelling."""
        text = value.strip()
        if not text:
            return None, None
        if text.startswith("00"):
            text = "+" + text[2:]
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            return None, f"invalid mobile {mask_phone(text)!r}: not a phone number"
        # Possible (right length for its country), not "valid": validity follows the range
        # allocations in phonenumbers' metadata, which would make a match key depend on the
        # library version and refuse real spellings such as 12345678.
        if not phonenumbers.is_possible_number(number):
            return None, f"invalid mobile {mask_phone(text)!r}: not a possible number in {region}"
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None

    return mobile


def no_problems(index: pd.Index) -> pd.Series:
    """A column of None: `pd.Series(None, dtype=object)` holds NaN, which reads as a problem."""
    return pd.Series([None] * len(index), index=index, dtype=object)


def dates(
    series: pd.Series, fmt: str, with_time: bool, zone: str | None = None
) -> tuple[pd.Series, pd.Series]:
    """Parse with the field's or the integration's date format (C6), falling back to ISO 8601.

    Returns `YYYY-MM-DD` (or `YYYY-MM-DD HH:MM:SS` in UTC: aware inputs are converted, naive
    ones are read in `zone`, UTC when None). Years outside PLAUSIBLE_YEARS are a problem
    ("implausible date").
    """
    return _per_distinct(series, date_parser(fmt, with_time, zone))


@lru_cache(maxsize=64)
def date_parser(fmt: str, with_time: bool, zone: str | None = None) -> Callable[[str], Result]:
    out_fmt = "%Y-%m-%d %H:%M:%S" if with_time else "%Y-%m-%d"
    tz = ZoneInfo(zone) if zone and with_time else None

    def one(value: str) -> Result:
        text = value.strip()
        if not text:
            return None, None
        moment = _parse_date(text, fmt, tz)
        if moment is None:
            return None, f"unreadable date {shown(text)} (format {fmt})"
        low, high = PLAUSIBLE_YEARS
        if not low <= moment.year <= high:
            return None, f"implausible date {shown(text)} (years {low}..{high} are kept)"
        return moment.strftime(out_fmt), None

    return one


def _parse_date(text: str, fmt: str, zone: ZoneInfo | None = None) -> datetime | None:
    for parse in (lambda t: datetime.strptime(t, fmt), datetime.fromisoformat):
        try:
            moment = parse(text)
        except ValueError:
            continue
        if moment.tzinfo is None and zone is not None:
            moment = moment.replace(tzinfo=zone)  # a wall-clock time of the source's zone
        if moment.tzinfo is not None:
            try:
                moment = moment.astimezone(UTC).replace(tzinfo=None)
            except OverflowError:
                return moment.replace(tzinfo=None)  # year 1 or 9999: implausible anyway
        return moment
    return None


def numbers(series: pd.Series, strip: str = "") -> tuple[pd.Series, pd.Series]:
    """Decimal text (comma or point) -> canonical text; NaN, Infinity and huge values refused.

    `strip` lists characters removed first: a source that sends "10%" or "1 250" as text.
    """
    return _per_distinct(series, number_parser(strip))


@lru_cache(maxsize=64)
def number_parser(strip: str = "") -> Callable[[str], Result]:
    table = str.maketrans("", "", strip)

    def one(value: str) -> Result:
        return _number_one(value.translate(table) if strip else value)

    return one


def _number_one(value: str) -> Result:
    text = value.strip().replace(",", ".")
    if not text:
        return None, None
    if not _NUMBER.match(text):
        return None, f"not a number: {shown(text)}"
    number = float(text)
    if not math.isfinite(number) or abs(number) >= MAX_NUMBER:
        return None, f"number out of range: {shown(text)}"
    return _number_text(number), None


def _number_text(value: float) -> str | None:
    if value != value:
        return None
    return str(int(value)) if float(value).is_integer() else repr(float(value))


_TRUTH = {"true": "1", "1": "1", "yes": "1", "false": "0", "0": "0", "no": "0"}


def booleans(series: pd.Series, true_values: tuple[str, ...] = ()) -> tuple[pd.Series, pd.Series]:
    """ "1"/"0". With `true_values` (lower-case texts) those mean true and any other text false:
    for sources that spell consent several ways ("да", "Yes", "1"); without, only the usual
    spellings are read and anything else is a problem."""
    return _per_distinct(series, boolean_parser(true_values))


@lru_cache(maxsize=64)
def boolean_parser(true_values: tuple[str, ...] = ()) -> Callable[[str], Result]:
    def one(value: str) -> Result:
        key = value.strip().lower()
        if not key:
            return ("0" if true_values else None), None
        if true_values:
            return ("1" if key in true_values else "0"), None
        return (_TRUTH[key], None) if key in _TRUTH else (None, f"not a boolean: {shown(value)}")

    return one


def present(series: pd.Series) -> pd.Series:
    """ "1" where the value is there and not blank, "0" elsewhere (missing included)."""
    has = series.map(lambda v: isinstance(v, str) and bool(v.strip()))
    return has.map(lambda v: "1" if v else "0").astype(object)


def choices(series: pd.Series, values: dict[str, str]) -> tuple[pd.Series, pd.Series]:
    """Source code -> canonical value; an unknown code is a quarantine reason (X4)."""
    return _per_distinct(series, choice_parser(values))


def choice_parser(values: dict[str, str]) -> Callable[[str], Result]:
    def one(value: str) -> Result:
        if not value.strip():
            return None, None  # an empty code is an empty field, as for text
        if value in values:
            return (values[value] or None), None  # an empty label means "leave the field empty"
        return None, f"no option for {shown(value)} (known: {', '.join(sorted(values))})"

    return one
