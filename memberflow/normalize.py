"""Value normalisation for mapped fields: emails, mobile numbers, dates, numbers, choices.

Each function takes a column and returns the normalised column plus a column of problems (None
where the value is fine), so a bad value quarantines its row with a reason instead of failing the
batch (X4). Parsing is done once per distinct value: source data repeats values a lot.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import pandas as pd
import phonenumbers
from email_validator import EmailNotValidError, validate_email

Result = tuple[str | None, str | None]


def nones(index: pd.Index) -> pd.Series:
    """An object column of real Nones (pd.Series(None, dtype=object) holds NaN instead)."""
    return pd.Series([None] * len(index), index=index, dtype=object)


def _per_distinct(series: pd.Series, fn: Callable[[str], Result]) -> tuple[pd.Series, pd.Series]:
    present = series.dropna()
    results = {value: fn(value) for value in present.unique()}
    values = series.map(lambda v: None if v is None or v != v else results[v][0])
    problems = series.map(lambda v: None if v is None or v != v else results[v][1])
    return values.astype(object), problems.astype(object)


@lru_cache(maxsize=200_000)
def email(value: str) -> Result:
    """Syntax-checked, lower-cased email (no DNS look-up: runs must not depend on the network)."""
    text = value.strip()
    if not text:
        return None, None
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        return None, f"invalid email {text!r}: {exc}"
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
            return None, f"invalid mobile {value!r}: not a phone number"
        # Possible (right length for its country), not "valid": validity follows the range
        # allocations in phonenumbers' metadata, which would make a match key depend on the
        # library version and refuse real spellings such as 12345678.
        if not phonenumbers.is_possible_number(number):
            return None, f"invalid mobile {value!r}: not a valid number for region {region}"
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None

    return mobile


def no_problems(index: pd.Index) -> pd.Series:
    """A column of None: `pd.Series(None, dtype=object)` holds NaN, which reads as a problem."""
    return pd.Series([None] * len(index), index=index, dtype=object)


def dates(series: pd.Series, fmt: str, with_time: bool) -> tuple[pd.Series, pd.Series]:
    """Parse with the integration's date format (C6), falling back to ISO 8601.

    Returns `YYYY-MM-DD` (or `YYYY-MM-DD HH:MM:SS`, timezone dropped after conversion to UTC for
    aware inputs).
    """
    text = series.astype("string").str.strip().replace("", pd.NA)
    parsed = pd.to_datetime(text, format=fmt, errors="coerce")
    missing = parsed.isna() & text.notna()
    if missing.any():
        fallback = pd.to_datetime(text[missing], format="ISO8601", errors="coerce", utc=True)
        parsed = parsed.astype(object)
        parsed[missing] = fallback.dt.tz_convert(None)
        parsed = pd.to_datetime(parsed, errors="coerce")
    out_fmt = "%Y-%m-%d %H:%M:%S" if with_time else "%Y-%m-%d"
    values = parsed.dt.strftime(out_fmt).astype(object).where(parsed.notna(), None)
    bad = parsed.isna() & text.notna()
    problems = no_problems(series.index)
    problems[bad] = "unreadable date " + text[bad].astype(str).map(repr) + f" (format {fmt})"
    return values, problems


def numbers(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    text = series.astype("string").str.strip().str.replace(",", ".", regex=False)
    parsed = pd.to_numeric(text, errors="coerce")
    bad = parsed.isna() & text.notna() & (text != "")
    values = parsed.map(_number_text).astype(object).where(parsed.notna(), None)
    problems = no_problems(series.index)
    problems[bad] = "not a number: " + text[bad].astype(str).map(repr)
    return values, problems


def _number_text(value: float) -> str | None:
    if value != value:
        return None
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def booleans(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    truth = {"true": "1", "1": "1", "yes": "1", "false": "0", "0": "0", "no": "0"}

    def one(value: str) -> Result:
        key = value.strip().lower()
        if not key:
            return None, None
        return (truth[key], None) if key in truth else (None, f"not a boolean: {value!r}")

    return _per_distinct(series, one)


def choices(series: pd.Series, values: dict[str, str]) -> tuple[pd.Series, pd.Series]:
    """Source code -> option label; an unknown code is a quarantine reason (HL-A8)."""

    def one(value: str) -> Result:
        if not value.strip():
            return None, None  # an empty code is an empty field, as for text
        if value in values:
            return (values[value] or None), None  # an empty label means "leave the field empty"
        return None, f"no option for {value!r} (known: {', '.join(sorted(values))})"

    return _per_distinct(series, one)
