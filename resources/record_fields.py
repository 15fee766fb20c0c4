"""Reading the few fields of a raw source record the pipeline needs before any mapping (its id,
its modified time, its business date), with errors that name the field and the value.

A source record that can't be read this way is landed apart and quarantined, never fatal to the
run, so these raise ValueError, the one error landing expects from `record_meta`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any


def record_id(record: dict[str, Any], name: str) -> str:
    """The record's id as text; null, empty, boolean or structured ids are not ids."""
    value = record.get(name)
    if value is None or isinstance(value, dict | list | bool) or not str(value).strip():
        raise ValueError(f"{name}: {shown(value)} is not a record id")
    return str(value)


def record_datetime(
    record: dict[str, Any], name: str, parse: Callable[[str], datetime]
) -> datetime:
    """`parse(record[name])` for a text datetime (the vendor's own rules in `parse`)."""
    value = record.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name}: {shown(value)} is not a date")
    try:
        return parse(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{name}: {shown(value)} is not a date") from None


def shown(value: Any) -> str:
    """A value for an error message, cut short: a record's field may be anything."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
