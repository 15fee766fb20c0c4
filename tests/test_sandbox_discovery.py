"""Vendors are found, not listed: any `sandbox.<name>` module with an `EMULATOR` is built, mounted,
summarised and has its credentials exported, without an edit to the app or the credentials list."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import sys
import textwrap
from datetime import date

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


EMULATOR = Emulator(
    name="fake",
    build=FakeState,
    routes=lambda state: [Mount("/fake", routes=[Route("/hello", _hello)])],
    credentials={"FAKE_API_KEY": "demo-fake-key"},
    summary=lambda state: {"customers": state.customers},
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


def test_the_sandbox_package_emulators_are_discovered_with_their_credentials():
    import sandbox.credentials as credentials

    found = discovered_emulators()
    assert "teyca" in found
    env = credentials.SANDBOX_ENV
    for emulator in found.values():
        for name, value in emulator.credentials.items():
            assert env[name] == value
    assert env["HEYLOYALTY_API_KEY"] == credentials.HEYLOYALTY_API_KEY  # built-ins stay


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
    for name in discovered_emulators()["teyca"].credentials:
        assert f"export {name}=" in result.output


def test_a_running_sandbox_reaches_discovered_states():
    with SandboxServer(seed=3, customers=10, days=30, rate_limits=False) as server:
        summary = httpx.get(f"{server.url}/_sandbox/summary").json()
        assert "teyca" in summary
        assert server.emulator("teyca") is server.state.emulator("teyca")
