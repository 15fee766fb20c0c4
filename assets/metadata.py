"""Flat numeric metadata: the figures Dagster can plot over time.

Dagster's asset page plots a metadata key across materializations only when its value is a
number; a dict (`{"members/import": 3, ...}`) is shown as JSON on one event and never plotted.
So every breakdown a user wants to follow over time (calls per endpoint, quarantined rows per
reason, members created per integration) is also given as one int key per item:
`<figure>/<label>` for a breakdown, `<integration>/<figure>` for one integration's share on a
list-level asset. The dict keys stay beside them for readers of earlier runs.

Every key made here holds this run's figure unless its name says otherwise; callers pass
`*_this_run` figures for run counts and table sizes under names that say so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_UNSAFE = re.compile(r"[^A-Za-z0-9_./-]+")


def label(text: str) -> str:
    """A breakdown item as a metadata key segment: `email: invalid format` -> `email.invalid_format`
    (a reason's field and its kind), unsafe characters as `_`; an empty one as `unknown`."""
    slug = _UNSAFE.sub("_", str(text).strip().replace(": ", ".")).strip("_")
    return slug.lower() or "unknown"


def breakdown(figure: str, counts: Mapping[str, int]) -> dict[str, int]:
    """`counts` as flat int keys `<figure>/<label>`; items whose labels meet are added up."""
    flat: dict[str, int] = {}
    for item, n in counts.items():
        key = f"{figure}/{label(item)}"
        flat[key] = flat.get(key, 0) + int(n)
    return flat


def per_integration(figures: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """`{integration: {figure: n}}` as flat int keys `<integration>/<figure>`."""
    return {
        f"{integration}/{figure}": int(n)
        for integration, counts in figures.items()
        for figure, n in counts.items()
    }


def api_calls(by_endpoint: Mapping[str, int], vendor: str | None = None) -> dict[str, int]:
    """This run's calls per endpoint, `api_calls_this_run/<endpoint>` (with `<vendor>/` before
    the endpoint when one asset calls two vendors)."""
    figure = "api_calls_this_run" + (f"/{label(vendor)}" if vendor else "")
    return breakdown(figure, by_endpoint)
