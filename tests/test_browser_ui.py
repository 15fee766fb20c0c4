"""The Dagster UI on the demo, driven in a real browser as a person would use it.

`dagster dev` (webserver + daemon, what `memberflow ui` runs) serves the demo integrations against
the sandbox with the project's dagster.yaml; Playwright drives Debian's chromium (installed by
`make test` through scripts/ensure_chromium.sh; Playwright never downloads a browser) to open an
integration's asset group, launch a run of it, wait for the run to succeed and read a figure of
the run back from a materialization's metadata. Screenshots of each step are kept in
test-artifacts/browser/ (not committed) so a person can look at what the UI showed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.demo import demo_files
from app.runner import DAGSTER_BOOKKEEPING_ENV
from memberflow.config import REPO_ROOT
from sandbox.credentials import SANDBOX_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("MEMBERFLOW_CHROMIUM", "/usr/bin/chromium"))
# Headless on a machine without outside network: without the background-networking flags the
# browser's own update/sync connections are refused and slow it down.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
INTEGRATION = "demo_flexpos"
LOCATION = "__repository__@pipelines.definitions:defs"  # workspace.yaml's python_module
# Generous waits: the machine may be running other tests on both cores.
STARTUP_SECONDS = 240
RUN_SECONDS = 240
STEP_MS = 90_000
LOAD_STATUS = {
    "query": "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
}


def require_chromium() -> None:
    """Skip on a developer's machine without the browser, but fail in CI: there `make test`
    installs it, so a missing browser is a broken setup, not a reason to skip."""
    if CHROMIUM.exists():
        return
    why = (
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium when run as root "
        "(scripts/ensure_chromium.sh); otherwise `apt-get install chromium`"
    )
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ui_environment(tmp: Path, sandbox_url: str) -> dict[str, str]:
    """A fresh DAGSTER_HOME with the project's dagster.yaml, a fresh data dir, the demo files
    pointed at the sandbox with its demo credentials."""
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ)
    env.update(DAGSTER_BOOKKEEPING_ENV)
    env.update(SANDBOX_ENV)
    env.update(
        DAGSTER_HOME=str(home),
        MEMBERFLOW_DATA_DIR=str(tmp / "data"),
        MEMBERFLOW_SANDBOX_URL=sandbox_url,
        MEMBERFLOW_INTEGRATIONS=os.pathsep.join(str(p) for p in demo_files()),
        MEMBERFLOW_PACING="off",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    return env


@pytest.fixture
def ui(sandbox, tmp_path) -> Iterator[str]:
    """`dagster dev` on a free port (its own process group, ended with it); yields its URL."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "dagster"),
        *("dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)),
    ]
    log_path = tmp_path / "dagster-dev.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            env=ui_environment(tmp_path, sandbox.url),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, process, log_path)
        yield url
    finally:
        stop(process)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, ARTIFACTS / "dagster-dev.log")


def wait_until_serving(url: str, process: subprocess.Popen, log_path: Path) -> None:
    """Until the webserver answers and the code location has loaded."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster dev exited ({process.returncode}):\n{tail(log_path)}")
        try:
            entries = httpx.post(f"{url}/graphql", json=LOAD_STATUS, timeout=5).json()["data"]
            statuses = [e["loadStatus"] for e in entries["workspaceOrError"]["locationEntries"]]
            if statuses and all(s == "LOADED" for s in statuses):
                return
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            pass
        time.sleep(1)
    pytest.fail(f"dagster dev not serving after {STARTUP_SECONDS} s:\n{tail(log_path)}")


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C as a person would (dagster dev then stops its webserver, daemon and code server),
    then whatever is left of its process group."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture
def chromium() -> Path:
    """First, so a missing browser skips or fails before anything is started."""
    require_chromium()
    return CHROMIUM


@pytest.fixture
def page(chromium, ui) -> Iterator:
    from playwright.sync_api import sync_playwright

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900}, base_url=ui)
        page.set_default_timeout(STEP_MS)
        # Dagster's first-visit "Join the Dagster community" dialog would cover the first page a
        # second after it loads: dismissed beforehand as its Skip button does, and, should a
        # newer Dagster ask again under another name, skipped whenever it gets in a click's way.
        page.add_init_script("window.localStorage.setItem('communityNux', '\"1\"')")
        page.add_locator_handler(
            page.get_by_text("Join the Dagster community"),
            lambda: page.get_by_role("button", name="Skip").click(),
        )
        try:
            yield page
        finally:
            browser.close()


def screenshot(page, name: str) -> None:
    page.screenshot(path=ARTIFACTS / f"{name}.png")


@contextmanager
def screenshot_on_failure(page) -> Iterator[None]:
    """What the browser showed when a step gave up, next to the steps' own screenshots."""
    try:
        yield
    except BaseException:
        screenshot(page, "99-failure")
        raise


def test_launch_a_run_from_an_asset_group_and_read_its_metadata(page, sandbox) -> None:
    """Group page -> Materialize all (today's partition) -> run page until Success -> the asset's
    latest materialization, whose records_this_run is every sandbox customer."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with screenshot_on_failure(page):
        page.goto(f"/locations/{LOCATION}/asset-groups/{INTEGRATION}")
        page.get_by_text("Never materialized").first.wait_for()  # a fresh instance, loaded
        screenshot(page, "01-asset-group")

        page.get_by_role("button", name="Materialize all…").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("button", name="Latest", exact=True).click()
        screenshot(page, "02-launch-dialog")
        dialog.get_by_role("button", name="Launch 1 run").click()

        view = page.get_by_role("link", name="View", exact=True)
        run_id = (view.get_attribute("href") or "").rsplit("/", 1)[-1]
        assert run_id, "the launch toast's View link names no run"
        try:
            view.click(timeout=3_000)
        except PlaywrightTimeout:  # the toast lasts 4 s: a busy machine may outlast it
            page.goto(f"/runs/{run_id}")
        page.wait_for_url(f"**/runs/{run_id}")
        page.get_by_text(
            re.compile(r"^(Queued|Starting|Started|Success|Failure)$")
        ).first.wait_for()
        screenshot(page, "03-run-launched")

        status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$"))
        status.first.wait_for(timeout=RUN_SECONDS * 1000)
        screenshot(page, "04-run-finished")
        ended = status.first.inner_text()
        assert ended == "Success", f"run {run_id} ended {ended}: see test-artifacts/browser/"

        page.goto(f"/assets/{INTEGRATION}/customers_raw?view=events")
        page.get_by_text(f"Materialized in run {run_id[:8]}").wait_for()
        row = page.get_by_role("row").filter(has=page.get_by_text("records_this_run", exact=True))
        row.wait_for()
        screenshot(page, "05-materialization-metadata")
        assert row.get_by_text(str(len(sandbox.data.flexpos_customers)), exact=True).count() == 1
