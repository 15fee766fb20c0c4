"""Fault injection shared by all emulators.

Tests arm a fault ("the next 2 requests to /journals answer 503") to prove the clients retry,
honour Retry-After and fail loudly on 4xx, without each emulator growing its own switches.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass
class Fault:
    """One armed fault: answer `status` to the next `times` matching requests."""

    path_contains: str
    status: int
    times: int
    retry_after: float | None = None
    body: dict[str, Any] | None = None
    fired: int = field(default=0)


class FaultInjector:
    """Thread-safe registry of armed faults, consulted before any emulator handles a request."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.fired: list[tuple[str, int]] = []

    def add(
        self,
        path_contains: str,
        status: int,
        times: int = 1,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> Fault:
        """Arm a fault for the next `times` requests whose path contains `path_contains`."""
        fault = Fault(path_contains, status, times, retry_after, body)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Disarm every fault and forget what fired."""
        with self._lock:
            self._faults.clear()
            self.fired.clear()

    def take(self, path: str) -> Fault | None:
        """Consume one shot of the first armed fault matching `path`, if any."""
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.path_contains in path:
                    fault.times -= 1
                    fault.fired += 1
                    self.fired.append((path, fault.status))
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None


class FaultMiddleware:
    """ASGI middleware that answers armed faults before routing reaches an emulator."""

    def __init__(self, app: ASGIApp, injector: FaultInjector) -> None:
        self.app = app
        self.injector = injector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fault = self.injector.take(scope["path"]) if scope["type"] == "http" else None
        if fault is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps(fault.body or {"error": "injected fault", "status": fault.status})
        headers = [(b"content-type", b"application/json")]
        if fault.retry_after is not None:
            headers.append((b"retry-after", _retry_after(fault.retry_after).encode()))
        await send({"type": "http.response.start", "status": fault.status, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})


def _retry_after(seconds: float) -> str:
    """Integral seconds are sent as such; fractions are kept so tests can stay fast."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
