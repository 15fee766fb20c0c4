"""What a vendor emulator hands the sandbox, so a new vendor is its own module and no edit to the
app, the state or the credentials list.

A module `sandbox/<vendor>.py` that defines a module-level `EMULATOR = Emulator(...)` is found by
the sandbox at start (see `sandbox.app.discovered_emulators`), built over the generated data,
mounted under its own prefixes, and its demo credentials join `SANDBOX_ENV`. Its optional
`control_routes` (what a demo or a test uses to change vendor-side state, e.g. "this member
clicked unsubscribe") are mounted under `/_sandbox/<name>`. Tests reach its state as
`sandbox.state.emulator("<name>")`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute

from sandbox.generator import SandboxData


@dataclass(frozen=True)
class Emulator:
    """One vendor's emulator, described as data."""

    name: str  # a python identifier, e.g. "teyca"
    build: Callable[[SandboxData, bool], Any]  # (generated data, rate_limits on?) -> its state
    routes: Callable[[Any], list[BaseRoute]]  # state -> Mounts, each with its own full prefix
    credentials: Mapping[str, str] = field(default_factory=dict)  # env var name -> demo value
    summary: Callable[[Any], dict[str, Any]] | None = None  # state -> record counts
    # state -> routes relative to `/_sandbox/<name>` (POST /unsubscribe, ...), or none
    control_routes: Callable[[Any], list[BaseRoute]] | None = None
