"""The feedback sensor: stored feedback -> one run of the list's job on the feedback asset alone,
never beside another run of the list (AF7); no sensor or asset for a list that reports nothing
back."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import dagster as dg
import pytest

from memberflow.config import INTEGRATIONS_DIR, load_all
from memberflow.webhook_store import WebhookStore, feedback_events
from pipelines.factory import build_definitions
from resources.feedback import Feedback, FeedbackWebhook


class Hook(FeedbackWebhook):
    def verify(self, headers: Mapping[str, str], body: bytes, query: object = None) -> None:
        return None

    def parse(self, body: bytes) -> list[Feedback]:
        return []


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    (integration,) = load_all([INTEGRATIONS_DIR / "demo_flexpos.yaml"])
    for name in [*integration.source.env_vars(), *integration.target.env_vars()]:
        monkeypatch.setenv(name, "unused")  # resources are built, no call is made
    monkeypatch.setattr(type(integration.target), "feedback_webhook", lambda self: Hook())
    defs = build_definitions([integration])
    sensor = defs.resolve_sensor_def("demo_flexpos_feedback_sensor")
    with dg.instance_for_test() as instance:

        def tick():
            context = dg.build_sensor_context(
                instance=instance,
                resources=defs.resources,
                repository_def=defs.get_repository_def(),
            )
            return sensor.evaluate_tick(context)

        yield defs, tick, WebhookStore.for_feedback("demo_flexpos"), instance, integration


def test_no_feedback_sensor_or_asset_for_a_list_that_reports_nothing_back():
    defs = build_definitions(load_all([INTEGRATIONS_DIR / "demo_flexpos.yaml"]))
    own = [s.name for s in defs.sensors if s.name.startswith("demo_flexpos")]  # type: ignore[union-attr]
    assert own == ["demo_flexpos_sensor"]
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert not any(k.endswith("feedback_applied") for k in keys)


def test_pending_feedback_requests_one_feedback_run(setup):
    defs, tick, store, _, _ = setup
    result = tick()
    assert not result.run_requests and "no pending" in (result.skip_message or "")
    at = datetime(2026, 11, 30, tzinfo=UTC)
    store.add("b1", feedback_events([Feedback("unsubscribed", "a@x.dk", "1", at)]), at)
    (request,) = tick().run_requests
    assert request.run_key == "feedback-1"
    assert request.asset_selection == [dg.AssetKey(["demo_flexpos", "feedback_applied"])]
    assert request.tags["memberflow/integration"] == "demo_flexpos"
    assert defs.resolve_sensor_def("demo_flexpos_feedback_sensor").job_name == (
        "sync_heyloyalty_demo_4711"
    )
    sync = defs.resolve_job_def("sync_heyloyalty_demo_4711")
    assert dg.AssetKey(["demo_flexpos", "feedback_applied"]) in sync.asset_layer.selected_asset_keys


def test_no_feedback_run_beside_another_run_of_the_list(setup):
    _, tick, store, instance, integration = setup
    at = datetime(2026, 11, 30, tzinfo=UTC)
    store.add("b1", feedback_events([Feedback("unsubscribed", "a@x.dk", "1", at)]), at)
    instance.add_run(
        dg.DagsterRun(
            job_name="sync_demo_flexpos",
            run_id="in-flight",
            status=dg.DagsterRunStatus.STARTED,
            tags={"memberflow/list": integration.list_key},
        )
    )
    result = tick()
    assert not result.run_requests


def test_a_manual_sync_never_starts_beside_a_run_of_the_list(setup):
    """AF7: `memberflow sync` (and the demo, the tests) refuse while the list has a run in
    flight, the feedback sensor's included."""
    from app import runner

    defs, _, _, instance, integration = setup
    instance.add_run(
        dg.DagsterRun(
            job_name="sync_heyloyalty_demo_4711",
            run_id="feedback-in-flight",
            status=dg.DagsterRunStatus.STARTED,
            tags={"memberflow/list": integration.list_key},
        )
    )
    with pytest.raises(runner.RunInFlight, match="two syncs of one list never run at once"):
        runner.run_sync(defs, integration, instance)


def test_the_sync_sensor_starts_no_run_once_the_months_budget_is_spent(tmp_path, monkeypatch):
    """AF8: the list's monthly call budget spent (memberflow's own count, no API call): skip."""
    from resources.heyloyalty import HeyloyaltyClient
    from resources.target import RateBudget

    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    (integration,) = load_all([INTEGRATIONS_DIR / "demo_flexpos.yaml"])
    for name in [*integration.source.env_vars(), *integration.target.env_vars()]:
        monkeypatch.setenv(name, "unused")
    spent = RateBudget(window="month", limit=1000, used=1000)
    monkeypatch.setattr(HeyloyaltyClient, "rate_budget", lambda self: spent)
    defs = build_definitions([integration])
    sensor = defs.resolve_sensor_def("demo_flexpos_sensor")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, resources=defs.resources, repository_def=defs.get_repository_def()
        )
        result = sensor.evaluate_tick(context)
    assert not result.run_requests
    assert "monthly budget of 1000 API calls is spent" in (result.skip_message or "")
