"""The `memberflow` command: validate integration files, run the sandbox, run the demo, sync or
backfill an integration on the local Dagster instance."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import click

from memberflow.config import Integration, IntegrationFileError, discover_files, load_all


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

    paths = list(files) or discover_files()
    try:
        integrations = load_all(paths)
    except IntegrationFileError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    missing = []
    for integration in integrations:
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
@click.option("--port", default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option("--customers", default=300, show_default=True)
@click.option("--no-rate-limits", is_flag=True, help="Disable the emulators' rate limits.")
def sandbox(port: int, host: str, seed: int, customers: int, no_rate_limits: bool) -> None:
    """Serve every vendor emulator of sandbox/ (one port, a prefix per vendor) until Ctrl-C."""
    from sandbox.credentials import SANDBOX_ENV
    from sandbox.server import serve_forever

    click.echo(f"sandbox on http://{host}:{port} ({customers} customers, seed {seed})")
    click.echo("export these to run the demo integrations against it:")
    click.echo(f"  export MEMBERFLOW_SANDBOX_URL=http://{host}:{port}")
    for name, value in SANDBOX_ENV.items():
        click.echo(f"  export {name}={value}")
    serve_forever(
        seed=seed, customers=customers, port=port, host=host, rate_limits=not no_rate_limits
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
    from memberflow.config import REPO_ROOT
    from sandbox.server import SandboxServer

    runner.ensure_dagster_home()
    with SandboxServer(customers=customers, port=sandbox_port) as server:
        prepare_environment(server.url, REPO_ROOT / "data" / "ui")
        click.echo(f"sandbox on {server.url}; Dagster UI on http://127.0.0.1:{port}")
        command = ["dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-p", str(port)]
        try:
            subprocess.run(command, env=os.environ.copy(), check=False)
        except KeyboardInterrupt:
            pass


@main.command()
@click.option("--customers", default=300, show_default=True)
@click.option("--seed", default=42, show_default=True)
def demo(customers: int, seed: int) -> None:
    """Start the sandbox, sync the demo integrations once, print what happened."""
    import time

    from app.demo import run_demo

    started = time.monotonic()
    outcome = run_demo(customers=customers, seed=seed)
    for line in outcome.lines:
        click.echo(line)
    click.echo(f"demo done in {time.monotonic() - started:.0f} s (sandbox start included)")
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
def sync(name: str, start: object, end: object, full: bool, include_optional: bool) -> None:
    """Run one integration now: incremental, a full sync, or a backfill over --from .. --to."""
    from app import runner
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
    try:
        result = _sync_once(defs, chosen[0], first, last, include_optional, full)
    except runner.RunInFlight as exc:
        click.echo(str(exc), err=True)
        sys.exit(3)
    summary = runner.summarise(result)
    for asset, meta in summary.assets.items():
        shown = {k: v for k, v in meta.items() if not isinstance(v, str) or len(v) < 80}
        click.echo(f"{asset}: {shown}")
    for message in runner.failure_messages(result):
        click.echo(f"error: {message}", err=True)
    sys.exit(0 if result.success else 1)


def _sync_once(defs, integration, first, last, include_optional: bool, full: bool):
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
    """Check each integration against its vendors: connections, list, fields, budget (TX1)."""
    from app.check import run_checks

    integrations = _chosen(load_all(), list(names))
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
