"""What the CLI shows while runs work and after they end: live step progress and summary tables.

On a terminal the steps working now are drawn live (rich), refreshed a few times a second from
their running figures, and each finished step leaves one line above them. Elsewhere (CI, a pipe,
a log file) nothing is redrawn: the progress lines the steps write to the run log (every ~5 s)
and each step's last line are printed as plain lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table

from memberflow import progress
from memberflow.progress import Snapshot, StepProgress

PLAIN_WIDTH = 160  # a table's width when the output is not a terminal (whatever COLUMNS says)


def make_console(**kwargs: Any) -> Console:
    """The CLI's console: colours and live redraws on a terminal only; plain lines otherwise,
    never wrapped (a log file or CI keeps one line per line), tables up to PLAIN_WIDTH wide
    (a narrow COLUMNS, as some CI runners set, would cut the column names)."""
    console = Console(highlight=False, soft_wrap=True, **kwargs)
    if not console.is_terminal and "width" not in kwargs:
        console.width = PLAIN_WIDTH
    return console


class LiveSteps:
    """A progress listener (memberflow.progress) that shows steps on a console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.finished: list[Snapshot] = []
        self._spinners: dict[object, Spinner] = {}
        self._remote: dict[int, list[Snapshot]] = {}  # steps working in other processes

    def step_started(self, step: StepProgress) -> None:
        self.remote_started(step.step)

    def remote_started(self, step: str) -> None:
        """A step started, here or in another process (the demo's lanes)."""
        if not self.live:
            self.console.print(f"{progress.PREFIX} {step}: started")

    def remote_active(self, lane: int, snapshots: list[Snapshot]) -> None:
        """The running figures of the steps working now in another process."""
        self._remote[lane] = snapshots

    def step_line(self, text: str) -> None:
        if not self.live and " done:" not in text and " failed:" not in text:
            self.console.print(text)  # the same line as in the run log, every ~5 s

    def step_finished(self, snapshot: Snapshot) -> None:
        self.finished.append(snapshot)
        mark = "[green]✓[/]" if snapshot.ok else "[red]✗[/]"
        text = snapshot.line().removeprefix(f"{progress.PREFIX} ")
        self.console.print(f"{mark} {text}" if self.live else snapshot.line(), markup=self.live)

    def __rich__(self) -> Group:
        """The steps working now, one spinner line each, read from their running figures."""
        working = [(id(step), step.snapshot()) for step in progress.active()]
        for lane, snapshots in list(self._remote.items()):
            working += [((lane, s.run, s.step), s) for s in snapshots]
        lines = []
        for key, snapshot in working:
            spinner = self._spinners.setdefault(key, Spinner("dots"))
            spinner.text = snapshot.line().removeprefix(f"{progress.PREFIX} ")
            lines.append(spinner)
        return Group(*lines)

    def of_run(self, run_id: str) -> list[Snapshot]:
        return [s for s in self.finished if s.run == run_id]


@contextmanager
def showing_progress(console: Console) -> Iterator[LiveSteps]:
    """While the block runs, show every step of this process on `console`."""
    steps = LiveSteps(console)
    with progress.listening(steps):
        if not steps.live:
            yield steps
            return
        with Live(steps, console=console, refresh_per_second=4, transient=True):
            yield steps


def step_table(snapshots: list[Snapshot], assets: dict[str, dict[str, Any]]) -> Table:
    """One row per step of a run: what it did, its calls, and how long it took.

    `assets` is the run's materialization metadata by asset (app.runner.RunSummary.assets), for
    the rows a stage step withheld (quarantined)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("step")
    for name in ("rows", "calls", "retried", "throttled", "paced", "quarantined", "seconds"):
        table.add_column(name, justify="right")
    table.add_column("what")
    for snap in snapshots:
        rows = snap.rows()
        quarantined = assets.get(snap.step, {}).get("quarantined")
        table.add_row(
            snap.step if snap.ok else f"{snap.step} (failed)",
            f"{rows[0]:,}" if rows else "",
            f"{snap.calls:,}",
            _count(snap.retried),
            _count(snap.throttled),
            _count(snap.paced),
            "" if quarantined is None else f"{int(quarantined):,}",
            f"{snap.seconds:.1f}",
            rows[1] if rows else "",
        )
    return table


def _count(n: int) -> str:
    return f"{n:,}" if n else "0"


@dataclass
class RunRow:
    """One run for `run_table`: its name, its steps' last figures, what staging withheld."""

    name: str
    steps: list[Snapshot]
    quarantined: int
    seconds: float
    ok: bool


def run_table(runs: list[RunRow]) -> Table:
    """One row per run: records landed, rows staged, members and events sent, calls, time."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("run")
    columns = ("landed", "staged", "members sent", "events sent", "calls", "retried")
    columns += ("throttled", "paced", "quarantined", "seconds")
    for name in columns:
        table.add_column(name, justify="right")
    for run in runs:

        def total(key: str, steps: list[Snapshot] = run.steps) -> str:
            return f"{sum(s.counts.get(key, 0) for s in steps):,}"

        def calls(attr: str, steps: list[Snapshot] = run.steps) -> str:
            return f"{sum(getattr(s, attr) for s in steps):,}"

        table.add_row(
            run.name if run.ok else f"{run.name} (FAILED)",
            total("records"),
            total("rows"),
            total("members"),
            total("events"),
            calls("calls"),
            calls("retried"),
            calls("throttled"),
            calls("paced"),
            f"{run.quarantined:,}",
            f"{run.seconds:.1f}",
        )
    return table
