"""The processes the demo's lanes run in, forked from a server that imported their code once.

A lane needs Dagster, pandas, DuckDB and the whole pipeline (several CPU seconds of imports). A
`spawn`ed lane imports all of it again, four lanes four times on top of the demo's own process.
Python's `forkserver` start method imports LANE_MODULES once, in a server process that starts
before anything else (so its imports run beside the caller's own on the second core); each lane
is then a fork of that server, its modules already loaded. The server has no threads, no open
instance and no sockets when it forks (importing opens none), which is what makes forking safe;
the caller's process, with its sandbox and display threads, is never forked.

A lane forked from the server has the server's environment, the one of the moment it started,
not the caller's of the moment the lane starts (the demo sets the sandbox's address and
credentials later): `adopt_environment` hands the lane the caller's, as `spawn` would have.

This module imports nothing heavy: the CLI calls `start_server` before its own imports.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping
from multiprocessing.context import BaseContext

LANE_MODULES = ["app.demo"]  # what every lane runs: the pipeline, Dagster, the vendor clients


def forking() -> bool:
    """Whether this platform has the fork server (Linux, macOS); elsewhere lanes are spawned."""
    return "forkserver" in multiprocessing.get_all_start_methods()


def context() -> BaseContext:
    """The start method for lane processes (and the demo's queue manager)."""
    if not forking():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(LANE_MODULES)
    return ctx


def start_server() -> None:
    """Start the fork server now; it imports LANE_MODULES while the caller goes on (the first
    lane then waits only for what is left of that). Does nothing where there is no fork server
    or when it runs already."""
    if not forking():
        return
    from multiprocessing import forkserver

    context()
    forkserver.ensure_running()


def stop_server() -> None:
    """Stop the fork server and reap it, so the CPU it and its lanes spent counts as this
    process's children's (`time`, `getrusage`), as spawned lanes' did. A later `context()` user
    starts a new one."""
    if not forking():
        return
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)  # private: there is no public way
    if stop is not None:
        stop()


def adopt_environment(environment: Mapping[str, str]) -> None:
    """Make this lane's environment the caller's (see the module's docstring)."""
    os.environ.clear()
    os.environ.update(environment)
