"""Teyca webhook delivery (TY-A5) against a real receiver: an ASGI app served by uvicorn on a
local port that checks the `Authorization` secret and stores each event before answering 2xx.

Hooks are registered through the API (`POST /v1/{token}/webhook {type, url}`), the secret and
the retry delays come from the sandbox's environment at start, as a demo sets them."""

from __future__ import annotations

import hmac
import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.credentials import SANDBOX_ENV
from sandbox.server import SandboxServer
from sandbox.teyca import (
    RETRY_DELAYS,
    RETRY_DELAYS_ENV,
    SECRET_ENV,
    TeycaState,
    configure_webhooks,
    seeded_state,
)

SECRET = "a-secret-only-this-test-knows"


class AsgiReceiver:
    """A webhook receiver like `memberflow receiver`: 401 on a wrong secret, 503 while told to
    be unavailable, else the event is stored and then answered with 200."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.unavailable = 0  # answer 503 to this many deliveries first
        self.stored: list[dict[str, Any]] = []
        self.answers: list[int] = []
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/hooks/teyca", self._receive, methods=["POST"])])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/hooks/teyca"
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    async def _receive(self, request: Request) -> Response:
        sent = request.headers.get("authorization", "")
        body = await request.body()
        with self._lock:
            if not hmac.compare_digest(sent.encode(), self.secret.encode()):
                status = 401
            elif self.unavailable > 0:
                self.unavailable -= 1
                status = 503
            else:
                self.stored.append(json.loads(body))  # stored before the 2xx goes out
                status = 200
            self.answers.append(status)
        return JSONResponse({"status": status}, status)

    def __enter__(self) -> AsgiReceiver:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self._server.started, "receiver did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


@pytest.fixture(scope="module")
def sandbox():
    """A sandbox started with the secret and test-speed retries in its environment."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(SECRET_ENV, SECRET)
        env.setenv(RETRY_DELAYS_ENV, "0.02,0.02,0.02")
        with SandboxServer(seed=11, customers=40, days=30, rate_limits=False) as server:
            yield server


@pytest.fixture
def teyca(sandbox) -> TeycaState:
    state = sandbox.emulator("teyca")
    yield state
    state.wait_for_deliveries()
    state.hooks.clear()


@pytest.fixture
def api(sandbox):
    """The API under a fresh path token (TY-A1)."""
    key = {"Authorization": SANDBOX_ENV["TEYCA_API_KEY"]}
    with httpx.Client(base_url=f"{sandbox.url}/teyca/v1", headers=key, timeout=10) as http:
        made = http.post("/authorization", json={"identifier": f"hooks-{time.monotonic_ns()}"})
        assert made.status_code == 200
        http.base_url = f"{sandbox.url}/teyca/v1/{made.json()['token']}"
        yield http


def register(api: httpx.Client, url: str, *types: str) -> None:
    for hook_type in types:
        made = api.post("/webhook", json={"type": hook_type, "url": url})
        assert made.status_code == 200, made.text


def test_the_sandbox_takes_secret_and_retry_delays_from_its_environment(teyca):
    assert teyca.webhook_secret == SECRET
    assert teyca.retry_delays == (0.02, 0.02, 0.02)


def test_card_changes_reach_the_receiver_with_the_secret(api, teyca):
    with AsgiReceiver(SECRET) as receiver:
        register(api, receiver.url, "CREATE", "UPDATE", "DELETE")
        start = len(teyca.deliveries)
        card = teyca.register_card({"template": "Основная карта", "first_name": "Ольга"})
        teyca.wait_for_deliveries()
        teyca.change_card(card["user_id"], {"bonus": "150", "o_s": "android"})
        teyca.wait_for_deliveries()
        teyca.remove_card(card["user_id"])
        deliveries = teyca.wait_for_deliveries()[start:]
    assert [(d.type, d.outcome, d.attempts) for d in deliveries] == [
        ("CREATE", "delivered", [200]),
        ("UPDATE", "delivered", [200]),
        ("DELETE", "delivered", [200]),
    ]
    assert [(e["type"], e["pass"]["user_id"]) for e in receiver.stored] == [
        ("CREATE", card["user_id"]),
        ("UPDATE", card["user_id"]),
        ("DELETE", card["user_id"]),
    ]
    assert receiver.stored[0]["pass"]["first_name"] == "Ольга"
    assert receiver.stored[1]["pass"]["bonus"] == "150"  # the balance after the change


def test_only_hooks_of_the_event_type_are_called(api, teyca):
    with AsgiReceiver(SECRET) as receiver:
        register(api, receiver.url, "DELETE")
        card = teyca.register_card({"template": "Макет1"})
        teyca.change_card(card["user_id"], {"bonus": "1"})
        teyca.remove_card(card["user_id"])
        teyca.wait_for_deliveries()
    assert [e["type"] for e in receiver.stored] == ["DELETE"]


def test_a_receiver_that_is_down_gets_the_event_on_a_retry(api, teyca):
    with AsgiReceiver(SECRET) as receiver:
        receiver.unavailable = 2
        register(api, receiver.url, "CREATE")
        start = len(teyca.deliveries)
        card = teyca.register_card({"template": "Макет1"})
        (delivery,) = teyca.wait_for_deliveries()[start:]
    assert delivery.attempts == [503, 503, 200] and delivery.outcome == "delivered"
    assert [e["pass"]["user_id"] for e in receiver.stored] == [card["user_id"]]  # stored once


def test_a_receiver_with_another_secret_refuses_every_attempt(api, teyca):
    with AsgiReceiver("not-the-sandbox-secret") as receiver:
        register(api, receiver.url, "CREATE")
        start = len(teyca.deliveries)
        teyca.register_card({"template": "Макет1"})
        (delivery,) = teyca.wait_for_deliveries()[start:]
    assert delivery.attempts == [401, 401, 401, 401] and delivery.outcome == "failed"
    assert receiver.stored == []


def test_a_receiver_that_is_not_listening_is_retried_then_given_up(api, teyca):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/hooks/teyca"  # bound, not listening
        register(api, url, "UPDATE")
        start = len(teyca.deliveries)
        teyca.change_card(next(iter(teyca.passes)), {"bonus": "7"})
        (delivery,) = teyca.wait_for_deliveries()[start:]
    assert delivery.outcome == "failed" and len(delivery.attempts) == 4
    assert all(isinstance(attempt, str) for attempt in delivery.attempts)  # transport errors


def test_api_changes_are_delivered_too(api, teyca):
    with AsgiReceiver(SECRET) as receiver:
        register(api, receiver.url, "CREATE")
        made = api.post("/passes", json={"template": "Макет1", "first_name": "Пётр"})
        assert made.status_code == 200
        teyca.wait_for_deliveries()
    assert [e["pass"]["user_id"] for e in receiver.stored] == [made.json()["user_id"]]


def test_webhook_settings_without_environment_are_the_demo_ones():
    state = seeded_state(passes=3, rate_limits=False)
    configure_webhooks(state, {SECRET_ENV: "  ", RETRY_DELAYS_ENV: ""})
    assert state.webhook_secret == SANDBOX_ENV[SECRET_ENV]
    assert state.retry_delays == RETRY_DELAYS == (60.0, 300.0, 900.0)  # TY-A5: 1, 5, 15 min


@pytest.mark.parametrize("raw", ["soon", "1,,2", "-1,5"])
def test_bad_retry_delays_are_refused(raw):
    state = seeded_state(passes=3, rate_limits=False)
    with pytest.raises(ValueError, match=RETRY_DELAYS_ENV):
        configure_webhooks(state, {RETRY_DELAYS_ENV: raw})
