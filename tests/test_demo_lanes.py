"""The demo runs each target list's integrations in a lane of their own: integrations that share
a list stay in one lane, in file order."""

from __future__ import annotations

from types import SimpleNamespace

from app.demo import _lanes


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
