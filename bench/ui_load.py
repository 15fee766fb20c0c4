"""Is the Dagster UI usable with N integrations in one code location? (issue 12)

Writes N integration files (bench/definitions_load.py's generator), starts `dagster-webserver`
on them with a Dagster home and data dir of its own, and measures what a user waits for:

- the time from start until the code location is LOADED (the UI shows "loading" until then);
- the GraphQL queries behind the pages a data engineer opens first, each asked `--repeat`
  times: the global asset graph (every asset node and its dependencies), the jobs list, one
  list job's graph of steps, one asset's partition counts (daily partitions), and the runs
  list; median and worst wall time of each, with the webserver process tree's CPU seconds.

    PYTHONPATH=$PWD .venv/bin/python bench/ui_load.py --counts 50,200

Not a test: nothing is asserted; the figures go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.definitions_load import REPO, generate_integrations
from bench.full_sync import free_port

LOCATION_STATUS = """{ workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""

ASSET_GRAPH = """{ assetNodes { id assetKey { path } groupName jobNames isPartitioned
  dependencyKeys { path } dependedByKeys { path } } }"""

JOBS_LIST = """{ workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
  ... on RepositoryLocation { repositories { name pipelines { name isJob } sensors { name }
  schedules { name } } } } } } } }"""

JOB_GRAPH = """query($selector: PipelineSelector!) { pipelineOrError(params: $selector) {
  __typename ... on Pipeline { name solidHandles { handleID solid { name } } } } }"""

ASSET_PARTITIONS = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
  __typename ... on AssetNode { partitionStats { numMaterialized numPartitions numFailed } } } }"""

RUNS_LIST = """{ runsOrError(limit: 25) { ... on Runs { results { runId status jobName } } } }"""


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its living descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        todo += [int(child) for child in children]
    return total


def start_webserver(folder: Path, run_dir: Path, port: int) -> subprocess.Popen:
    home = run_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MEMBERFLOW_INTEGRATIONS": str(folder),
        "MEMBERFLOW_DATA_DIR": str(run_dir / "data"),
        "PYTHONPATH": str(REPO),
        "PYTHONWARNINGS": "ignore",
    }
    webserver = Path(sys.executable).parent / "dagster-webserver"
    log = (run_dir / "webserver.log").open("w")
    return subprocess.Popen(
        [str(webserver), "-m", "pipelines.definitions", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def ask(client: httpx.Client, query: str, variables: dict | None = None) -> dict:
    answer = client.post("/graphql", json={"query": query, "variables": variables or {}})
    answer.raise_for_status()
    body = answer.json()
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors'][:2]}")
    return body["data"]


def wait_loaded(client: httpx.Client, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds from now until the code location reports LOADED."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError("dagster-webserver exited; see webserver.log")
        try:
            entries = ask(client, LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
        except (httpx.HTTPError, RuntimeError):
            time.sleep(0.2)
            continue
        if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
            error = entries[0]["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                raise RuntimeError(f"code location failed to load: {error['message'][:500]}")
            return time.perf_counter() - started
        time.sleep(0.2)
    raise TimeoutError(f"code location not loaded after {timeout:.0f} s")


def measure(count: int, repeat: int) -> dict[str, object]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"ui_load_{count}_"))
    folder = run_dir / "integrations"
    generate_integrations(count, folder)
    port = free_port()
    started = time.perf_counter()
    proc = start_webserver(folder, run_dir, port)
    row: dict[str, object] = {"integrations": count}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            row["loaded_s"] = round(wait_loaded(client, proc, 600), 2)
            row["loaded_since_start_s"] = round(time.perf_counter() - started, 2)
            row["cpu_to_load_s"] = round(tree_cpu_seconds(proc.pid), 2)
            jobs = ask(client, JOBS_LIST)["workspaceOrError"]["locationEntries"][0]
            repository = jobs["locationOrLoadError"]["repositories"][0]
            names = [p["name"] for p in repository["pipelines"]]
            list_job = next(name for name in names if name != "__ASSET_JOB")
            graph = ask(client, ASSET_GRAPH)["assetNodes"]
            row["asset_nodes"] = len(graph)
            row["jobs"] = len(repository["pipelines"])
            partitioned = next(n["assetKey"]["path"] for n in graph if n["isPartitioned"])
            selector = {
                "repositoryLocationName": jobs_location_name(client),
                "repositoryName": repository["name"],
                "pipelineName": list_job,
            }
            queries = {
                "asset_graph": (ASSET_GRAPH, None),
                "jobs_list": (JOBS_LIST, None),
                "list_job_graph": (JOB_GRAPH, {"selector": selector}),
                "asset_partitions": (ASSET_PARTITIONS, {"key": {"path": partitioned}}),
                "runs_list": (RUNS_LIST, None),
            }
            for name, (query, variables) in queries.items():
                walls, cpu_before = [], tree_cpu_seconds(proc.pid)
                for _ in range(repeat):
                    wall = time.perf_counter()
                    ask(client, query, variables)
                    walls.append(time.perf_counter() - wall)
                cpu = (tree_cpu_seconds(proc.pid) - cpu_before) / repeat
                row[f"{name}_p50_s"] = round(statistics.median(walls), 3)
                row[f"{name}_max_s"] = round(max(walls), 3)
                row[f"{name}_cpu_s"] = round(cpu, 3)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)
    return row


def jobs_location_name(client: httpx.Client) -> str:
    return ask(client, LOCATION_STATUS)["workspaceOrError"]["locationEntries"][0]["name"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="50,200", help="integration counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="times each query is asked")
    args = parser.parse_args(argv)
    rows = []
    for count in (int(c) for c in args.counts.split(",")):
        row = measure(count, args.repeat)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
