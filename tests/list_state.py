"""The ground truth the fault and crash tests compare: what a Heyloyalty list holds, without the
ids and timestamps that differ between two sandboxes serving the same seeded data."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from resources.heyloyalty import HeyloyaltyClient
from sandbox.credentials import SANDBOX_ENV
from sandbox.server import SandboxServer
from tests.harness import Harness

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


def list_after_embedded_run(
    tmp: Path,
    sandbox_settings: dict[str, Any],
    environment: Callable[[Path, str], dict[str, str]],
    act: Callable[[Harness], bool],
) -> ListState:
    """The ground truth of the crash and production tests: a fresh sandbox of
    `sandbox_settings`, the demo FlexPOS integration loaded on the embedded default (SQLite
    instance, in-process) with `environment(tmp, sandbox_url)` set, `act` run on its harness
    (it must succeed), and the list it leaves."""
    with (
        SandboxServer(**sandbox_settings) as sandbox,
        pytest.MonkeyPatch.context() as mp,
        dg.instance_for_test() as instance,
    ):
        for name, value in environment(tmp, sandbox.url).items():
            mp.setenv(name, value)
        harness = Harness(tmp=tmp, sandbox=sandbox, instance=instance)
        harness.load("demo_flexpos")
        assert act(harness), "the embedded run that gives the truth failed"
        return list_state(sandbox)


def heyloyalty_client(sandbox: SandboxServer, list_id: int = LIST_ID) -> HeyloyaltyClient:
    """memberflow's Heyloyalty client on the sandbox's list, with the sandbox's demo
    credentials and no client pacing (the tests that use it count calls, not waits)."""
    return HeyloyaltyClient(
        base_url=f"{sandbox.url}/heyloyalty/loyalty/v1",
        api_key=SANDBOX_ENV["HEYLOYALTY_API_KEY"],
        api_secret=SANDBOX_ENV["HEYLOYALTY_API_SECRET"],
        list_id=str(list_id),
        requests_per_second=None,
    )
