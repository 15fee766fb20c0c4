"""The `memberflow` command: validate integration files, run the sandbox, run the demo, sync or
backfill an integration on the local Dagster instance."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from memberflow.config import Integration

# memberflow.config (and with it pandas and DuckDB) is imported inside the commands that read
# integration files: `memberflow demo` starts its lanes' fork server before any heavy import
# (app.lanes), so that server's imports run beside this process's own.


@click.group()
def main() -> None:
    """memberflow: sources (POS, ticketing, booking) -> email-marketing lists, on Dagster."""
    import warnings

    warnings.filterwarnings("ignore", message=".*is currently in beta.*")


@main.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--check-env", is_flag=True, help="Also require every credential env var to be set.")
def validate(files: tuple[Path, ...], check_env: bool) -> None:
    """Check integration files without running anything (default: integrations/*.yaml)."""
    import os

    from app.scaffold import placeholders_left
    from memberflow.config import IntegrationFileError, discover_files, load_all

    paths = list(files) or discover_files()
    try:
        integrations = load_all(paths)
    except IntegrationFileError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    missing = []
    for integration in integrations:
        missing += [
            f"{integration.source_file}: {key} still holds the scaffold's placeholder"
            for key in placeholders_left(Path(integration.source_file))
        ]
        names = integration.source.env_vars() + integration.target.env_vars()
        absent = [n for n in names if n not in os.environ]
        missing += [f"{integration.source_file}: env var {n} is not set" for n in absent]
        click.echo(
            f"ok  {integration.source_file}: {integration.name} "
            f"({integration.source.kind} -> {integration.target.kind} "
            f"{integration.target.destination}, match on {integration.match_on})"
        )
    for line in missing:
        click.echo(("error " if check_env else "note ") + line, err=True)
    if check_env and missing:
        sys.exit(1)


@main.command()
@click.option("--source", "source", required=True, help="Source kind, e.g. flexpos.")
@click.option("--target", "target", required=True, help="Target kind, e.g. heyloyalty.")
@click.option("--name", default=None, help="Integration name (default: <source>_<target>).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="File to write (default: integrations/<name>.yaml; - for stdout). Never overwritten.",
)
def scaffold(source: str, target: str, name: str | None, out: Path | None) -> None:
    """Write a commented integration file for a source kind and a target kind."""
    from app.scaffold import ScaffoldError, write
    from app.scaffold import scaffold as render
    from memberflow.config import INTEGRATIONS_DIR

    name = name or f"{source}_{target}"
    try:
        text = render(source, target, name)
        if out is not None and str(out) == "-":
            click.echo(text, nl=False)
            return
        path = out or INTEGRATIONS_DIR / f"{name}.yaml"
        write(text, path)
    except ScaffoldError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"wrote {path}: set the keys marked `required`, then `memberflow validate {path}`")


@main.command()
@click.option("--port", default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option("--customers", default=300, show_default=True)
@click.option("--no-rate-limits", is_flag=True, help="Disable the emulators' rate limits.")
@click.option(
    "--lean",
    is_flag=True,
    help="FlexPOS records made on demand (a million customers in ~1 GB); other demo sources "
    "get their smallest data sets.",
)
def sandbox(
    port: int, host: str, seed: int, customers: int, no_rate_limits: bool, lean: bool
) -> None:
    """Serve every vendor emulator of sandbox/ (one port, a prefix per vendor) until Ctrl-C."""
    from sandbox.credentials import SANDBOX_ENV
    from sandbox.server import serve_forever

    shape = ", lean" if lean else ""
    click.echo(f"sandbox on http://{host}:{port} ({customers} customers, seed {seed}{shape})")
    click.echo("export these to run the demo integrations against it:")
    click.echo(f"  export MEMBERFLOW_SANDBOX_URL=http://{host}:{port}")
    for name, value in SANDBOX_ENV.items():
        click.echo(f"  export {name}={value}")
    serve_forever(
        seed=seed,
        customers=customers,
        port=port,
        host=host,
        rate_limits=not no_rate_limits,
        lean=lean,
    )


@main.command()
@click.option("--port", default=3000, show_default=True, help="Dagster UI port.")
@click.option("--sandbox-port", default=8765, show_default=True)
@click.option("--customers", default=300, show_default=True)
def ui(port: int, sandbox_port: int, customers: int) -> None:
    """The sandbox and the Dagster UI together, wired to each other, until Ctrl-C."""
    import os
    import subprocess

    from app import runner
    from app.demo import prepare_environment
    from sandbox.server import SandboxServer

    home = runner.ensure_dagster_home()
    command = dagster_dev_command(port)
    with SandboxServer(customers=customers, port=sandbox_port) as server:
        prepare_environment(server.url)
        click.echo(f"sandbox on {server.url}; Dagster UI on http://127.0.0.1:{port}")
        click.echo(f"data folder {os.environ[runner.DATA_DIR_ENV]}, Dagster instance {home}")
        try:
            subprocess.run(command, env=os.environ.copy(), check=False)
        except KeyboardInterrupt:
            pass


def dagster_dev_command(port: int) -> list[str]:
    """`dagster dev` of the Python running this command: the `dagster` script beside
    sys.executable (the venv's bin/), else `python -m dagster`; never whatever PATH finds, so
    `.venv/bin/memberflow ui` works from a shell where the venv is not activated."""
    from memberflow.config import REPO_ROOT

    beside = Path(sys.executable).parent / "dagster"
    program = [str(beside)] if beside.is_file() else [sys.executable, "-m", "dagster"]
    return [*program, "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-p", str(port)]


@main.command()
@click.option("--customers", default=300, show_default=True)
@click.option("--seed", default=42, show_default=True)
def demo(customers: int, seed: int) -> None:
    """Start the sandbox, sync the demo integrations once, print what happened.

    Each step's progress shows while it works; each run's lines as soon as it ends; a table of
    every run at the end."""
    import time

    from app import lanes

    lanes.start_server()  # the lanes' imports start now, beside this process's (app.lanes)
    from app.console import RunRow, make_console, run_table, showing_progress
    from app.demo import run_demo

    console = make_console()

    def emit(lines: list[str]) -> None:
        for line in lines:
            console.print(line, markup=False)

    started = time.monotonic()
    with showing_progress(console) as steps:
        outcome = run_demo(customers=customers, seed=seed, emit=emit, listener=steps)
    rows = [
        RunRow(
            f"{r.integration}: {r.label}", steps.of_run(r.run_id), r.quarantined, r.seconds, r.ok
        )
        for r in outcome.runs
    ]
    console.print()
    console.print(run_table(rows))
    console.print(f"demo done in {time.monotonic() - started:.0f} s (sandbox start included)")
    sys.exit(0 if outcome.ok else 1)


@main.command()
@click.option(
    "--profile",
    type=click.Choice(["production"]),
    required=True,
    help="production: PostgreSQL instance, daemon, webserver, dagster-celery workers.",
)
@click.option("--workers", default=2, show_default=True, help="Celery workers to start.")
@click.option("--port", default=3000, show_default=True, help="Dagster UI port.")
@click.option("--sandbox-port", default=8765, show_default=True)
@click.option("--customers", default=300, show_default=True)
@click.option("--demo", is_flag=True, help="Queue each demo integration's initial import.")
def deploy(
    profile: str, workers: int, port: int, sandbox_port: int, customers: int, demo: bool
) -> None:
    """The production profile on this machine, with the sandbox, until Ctrl-C."""
    import os
    import signal
    import time
    from datetime import date

    from app import production
    from app.demo import demo_files, prepare_environment
    from memberflow.config import REPO_ROOT, load_all
    from sandbox.server import SandboxServer

    try:
        production.check_environment()
    except production.MissingSetting as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    home = Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / ".dagster_home_production")
    data = REPO_ROOT / "data" / "production"
    with SandboxServer(customers=customers, port=sandbox_port) as server:
        prepare_environment(server.url, data)
        os.environ.setdefault("MEMBERFLOW_INTEGRATIONS", os.pathsep.join(map(str, demo_files())))
        signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop, like Ctrl-C
        stack = production.start_stack(home, data / "logs", workers=workers, port=port)
        click.echo(f"{profile}: instance {home}, logs {data / 'logs'}, sandbox {server.url}")
        click.echo(f"Dagster UI on http://127.0.0.1:{port}; {workers} Celery workers; Ctrl-C stops")
        try:
            if demo:
                client = production.webserver_client(port)
                runs = production.submit_initial_imports(client, load_all(), date.today())
                click.echo(f"queued {len(runs)} initial imports: {', '.join(runs)}")
            while all(p.poll() is None for p in stack.processes.values()):
                time.sleep(1)
            click.echo("a process of the stack ended: stopping (see its log)", err=True)
        except KeyboardInterrupt:
            pass
        finally:
            stack.stop()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@main.command()
@click.argument("name")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), help="Backfill start day.")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), help="Backfill end day.")
@click.option(
    "--full",
    is_flag=True,
    help="Read the members whole (a full sync), not changes since the cursor.",
)
@click.option(
    "--include-optional",
    is_flag=True,
    help="Also read the entities the source leaves to manual runs (e.g. costly CRM interests).",
)
@click.option("--verbose", is_flag=True, help="Also print every Dagster event line (DEBUG).")
def sync(
    name: str, start: object, end: object, full: bool, include_optional: bool, verbose: bool
) -> None:
    """Run one integration now: incremental, a full sync, or a backfill over --from .. --to.

    Shows each step's progress while it works (records landed, rows staged, members and events
    sent, calls, retries, throttling), then a table of the steps and the run in a few lines."""
    import time

    from app import runner
    from app.console import make_console, showing_progress, step_table
    from app.demo import describe_run
    from memberflow.config import load_all
    from pipelines.factory import build_definitions

    integrations = load_all()
    chosen = [i for i in integrations if i.name == name]
    if not chosen:
        click.echo(f"no integration named {name!r}: {[i.name for i in integrations]}", err=True)
        sys.exit(2)
    if (start is None) != (end is None):
        click.echo("give both --from and --to, or neither", err=True)
        sys.exit(2)
    runner.ensure_dagster_home()
    defs = build_definitions(integrations)
    first: date | None = start.date() if start else None  # type: ignore[attr-defined]
    last: date | None = end.date() if end else None  # type: ignore[attr-defined]
    console = make_console()
    started = time.monotonic()
    level = "DEBUG" if verbose else "WARNING"  # warnings and errors of the steps still show
    try:
        with showing_progress(console) as steps:
            result = _sync_once(defs, chosen[0], first, last, include_optional, full, level)
    except runner.RunInFlight as exc:
        click.echo(str(exc), err=True)
        sys.exit(3)
    took = time.monotonic() - started
    summary = runner.summarise(result)
    console.print()
    console.print(step_table(steps.of_run(result.run_id), summary.assets))
    label = "backfill" if first else "full sync" if full else "incremental sync"
    for line in describe_run(chosen[0], label, result, first, last, took):
        console.print(line, markup=False)
    for message in runner.failure_messages(result):
        click.echo(f"error: {message}", err=True)
    sys.exit(0 if result.success else 1)


def _sync_once(defs, integration, first, last, include_optional: bool, full: bool, level: str):
    import dagster as dg

    from app import runner

    return runner.run_sync(
        defs,
        integration,
        dg.DagsterInstance.get(),
        start=first,
        end=last,
        run_config=runner.optional_entities_config(integration) if include_optional else None,
        full=full,
        console_level=level,
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8780, show_default=True)
@click.option(
    "--integrations",
    "names",
    multiple=True,
    help="Serve only these integrations (repeat or comma-separate); default: every one.",
)
@click.option(
    "--register-url",
    help="The receiver's public base URL: register each source's hooks to <URL>/webhooks/<name>.",
)
def receiver(host: str, port: int, names: tuple[str, ...], register_url: str | None) -> None:
    """Accept sources' webhooks and store their events durably until Ctrl-C (TX3)."""
    import logging

    import uvicorn

    from app.receiver import (
        ReceiverSetupError,
        build_app,
        capabilities_of,
        feedback_hooks_of,
        register,
    )
    from memberflow.config import load_all

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    integrations = _chosen(load_all(), [n for name in names for n in name.split(",") if n])
    try:
        capabilities = capabilities_of(integrations)
        feedback = feedback_hooks_of(integrations)
    except ReceiverSetupError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if not capabilities and not feedback:
        click.echo("no integration has webhooks on; nothing to receive", err=True)
        sys.exit(2)
    if register_url:
        hooked = [i for i in integrations if i.name in capabilities or i.name in feedback]
        for line in register(hooked, register_url):
            click.echo(line)
    for name in sorted(capabilities):
        click.echo(f"receiving {name} at http://{host}:{port}/webhooks/{name}")
    for name in sorted(feedback):
        click.echo(f"receiving {name} feedback at http://{host}:{port}/webhooks/{name}/feedback")
    uvicorn.run(
        build_app(capabilities, feedback=feedback), host=host, port=port, log_level="warning"
    )


@main.command()
@click.argument("names", nargs=-1)
def check(names: tuple[str, ...]) -> None:
    """Check each integration against its vendors: connections, list, fields, budget (TX1).

    NAMES are integration names, or integration files (*.yaml) to check instead of the
    integrations directory."""
    from app.check import run_checks
    from memberflow.config import IntegrationFileError, load_all

    files = [Path(n) for n in names if n.endswith((".yaml", ".yml"))]
    try:
        loaded = load_all(files) if files else load_all()
    except IntegrationFileError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    integrations = _chosen(loaded, [n for n in names if not n.endswith((".yaml", ".yml"))])
    failed = False
    for result in run_checks(integrations):
        click.echo(result.line())
        failed = failed or not result.ok
    sys.exit(1 if failed else 0)


def _chosen(integrations: list[Integration], names: list[str]) -> list[Integration]:
    """The integrations named (all when none is); exits 2 naming an unknown one."""
    if not names:
        return integrations
    known = {i.name: i for i in integrations}
    unknown = [n for n in names if n not in known]
    if unknown:
        click.echo(f"no integration named {unknown}: {sorted(known)}", err=True)
        sys.exit(2)
    return [known[n] for n in names]


@main.command()
def recover() -> None:
    """Fail this host's runs whose process died, free their pool slots, remove orphan temp files.

    Runs also do this by themselves before each `sync` and at each sensor tick; this command
    shows what it finds, e.g. after a crash.
    """
    import dagster as dg

    from app import runner
    from memberflow import recovery

    runner.ensure_dagster_home()
    outcome = recovery.recover(dg.DagsterInstance.get())
    for line in outcome.lines() or [
        "nothing to recover: no dead run on this host, no orphan temp file"
    ]:
        click.echo(line)


if __name__ == "__main__":
    main()
