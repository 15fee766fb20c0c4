"""Outgoing webhooks of the emulators that push changes (Teyca, Amilia): each delivery in its own
thread, POSTed until the receiver accepts it or the vendor's retry schedule runs out.

What differs per vendor (body, signature or secret header, what counts as accepted, what happens
after the last try) stays in the emulator; the sending loop, the loopback guard, the retry
settings read from the environment and the wait for deliveries live here once.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx


class Delivery(Protocol):
    """What the sender records on a vendor's delivery object."""

    url: str
    attempts: list[int | str]  # status codes, or transport error names
    outcome: str  # pending | delivered | failed | skipped (not a loopback host)


class WebhookSender:
    """Sends deliveries in threads with `retry_delays` between tries; `sleep` may be a test clock.

    No proxy from the environment is used (`trust_env=False`): the sandbox delivers to a receiver
    on this machine, as the vendor would to the receiver's public address. With `loopback_only`
    (the default), a delivery to any other host is skipped: the sandbox never posts outward.
    """

    def __init__(self, retry_delays: tuple[float, ...], name: str) -> None:
        self.retry_delays = retry_delays
        self.loopback_only = True
        self.sleep: Callable[[float], None] = time.sleep
        self._name = name
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(
        self,
        delivery: Delivery,
        post: Callable[[httpx.Client], httpx.Response],
        accepted: Callable[[int], bool],
        gave_up: Callable[[], None] | None = None,
    ) -> None:
        """Deliver in a new thread: `post` sends one try; `gave_up` runs after the last one."""
        thread = threading.Thread(
            target=self._deliver,
            args=(delivery, post, accepted, gave_up),
            name=f"{self._name}-webhook",
            daemon=True,
        )
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def wait(self, timeout: float = 10.0) -> None:
        """Wait until every started delivery has finished (delivered, failed or skipped)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]

    def _deliver(
        self,
        delivery: Delivery,
        post: Callable[[httpx.Client], httpx.Response],
        accepted: Callable[[int], bool],
        gave_up: Callable[[], None] | None,
    ) -> None:
        if self.loopback_only and not is_loopback(delivery.url):
            delivery.outcome = "skipped"
            return
        delays = list(self.retry_delays)
        with httpx.Client(timeout=10, trust_env=False) as http:
            while True:
                try:
                    answer = post(http)
                    delivery.attempts.append(answer.status_code)
                    if accepted(answer.status_code):
                        delivery.outcome = "delivered"
                        return
                except httpx.HTTPError as error:
                    delivery.attempts.append(type(error).__name__)
                if not delays:
                    delivery.outcome = "failed"
                    if gave_up is not None:
                        gave_up()
                    return
                self.sleep(delays.pop(0))


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configure(
    sender: WebhookSender, env: Mapping[str, str], retry_env: str, secret_env: str
) -> str | None:
    """Apply the retry delays named `retry_env` (seconds, comma-separated) from `env` to `sender`;
    return the webhook secret named `secret_env` when set (None: keep the demo one)."""
    delays = env.get(retry_env, "").strip()
    if delays:
        try:
            parsed = tuple(float(part) for part in delays.split(","))
        except ValueError:
            raise ValueError(
                f"{retry_env} must be seconds separated by commas, got {delays!r}"
            ) from None
        if any(d < 0 for d in parsed):
            raise ValueError(f"{retry_env} must not be negative, got {delays!r}")
        sender.retry_delays = parsed
    return env.get(secret_env, "").strip() or None


class PushesWebhooks:
    """For an emulator state with a `webhooks` sender and a `deliveries` list: the settings
    tests change on a built state (`retry_delays`, `loopback_only`, `sleep`) and the wait for
    deliveries."""

    webhooks: WebhookSender
    deliveries: list[Any]

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return self.webhooks.retry_delays

    @retry_delays.setter
    def retry_delays(self, value: tuple[float, ...]) -> None:
        self.webhooks.retry_delays = value

    @property
    def loopback_only(self) -> bool:
        return self.webhooks.loopback_only

    @loopback_only.setter
    def loopback_only(self, value: bool) -> None:
        self.webhooks.loopback_only = value

    @property
    def sleep(self) -> Callable[[float], None]:
        return self.webhooks.sleep

    @sleep.setter
    def sleep(self, value: Callable[[float], None]) -> None:
        self.webhooks.sleep = value

    def wait_for_deliveries(self, timeout: float = 10.0) -> list[Any]:
        """Wait until every started delivery has finished (delivered, failed or skipped)."""
        self.webhooks.wait(timeout)
        return list(self.deliveries)
