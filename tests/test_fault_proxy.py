"""The fault proxy injects each kind of fault as documented, forwards the rest untouched, counts
what it did, and is reproducible by seed."""

from __future__ import annotations

import httpx
import pytest

from sandbox.fault_proxy import ALL_KINDS, FaultProxy, FaultRule
from sandbox.server import SandboxServer

HEALTH = "/_sandbox/health"
LISTS = "/heyloyalty/loyalty/v1/lists"  # any emulator path; auth failure is still an answer


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(seed=3, customers=20, days=30, rate_limits=False) as server:
        yield server


def proxy(sandbox, kind: str, rate: float = 1.0) -> FaultProxy:
    return FaultProxy(sandbox.url, rate=rate, rules=[FaultRule("", (kind,))], hang_seconds=0.5)


def get(url: str, timeout: float = 5.0) -> httpx.Response:
    return httpx.get(url, timeout=timeout)


def test_without_faults_answers_are_forwarded_unchanged(sandbox):
    with FaultProxy(sandbox.url, rate=0.0) as p:
        direct, proxied = get(sandbox.url + LISTS), get(p.url + LISTS)
        assert (proxied.status_code, proxied.json()) == (direct.status_code, direct.json())
        with httpx.Client(timeout=5) as client:  # keep-alive: several requests, one connection
            assert [client.get(p.url + LISTS).status_code for _ in range(3)] == [401] * 3
        assert p.count() == 0 and p.requests == 4


@pytest.mark.parametrize(("kind", "status"), [("429", 429), ("503", 503)])
def test_throttling_and_unavailable_carry_a_small_retry_after(sandbox, kind, status):
    with proxy(sandbox, kind) as p:
        answer = get(p.url + LISTS)
        assert answer.status_code == status and float(answer.headers["retry-after"]) < 1
        assert p.count(kind, "/lists") == 1


def test_other_5xx(sandbox):
    with proxy(sandbox, "5xx") as p:
        assert {get(p.url + LISTS).status_code for _ in range(12)} <= {500, 502, 504}


@pytest.mark.parametrize("kind", ["reset_before", "reset_after", "hang"])
def test_lost_connections(sandbox, kind):
    with proxy(sandbox, kind) as p, pytest.raises(httpx.TransportError):
        get(p.url + LISTS, timeout=0.2 if kind == "hang" else 5.0)
    assert p.count(kind) == 1


def test_cut_off_body_and_malformed_200(sandbox):
    with proxy(sandbox, "cut_body") as p, pytest.raises(httpx.TransportError):
        get(p.url + LISTS)
    with proxy(sandbox, "malformed") as p:
        answer = get(p.url + LISTS)
        assert answer.status_code == 200
        with pytest.raises(ValueError):
            answer.json()


def test_control_routes_are_never_faulted_and_rules_pick_kinds_by_path(sandbox):
    rules = [FaultRule("/lists", ("429",)), FaultRule("/nothing", ())]
    with FaultProxy(sandbox.url, rate=1.0, rules=rules) as p:
        assert get(p.url + HEALTH).status_code == 200
        assert get(p.url + LISTS).status_code == 429
        assert p.injected == {("429", LISTS): 1}


def test_the_same_seed_injects_the_same_faults(sandbox):
    def sequence(seed: int) -> list[int | str]:
        with FaultProxy(
            sandbox.url, rate=0.5, seed=seed, rules=[FaultRule("", ("429", "503"))]
        ) as p:
            return [get(p.url + LISTS).status_code for _ in range(20)]

    assert sequence(1) == sequence(1) != sequence(2)


def test_only_loopback_and_known_kinds():
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("http://example.com:80")
    with pytest.raises(ValueError, match="unknown"):
        FaultProxy("http://127.0.0.1:1", rules=[FaultRule("", ("flood",))])
    assert "hang" in ALL_KINDS
