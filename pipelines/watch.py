"""What watches a deployment and tells someone: each list's freshness checks, the freshness
sensor that re-judges them between runs, and the run-failure mail. The factory adds these."""

from __future__ import annotations

import dagster as dg

from assets import freshness
from memberflow.config import Integration
from pipelines.alerts import build_failure_alert
from pipelines.freshness_sensor import build_freshness_sensor


def freshness_checks(by_list: dict[str, list[Integration]]) -> list[dg.AssetChecksDefinition]:
    """Each list's `synced_recently` checks."""
    return [freshness.build_freshness_checks(k, m) for k, m in sorted(by_list.items())]


def alert_sensors(by_list: dict[str, list[Integration]]) -> list[dg.SensorDefinition]:
    """The deployment's watchers: the freshness sensor and the run-failure mail."""
    if not by_list:
        return []
    everyone = [i for members in by_list.values() for i in members]
    return [build_freshness_sensor(by_list), build_failure_alert(everyone)]
