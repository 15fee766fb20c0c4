"""The run-failure mail (to a local SMTP server), its recipients, the `alerts:` settings and
`schedule.enabled` starting an integration's sensors."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets import naming
from memberflow.config import INTEGRATIONS_DIR, IntegrationFileError, load_all
from pipelines.alerts import SENSOR_NAME, build_failure_alert
from pipelines.factory import build_definitions
from tests.smtp_inbox import smtp_inbox


def _file(tmp_path: Path, **keys) -> Path:
    raw = yaml.safe_load((INTEGRATIONS_DIR / "demo_flexpos.yaml").read_text())
    raw.update(keys)
    path = tmp_path / "demo_flexpos.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def inbox(monkeypatch):
    """A local SMTP server the mailer points at (tests/smtp_inbox.py)."""
    monkeypatch.setenv("MEMBERFLOW_SMTP_FROM", "memberflow@example.com")
    with smtp_inbox(monkeypatch) as received:
        yield received


def _failed_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> dg.DagsterRun:
    @dg.op
    def deliver():
        raise RuntimeError("the list refused jens.hansen@example.dk: quota exceeded")

    @dg.job(name="sync_heyloyalty_demo_4711")
    def job():
        deliver()

    result = job.execute_in_process(instance=instance, raise_on_error=False, tags=tags)
    assert not result.success
    return instance.get_run_by_id(result.run_id)


def _evaluate(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, run: dg.DagsterRun):
    (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=failure.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
    ).for_run_failure()
    sensor(context)


def _wait_for(received: list, count: int) -> None:
    deadline = time.monotonic() + 60  # the server hands mail over on its own thread (a hang guard)
    while len(received) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_failed_run_is_mailed_to_the_operators_and_the_integrations_owners(
    tmp_path, monkeypatch, inbox
):
    monkeypatch.setenv("MEMBERFLOW_ALERT_TO", "ops@example.com, oncall@example.com")
    monkeypatch.setenv("MEMBERFLOW_UI_URL", "http://dagster.example.com/")
    (integration,) = load_all(
        [_file(tmp_path, alerts={"email_on_failure": ["client-am@example.com"]})]
    )
    sensor = build_failure_alert([integration])
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING  # someone to tell
    tags = {naming.INTEGRATION_TAG: integration.name, naming.LIST_TAG: integration.list_key}
    with dg.instance_for_test() as instance:
        run = _failed_run(instance, tags)
        _evaluate(sensor, instance, run)
    _wait_for(inbox, 1)
    (mail,) = inbox
    assert mail["To"] == "ops@example.com, oncall@example.com, client-am@example.com"
    assert mail["Subject"] == "memberflow: run of sync_heyloyalty_demo_4711 (demo_flexpos) failed"
    body = mail.get_payload()
    assert run.run_id in body and f"List: {integration.list_key}" in body
    assert f"http://dagster.example.com/runs/{run.run_id}" in body
    assert "Step deliver" in body and "quota exceeded" in body
    assert "j***@example.dk" in body and "jens.hansen" not in body  # masked (C2)


def test_a_run_of_no_integration_goes_to_the_operators_only(tmp_path, monkeypatch, inbox):
    monkeypatch.setenv("MEMBERFLOW_ALERT_TO", "ops@example.com")
    (integration,) = load_all(
        [_file(tmp_path, alerts={"email_on_failure": ["client-am@example.com"]})]
    )
    sensor = build_failure_alert([integration])
    with dg.instance_for_test() as instance:
        _evaluate(sensor, instance, _failed_run(instance, {}))
    _wait_for(inbox, 1)
    assert [m["To"] for m in inbox] == ["ops@example.com"]


def test_a_run_of_the_whole_list_is_mailed_to_every_owner_on_the_list(tmp_path, monkeypatch, inbox):
    """A list job launched whole from the UI carries the list tag only: the owners of every
    integration on that list hear of it, the mail says it was the whole list."""
    monkeypatch.setenv("MEMBERFLOW_ALERT_TO", "ops@example.com")
    (integration,) = load_all(
        [_file(tmp_path, alerts={"email_on_failure": ["client-am@example.com"]})]
    )
    sensor = build_failure_alert([integration])
    with dg.instance_for_test() as instance:
        run = _failed_run(instance, {naming.LIST_TAG: integration.list_key})
        _evaluate(sensor, instance, run)
    _wait_for(inbox, 1)
    assert [m["To"] for m in inbox] == ["ops@example.com, client-am@example.com"]
    assert "(the whole list)" in inbox[0]["Subject"]


def test_a_failed_run_dagster_will_retry_is_not_mailed(tmp_path, monkeypatch, inbox):
    """With run_retries (the production profile) only the last attempt mails."""
    monkeypatch.setenv("MEMBERFLOW_ALERT_TO", "ops@example.com")
    (integration,) = load_all([_file(tmp_path)])
    sensor = build_failure_alert([integration])
    with dg.instance_for_test() as instance:
        run = _failed_run(instance, {naming.INTEGRATION_TAG: integration.name})
        instance.add_run_tags(run.run_id, {"dagster/will_retry": "true"})
        _evaluate(sensor, instance, instance.get_run_by_id(run.run_id))
        last = _failed_run(instance, {naming.INTEGRATION_TAG: integration.name})
        _evaluate(sensor, instance, last)
    _wait_for(inbox, 1)
    time.sleep(0.2)
    assert len(inbox) == 1 and last.run_id in inbox[0].get_payload()


def test_without_smtp_the_tick_fails_naming_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMBERFLOW_SMTP_HOST", raising=False)
    monkeypatch.setenv("MEMBERFLOW_ALERT_TO", "ops@example.com")
    (integration,) = load_all([_file(tmp_path)])
    sensor = build_failure_alert([integration])
    with dg.instance_for_test() as instance:
        run = _failed_run(instance, {naming.INTEGRATION_TAG: integration.name})
        with pytest.raises(Exception, match="MEMBERFLOW_SMTP_HOST"):
            _evaluate(sensor, instance, run)


def test_the_alert_waits_to_be_switched_on_when_nobody_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMBERFLOW_ALERT_TO", raising=False)
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    defs = build_definitions(load_all([_file(tmp_path)]))
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


@pytest.mark.parametrize(
    ("alerts", "key"),
    [
        ({"email_on_failure": ["not-an-address"]}, "alerts.email_on_failure.0"),
        ({"email_on_falure": ["ops@example.com"]}, "alerts.email_on_falure"),
        ({"stale_after_intervals": 0}, "alerts.stale_after_intervals"),
    ],
)
def test_bad_alert_settings_fail_at_load_naming_file_and_key(tmp_path, alerts, key):
    path = _file(tmp_path, alerts=alerts)
    with pytest.raises(IntegrationFileError) as error:
        load_all([path])
    assert str(path) in str(error.value) and f"  - {key}:" in str(error.value)


@pytest.mark.parametrize("enabled", [True, False])
def test_schedule_enabled_starts_the_integrations_sensors_and_schedule(
    tmp_path, monkeypatch, enabled
):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MEMBERFLOW_ALERT_TO", raising=False)
    raw = yaml.safe_load((INTEGRATIONS_DIR / "demo_teyca_axle.yaml").read_text())
    raw["schedule"]["enabled"] = enabled
    path = tmp_path / "demo_teyca_axle.yaml"
    path.write_text(yaml.safe_dump(raw))
    defs = build_definitions(load_all([path]))
    running = dg.DefaultSensorStatus.RUNNING if enabled else dg.DefaultSensorStatus.STOPPED
    assert defs.resolve_sensor_def("demo_teyca_axle_sensor").default_status == running
    assert defs.resolve_sensor_def("list_freshness_sensor").default_status == running
    schedule = defs.resolve_schedule_def("demo_teyca_axle_segments_daily")
    assert schedule.default_status.value == running.value
