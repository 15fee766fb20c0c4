"""A working step writes its progress to the run log before it ends, and a listener in the
process (the CLI's live display) sees every step start and end (a real run against the sandbox)."""

from __future__ import annotations

import dagster as dg
import pytest

from memberflow import progress

pytestmark = pytest.mark.e2e


class _Listener:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[progress.Snapshot] = []
        self.lines: list[str] = []

    def step_started(self, step: progress.StepProgress) -> None:
        self.started.append(step.step)

    def step_finished(self, snapshot: progress.Snapshot) -> None:
        self.finished.append(snapshot)

    def step_line(self, text: str) -> None:
        self.lines.append(text)


def test_the_run_log_carries_progress_before_each_working_step_ends(harness, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_PROGRESS_SECONDS", "0")  # a line at each page, chunk, batch
    harness.load("demo_flexpos")
    seen = _Listener()
    with progress.listening(seen):
        run = harness.backfill("demo_flexpos", days=30)
    assert run.success, run.failures

    records = harness.instance.all_logs(run.run_id)
    ends = {
        r.step_key: at
        for at, r in enumerate(records)
        if r.dagster_event and r.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS
    }
    lines = [
        (r.step_key, at, r.user_message) for at, r in enumerate(records) if not r.dagster_event
    ]
    working = [
        (step, at)
        for step, at, text in lines
        if text.startswith(progress.PREFIX) and " done:" not in text
    ]
    reported = {step for step, _ in working}
    # landed pages, staged rows and delivered members each report while their step works
    for step in ("customers_raw", "customers_staged", "members_delivered"):
        assert any(step in s for s in reported), (step, reported)
    for step, at in working:
        assert at < ends[step], f"{step}: progress logged after the step ended"
    done = [text for _, _, text in lines if " done:" in text and "customers_raw" in text]
    assert done and "records landed" in done[0] and "calls" in done[0]

    assert seen.started and set(seen.started) == {s.step for s in seen.finished}
    raw = next(s for s in seen.finished if s.step.endswith("customers_raw"))
    assert raw.ok and raw.calls >= 1
    assert raw.rows() is not None and raw.rows()[0] > 0
    assert any(line.startswith(progress.PREFIX) for line in seen.lines)
