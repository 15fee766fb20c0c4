"""Where `memberflow demo`'s CPU goes: the sandbox's server thread, the demo's own process, and
every process it starts (lanes, their queue manager, a fork server), next to the wall time.

Runs `app.demo.run_demo` in this process (as `memberflow demo` does, output to a file), and
meanwhile reads /proc five times a second: each descendant process's CPU (user + system, the
last reading of each) and this process's threads, the sandbox's server thread by its id. The
figures do not depend on who reaps whom (a fork server's lanes are not this process's children).
Linux only. Run it against any checkout (its `app.demo` is the one measured):

    DAGSTER_HOME=<empty dir> MEMBERFLOW_DATA_DIR=<empty dir> PYTHONPATH=<checkout> \\
        .venv/bin/python bench/demo_cpu.py [--out demo.log]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import warnings
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _cpu(stat_path: str) -> tuple[float, int] | None:
    """(user + system seconds, parent pid) of a /proc stat file; None when it is gone."""
    try:
        text = Path(stat_path).read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK, int(fields[1])


def _descendants(root: int) -> dict[int, float]:
    """CPU seconds of every live descendant process of `root`, by pid."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = _cpu(f"/proc/{entry.name}/stat")
            if found is not None:
                cpu[int(entry.name)], parents[int(entry.name)] = found
    out = {}
    for pid in cpu:
        up = parents.get(pid)
        while up is not None and up != root and up in parents:
            up = parents[up]
        if up == root:
            out[pid] = cpu[pid]
    return out


class Sampler:
    """The last CPU reading of each descendant process and of each thread of this one."""

    def __init__(self) -> None:
        self.processes: dict[int, float] = {}
        self.commands: dict[int, str] = {}
        self.threads: dict[int, float] = {}
        self.sandbox_tid: int | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self) -> None:
        found = _descendants(os.getpid())
        for pid in found.keys() - self.commands.keys():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                command = b"?"
            self.commands[pid] = command.decode(errors="replace")[:70]
        self.processes.update(found)
        for entry in os.scandir(f"/proc/{os.getpid()}/task"):
            found = _cpu(f"/proc/{os.getpid()}/task/{entry.name}/stat")
            if found is not None:
                self.threads[int(entry.name)] = found[0]

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.sample()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--out", default=os.devnull, help="where the demo's lines go")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    began, began_cpu = time.monotonic(), time.process_time()

    try:  # as `memberflow demo` does, where the checkout has it
        from app import lanes

        lanes.start_server()
    except ImportError:
        pass
    from app import demo
    from sandbox.server import SandboxServer

    sampler = Sampler()
    stop = SandboxServer.stop

    def stop_and_note(server: SandboxServer) -> None:
        if server._thread is not None:
            sampler.sandbox_tid = server._thread.native_id
            sampler.sample()
        stop(server)

    SandboxServer.stop = stop_and_note  # type: ignore[method-assign]
    sampler.thread.start()
    with open(args.out, "w") as out:
        outcome = demo.run_demo(
            customers=args.customers, emit=lambda lines: out.write("\n".join(lines) + "\n")
        )
    wall = time.monotonic() - began
    sampler.stop.set()
    sampler.thread.join()
    sampler.sample()
    own = time.process_time() - began_cpu
    main_thread = sampler.threads.get(threading.main_thread().native_id or -1, 0.0)
    sandbox = sampler.threads.get(sampler.sandbox_tid or -1, 0.0)
    others = sum(sampler.processes.values())
    print(f"ok={outcome.ok} wall {wall:.1f} s, load average {os.getloadavg()[0]:.1f}")
    print(
        f"CPU s: this process {own:.1f}: main thread {main_thread:.1f} (imports, data, storage), "
        f"sandbox server thread {sandbox:.1f}, other threads {own - main_thread - sandbox:.1f} "
        "(the sandbox's request handlers, the lanes' queue)"
    )
    print(
        f"CPU s: {len(sampler.processes)} other processes {others:.1f}: "
        + ", ".join(f"{v:.1f}" for v in sorted(sampler.processes.values(), reverse=True))
    )
    print(f"CPU s: total {own + others:.1f}")
    for pid, seconds in sorted(sampler.processes.items(), key=lambda p: -p[1])[:12]:
        print(f"  {seconds:5.1f} s  {sampler.commands.get(pid, '?')}")
    for run in outcome.runs:
        print(f"  {run.integration}: {run.label} {run.seconds:.1f} s")


if __name__ == "__main__":
    main()
