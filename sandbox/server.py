"""Run the sandbox over a real socket, in a background thread (tests) or in the foreground (CLI).

Clients are tested over real HTTP, not in-process transports, so connection handling, headers and
URL building are exercised exactly as against the vendors.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import date
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from sandbox.app import SandboxState, build_app
from sandbox.faults import FaultInjector
from sandbox.generator import SandboxData, generate

log = logging.getLogger(__name__)


class SandboxServer:
    """Generated data + all emulators, served by uvicorn on `host:port` (0 = a free port)."""

    def __init__(
        self,
        seed: int = 42,
        customers: int = 300,
        days: int = 400,
        today: date | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        rate_limits: bool = True,
        token_lifetime: float | None = None,
        lean: bool = False,
    ) -> None:
        self.seed, self.customers, self.days, self.today = seed, customers, days, today
        self.lean = lean  # FlexPOS records made on demand (sandbox.flexpos_lean)
        self.host, self.port = host, port
        self.rate_limits, self.token_lifetime = rate_limits, token_lifetime
        self.state: SandboxState | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def build(self) -> SandboxState:
        """Generate the data and the emulator state (done by `start`)."""
        data = generate(self.seed, self.customers, self.days, self.today, lean=self.lean)
        self.state = SandboxState.from_data(data, self.rate_limits, self.token_lifetime)
        return self.state

    def bind(self) -> socket.socket:
        """Bind the listening socket ourselves, so port 0 yields a known free port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._socket = sock
        return sock

    def _uvicorn(self) -> uvicorn.Server:
        state = self.state or self.build()
        config = uvicorn.Config(
            build_app(state),
            log_level="warning",
            access_log=False,
            lifespan="off",
            date_header=False,  # each answer's Date is stamped as it goes (app.DateMiddleware)
        )
        self._server = uvicorn.Server(config)
        return self._server

    def start(self, timeout: float = 30.0) -> SandboxServer:
        """Serve in a daemon thread and return once `/_sandbox/health` answers."""
        server, sock = self._uvicorn(), self.bind()
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="sandbox-server", daemon=True
        )
        self._thread.start()
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/_sandbox/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self._thread is not None and not self._thread.is_alive():
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sandbox did not become healthy at {self.url}")

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (Ctrl+C)."""
        server, sock = self._uvicorn(), self.bind()
        log.info("sandbox serving at %s", self.url)
        server.run(sockets=[sock])

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for the thread; safe to call twice."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- access -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:54321`."""
        return f"http://{self.host}:{self.port}"

    def _state(self) -> SandboxState:
        if self.state is None:
            raise RuntimeError("sandbox not started")
        return self.state

    @property
    def data(self) -> SandboxData:
        return self._state().data

    @property
    def faults(self) -> FaultInjector:
        return self._state().faults

    def emulator(self, name: str) -> Any:
        """The state of a discovered emulator (`sandbox.emulator`), e.g. `emulator("teyca")`."""
        return self._state().emulator(name)

    def __getattr__(self, name: str) -> Any:
        """`server.<emulator name>` reads as `server.emulator(name)` (older tests use it)."""
        state = self.__dict__.get("state")
        if state is not None and name in state.states:
            return state.states[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def serve_forever(
    seed: int = 42,
    customers: int = 300,
    port: int = 8765,
    host: str = "127.0.0.1",
    rate_limits: bool = True,
    lean: bool = False,
) -> None:
    """Blocking entry point for the CLI: generate, then serve until interrupted."""
    SandboxServer(
        seed=seed, customers=customers, port=port, host=host, rate_limits=rate_limits, lean=lean
    ).serve_forever()
