"""SharedRateLimiter: sliding windows checked before each call, shared through one SQLite file by
every client and process of one credential; waits for short windows, refuses long ones."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from resources.rate_budget import BudgetExhausted, SharedRateLimiter, Window

WINDOWS = (
    Window("second", 5, 1.0, wait=True),
    Window("minute", 150, 60.0, wait=True),
    Window("hour", 1000, 3600.0, wait=False),
    Window("day", 5000, 86400.0, wait=False),
)


class FakeTime:
    """A wall clock that only moves when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def limiter(tmp_path, fake: FakeTime, credential: str = "tok-secret", margin: float = 0.0):
    return SharedRateLimiter(
        "teyca",
        credential,
        WINDOWS,
        directory=tmp_path,
        clock=fake.clock,
        sleep=fake.sleep,
        margin=margin,
    )


# pyrate-limiter stamps whole milliseconds and counts a stamp exactly one window old as still in
# the window, so a wait can be 1 ms longer than the window arithmetic says.
MS = 0.002


def logged(path) -> list[float]:
    """The stamps (seconds) in the shared file: pyrate-limiter's table, in milliseconds."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT item_timestamp FROM calls ORDER BY item_timestamp")
        return [row[0] / 1000 for row in rows]


def test_the_sixth_call_in_a_second_waits_for_room(tmp_path):
    fake = FakeTime()
    budget = limiter(tmp_path, fake)
    for _ in range(5):
        budget.acquire()
    assert fake.sleeps == []
    budget.acquire()
    assert fake.sleeps == [pytest.approx(1.0, abs=MS)]
    assert budget.spent == 6


def test_the_minute_window_waits_too(tmp_path):
    fake = FakeTime()
    budget = limiter(tmp_path, fake)
    for _ in range(150):
        budget.acquire()
        fake.now += 0.25  # 4/s: the second window never fills
    before = fake.now
    budget.acquire()
    assert fake.now - before == pytest.approx(60.0 - 150 * 0.25, abs=MS)
    times = logged(budget.path)
    assert all(sum(1 for t in times if s <= t < s + 60.0) <= 150 for s in times)


def test_the_margin_counts_each_window_a_little_longer(tmp_path):
    fake = FakeTime()
    budget = limiter(tmp_path, fake, margin=0.25)
    for _ in range(5):
        budget.acquire()
    budget.acquire()
    assert fake.sleeps == [pytest.approx(1.25, abs=MS)]


def test_an_hour_with_no_calls_left_is_refused_saying_when_it_frees(tmp_path):
    fake = FakeTime()
    budget = limiter(tmp_path, fake)
    for _ in range(1000):
        budget.acquire()
        fake.now += 0.5  # under 5/s and 150/min
    with pytest.raises(BudgetExhausted) as refused:
        budget.acquire()
    error = refused.value
    assert error.window.name == "hour"
    first = logged(budget.path)[0]
    frees = error.frees_at.timestamp()
    assert frees == pytest.approx(first + 3600.0, abs=MS)
    assert "1000 calls per hour" in str(error) and "UTC" in str(error)
    assert budget.spent == 1000
    assert len(logged(budget.path)) == 1000  # the refused call is not logged


def test_day_exhaustion_from_other_runs_is_refused(tmp_path):
    fake = FakeTime()
    budget = limiter(tmp_path, fake)
    budget.acquire()
    with sqlite3.connect(budget.path) as conn:  # 4999 calls by other runs over the last 23 hours
        conn.executemany(
            "INSERT INTO calls (name, item_timestamp) VALUES ('call', ?)",
            [(int((fake.now - 23 * 3600 + i * 16.0) * 1000),) for i in range(4999)],
        )
    fake.now += 1.0
    assert budget.budget().used == 5000 and budget.budget().left == 0
    with pytest.raises(BudgetExhausted) as refused:
        budget.acquire()
    assert refused.value.window.name == "day"
    frees = refused.value.frees_at.timestamp()
    assert frees == pytest.approx(fake.now - 1 - 23 * 3600 + 86400, abs=MS)


def test_old_calls_leave_the_log(tmp_path):
    fake = FakeTime()
    budget = limiter(tmp_path, fake)
    budget.acquire()
    fake.now += 86400.5
    budget.acquire()
    assert logged(budget.path) == [fake.now]
    assert budget.budget().used == 1


def test_the_file_is_keyed_by_a_hash_never_the_credential(tmp_path):
    fake = FakeTime()
    one = limiter(tmp_path, fake, credential="tok-secret")
    other = limiter(tmp_path, fake, credential="tok-other")
    one.acquire()
    assert "tok-secret" not in one.path.name and one.path != other.path
    assert other.budget().used == 0
    assert limiter(tmp_path, fake, credential="tok-secret").budget().used == 1  # shared


def _burst(directory: str, calls: int, start_at: float) -> None:
    # a roomy day window keeps every call in the log for the test to read
    windows = (Window("second", 5, 1.0, wait=True), Window("day", 1000, 86400.0, wait=False))
    budget = SharedRateLimiter("teyca", "tok-shared", windows, directory=Path(directory))
    time.sleep(max(0.0, start_at - time.time()))  # all processes begin together
    for _ in range(calls):
        budget.acquire()


def test_concurrent_processes_never_overshoot(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    started = time.time()
    start_at = started + 5.0  # after the spawned interpreters are up
    workers = [ctx.Process(target=_burst, args=(str(tmp_path), 4, start_at)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    (path,) = tmp_path.glob("*.sqlite")
    times = logged(path)
    assert len(times) == 12 and min(times) >= start_at - 0.001  # stamps are whole ms
    # every 1.25 s span (the window plus the default margin) holds at most 5 calls
    assert max(sum(1 for t in times if s <= t < s + 1.25) for s in times) <= 5
    assert max(times) - min(times) >= 2 * 1.25 - 0.01
