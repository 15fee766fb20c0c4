"""The sandbox ASGI app: all emulators under one port, plus `/_sandbox` control routes.

One process and one port keep the demo and the end-to-end tests simple; each vendor lives under
its own prefix so the integration files point at `<url>/flexpos/pos`, `<url>/heyloyalty/...`,
`<url>/ticketmaster` exactly as they would at separate hosts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from sandbox.faults import FaultInjector, FaultMiddleware
from sandbox.flexpos import ATTRACTIONS, POS, PREFIXES, FlexposState
from sandbox.generator import SandboxData
from sandbox.heyloyalty import BI_PREFIX, LOYALTY_PREFIX, HeyloyaltyState
from sandbox.ticketmaster import PREFIX as TM_PREFIX
from sandbox.ticketmaster import TicketmasterState


@dataclass
class SandboxState:
    """Everything one running sandbox serves; tests reach the emulators through this."""

    data: SandboxData
    flexpos: FlexposState
    heyloyalty: HeyloyaltyState
    ticketmaster: TicketmasterState
    faults: FaultInjector

    @classmethod
    def from_data(
        cls, data: SandboxData, rate_limits: bool = True, token_lifetime: float = 3600
    ) -> SandboxState:
        """Build every emulator over `data`; `rate_limits=False` disables all limits."""
        return cls(
            data=data,
            flexpos=FlexposState(data, token_lifetime, 10 if rate_limits else None),
            heyloyalty=HeyloyaltyState(20 if rate_limits else None),
            ticketmaster=TicketmasterState(
                data, 5 if rate_limits else None, 5000 if rate_limits else None
            ),
            faults=FaultInjector(),
        )

    def summary(self) -> dict[str, Any]:
        """Record counts per emulator."""
        return {
            "seed": self.data.seed,
            "today": self.data.today.isoformat(),
            "flexpos": self.flexpos.counts(),
            "heyloyalty": self.heyloyalty.counts(),
            "ticketmaster": self.ticketmaster.counts(),
        }


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
    ]
    middleware = [Middleware(FaultMiddleware, injector=sandbox.faults)]
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
