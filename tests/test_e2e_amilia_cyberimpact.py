"""Amilia -> Cyberimpact end to end over real sockets (AC1-AC10)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import Harness

pytestmark = pytest.mark.e2e
NAME = "demo_amilia_cyberimpact"


def _cyber(harness: Harness) -> Any:
    return harness.sandbox.state.emulator("cyberimpact")


def test_first_sync(harness):
    harness.load(NAME)
    run = harness.backfill(NAME, days=730)
    assert run.success, run.failures
    print(run)
