"""The sandbox ASGI app: all emulators under one port, plus `/_sandbox` control routes.

One process and one port keep the demo and the end-to-end tests simple; each vendor lives under
its own prefix so the integration files point at `<url>/flexpos/pos`, `<url>/heyloyalty/...`,
`<url>/ticketmaster` exactly as they would at separate hosts.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from sandbox.emulator import Emulator
from sandbox.faults import FaultInjector, FaultMiddleware
from sandbox.flexpos import ATTRACTIONS, POS, PREFIXES, FlexposState
from sandbox.generator import SandboxData
from sandbox.heyloyalty import BI_PREFIX, LOYALTY_PREFIX, HeyloyaltyState
from sandbox.ticketmaster import PREFIX as TM_PREFIX
from sandbox.ticketmaster import TicketmasterState


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
    flexpos: FlexposState
    heyloyalty: HeyloyaltyState
    ticketmaster: TicketmasterState
    faults: FaultInjector
    specs: dict[str, Emulator] = field(default_factory=dict)  # discovered emulators, by name
    states: dict[str, Any] = field(default_factory=dict)  # their built states, by name

    @classmethod
    def from_data(
        cls,
        data: SandboxData,
        rate_limits: bool = True,
        token_lifetime: float = 3600,
        emulators: Mapping[str, Emulator] | None = None,
    ) -> SandboxState:
        """Build every emulator over `data`; `rate_limits=False` disables all limits.

        `emulators` defaults to the discovered ones; tests pass their own.
        """
        specs = dict(discovered_emulators() if emulators is None else emulators)
        return cls(
            data=data,
            flexpos=FlexposState(data, token_lifetime, 10 if rate_limits else None),
            heyloyalty=HeyloyaltyState(20 if rate_limits else None),
            ticketmaster=TicketmasterState(
                data, 5 if rate_limits else None, 5000 if rate_limits else None
            ),
            faults=FaultInjector(),
            specs=specs,
            states={name: spec.build(data, rate_limits) for name, spec in specs.items()},
        )

    def emulator(self, name: str) -> Any:
        """The state of the discovered emulator `name` (e.g. "teyca")."""
        try:
            return self.states[name]
        except KeyError:
            known = ", ".join(sorted(self.states)) or "none"
            raise KeyError(f"no sandbox emulator named {name!r} (found: {known})") from None

    def summary(self) -> dict[str, Any]:
        """Record counts per emulator."""
        result: dict[str, Any] = {
            "seed": self.data.seed,
            "today": self.data.today.isoformat(),
            "flexpos": self.flexpos.counts(),
            "heyloyalty": self.heyloyalty.counts(),
            "ticketmaster": self.ticketmaster.counts(),
        }
        for name, spec in self.specs.items():
            result[name] = spec.summary(self.states[name]) if spec.summary else {}
        return result

    def discovered_routes(self) -> list[BaseRoute]:
        """The routes of every discovered emulator, each under its own prefix."""
        return [
            route for name, spec in self.specs.items() for route in spec.routes(self.states[name])
        ]


def build_app(sandbox: SandboxState) -> Starlette:
    """The Starlette app serving every emulator and the control routes."""
    control = _Control(sandbox)
    routes = [
        Mount(PREFIXES[POS], routes=sandbox.flexpos.routes(POS)),
        Mount(PREFIXES[ATTRACTIONS], routes=sandbox.flexpos.routes(ATTRACTIONS)),
        Mount(LOYALTY_PREFIX, routes=sandbox.heyloyalty.routes()),
        Mount(BI_PREFIX, routes=sandbox.heyloyalty.bi_routes()),
        Mount(TM_PREFIX, routes=sandbox.ticketmaster.routes()),
        Route("/_sandbox/health", control.health, methods=["GET"]),
        Route("/_sandbox/summary", control.summary, methods=["GET"]),
        Route("/_sandbox/heyloyalty/unsubscribe", control.unsubscribe, methods=["POST"]),
        Route("/_sandbox/ticketmaster/withdraw-consent", control.withdraw, methods=["POST"]),
        Route("/_sandbox/flexpos/customers", control.upsert_customer, methods=["POST"]),
        *sandbox.discovered_routes(),
    ]
    middleware = [Middleware(FaultMiddleware, injector=sandbox.faults)]  # in front of every route
    return Starlette(routes=routes, middleware=middleware)


class _Control:
    """`/_sandbox/*`: lets a demo or a test change vendor-side state over HTTP."""

    def __init__(self, sandbox: SandboxState) -> None:
        self.sandbox = sandbox

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def summary(self, request: Request) -> Response:
        return JSONResponse(self.sandbox.summary())

    async def unsubscribe(self, request: Request) -> Response:
        body = await _json(request)
        try:
            member = self.sandbox.heyloyalty.unsubscribe(
                int(body["list_id"]), email=body.get("email"), mobile=body.get("mobile")
            )
        except (KeyError, ValueError, TypeError) as error:
            return JSONResponse({"error": str(error)}, 404)
        return JSONResponse(member)

    async def withdraw(self, request: Request) -> Response:
        body = await _json(request)
        try:
            customer = self.sandbox.ticketmaster.withdraw_consent(str(body["customer_id"]))
        except KeyError as error:
            return JSONResponse({"error": f"unknown customer {error}"}, 404)
        return JSONResponse(customer)

    async def upsert_customer(self, request: Request) -> Response:
        body = await _json(request)
        return JSONResponse(self.sandbox.flexpos.upsert_customer(body))


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
