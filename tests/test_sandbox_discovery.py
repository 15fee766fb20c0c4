"""Vendors are found, not listed: any `sandbox.<name>` module with an `EMULATOR` is built, mounted,
summarised and has its credentials exported, without an edit to the app or the credentials list."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import re
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from sandbox.app import SandboxState, build_app, discover_emulators, discovered_emulators
from sandbox.generator import generate
from sandbox.server import SandboxServer

FAKE_MODULE = """
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from sandbox.emulator import Emulator


class FakeState:
    def __init__(self, data, rate_limits):
        self.customers = len(data.flexpos_customers)
        self.rate_limits = rate_limits


async def _hello(request):
    return JSONResponse({"hello": "fake"})


def _control(state):
    async def poke(request):
        state.customers += 1
        return JSONResponse({"customers": state.customers})

    return [Route("/poke", poke, methods=["POST"])]


EMULATOR = Emulator(
    name="fake",
    build=FakeState,
    routes=lambda state: [Mount("/fake", routes=[Route("/hello", _hello)])],
    credentials={"FAKE_API_KEY": "demo-fake-key"},
    summary=lambda state: {"customers": state.customers},
    control_routes=_control,
)
"""


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A throwaway package `fakevendors` with one emulator module and one plain module."""
    package = tmp_path / "fakevendors"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fake.py").write_text(textwrap.dedent(FAKE_MODULE))
    (package / "helpers.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [m for m in sys.modules if m == "fakevendors" or m.startswith("fakevendors.")]:
        del sys.modules[name]


def test_a_module_defining_emulator_is_found(fake_package):
    found = discover_emulators(importlib.import_module("fakevendors"))
    assert list(found) == ["fake"]
    assert found["fake"].credentials == {"FAKE_API_KEY": "demo-fake-key"}


def test_an_import_error_surfaces(fake_package):
    (fake_package / "broken.py").write_text("import no_such_module_anywhere\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_module_anywhere"):
        discover_emulators(importlib.import_module("fakevendors"))


def test_two_emulators_with_one_name_are_refused(fake_package):
    (fake_package / "twin.py").write_text(
        textwrap.dedent(FAKE_MODULE).replace('"FAKE_API_KEY"', '"TWIN_KEY"')
    )
    with pytest.raises(ValueError, match="two sandbox emulators are named 'fake'"):
        discover_emulators(importlib.import_module("fakevendors"))


def test_a_found_emulator_is_built_summarised_and_mounted_behind_the_faults(fake_package):
    fake = discover_emulators(importlib.import_module("fakevendors"))
    data = generate(seed=1, customers=10, days=30, today=date(2026, 3, 1))
    state = SandboxState.from_data(data, rate_limits=False, emulators=fake)
    assert state.emulator("fake").customers == 10 and state.emulator("fake").rate_limits is False
    assert state.summary()["fake"] == {"customers": 10}
    with pytest.raises(KeyError, match="no sandbox emulator named 'nope'"):
        state.emulator("nope")
    transport = httpx.ASGITransport(app=build_app(state))

    async def calls() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as http:
            ok = await http.get("/fake/hello")
            state.faults.add("/fake/hello", 503, times=1)
            return ok, await http.get("/fake/hello")

    ok, faulted = asyncio.run(calls())
    assert ok.json() == {"hello": "fake"}
    assert faulted.status_code == 503  # FaultMiddleware stands in front of discovered routes too


def test_a_found_emulators_control_routes_are_mounted_under_sandbox_and_its_name(fake_package):
    fake = discover_emulators(importlib.import_module("fakevendors"))
    data = generate(seed=1, customers=10, days=30, today=date(2026, 3, 1))
    state = SandboxState.from_data(data, rate_limits=False, emulators=fake)
    transport = httpx.ASGITransport(app=build_app(state))

    async def poke() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as http:
            return await http.post("/_sandbox/fake/poke")

    assert asyncio.run(poke()).json() == {"customers": 11}
    assert state.emulator("fake").customers == 11
    assert state.fake is state.emulator("fake")  # the older attribute spelling still reads
    with pytest.raises(AttributeError):
        _ = state.nope


VENDORS = {"flexpos", "heyloyalty", "ticketmaster", "teyca", "axle", "amilia", "cyberimpact"}


def test_every_vendor_is_a_discovered_emulator():
    assert VENDORS <= set(discovered_emulators())


@pytest.mark.parametrize("hub", ["app.py", "credentials.py", "server.py", "emulator.py"])
def test_the_sandbox_hubs_name_no_vendor(hub):
    import sandbox

    text = (Path(sandbox.__file__).parent / hub).read_text().lower()
    code = _without_docs(re.sub(r"#.*", "", text))  # comments and docstrings may give examples
    named = {vendor for vendor in VENDORS if re.search(rf"\b{vendor}\b", code)}
    assert named == set(), f"sandbox/{hub} names {sorted(named)}; a vendor belongs in its module"


def _without_docs(code: str) -> str:
    """The code without its docstrings."""
    return re.sub(r'"""(.|\n)*?"""', "", code)


def test_sandbox_env_holds_every_emulators_credentials():
    import sandbox.credentials as credentials

    env = credentials.SANDBOX_ENV
    expected = {
        "FLEXPOS_CLIENT_ID",
        "FLEXPOS_CLIENT_SECRET",
        "FLEXPOS_ATTRACTIONS_CLIENT_ID",
        "FLEXPOS_ATTRACTIONS_CLIENT_SECRET",
        "HEYLOYALTY_API_KEY",
        "HEYLOYALTY_API_SECRET",
        "HEYLOYALTY_OTHER_API_KEY",
        "HEYLOYALTY_OTHER_API_SECRET",
        "TICKETMASTER_APIKEY",
        "TICKETMASTER_USERNAME",
        "TICKETMASTER_PASSWORD",
        "TEYCA_API_KEY",
        "TEYCA_WEBHOOK_SECRET",
        "AXLE_API_KEY",
    }
    assert expected <= set(env)
    assert credentials.HEYLOYALTY_API_SECRET == env["HEYLOYALTY_API_SECRET"]  # reads by name
    with pytest.raises(AttributeError):
        _ = credentials.NOT_A_CREDENTIAL


def test_the_sandbox_package_emulators_are_discovered_with_their_credentials():
    import sandbox.credentials as credentials

    found = discovered_emulators()
    assert "teyca" in found
    env = credentials.SANDBOX_ENV
    for emulator in found.values():
        for name, value in emulator.credentials.items():
            assert env[name] == value
    assert env["HEYLOYALTY_API_KEY"] == credentials.HEYLOYALTY_API_KEY  # by name, as before


def test_axle_is_discovered_when_present():
    if importlib.util.find_spec("sandbox.axle") is None:
        pytest.skip("sandbox/axle.py not written yet")
    assert "axle" in discovered_emulators()


def test_cli_sandbox_prints_discovered_credentials(monkeypatch):
    from click.testing import CliRunner

    import sandbox.server
    from app.cli import main

    monkeypatch.setattr(sandbox.server, "serve_forever", lambda **kwargs: None)
    result = CliRunner().invoke(main, ["sandbox"])
    assert result.exit_code == 0, result.output
    for emulator in discovered_emulators().values():
        for name, value in emulator.credentials.items():
            assert f"export {name}={value}" in result.output


def test_a_running_sandbox_reaches_discovered_states():
    with SandboxServer(seed=3, customers=10, days=30, rate_limits=False) as server:
        summary = httpx.get(f"{server.url}/_sandbox/summary").json()
        assert VENDORS <= set(summary)
        assert summary["flexpos"]["customers"] == 10
        assert server.emulator("teyca") is server.state.emulator("teyca")
        assert server.heyloyalty is server.emulator("heyloyalty")  # the older spelling


def test_every_answer_carries_one_date_stamped_as_it_goes():
    """One `Date` per answer, from the moment it goes out (uvicorn's own, stamped once a second
    and late behind a busy handler, is off): a client reads the server's clock from it. An
    emulator that keeps its own clock (the Heyloyalty list's) stamps its own instead."""
    with SandboxServer(seed=3, customers=10, days=30, rate_limits=False) as server:
        server.heyloyalty.set_clock_ahead(600)
        before = datetime.now(UTC).replace(microsecond=0)
        health = httpx.get(f"{server.url}/_sandbox/health")
        lists = httpx.get(f"{server.url}/heyloyalty/loyalty/v1/lists")
        after = datetime.now(UTC)
    (stamp,) = health.headers.get_list("date")
    assert before <= parsedate_to_datetime(stamp) <= after
    (stamp,) = lists.headers.get_list("date")
    assert parsedate_to_datetime(stamp) >= before + timedelta(seconds=600)
