"""AmiliaWebhook: the signature of the raw body or the `?token=` fallback (AM-A11), each context
and action read into events (AM-A9, AM-A10, AC3, AC6), malformed bodies refused with 400, and
deliveries not for us (unknown Context or Action, a poison id) accepted without events."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from resources.amilia_webhook import AmiliaWebhook
from resources.http import MissingEnvVarError
from resources.webhooks import RESCAN, WebhookEvent, WebhookRefused
from sandbox.amilia import seeded_state

SECRET = "signing-secret"


def envelope(context: str, action: str, payload: dict) -> bytes:
    body = {
        "OrganizationId": 8008,
        "Context": context,
        "Action": action,
        "Name": f"memberflow-club-{context}-{action}",
        "EventTime": "2026-09-25T12:46:00-04:00",
        "Payload": payload,
    }
    return json.dumps(body).encode()


def signature(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# -- verify (AM-A11) -------------------------------------------------------------------------------
def test_a_body_signed_by_the_emulator_is_accepted():
    state = seeded_state(accounts=2)
    hook = AmiliaWebhook(secret=state.webhook_secret)
    body = envelope("Person", "Create", {"Id": 1})
    hook.verify({"x-amilia-signature": state.sign(body)}, body)


def test_a_forged_or_missing_signature_is_refused():
    hook = AmiliaWebhook(secret=SECRET)
    body = envelope("Person", "Create", {"Id": 1})
    hook.verify({"x-amilia-signature": signature(body)}, body)
    with pytest.raises(WebhookRefused) as forged:
        hook.verify({"x-amilia-signature": signature(body, "another")}, body)
    assert forged.value.status == 401
    tampered = body.replace(b'"Id": 1', b'"Id": 2')
    with pytest.raises(WebhookRefused):
        hook.verify({"x-amilia-signature": signature(body)}, tampered)
    with pytest.raises(WebhookRefused) as missing:
        hook.verify({}, body, {"token": SECRET})  # a signing secret wants the signature
    assert missing.value.status == 401 and "X-Amilia-Signature" in missing.value.message


def test_without_a_signing_secret_the_token_in_the_url_is_checked():
    hook = AmiliaWebhook(token="shared")
    body = envelope("Person", "Create", {"Id": 1})
    hook.verify({"x-amilia-signature": signature(body)}, body, {"token": "shared"})
    for query in (None, {}, {"token": "wrong"}, {"token": ""}):
        with pytest.raises(WebhookRefused) as refused:
            hook.verify({}, body, query)
        assert refused.value.status == 401 and "shared" not in refused.value.message


def test_exactly_one_secret_and_it_comes_from_the_environment(monkeypatch):
    with pytest.raises(ValueError):
        AmiliaWebhook()
    with pytest.raises(ValueError):
        AmiliaWebhook(secret="a", token="b")
    monkeypatch.delenv("AM_HOOK", raising=False)
    with pytest.raises(MissingEnvVarError, match="AM_HOOK"):
        AmiliaWebhook.from_env(secret_env="AM_HOOK")
    monkeypatch.setenv("AM_TOKEN", "shared")
    AmiliaWebhook.from_env(token_env="AM_TOKEN").verify({}, b"{}", {"token": "shared"})


# -- parse (AM-A9, AM-A10) -------------------------------------------------------------------------
PERSON = {"Id": 300001, "FirstName": "Zoé", "AccountId": 700001}
REGISTRATION = {"RegistrationId": "AC-10001", "IsCancelled": False}
MEMBERSHIP = {"Id": 80001, "AccountId": 700001, "PersonId": 300001, "MembershipId": 60}


@pytest.mark.parametrize(
    "context, action, payload, expected",
    [
        ("Person", "Create", PERSON, ("create", "persons", "300001")),
        ("Person", "Update", PERSON, ("update", "persons", "300001")),
        ("Person", "Delete", {"Id": 300001}, ("delete", "persons", "300001")),
        ("Account", "Delete", {"Id": 700001}, ("update", "persons", "account:700001")),
        ("Account", "Update", {"Id": 700001}, ("update", "persons", "account:700001")),
        ("Registration", "Create", REGISTRATION, ("create", "registrations", "AC-10001")),
        ("Registration", "Update", REGISTRATION, ("update", "registrations", "AC-10001")),
        ("Registration", "Delete", {"Id": "AC-10001"}, ("delete", "registrations", "AC-10001")),
        ("registration", "update", {"Id": "AC-7"}, ("update", "registrations", "AC-7")),
        ("PERSON", "DELETE", {"Id": "42"}, ("delete", "persons", "42")),
        ("Membership", "Create", MEMBERSHIP, ("update", "memberships", RESCAN)),
        ("Membership", "Update", MEMBERSHIP, ("update", "memberships", RESCAN)),
        ("Membership", "Delete", {"Id": 80001}, ("update", "memberships", RESCAN)),
    ],
)
def test_each_context_and_action_is_read(context, action, payload, expected):
    (event,) = AmiliaWebhook(secret=SECRET).parse(envelope(context, action, payload))
    assert isinstance(event, WebhookEvent)
    assert (event.kind, event.entity, event.record_id) == expected
    assert event.payload == payload


@pytest.mark.parametrize("context", ["Program", "Activity"])
@pytest.mark.parametrize("action", ["Create", "Update", "Delete"])
def test_programs_and_activities_are_accepted_without_events(context, action):
    """AC6: an activity cancelled keeps its registrations, so nothing is read again."""
    body = envelope(context, action, {"Id": 50010, "Status": "Cancelled"})
    assert AmiliaWebhook(secret=SECRET).parse(body) == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        json.dumps({"Action": "Create", "Payload": {"Id": 1}}).encode(),
        envelope("Person", "Create", {"Id": 1}).replace(b'"Payload": {"Id": 1}', b'"Payload": 7'),
    ],
)
def test_malformed_bodies_are_refused_with_400(body):
    with pytest.raises(WebhookRefused) as refused:
        AmiliaWebhook(secret=SECRET).parse(body)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    "body",
    [
        envelope("Person", "Archive", {"Id": 1}),
        envelope("Invoice", "Create", {"Id": 1}),
        envelope("Person", "Create", {}),
        envelope("Person", "Create", {"Id": "../accounts/1"}),
        envelope("Person", "Create", {"Id": True}),
        envelope("Person", "Update", {"Id": "12a"}),
        envelope("Person", "Delete", {"Id": "AC-12"}),
        envelope("Account", "Delete", {"Id": "7e5"}),
        envelope("Account", "Delete", {"Id": "٣٤"}),  # Arabic-Indic digits: not ASCII
        envelope("Registration", "Create", {"RegistrationId": "AC 1/../x"}),
        envelope("Registration", "Delete", {}),
    ],
)
def test_deliveries_not_for_us_are_accepted_without_events_and_logged(body, caplog):
    """A 400 would have Amilia retry for 72 h and then disable the subscription (AM-A13), and a
    poison id must never reach a re-read that fails every run."""
    with caplog.at_level("WARNING", logger="resources.amilia_webhook"):
        assert AmiliaWebhook(secret=SECRET).parse(body) == []
    assert caplog.records
