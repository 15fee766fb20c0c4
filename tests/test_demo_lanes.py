"""The demo runs each target list's integrations in a lane of their own: integrations that share
a list stay in one lane, in file order; its initial imports read a demo-sized window."""

from __future__ import annotations

from datetime import date
from types import SimpleNamespace

import pytest

from app.demo import DEMO_HISTORY_ENV, _lanes, history_window


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
