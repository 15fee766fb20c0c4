"""The whole asset graph as a snapshot: keys, groups, partitions and dependencies must not move
when an integration file changes in ways that should not matter (STYLE 3). To accept a change on
purpose: `UPDATE_SNAPSHOTS=1 pytest tests/test_definitions.py`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from memberflow.config import INTEGRATIONS_DIR, load_all
from pipelines.factory import build_definitions

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def _graph(tmp_path, monkeypatch) -> dict:
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path))
    defs = build_definitions(load_all(sorted(INTEGRATIONS_DIR.glob("*.yaml"))))
    graph = defs.resolve_asset_graph()
    nodes = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        nodes[key.to_user_string()] = {
            "group": node.group_name,
            "partitioned": node.partitions_def is not None,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
        }
    jobs = sorted(j.name for j in defs.jobs)
    sensors = {
        s.name: s.minimum_interval_seconds
        for s in defs.sensors  # type: ignore[union-attr]
    }
    return {"assets": nodes, "jobs": jobs, "sensors": sensors}


def test_asset_graph_matches_the_snapshot(tmp_path, monkeypatch):
    graph = _graph(tmp_path, monkeypatch)
    if os.environ.get("UPDATE_SNAPSHOTS") or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(graph, indent=2, sort_keys=True) + "\n")
    assert graph == json.loads(SNAPSHOT.read_text())


def test_definitions_load_like_dagster_does(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path))
    import importlib

    import pipelines.definitions as module

    defs = importlib.reload(module).defs
    assert isinstance(defs, dg.Definitions)
    defs.resolve_all_job_defs()
    assert {s.name for s in defs.sensors} == {
        "demo_flexpos_sensor",
        "demo_ticketmaster_sensor",
        "demo_teyca_axle_sensor",
        "demo_amilia_cyberimpact_sensor",
        "demo_admin_flexmail_sensor",  # its feedback sensor needs the webhook token's env var
        "list_freshness_sensor",
        "run_failure_email",
    }
    assert {s.name for s in defs.schedules} == {"demo_teyca_axle_segments_daily"}
