"""The sandbox ASGI app: all emulators under one port, plus `/_sandbox` control routes.

One process and one port keep the demo and the end-to-end tests simple; each vendor lives under
its own prefix so the integration files point at `<url>/flexpos/pos`, `<url>/heyloyalty/...`,
`<url>/ticketmaster` exactly as they would at separate hosts. The vendors are not listed here:
every `sandbox/<vendor>.py` with an `EMULATOR` is found at start (`sandbox.emulator`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from types import ModuleType
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from sandbox.emulator import Emulator
from sandbox.faults import FaultInjector, FaultMiddleware
from sandbox.generator import SandboxData


def discover_emulators(package: ModuleType) -> dict[str, Emulator]:
    """Every `EMULATOR` defined at module level in `package`'s modules, by emulator name.

    Each module is imported, so a broken vendor module fails the sandbox's start with its own
    ImportError instead of silently missing from it; two emulators with one name are an error.
    """
    found: dict[str, Emulator] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        emulator = getattr(module, "EMULATOR", None)
        if not isinstance(emulator, Emulator):
            continue
        if emulator.name in found:
            raise ValueError(
                f"two sandbox emulators are named {emulator.name!r} ({module.__name__} and another)"
            )
        found[emulator.name] = emulator
    return found


def discovered_emulators() -> dict[str, Emulator]:
    """The emulators of the `sandbox` package (see `sandbox.emulator`)."""
    return discover_emulators(importlib.import_module("sandbox"))


@dataclass
class SandboxState:
    """Everything one running sandbox serves; tests reach the emulators through this."""

    data: SandboxData
    faults: FaultInjector
    specs: dict[str, Emulator] = field(default_factory=dict)  # discovered emulators, by name
    states: dict[str, Any] = field(default_factory=dict)  # their built states, by name

    @classmethod
    def from_data(
        cls,
        data: SandboxData,
        rate_limits: bool = True,
        token_lifetime: float | None = None,
        emulators: Mapping[str, Emulator] | None = None,
    ) -> SandboxState:
        """Build every emulator over `data`; `rate_limits=False` disables all limits.

        `token_lifetime` (seconds) overrides the lifetime of the bearer tokens of every emulator
        that issues expiring ones (its state has a `token_lifetime`), for tests of a client's
        refresh. `emulators` defaults to the discovered ones; tests pass their own.
        """
        specs = dict(discovered_emulators() if emulators is None else emulators)
        states = {name: spec.build(data, rate_limits) for name, spec in specs.items()}
        if token_lifetime is not None:
            for state in states.values():
                if hasattr(state, "token_lifetime"):
                    state.token_lifetime = token_lifetime
        return cls(data=data, faults=FaultInjector(), specs=specs, states=states)

    def emulator(self, name: str) -> Any:
        """The state of the discovered emulator `name` (e.g. "teyca")."""
        try:
            return self.states[name]
        except KeyError:
            known = ", ".join(sorted(self.states)) or "none"
            raise KeyError(f"no sandbox emulator named {name!r} (found: {known})") from None

    def __getattr__(self, name: str) -> Any:
        """`state.<emulator name>` reads as `state.emulator(name)` (older tests use it)."""
        states = self.__dict__.get("states") or {}
        if name in states:
            return states[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def summary(self) -> dict[str, Any]:
        """Record counts per emulator."""
        result: dict[str, Any] = {"seed": self.data.seed, "today": self.data.today.isoformat()}
        for name, spec in self.specs.items():
            result[name] = spec.summary(self.states[name]) if spec.summary else {}
        return result

    def discovered_routes(self) -> list[BaseRoute]:
        """The routes of every discovered emulator, each under its own prefix."""
        return [
            route for name, spec in self.specs.items() for route in spec.routes(self.states[name])
        ]

    def control_routes(self) -> list[BaseRoute]:
        """Each emulator's control routes, under `/_sandbox/<name>`."""
        return [
            Mount(f"/_sandbox/{name}", routes=spec.control_routes(self.states[name]))
            for name, spec in self.specs.items()
            if spec.control_routes is not None
        ]


def build_app(sandbox: SandboxState) -> Starlette:
    """The Starlette app serving every emulator and the control routes."""
    control = _Control(sandbox)
    routes = [
        Route("/_sandbox/health", control.health, methods=["GET"]),
        Route("/_sandbox/summary", control.summary, methods=["GET"]),
        *sandbox.control_routes(),
        *sandbox.discovered_routes(),
    ]
    middleware = [
        Middleware(DateMiddleware),
        Middleware(FaultMiddleware, injector=sandbox.faults),  # in front of every route
    ]
    return Starlette(routes=routes, middleware=middleware)


class DateMiddleware:
    """A `Date` header stamped as each answer goes out (RFC 9110 6.6.1), as a real server's
    is, unless the emulator set its own (the Heyloyalty list's clock may run ahead or behind).

    The sandbox serves with uvicorn's own `Date` turned off (`date_header=False`): uvicorn stamps
    it once a second from its event loop, so behind a busy handler it lags by seconds, and a
    client that reads the server's clock from it (resources/http.py) would think the list's clock
    seconds behind the truth: safe, but every changed-since read would start seconds early."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def stamped(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"date" for name, _ in headers):
                    headers.append((b"date", formatdate(usegmt=True).encode("latin-1")))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, stamped)


class _Control:
    """`/_sandbox/health` and `/_sandbox/summary`; the vendor-side changes are each emulator's
    `control_routes`."""

    def __init__(self, sandbox: SandboxState) -> None:
        self.sandbox = sandbox

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def summary(self, request: Request) -> Response:
        return JSONResponse(self.sandbox.summary())
