"""resources/pacing.py: every client waits here before a call (pyrate-limiter's buckets under
memberflow's policy): short windows sleep, long ones refuse, held slots count calls in flight,
one pace per credential in a process, and the waits reach the run's CallCounter."""

from __future__ import annotations

import logging
import threading

import httpx
import pytest

from resources.base import CallCounter
from resources.http import VendorHttp
from resources.pacing import (
    BudgetExhausted,
    Pace,
    Window,
    per_second,
    requests_per_second_pace,
    shared_pace,
)

MS = 0.002  # stamps are whole milliseconds; a stamp one window old still counts (+1 ms)


class FakeTime:
    """A clock that only moves when the pace sleeps."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_full_second_sleeps_and_the_wait_is_counted():
    fake = FakeTime()
    pace = Pace("v", per_second(3), clock=fake, sleep=fake.sleep, margin=0)
    calls = CallCounter()
    for _ in range(3):
        assert pace.acquire(calls) == 0
    assert pace.acquire(calls) == pytest.approx(1.0, abs=MS)
    assert calls.throttled_waits == 1 and calls.throttled_seconds == pytest.approx(1.0, abs=MS)
    assert calls.pacing() == {"throttled_waits": 1, "throttled_seconds": calls.throttled_seconds}
    assert calls.throttled == 0  # a 429 is another figure: none came


def test_a_long_window_refuses_saying_when_it_frees_and_counts_nothing(tmp_path):
    fake = FakeTime()
    windows = [Window("second", 2, 1.0), Window("day", 3, 86400.0, wait=False)]
    pace = Pace("v", windows, path=tmp_path / "v.sqlite", clock=fake, sleep=fake.sleep, margin=0)
    for _ in range(3):
        pace.acquire()
        fake.now += 10
    with pytest.raises(BudgetExhausted) as refused:
        pace.acquire()
    assert refused.value.window.name == "day" and refused.value.status == 429
    first = fake.now - 30
    assert refused.value.frees_at.timestamp() == pytest.approx(first + 86400, abs=MS)
    assert pace.budget().used == 3 and pace.budget().left == 0 and fake.sleeps == []


def test_a_margin_counts_each_window_longer():
    fake = FakeTime()
    pace = Pace("v", per_second(2), clock=fake, sleep=fake.sleep, margin=0.25)
    pace.acquire(), pace.acquire(), pace.acquire()
    assert fake.sleeps == [pytest.approx(1.25, abs=MS)]


def test_windows_another_implies_are_dropped():
    day = Window("day", 5000, 86400.0, wait=False)
    assert Pace("v", [Window("second", 9000, 1.0), day]).windows == (day,)
    second = Window("second", 5, 1.0)
    assert Pace("v", [second, Window("minute", 400, 60.0)]).windows == (second,)
    with pytest.raises(ValueError, match="more calls a second"):
        Pace("v", [second, Window("odd", 6, 1.1)])


def test_fractional_rates_become_one_call_per_interval():
    assert per_second(0.5) == (Window("second", 1, 2.0),)
    assert per_second(2.5) == (Window("second", 2, 0.8),)
    with pytest.raises(ValueError):
        per_second(0)


def test_a_held_slot_frees_one_window_after_the_answer_not_the_send():
    fake = FakeTime(0.0)
    pace = Pace("v", [Window("second", 1, 1.0)], hold=True, clock=fake, sleep=fake.sleep, margin=0)
    pace.acquire()
    fake.now = 3.0  # a slow answer: the slot was held all along
    pace.release()
    fake.now = 3.5
    pace.acquire()
    assert fake.now == pytest.approx(4.0, abs=MS)


def test_one_pace_per_credential_and_rate_in_a_process_and_no_secret_in_its_file(tmp_path):
    one = shared_pace("v", "secret-1", per_second(5), directory=tmp_path)
    assert shared_pace("v", "secret-1", per_second(5), directory=tmp_path) is one
    assert shared_pace("v", "secret-2", per_second(5), directory=tmp_path) is not one
    assert one.path is None  # a second-long window lives in memory
    day = shared_pace("v", "secret-1", [Window("day", 10, 86400.0, wait=False)], directory=tmp_path)
    assert day.path is not None and day.path.parent == tmp_path and "secret" not in day.path.name
    assert requests_per_second_pace("v", "secret-1", 0) is None
    assert requests_per_second_pace("v", "secret-1", None) is None


def test_threads_share_the_pace():
    pace = Pace("v", per_second(1000))  # real time, roomy: just no lost or doubled counts
    done: list[float] = []

    def work() -> None:
        for _ in range(50):
            done.append(pace.acquire())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(done) == 200 and pace.used(Window("all", 1, 60.0)) == 200


def test_vendor_http_waits_before_every_try_and_logs_a_long_wait(caplog):
    fake = FakeTime()
    pace = Pace("v", per_second(2), clock=fake, sleep=fake.sleep, margin=0)
    answers = [httpx.Response(503), httpx.Response(200, json={}), httpx.Response(200, json={})]
    http = VendorHttp(
        vendor="v",
        transport=httpx.MockTransport(lambda request: answers.pop(0)),
        sleep=lambda _: None,
        pace=pace,
    )
    with caplog.at_level(logging.INFO, logger="resources.http"):  # its child logs the waits
        http.get_json("http://v.example/a", endpoint="a")  # two tries: 503, then 200
        http.get_json("http://v.example/a", endpoint="a")  # the third call in one second
    assert http.calls.total == 3 and http.calls.retries == 1
    assert http.calls.throttled_waits == 1 and fake.sleeps == [pytest.approx(1.0, abs=MS)]
    assert "waited 1.0 s" in caplog.text and "2/second" in caplog.text


def test_sections_default_to_the_vendor_limit_and_zero_turns_pacing_off():
    from resources.flexpos import REQUESTS_PER_SECOND, FlexPOSSource

    raw = {
        "kind": "flexpos",
        "pos_base_url": "http://127.0.0.1:9/flexpos/pos",
        "client_id_env": "FP_ID",
        "client_secret_env": "FP_SECRET",
    }
    assert FlexPOSSource.model_validate(raw).requests_per_second == REQUESTS_PER_SECOND == 10
    off = FlexPOSSource.model_validate({**raw, "requests_per_second": 0})
    assert off.resource().requests_per_second == 0
    with pytest.raises(ValueError):
        FlexPOSSource.model_validate({**raw, "requests_per_second": -1})


def test_memberflow_pacing_off_turns_per_second_paces_off(monkeypatch):
    from resources.pacing import requests_per_second_pace

    assert requests_per_second_pace("demo", "key-1", 20) is not None
    monkeypatch.setenv("MEMBERFLOW_PACING", "off")
    assert requests_per_second_pace("demo", "key-1", 20) is None
