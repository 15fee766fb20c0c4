"""The demo runs each target list's integrations in a lane of their own: integrations that share
a list stay in one lane, in file order; its initial imports read a demo-sized window. Lanes are
forks of a server that imported their code once, and get the caller's environment. What the
runs report reads as words (counts, the warnings their steps logged)."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from types import SimpleNamespace

import dagster as dg
import pytest

from app import lanes, runner
from app.demo import DEMO_HISTORY_ENV, _lanes, counts_text, history_window


def _integration(name: str, list_key: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, list_key=list_key)


def test_integrations_sharing_a_list_share_a_lane_in_file_order():
    files = [
        _integration("flexpos", "hl"),
        _integration("ticketmaster", "hl"),
        _integration("teyca", "axle"),
        _integration("amilia", "ci"),
        _integration("late_on_hl", "hl"),
    ]
    lanes = [[i.name for i in lane] for lane in _lanes(files)]  # type: ignore[arg-type]
    assert lanes == [["flexpos", "ticketmaster", "late_on_hl"], ["teyca"], ["amilia"]]


def _tracked(history_start: date, tracking: bool = True) -> SimpleNamespace:
    schedule = SimpleNamespace(history_start=history_start)
    return SimpleNamespace(schedule=schedule, tracking=["registrations"] if tracking else [])


END = date(2026, 11, 30)


def test_the_demo_window_is_the_last_days_unless_the_history_is_shorter(monkeypatch):
    monkeypatch.setenv(DEMO_HISTORY_ENV, "92")
    window = history_window(_tracked(date(2024, 11, 1)), END)  # type: ignore[arg-type]
    assert window == {"start": date(2026, 8, 31), "end": END}  # 92 days, today included
    recent = history_window(_tracked(date(2026, 11, 1)), END)  # type: ignore[arg-type]
    assert recent == {"start": date(2026, 11, 1), "end": END}
    assert history_window(_tracked(date(2024, 11, 1), tracking=False), END) == {}  # type: ignore[arg-type]


@pytest.mark.parametrize("setting", ["all", "0", ""])
def test_the_whole_history_when_asked(monkeypatch, setting):
    monkeypatch.setenv(DEMO_HISTORY_ENV, setting)
    window = history_window(_tracked(date(2024, 11, 1)), END)  # type: ignore[arg-type]
    assert window == {"start": date(2024, 11, 1), "end": END}


def test_a_window_that_is_no_number_is_an_error(monkeypatch):
    monkeypatch.setenv(DEMO_HISTORY_ENV, "three months")
    with pytest.raises(ValueError, match=DEMO_HISTORY_ENV):
        history_window(_tracked(date(2024, 11, 1)), END)  # type: ignore[arg-type]


def test_counts_read_as_words():
    assert counts_text({"bounced": 1, "only_on_target": 4}) == "1 bounced, 4 only on target"
    by_action = {"create": {"done": 4, "failed": 1}, "record_click": {"done": 1}}
    assert counts_text(by_action) == "create: 4 done, 1 failed; record click: 1 done"
    assert counts_text({"admin": 15, "flexmail": 1}, names_first=True) == "admin 15, flexmail 1"
    assert counts_text({}) == "none"


def test_a_runs_warnings_are_its_steps_logged_warnings_each_once():
    @dg.op
    def mail(
        context,
    ):  # unannotated: a string annotation here is a local name Dagster cannot resolve
        context.log.info("not a warning")
        for _ in range(2):
            context.log.warning("mail to office@example.be not sent: no SMTP host")

    @dg.job
    def job() -> None:
        mail()

    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(instance=instance)
    assert runner.warning_messages(instance, result.run_id) == [
        "mail: mail to office@example.be not sent: no SMTP host"
    ]


def _environment_seen(environment: dict[str, str] | None) -> str | None:
    if environment is not None:
        lanes.adopt_environment(environment)
    return os.environ.get("MEMBERFLOW_TEST_LANE_SETTING")


def test_a_lane_forked_from_the_server_gets_the_callers_environment(monkeypatch):
    """The fork server started before the caller set its environment (as the demo sets the
    sandbox's address): a lane sees the server's environment unless handed the caller's."""
    monkeypatch.delenv("MEMBERFLOW_TEST_LANE_SETTING", raising=False)
    lanes.start_server()
    monkeypatch.setenv("MEMBERFLOW_TEST_LANE_SETTING", "set after the server started")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=lanes.context()) as pool:
            if lanes.forking():  # the lane as the server has it, then handed the caller's
                assert pool.submit(_environment_seen, None).result(timeout=600) is None
            handed = pool.submit(_environment_seen, dict(os.environ)).result(timeout=600)
    finally:
        lanes.stop_server()
    assert handed == "set after the server started"
