"""Live progress of a step while it works, for the run log and for whoever watches (the CLI).

A step's figures used to appear only in its materialization, when it ended: a first import of a
large list was silent for many minutes. Here a step (see `reported`) keeps a `StepProgress` that
the code doing the work feeds as it goes (`note(pages=1, records=500)` from landing, staging and
delivery) and that reads the call counters of the clients the step opened. It writes a progress
line to the step's log (the Dagster run log) at most every `MEMBERFLOW_PROGRESS_SECONDS`
(default 5) while the step works, and one when it ends; listeners in the same process (the CLI's
live display) see each step start and end and may read its figures at any moment.

Vendor-free on purpose: the counters are anything with `total`, `retries`, `throttled` and
`throttled_waits` (resources.base.CallCounter), and nothing here knows a vendor or Dagster.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

DEFAULT_EVERY_SECONDS = 5.0
PREFIX = "progress"  # every line this module logs starts with it, so it is easy to find

# What each count means, in the order a line shows them; a key not listed is shown by its name.
LABELS = {
    "pages": "pages",
    "records": "records landed",
    "rows": "rows staged",
    "members": "members sent",
    "events": "events sent",
    "feedback": "feedback items",
}
# The count a summary shows as the step's rows: the first of these the step noted.
MAIN_COUNTS = ("records", "rows", "members", "events", "feedback")


class Counter(Protocol):
    """What a step reads from a client's call counter (resources.base.CallCounter)."""

    @property
    def total(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def throttled(self) -> int: ...
    @property
    def throttled_waits(self) -> int: ...


@dataclass(frozen=True)
class Snapshot:
    """A step's figures at one moment: what a progress line and a summary row show."""

    step: str
    counts: dict[str, int]
    calls: int
    retried: int
    throttled: int  # the vendor's "slow down" answers (429s), each retried
    paced: int  # waits the client made before a call to stay under the vendor's limit
    seconds: float
    done: bool = False
    ok: bool = True
    run: str = ""  # the run's id, when the step knows it

    def rows(self) -> tuple[int, str] | None:
        """The step's main count and its label ("300", "records landed"), or None."""
        for key in MAIN_COUNTS:
            if key in self.counts:
                return self.counts[key], LABELS[key]
        return None

    def line(self) -> str:
        """`progress customers_raw: 4 pages, 1,200 records landed; 5 calls (1 retried) — 12 s`"""
        done = ", ".join(f"{n:,} {_label(k, n)}" for k, n in self.counts.items())
        calls = f"{self.calls:,} call{'' if self.calls == 1 else 's'}"
        extra = [
            f"{n:,} {what}"
            for n, what in (
                (self.retried, "retried"),
                (self.throttled, "throttled"),
                (self.paced, "paced"),
            )
            if n
        ]
        if extra:
            calls += f" ({', '.join(extra)})"
        state = "" if not self.done else " done" if self.ok else " failed"
        body = "; ".join(part for part in (done, calls) if part)
        return f"{PREFIX} {self.step}{state}: {body} — {self.seconds:.0f} s"


def _label(key: str, n: int) -> str:
    """ "records landed", or "record landed" for one."""
    label = LABELS.get(key, key)
    if n != 1:
        return label
    first, _, rest = label.partition(" ")
    return " ".join(part for part in (first.removesuffix("s"), rest) if part)


@dataclass
class StepProgress:
    """One step's running figures; thread-safe (target clients send from worker threads)."""

    step: str
    log: Callable[[str], None]
    every: float = DEFAULT_EVERY_SECONDS
    clock: Callable[[], float] = time.monotonic
    counts: dict[str, int] = field(default_factory=dict)
    run: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: list[Counter] = []
        self._started = self.clock()
        self._last_line = self._started

    def watch(self, counter: Counter) -> None:
        """Count this client's calls as the step's (once, however often it is handed in)."""
        with self._lock:
            if not any(c is counter for c in self._counters):
                self._counters.append(counter)

    def add(self, **counts: int) -> None:
        """More work done; logs a progress line when the last one is `every` seconds old."""
        with self._lock:
            for key, n in counts.items():
                self.counts[key] = self.counts.get(key, 0) + int(n)
            now = self.clock()
            due = now - self._last_line >= self.every
            if due:
                self._last_line = now
        if due:
            self.log(self.snapshot().line())

    def snapshot(self, *, done: bool = False, ok: bool = True) -> Snapshot:
        with self._lock:
            counters, counts = list(self._counters), dict(self.counts)
        return Snapshot(
            step=self.step,
            counts=counts,
            calls=sum(c.total for c in counters),
            retried=sum(c.retries for c in counters),
            throttled=sum(c.throttled for c in counters),
            paced=sum(c.throttled_waits for c in counters),
            seconds=self.clock() - self._started,
            done=done,
            ok=ok,
            run=self.run,
        )


# --- the step being worked on in this thread, and who listens ---------------------------------

_current: ContextVar[StepProgress | None] = ContextVar("memberflow_step_progress", default=None)
_listeners: list[Listener] = []
_active: list[StepProgress] = []
_registry_lock = threading.Lock()


class Listener(Protocol):
    def step_started(self, step: StepProgress) -> None: ...
    def step_finished(self, snapshot: Snapshot) -> None: ...
    def step_line(self, text: str) -> None: ...


def every_seconds() -> float:
    """How often a working step logs progress: MEMBERFLOW_PROGRESS_SECONDS, default 5."""
    try:
        return max(0.0, float(os.environ.get("MEMBERFLOW_PROGRESS_SECONDS", DEFAULT_EVERY_SECONDS)))
    except ValueError:
        return DEFAULT_EVERY_SECONDS


def note(**counts: int) -> None:
    """Work done by the current step (nothing when no step is reported, e.g. in a unit test)."""
    step = _current.get()
    if step is not None:
        step.add(**counts)


def watch_calls(counter: Counter) -> None:
    """A client's call counter, made while a step works: its calls are the step's."""
    step = _current.get()
    if step is not None:
        step.watch(counter)


def active() -> list[StepProgress]:
    """The steps working now in this process (for a live display)."""
    with _registry_lock:
        return list(_active)


@contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    """Tell `listener` about every step of this process while the block runs."""
    with _registry_lock:
        _listeners.append(listener)
    try:
        yield listener
    finally:
        with _registry_lock:
            _listeners.remove(listener)


def _each_listener() -> list[Listener]:
    with _registry_lock:
        return list(_listeners)


@contextmanager
def working(step: str, log: Callable[[str], None], run: str = "") -> Iterator[StepProgress]:
    """Report `step` while the block runs: progress lines to `log`, a last one when it ends."""

    def log_and_tell(text: str) -> None:
        log(text)
        for listener in _each_listener():
            listener.step_line(text)

    progress = StepProgress(step=step, log=log_and_tell, every=every_seconds(), run=run)
    token = _current.set(progress)
    with _registry_lock:
        _active.append(progress)
    for listener in _each_listener():
        listener.step_started(progress)
    ok = False
    try:
        yield progress
        ok = True
    finally:
        _current.reset(token)
        with _registry_lock:
            _active.remove(progress)
        final = progress.snapshot(done=True, ok=ok)
        log_and_tell(final.line())
        for listener in _each_listener():
            listener.step_finished(final)


def reported(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a Dagster asset's function (under `@dg.asset`): its step reports progress.

    The step is named by its asset key (`shop/customers_raw`); lines go to the run log at INFO.
    """

    @functools.wraps(fn)
    def wrapper(context: Any, *args: Any, **kwargs: Any) -> Any:
        with working(_step_name(context), context.log.info, run=context.run_id):
            return fn(context, *args, **kwargs)

    # Dagster reads the function's signature ~17 times per asset it declares; set once, each
    # read is a lookup instead of unwrapping `wrapper` again (issue 12: ~1,700 assets).
    wrapper.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return wrapper


def _step_name(context: Any) -> str:
    try:
        return context.asset_key.to_user_string()
    except Exception:  # not a single-asset step
        return str(getattr(context, "op_def", None) and context.op_def.name)
