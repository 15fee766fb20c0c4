"""Whether an integration's sensors and schedule run as soon as Dagster loads its file.

`schedule.enabled: true` starts them running; false (the default) leaves them stopped until
someone switches them on in the UI, so a new or copied file never starts calling a client's
accounts by surprise. Dagster keeps a switch made in the UI, which then wins over the file.
"""

from __future__ import annotations

import dagster as dg

from memberflow.config import Integration


def _enabled(integration: Integration) -> bool:
    schedule = getattr(integration, "schedule", None)
    return bool(getattr(schedule, "enabled", False))


def sensor_status(integration: Integration) -> dg.DefaultSensorStatus:
    if _enabled(integration):
        return dg.DefaultSensorStatus.RUNNING
    return dg.DefaultSensorStatus.STOPPED


def schedule_status(integration: Integration) -> dg.DefaultScheduleStatus:
    if _enabled(integration):
        return dg.DefaultScheduleStatus.RUNNING
    return dg.DefaultScheduleStatus.STOPPED
