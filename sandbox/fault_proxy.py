"""A seeded fault-injecting HTTP proxy between the vendor clients and the sandbox (issue 6).

The emulators' own FaultInjector answers *instead of* the app. The faults that lose or duplicate
data are the ones where the network fails *around* an app that did its work, so this proxy sits
on the wire: the clients' base URLs come from integration files that read
`${MEMBERFLOW_SANDBOX_URL:-...}`, so pointing that variable at `proxy.url` puts it in the path.

For each request it draws, with a seeded RNG, whether to inject a fault (probability `rate`) and
which one, among the kinds allowed for the request's path (`rules`: first rule whose substring is
in the path wins). Kinds, and whether the app acted:

| kind            | what the client sees                                   | app acted? |
|-----------------|--------------------------------------------------------|------------|
| `429`           | 429 with a small Retry-After                           | no         |
| `503` / `5xx`   | 503, or one of 500/502/504                             | no         |
| `reset_before`  | the connection reset before any answer                 | no         |
| `hang`          | no answer for `hang_seconds` (past the client timeout), then a close | no |
| `reset_after`   | the connection reset, the app's answer swallowed       | yes        |
| `cut_body`      | the app's headers and half its body, then a close      | yes        |
| `malformed`     | a 200 whose body is broken JSON                        | yes        |

"yes" kinds on a non-idempotent call (the BI event import) leave the client uncertain whether
the call took effect: tests give those kinds only to paths where resending is harmless, or check
that the client holds and reports such a batch instead of resending it.

Only loopback: it binds 127.0.0.1 on a free port and forwards to a loopback upstream. It runs an
asyncio loop in a daemon thread and stops with the test (context manager). It counts what it
injected by kind and path (`injected`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

ACTED = ("reset_after", "cut_body", "malformed")
NOT_ACTED = ("429", "503", "5xx", "reset_before", "hang")
ALL_KINDS = NOT_ACTED + ACTED
MAX_BODY = 64 * 1024 * 1024


@dataclass
class FaultRule:
    """Which fault kinds may hit requests whose path contains `path_contains` ("" = any)."""

    path_contains: str
    kinds: tuple[str, ...]


@dataclass
class _Request:
    method: str
    path: str
    head: bytes  # request line and headers, rewritten to close the upstream connection
    body: bytes


@dataclass
class FaultProxy:
    """The proxy; use as a context manager, read `url`, `injected` and `requests`."""

    upstream: str
    rate: float = 0.1
    seed: int = 0
    rules: list[FaultRule] = field(default_factory=lambda: [FaultRule("", ALL_KINDS)])
    retry_after: float = 0.2
    hang_seconds: float = 2.0
    host: str = "127.0.0.1"
    port: int = 0
    injected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, path) -> n
    requests: int = 0

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy only forwards to loopback, not {parts.hostname}")
        self._upstream = (parts.hostname, parts.port or 80)
        for rule in self.rules:
            unknown = set(rule.kinds) - set(ALL_KINDS)
            if unknown:
                raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {ALL_KINDS}")
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._enabled = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(sock, ready), name="fault-proxy", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @contextlib.contextmanager
    def quiet(self):
        """Forward everything unharmed inside the block (e.g. for a final check run)."""
        self._enabled = False
        try:
            yield self
        finally:
            self._enabled = True

    def count(self, kind: str | None = None, path_contains: str = "") -> int:
        """How many faults were injected, of one kind or all, on paths containing a substring."""
        with self._lock:
            return sum(
                n
                for (k, path), n in self.injected.items()
                if (kind is None or k == kind) and path_contains in path
            )

    # -- serving --------------------------------------------------------------------------------
    def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(
            asyncio.start_server(self._handle, sock=sock, limit=MAX_BODY)
        )
        ready.set()
        try:
            loop.run_forever()
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after another on the client's connection
                request = await _read_request(reader)
                if request is None:
                    break
                if not await self._answer(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the client connection was closed or reset."""
        kind = self._draw(request.path)
        if kind in ("429", "503", "5xx"):
            status = {"429": 429, "503": 503}.get(kind) or self._rng.choice((500, 502, 504))
            writer.write(
                _error_response(status, self.retry_after if status in (429, 503) else None)
            )
            await writer.drain()
            return True
        if kind == "reset_before":
            _reset(writer)
            return False
        if kind == "hang":
            await asyncio.sleep(self.hang_seconds)
            return False
        answer = await self._forward(request)
        if kind == "reset_after":
            _reset(writer)
            return False
        if kind == "cut_body":
            head, _, body = answer.partition(b"\r\n\r\n")
            writer.write(head + b"\r\n\r\n" + body[: max(1, len(body) // 2)])
            await writer.drain()
            return False
        if kind == "malformed":
            writer.write(_malformed_response())
            await writer.drain()
            return True
        writer.write(answer)
        await writer.drain()
        return True

    def _draw(self, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            if not self._enabled or path.startswith("/_sandbox"):
                return None
            kinds = next((r.kinds for r in self.rules if r.path_contains in path), ())
            roll = self._rng.random()
            if not kinds or roll >= self.rate:
                return None
            kind = self._rng.choice(kinds)
            self.injected[(kind, path)] += 1
            return kind

    async def _forward(self, request: _Request) -> bytes:
        """Send the request upstream on a fresh connection and read the whole answer."""
        reader, writer = await asyncio.open_connection(*self._upstream, limit=MAX_BODY)
        try:
            writer.write(request.head + request.body)
            await writer.drain()
            return await _read_response(reader)
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
    names = {name.strip().lower(): value.strip() for name, value in headers}
    if "chunked" in names.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
        headers = [h for h in headers if h[0].strip().lower() != "transfer-encoding"]
        headers.append(["Content-Length", str(len(body))])
    else:
        body = await reader.readexactly(int(names.get("content-length", "0")))
    kept = [f"{n.strip()}: {v.strip()}" for n, v in headers if n.strip().lower() != "connection"]
    rewritten = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
    return _Request(method=method, path=path.split("?", 1)[0], head=rewritten, body=body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """The upstream's answer re-framed with a Content-Length, for the client's keep-alive."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
    names = {name.strip().lower(): value.strip() for name, value in headers}
    if "chunked" in names.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in names:
        body = await reader.readexactly(int(names["content-length"]))
    else:
        body = await reader.read()
    drop = {"connection", "transfer-encoding", "content-length", "keep-alive"}
    kept = [f"{n.strip()}: {v.strip()}" for n, v in headers if n.strip().lower() not in drop]
    framing = [f"Content-Length: {len(body)}", "Connection: keep-alive"]
    return "\r\n".join([lines[0], *kept, *framing, "", ""]).encode("latin-1") + body


def _error_response(status: int, retry_after: float | None) -> bytes:
    reason = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway"}
    reason |= {503: "Service Unavailable", 504: "Gateway Timeout"}
    body = f'{{"error": "injected fault", "status": {status}}}'.encode()
    headers = [
        f"HTTP/1.1 {status} {reason[status]}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if retry_after is not None:
        headers.append(f"Retry-After: {retry_after:g}")
    return "\r\n".join([*headers, "", ""]).encode() + body


def _malformed_response() -> bytes:
    body = b'{"status": "success", "imported": 3, "fail'
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    return "\r\n".join([*head, "", ""]).encode() + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) rather than a clean FIN, as a dropped link does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
