"""The webhook receiver over a real uvicorn socket: a verified delivery is stored before 200;
a forged, replayed, oversized or unreadable one is refused and stores nothing."""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterator, Mapping

import httpx
import pytest

from app.receiver import build_app
from memberflow.webhook_store import WebhookStore
from resources.webhooks import WebhookCapability, WebhookEvent, WebhookRefused
from tests.asgi import served

SECRET = "s3cret-token"


class FakeCapability(WebhookCapability):
    """A shared secret in `Authorization`, a JSON body `{"changes": [{kind, id, ...}]}`."""

    max_body_bytes = 2048

    def verify(self, headers: Mapping[str, str], body: bytes, query: object = None) -> None:
        if not hmac.compare_digest(headers.get("authorization", ""), SECRET):
            raise WebhookRefused(401, "wrong or missing Authorization")

    def parse(self, body: bytes) -> list[WebhookEvent]:
        try:
            changes = json.loads(body)["changes"]
        except (ValueError, KeyError, TypeError) as exc:
            raise WebhookRefused(400, f"not a change list: {exc}") from None
        return [
            WebhookEvent(kind=c["kind"], entity="passes", record_id=str(c["id"]), payload=c)
            for c in changes
        ]


@pytest.fixture
def receiver(tmp_path) -> Iterator[tuple[str, dict[str, WebhookStore]]]:
    """The receiver app for one fake integration (`demo_hooks`) on a free local port."""
    stores: dict[str, WebhookStore] = {}

    def store_for(name: str) -> WebhookStore:
        stores[name] = WebhookStore(tmp_path / "webhooks" / f"{name}.sqlite")
        return stores[name]

    app = build_app({"demo_hooks": FakeCapability()}, store_for=store_for)
    with served(app) as url:
        yield url, stores


def _body(*ids: int, note: str = "") -> bytes:
    changes = [{"kind": "update", "id": i, "email": "jens@example.dk", "note": note} for i in ids]
    return json.dumps({"changes": changes}).encode()


def _post(url: str, body: bytes, secret: str = SECRET, **kw) -> httpx.Response:
    headers = {"Authorization": secret, "Content-Type": "application/json"}
    return httpx.post(f"{url}/webhooks/demo_hooks", content=body, headers=headers, **kw)


def _stored(tmp_path) -> list[str]:
    path = tmp_path / "webhooks" / "demo_hooks.sqlite"
    return [e.record_id for e in WebhookStore(path).pending()] if path.exists() else []


def test_a_verified_delivery_is_stored_before_the_200(receiver, tmp_path):
    url, _ = receiver
    response = _post(url, _body(17145, 17146))
    assert response.status_code == 200 and response.json() == {"stored": 2}
    assert _stored(tmp_path) == ["17145", "17146"]
    assert httpx.get(f"{url}/health").json()["integrations"] == ["demo_hooks"]


def test_a_wrong_secret_is_401_and_nothing_is_stored(receiver, tmp_path):
    url, _ = receiver
    assert _post(url, _body(1), secret="guess").status_code == 401
    assert _post(url, _body(1), secret="").status_code == 401
    assert _stored(tmp_path) == []


def test_a_replayed_body_is_stored_once_and_still_answered_200(receiver, tmp_path):
    """A vendor resends a delivery whose 200 it lost, and disables a subscription after enough
    non-2xx answers: a replay stores nothing and is answered 200 with `stored: 0`."""
    url, _ = receiver
    assert _post(url, _body(5)).status_code == 200
    replay = _post(url, _body(5))
    assert replay.status_code == 200 and replay.json() == {"stored": 0}
    assert _stored(tmp_path) == ["5"]


def test_an_oversized_body_is_413_whether_declared_or_streamed(receiver, tmp_path):
    url, _ = receiver
    big = _body(1, note="x" * 4000)
    assert _post(url, big).status_code == 413  # Content-Length over the limit

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for start in range(0, len(big), 500):
            yield big[start : start + 500]

    assert _post(url, chunks()).status_code == 413
    assert _stored(tmp_path) == []


def test_an_unknown_integration_is_404_and_a_bad_body_400(receiver, tmp_path):
    url, _ = receiver
    headers = {"Authorization": SECRET}
    assert (
        httpx.post(f"{url}/webhooks/nobody", content=_body(1), headers=headers).status_code == 404
    )
    assert _post(url, b"not json").status_code == 400
    assert _stored(tmp_path) == []


def test_the_log_line_names_ids_but_no_secret_or_email(receiver, caplog):
    url, _ = receiver
    with caplog.at_level("INFO", logger="memberflow.receiver"):
        _post(url, _body(42))
        _post(url, _body(43), secret="guess")
    text = caplog.text
    assert "demo_hooks: 200" in text and "update passes 42" in text and "demo_hooks: 401" in text
    assert SECRET not in text and "guess" not in text and "jens@example.dk" not in text


def test_the_command_refuses_to_start_with_no_webhook_integration(monkeypatch):
    from click.testing import CliRunner

    from app.cli import main
    from memberflow.config import INTEGRATIONS_DIR

    monkeypatch.setenv("MEMBERFLOW_INTEGRATIONS", str(INTEGRATIONS_DIR / "demo_flexpos.yaml"))
    result = CliRunner().invoke(main, ["receiver", "--port", "0"])
    assert result.exit_code == 2 and "no integration has webhooks on" in result.output


def test_the_command_registers_hooks_and_serves_the_webhook_integrations(monkeypatch):
    """`memberflow receiver --register-url`: each source's hooks point at /webhooks/<name>."""
    import uvicorn as uvicorn_module
    from click.testing import CliRunner

    from app.cli import main
    from memberflow.config import INTEGRATIONS_DIR
    from resources.flexpos import FlexPOSClient, FlexPOSSource
    from sandbox.credentials import SANDBOX_ENV

    for name, value in SANDBOX_ENV.items():
        monkeypatch.setenv(name, value)
    files = [str(INTEGRATIONS_DIR / f"demo_{n}.yaml") for n in ("flexpos", "ticketmaster")]
    monkeypatch.setenv("MEMBERFLOW_INTEGRATIONS", ":".join(files))
    monkeypatch.setattr(FlexPOSSource, "webhook", lambda self: FakeCapability(), raising=False)
    registered: list[str] = []

    def ensure_webhooks(self, url: str) -> list[str]:
        registered.append(url)
        return ["card.created"]

    monkeypatch.setattr(FlexPOSClient, "ensure_webhooks", ensure_webhooks, raising=False)
    served = {}
    monkeypatch.setattr(uvicorn_module, "run", lambda app, **kw: served.update(app=app, **kw))
    args = ["receiver", "--port", "9999", "--register-url", "https://hooks.example.org/"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert registered == ["https://hooks.example.org/webhooks/demo_flexpos"]
    assert "receiving demo_flexpos at http://127.0.0.1:9999/webhooks/demo_flexpos" in result.output
    assert "demo_ticketmaster" not in result.output  # no webhook capability: not served
    assert served["port"] == 9999
