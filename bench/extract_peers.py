"""Customers extract against its ceiling and its peer, on one sandbox endpoint (issue 10).

One FlexPOS sandbox (`memberflow sandbox --customers N --no-rate-limits`, its own process, as in
`full_sync.py`) serves every leg; the legs run alternately (A B C A B C ...), each in a fresh
child process of this script, so none inherits another's imports, caches or heap:

- `ceiling`: a bare httpx loop that only fetches and parses the customers pages (the token, then
  `GET /api/v1/customers?page=..&pageSize=500` with the bearer token until the total is covered):
  what any extract pays for HTTP and JSON, and nothing else; it parses with `response.json()`
  (the standard library's json), as a bare loop would;
- `ceiling_orjson`: the same loop parsing each body with `orjson.loads`, the fastest full parse
  to Python objects we know: memberflow parses with faster means than the stdlib (msgspec cuts
  a compact page into its records' texts and reads only their id and dates; orjson for any
  other page), so its ratio is shown against both ceilings;
- `memberflow`: what the `customers_raw` asset does minus Dagster: the FlexPOS client's pages
  through `memberflow.landing.land_pages` into a temporary data dir (the Parquet raw layer), then
  the cursor written, as `assets/extract.py` does on a first run;
- `dlt`: the peer: dlt's `rest_api` source (OAuth2 client credentials, page-number paging,
  `Items` selector) into DuckDB with the Parquet loader (`loader_file_format="parquet"`), dlt's
  defaults otherwise (it unnests `cards` into a child table, as it would for anyone).

Each leg's figure is its own wall time from the first HTTP call (token) to the data on disk; the
child's interpreter start and the imports a Dagster step process has already loaded are outside
it. Beside rows per wall second, rows per CPU second of the leg's own process (all its threads):
on a shared machine the wall figure carries the neighbours' load. Peak RSS is the child's VmHWM
(or that of a process it waited for). The table shows medians over the rounds, and the ratios
memberflow/ceiling and memberflow/dlt of those medians. `--baseline DIR` adds the memberflow leg
with memberflow's code from DIR (a checkout of an older commit), alternating with the others.

    .venv/bin/python bench/extract_peers.py --customers 20000            # while developing
    .venv/bin/python bench/extract_peers.py --customers 100000 --rounds 3  # the recorded figures
    .venv/bin/python bench/extract_peers.py --baseline /tmp/before --legs ceiling,memberflow
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

BENCH_DIR = Path(__file__).resolve().parent

LEGS = ("ceiling", "ceiling_orjson", "memberflow", "dlt")
CEILINGS = ("ceiling", "ceiling_orjson")
# `--baseline DIR` adds a leg: the memberflow leg with memberflow's code taken from DIR (a checkout
# of an older commit), so before and after alternate on the same sandbox under the same load.
BASELINE = "baseline"
PAGE_SIZE = 500  # the FlexPOS client's page size (FP-A3's maximum)
POS = "/flexpos/pos"


def credentials() -> tuple[str, str]:
    """The sandbox's demo POS credentials, handed down by the parent (a leg imports no sandbox)."""
    if "FLEXPOS_CLIENT_ID" not in os.environ:
        from sandbox.credentials import SANDBOX_ENV

        for name in ("FLEXPOS_CLIENT_ID", "FLEXPOS_CLIENT_SECRET"):
            os.environ[name] = SANDBOX_ENV[name]
    return os.environ["FLEXPOS_CLIENT_ID"], os.environ["FLEXPOS_CLIENT_SECRET"]


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec
    from the parent), or any child it waited for if larger."""
    own = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            own = int(line.split()[1])
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


# --- the legs (each runs in its own child process) --------------------------------------------


def leg_ceiling(url: str, work: Path, parse: Any = None) -> int:
    """Token, then every customers page fetched and parsed (`parse(body bytes)`, default the
    response's own `.json()`); nothing kept."""
    import httpx

    client_id, secret = credentials()
    base = url + POS
    with httpx.Client(timeout=60.0) as http:
        answer = http.post(
            f"{base}/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
        answer.raise_for_status()
        headers = {
            "Authorization": f"Bearer {answer.json()['access_token']}",
            "Accept": "application/json",
        }
        rows, page = 0, 1
        while True:
            reply = http.get(
                f"{base}/api/v1/customers",
                params={"page": page, "pageSize": PAGE_SIZE},
                headers=headers,
            )
            reply.raise_for_status()
            body = reply.json() if parse is None else parse(reply.content)
            items = body["Items"]
            if not items:
                break
            rows += len(items)
            if page * PAGE_SIZE >= body["TotalCount"]:
                break
            page += 1
    return rows


def leg_ceiling_orjson(url: str, work: Path) -> int:
    """The ceiling's loop, each body parsed by orjson."""
    import orjson

    return leg_ceiling(url, work, orjson.loads)


def leg_memberflow(url: str, work: Path) -> int:
    """The customers_raw asset's work without Dagster: client pages -> land_pages -> cursor."""
    os.environ["MEMBERFLOW_DATA_DIR"] = str(work / "data")
    from memberflow import landing
    from resources.flexpos import FlexPOSClient

    client_id, secret = credentials()
    options: dict[str, Any] = {}
    if "requests_per_second" in inspect.signature(FlexPOSClient).parameters:
        options["requests_per_second"] = 0  # client-side pacing off: the sandbox has no limits
    client = FlexPOSClient(
        pos_base_url=url + POS, client_id=client_id, client_secret=secret, **options
    )
    started = datetime.now(UTC)
    try:
        stats = landing.land_pages(
            client, "bench", "customers", client.iter_changed("customers", None)
        )
        cursor = client.cursor_after("customers", None, stats.high_water_mark, started)
        if cursor is not None:
            landing.write_source_cursor("bench", "customers", cursor)
    finally:
        client.close()
    return stats.records + stats.unreadable


def leg_dlt(url: str, work: Path) -> int:
    """dlt's rest_api source into DuckDB through Parquet files."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")  # no calls home
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    import dlt
    from dlt.sources.rest_api import rest_api_source

    client_id, secret = credentials()
    base = url + POS
    source = rest_api_source(
        {
            "client": {
                "base_url": f"{base}/api/v1/",
                "auth": {
                    "type": "oauth2_client_credentials",
                    "access_token_url": f"{base}/oauth/token",
                    "client_id": client_id,
                    "client_secret": secret,
                },
                "paginator": {
                    "type": "page_number",
                    "base_page": 1,
                    "page_param": "page",
                    "total_path": None,
                    "stop_after_empty_page": True,
                },
            },
            "resources": [
                {
                    "name": "customers",
                    "endpoint": {
                        "path": "customers",
                        "params": {"pageSize": PAGE_SIZE},
                        "data_selector": "Items",
                    },
                    "primary_key": "CustomerId",
                    "write_disposition": "append",
                }
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_flexpos",
        pipelines_dir=str(work / "dlt_pipelines"),
        destination=dlt.destinations.duckdb(str(work / "dlt.duckdb")),
        dataset_name="flexpos",
    )
    info = pipeline.run(source, loader_file_format="parquet")
    info.raise_on_failed_jobs()
    with pipeline.sql_client() as sql:
        return int(sql.execute_sql("SELECT count(*) FROM customers")[0][0])


def import_leg(leg: str) -> None:
    """The leg's modules, loaded before its clock starts (a Dagster run has them loaded)."""
    if leg in CEILINGS:
        import httpx  # noqa: F401
        import orjson  # noqa: F401
    elif leg in ("memberflow", "baseline"):
        import pandas  # noqa: F401  (a Dagster step process has it loaded; pyarrow's first table would)

        import memberflow.landing  # noqa: F401
        import resources.flexpos  # noqa: F401
    else:
        import dlt  # noqa: F401
        import dlt.sources.rest_api  # noqa: F401


def run_leg(leg: str, url: str) -> dict[str, Any]:
    """In the child: time the leg and report rows, seconds and peak RSS as one JSON line."""
    import_leg(leg)
    imports = time.process_time()
    with tempfile.TemporaryDirectory(prefix=f"extract-{leg}-", dir=BENCH_DIR / "out") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        cpu = time.process_time()
        legs = {
            "ceiling": leg_ceiling,
            "ceiling_orjson": leg_ceiling_orjson,
            "memberflow": leg_memberflow,
            "dlt": leg_dlt,
        }
        rows = legs.get(leg, leg_memberflow)(url, work)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return {
        "leg": leg,
        "rows": rows,
        "seconds": seconds,
        "cpu_s": cpu,
        "startup_cpu_s": imports,
        "peak_rss_mb": peak_rss_mb(),
    }


# --- the parent: sandbox, alternation, table ---------------------------------------------------


def child(leg: str, url: str, python: str, tree: str | None) -> dict[str, Any]:
    command = [python, str(Path(__file__).resolve()), "--leg", leg, "--url", url]
    if tree:
        command += ["--tree", tree]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{leg} leg failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def warm_up(url: str) -> None:
    """One tiny page, so the sandbox's first (cached) selection is not charged to a leg."""
    import httpx

    client_id, secret = credentials()
    base = url + POS
    token = httpx.post(
        f"{base}/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    ).json()["access_token"]
    httpx.get(
        f"{base}/api/v1/customers",
        params={"page": 1, "pageSize": 1},
        headers={"Authorization": f"Bearer {token}"},
    ).raise_for_status()


def median(figures: list[dict[str, Any]], key: str) -> float:
    return statistics.median(f[key] for f in figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--lean",
        action="store_true",
        help="the lean sandbox (records made as pages ask for them: up in seconds, not minutes)",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=600, help="seconds to wait for the sandbox"
    )
    parser.add_argument("--legs", default=",".join(LEGS), help="comma-separated subset of legs")
    parser.add_argument(
        "--baseline",
        help="a checkout of an older commit: its memberflow leg runs too, as `baseline`",
    )
    parser.add_argument("--leg", choices=(*LEGS, BASELINE), help=argparse.SUPPRESS)  # child
    parser.add_argument("--url", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--tree", help=argparse.SUPPRESS)  # child mode: code from this tree
    parser.add_argument(
        "--dlt-python",
        default=os.environ.get("DLT_PYTHON", sys.executable),
        help="interpreter for the dlt leg (default: this one; dlt is a dev dependency)",
    )
    args = parser.parse_args()
    (BENCH_DIR / "out").mkdir(exist_ok=True)
    if args.leg:
        if args.tree:
            sys.path.insert(0, str(Path(args.tree).resolve()))
        print(json.dumps(run_leg(args.leg, args.url)))
        return

    # the sandbox helpers import Dagster: only the parent loads them, no leg pays for it
    from bench.full_sync import (
        free_port,
        log,
        proc_stats,
        start_sandbox,
        stop_sandbox,
        wait_healthy,
    )

    legs = [leg for leg in args.legs.split(",") if leg]
    if args.baseline:
        legs.insert(legs.index("memberflow") + 1 if "memberflow" in legs else 0, BASELINE)
    credentials()  # into the environment, for the legs
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    sandbox = start_sandbox(
        args.customers,
        port,
        args.seed,
        BENCH_DIR / "out" / f"extract-sandbox-{stamp}.log",
        lean=args.lean,
    )
    figures: dict[str, list[dict[str, Any]]] = {leg: [] for leg in legs}
    try:
        log(f"sandbox healthy after {wait_healthy(url, sandbox, timeout=args.ready_timeout):.1f} s")
        warm_up(url)
        for round_no in range(1, args.rounds + 1):
            for leg in legs:
                before = proc_stats(sandbox.pid).cpu_s
                python = args.dlt_python if leg == "dlt" else sys.executable
                tree = args.baseline if leg == BASELINE else None
                figure = child(leg, url, python, tree)
                figure["sandbox_cpu_s"] = proc_stats(sandbox.pid).cpu_s - before
                figure["rows_per_s"] = figure["rows"] / figure["seconds"]
                figures[leg].append(figure)
                log(
                    f"round {round_no} {leg:10s} {figure['rows']:>8,} rows "
                    f"{figure['seconds']:7.2f} s {figure['rows_per_s']:>9,.0f} rows/s "
                    f"cpu {figure['cpu_s']:.1f} s sandbox cpu {figure['sandbox_cpu_s']:.1f} s "
                    f"peak {figure['peak_rss_mb']:.0f} MB"
                )
    finally:
        stop_sandbox(sandbox)
    report(args, figures)


def report(args: argparse.Namespace, figures: dict[str, list[dict[str, Any]]]) -> None:
    """Medians per leg. Rows per CPU second (the leg's own process) is printed beside rows per
    wall second: on a shared machine the wall figure carries the neighbours' load."""
    print(
        f"\n{args.customers:,} customers, {args.rounds} round(s), medians "
        f"(sandbox --no-rate-limits{' --lean' if args.lean else ''}, page size {PAGE_SIZE})\n"
    )
    print(
        "| leg | rows | seconds | rows/s | leg CPU s | rows per leg CPU s | sandbox CPU s "
        "| peak RSS MB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rates, cpu_rates = {}, {}
    for leg, runs in figures.items():
        rates[leg] = median(runs, "rows_per_s")
        cpu_rates[leg] = statistics.median(r["rows"] / max(r["cpu_s"], 1e-9) for r in runs)
        print(
            f"| {leg} | {runs[0]['rows']:,} | {median(runs, 'seconds'):.2f} | "
            f"{rates[leg]:,.0f} | {median(runs, 'cpu_s'):.2f} | {cpu_rates[leg]:,.0f} | "
            f"{median(runs, 'sandbox_cpu_s'):.2f} | {max(r['peak_rss_mb'] for r in runs):.0f} |"
        )
    print(
        "\nparsers: ceiling = the standard library's json (httpx `.json()`), ceiling_orjson = "
        "orjson.loads; memberflow = its FlexPOS client's (msgspec: each record's text and its "
        "id and dates only, orjson for a page it declines)"
    )
    for leg in ("memberflow", BASELINE):
        if leg not in rates:
            continue
        print()
        for other in (*CEILINGS, "dlt", BASELINE):
            if other in rates and other != leg:
                print(
                    f"{leg} / {other}: {rates[leg] / rates[other]:.2f}x by wall "
                    f"time, {cpu_rates[leg] / cpu_rates[other]:.2f}x by CPU time"
                )
    out = BENCH_DIR / "out" / "extract_peers.json"
    out.write_text(json.dumps({"customers": args.customers, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
