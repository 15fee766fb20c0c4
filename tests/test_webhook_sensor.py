"""The webhook sensor: pending stored events -> one run re-reading them, never two at once."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime

import dagster as dg
import pytest

from memberflow.config import INTEGRATIONS_DIR, load_all
from memberflow.webhook_store import WebhookStore
from pipelines import webhook_sensor
from pipelines.factory import build_definitions
from resources.webhooks import WebhookCapability, WebhookEvent


class Hooks(WebhookCapability):
    def verify(self, headers: Mapping[str, str], body: bytes, query: object = None) -> None:
        return None

    def parse(self, body: bytes) -> list[WebhookEvent]:
        return []


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    (integration,) = load_all([INTEGRATIONS_DIR / "demo_flexpos.yaml"])
    for name in [*integration.source.env_vars(), *integration.target.env_vars()]:
        monkeypatch.setenv(name, "unused")  # the sensor builds the source client, calls nothing
    monkeypatch.setattr(type(integration.source), "webhook", lambda self: Hooks(), raising=False)
    defs = build_definitions([integration])
    sensor = defs.resolve_sensor_def("demo_flexpos_webhook_sensor")
    with dg.instance_for_test() as instance:
        tick = _Ticker(defs, sensor, instance)
        yield integration, tick, WebhookStore.for_integration("demo_flexpos")


def _add(store: WebhookStore, body: bytes, *ids: str) -> None:
    events = [WebhookEvent(kind="update", entity="customers", record_id=i) for i in ids]
    store.add(hashlib.sha256(body).hexdigest(), events, datetime.now(UTC))


class _Ticker:
    def __init__(self, defs: dg.Definitions, sensor, instance: dg.DagsterInstance) -> None:
        self.defs, self.sensor, self.instance = defs, sensor, instance

    def __call__(self, cursor: str | None = None):
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=cursor,
            resources=self.defs.resources,
            repository_def=self.defs.get_repository_def(),
        )
        return self.sensor.evaluate_tick(context)


def test_no_sensor_without_a_webhook_capability():
    defs = build_definitions(load_all([INTEGRATIONS_DIR / "demo_flexpos.yaml"]))
    own = [s.name for s in defs.sensors if s.name.startswith("demo_flexpos")]  # type: ignore[union-attr]
    assert own == ["demo_flexpos_sensor"]


def test_pending_events_request_one_run_through_the_last_seq(setup):
    integration, tick, store = setup
    result = tick()
    assert not result.run_requests and "no pending" in (result.skip_message or "")
    _add(store, b"a", "1", "2")
    result = tick()
    (request,) = result.run_requests
    assert request.run_key == "webhook-2"
    ops = webhook_sensor.extract_op_names(integration)
    assert ops == [
        "demo_flexpos__customers_raw",
        "demo_flexpos__journals_raw",
        "demo_flexpos__tickets_raw",
    ]  # every extract step reads its own entity's events
    assert request.run_config == {"ops": {op: {"config": {"webhook_through": 2}} for op in ops}}
    assert request.tags["memberflow/list"] == integration.list_key

    _add(store, b"b", "3")  # new events past the cursor: a new batch
    result = tick(result.cursor)
    assert [r.run_key for r in result.run_requests] == ["webhook-3"]
    cursor = result.cursor

    store.mark_consumed(3, "run-x")  # the run consumed them: nothing more to do
    result = tick(cursor)
    assert not result.run_requests


def _ended(
    tick: _Ticker, status: dg.DagsterRunStatus, through: int, will_retry: bool = False
) -> None:
    """A finished run of the webhook batch through `through`, as the instance records it."""
    tags = {"memberflow/integration": "demo_flexpos", webhook_sensor.WEBHOOK_TAG: str(through)}
    if will_retry:
        tags[webhook_sensor.WILL_RETRY_TAG] = "true"
    job = "sync_heyloyalty_demo_4711"
    tick.instance.add_run(dg.DagsterRun(job_name=job, status=status, tags=tags))


@pytest.mark.parametrize("consumed", [False, True], ids=["failed-in-extract", "failed-later"])
def test_a_failed_webhook_run_is_retried_then_left(setup, consumed):
    """Whether the run failed before landing (events still pending) or after (in delivery,
    events consumed), it is asked for again, at most MAX_ATTEMPTS runs in all."""
    _, tick, store = setup
    _add(store, b"a", "1")
    result = tick()
    keys = [r.run_key for r in result.run_requests]
    cursor = result.cursor
    if consumed:
        store.mark_consumed(1, "run-1")
    for _ in range(3):
        _ended(tick, dg.DagsterRunStatus.FAILURE, 1)
        result = tick(cursor)
        keys += [r.run_key for r in result.run_requests]
        cursor = result.cursor or cursor
    assert keys == ["webhook-1", "webhook-1-retry1", "webhook-1-retry2"]
    assert "regular sensor" in (result.skip_message or "")


def test_a_failed_webhook_run_dagster_retries_is_not_asked_for_again(setup):
    """With run_retries on (the production profile) the daemon re-executes the failed run; the
    sensor asking again beside it would run the same events twice."""
    _, tick, store = setup
    _add(store, b"a", "1")
    cursor = tick().cursor
    _ended(tick, dg.DagsterRunStatus.FAILURE, 1, will_retry=True)
    result = tick(cursor)
    assert not result.run_requests


def test_a_webhook_run_that_succeeded_is_not_asked_for_again(setup):
    _, tick, store = setup
    _add(store, b"a", "1")
    cursor = tick().cursor
    store.mark_consumed(1, "run-1")
    _ended(tick, dg.DagsterRunStatus.SUCCESS, 1)
    result = tick(cursor)
    assert not result.run_requests and "no pending" in (result.skip_message or "")


def test_no_run_while_one_on_the_list_is_in_flight(setup, monkeypatch):
    _, tick, store = setup
    _add(store, b"a", "1")
    monkeypatch.setattr(webhook_sensor, "run_in_flight", lambda instance, key: True)
    result = tick()
    assert not result.run_requests and "in flight" in (result.skip_message or "")
