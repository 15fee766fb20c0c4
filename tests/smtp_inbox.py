"""A plain SMTP server on a free local port (no TLS, no login) for tests that check mail: the
mailer's MEMBERFLOW_SMTP_* settings point at it while it runs."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def smtp_inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The messages the server received, in order (handed over on the server's own thread)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received: list[Any] = []

    class Inbox(Message):
        def handle_message(self, message):
            received.append(message)

    port = free_port()
    controller = Controller(Inbox(), hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("MEMBERFLOW_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("MEMBERFLOW_SMTP_PORT", str(port))
    try:
        yield received
    finally:
        controller.stop()
