"""The ground truth the fault and crash tests compare: what a Heyloyalty list holds, without the
ids and timestamps that differ between two sandboxes serving the same seeded data."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

LIST_ID = 4711
TRACKING_ID = 99


@dataclass
class ListState:
    members: Counter[str]  # each member's fields and status, as canonical JSON
    # each stored BI row, as canonical JSON; rows carry no event id, and two identical purchases
    # (two coffees on one receipt) are two equal rows, so duplicates show only against the truth
    events: Counter[str]

    def differences(self, truth: ListState) -> dict[str, Any]:
        """What this list has too much or too little of, against `truth` (empty = equal)."""
        out = {
            "members missing": truth.members - self.members,
            "members extra": self.members - truth.members,
            "events lost": truth.events - self.events,
            "events extra (duplicated or wrong)": self.events - truth.events,
        }
        return {k: _short(v) for k, v in out.items() if v}


def list_state(sandbox: Any) -> ListState:
    hl = sandbox.heyloyalty
    members = Counter(
        _canonical({"fields": m["fields"], "status": m["status"], "email": m["email_status"]})
        for m in hl.members(LIST_ID)
    )
    events = Counter(
        _canonical({k: v for k, v in e.items() if k not in ("member_id", "imported_at")})
        for e in hl.events(TRACKING_ID)
    )
    return ListState(members=members, events=events)


def _canonical(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _short(counter: Counter[str]) -> dict[str, Any]:
    """How many, and a few examples (enough to see why, short enough to read)."""
    return {"count": sum(counter.values()), "examples": list(counter)[:3]}
