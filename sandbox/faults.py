"""Fault injection shared by all emulators.

Tests arm a fault ("the next 2 requests to /journals answer 503") to prove the clients retry,
honour Retry-After and fail loudly on 4xx, without each emulator growing its own switches.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
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


@dataclass
class AfterHook:
    """One armed hook: call `callback(path)` once the app has handled a matching request and
    produced its answer, before the answer's last byte leaves (crash tests kill the client here:
    the app acted, the client never learns it)."""

    path_contains: str
    callback: Callable[[str], None]
    times: int
    method: str | None = None
    skip: int = 0  # let this many matching requests through first
    fired: int = field(default=0)


class FaultInjector:
    """Thread-safe registry of armed faults, consulted before any emulator handles a request."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._hooks: list[AfterHook] = []
        self._lock = threading.Lock()
        self.fired: list[tuple[str, int]] = []

    def after_answer(
        self,
        path_contains: str,
        callback: Callable[[str], None],
        times: int = 1,
        method: str | None = None,
        skip: int = 0,
    ) -> AfterHook:
        """Call `callback` after the app answered the next `times` matching requests (after
        `skip` of them), just before the answer completes on the wire."""
        hook = AfterHook(path_contains, callback, times, method, skip)
        with self._lock:
            self._hooks.append(hook)
        return hook

    def take_hook(self, path: str, method: str) -> AfterHook | None:
        """Consume one shot of the first armed hook matching this request, if any."""
        with self._lock:
            for hook in self._hooks:
                if hook.path_contains not in path or hook.method not in (None, method):
                    continue
                if hook.skip > 0:
                    hook.skip -= 1
                    return None
                hook.times -= 1
                hook.fired += 1
                if hook.times <= 0:
                    self._hooks.remove(hook)
                return hook
        return None

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
            self._hooks.clear()
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
            hook = None
            if scope["type"] == "http":
                hook = self.injector.take_hook(scope["path"], scope.get("method", ""))
            await self.app(scope, receive, send if hook is None else _calling(hook, scope, send))
            return
        body = json.dumps(fault.body or {"error": "injected fault", "status": fault.status})
        headers = [(b"content-type", b"application/json")]
        if fault.retry_after is not None:
            headers.append((b"retry-after", _retry_after(fault.retry_after).encode()))
        await send({"type": "http.response.start", "status": fault.status, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})


def _calling(hook: AfterHook, scope: Scope, send: Send) -> Send:
    """`send` that calls the hook when the app hands over its answer's last body message."""

    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            hook.callback(scope["path"])
        await send(message)

    return wrapped


def _retry_after(seconds: float) -> str:
    """Integral seconds are sent as such; fractions are kept so tests can stay fast."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
