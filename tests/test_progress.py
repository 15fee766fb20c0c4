"""The step progress reporter and the CLI's rendering of it, without a run (a fake clock)."""

from __future__ import annotations

import io

from app.console import LiveSteps, RunRow, make_console, run_table, showing_progress, step_table
from memberflow import progress
from resources.base import CallCounter


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _step(clock: _Clock, lines: list[str], every: float = 5.0) -> progress.StepProgress:
    return progress.StepProgress("shop/customers_raw", lines.append, every=every, clock=clock)


def test_a_line_is_logged_at_most_every_interval_with_the_running_totals():
    clock, lines = _Clock(), []
    step = _step(clock, lines)
    step.add(pages=1, records=500)
    assert lines == []  # not 5 s yet
    clock.now += 3
    step.add(pages=1, records=500)
    assert lines == []
    clock.now += 2.5
    step.add(pages=1, records=200)
    assert lines == ["progress shop/customers_raw: 3 pages, 1,200 records landed; 0 calls — 6 s"]
    clock.now += 1
    step.add(pages=1, records=1)
    assert len(lines) == 1  # the next one only 5 s after the last


def test_the_step_counts_the_calls_of_the_clients_it_opened_once_each():
    clock, lines = _Clock(), []
    step = _step(clock, lines, every=0)
    calls = CallCounter()
    step.watch(calls)
    step.watch(calls)
    calls.add("GET /customers")
    calls.add("GET /customers")
    calls.add_retry(throttled=True)
    calls.add_wait(0.5)
    snap = step.snapshot()
    assert (snap.calls, snap.retried, snap.throttled, snap.paced) == (2, 1, 1, 1)
    assert "2 calls (1 retried, 1 throttled, 1 paced)" in snap.line()


def test_a_counter_made_while_a_step_works_is_the_steps_and_notes_reach_it():
    logged: list[str] = []
    with progress.working("shop/members_delivered", logged.append, run="r1") as step:
        counter = CallCounter()  # what a client makes when the step opens it
        counter.add("POST /members")
        progress.note(members=40)
        assert progress.active() == [step]
    assert progress.active() == []
    assert logged[-1] == ("progress shop/members_delivered done: 40 members sent; 1 call — 0 s")
    progress.note(members=1)  # no step working: nothing happens, nothing fails
    CallCounter()


def test_a_failing_step_ends_with_a_failed_line_and_listeners_hear_it():
    console = make_console(file=io.StringIO())
    with showing_progress(console) as steps:
        try:
            with progress.working("shop/customers_staged", lambda _: None, run="r2"):
                progress.note(rows=7)
                raise RuntimeError("boom")
        except RuntimeError:
            pass
    (snap,) = steps.of_run("r2")
    assert not snap.ok and snap.rows() == (7, "rows staged")
    assert "progress shop/customers_staged failed: 7 rows staged" in console.file.getvalue()


def test_not_a_terminal_prints_plain_lines_and_a_plain_table():
    out = io.StringIO()
    console = make_console(file=out)
    assert not console.is_terminal
    steps = LiveSteps(console)
    with progress.listening(steps), progress.working("shop/customers_raw", lambda _: None, "r3"):
        progress.note(pages=2, records=300)
    snapshots = steps.of_run("r3")
    console.print(step_table(snapshots, {"shop/customers_raw": {}}))
    console.print(run_table([RunRow("shop: initial import", snapshots, 4, 12.5, True)]))
    text = out.getvalue()
    assert "\x1b[" not in text  # no colours, no cursor moves
    assert "progress shop/customers_raw: started" in text
    assert "progress shop/customers_raw done: 2 pages, 300 records landed; 0 calls" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("step"))
    assert header.split()[:8] == [
        "step", "rows", "calls", "retried", "throttled", "paced", "quarantined", "seconds"
    ]  # fmt: skip
    row = next(line for line in lines if line.startswith("shop/customers_raw"))
    assert row.split()[:3] == ["shop/customers_raw", "300", "0"]
    run = next(line for line in lines if line.startswith("shop: initial import"))
    assert run.split()[3:5] == ["300", "0"] and run.split()[-2:] == ["4", "12.5"]
