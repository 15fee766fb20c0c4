"""How fast the sandbox's seeded generator builds data (rows per second), on this machine.

Moved out of the test suite (issue 6, item 11): a test must not compare wall-clock time with a
limit, so the figure lives here and in RESULTS.md. Run:
`.venv/bin/python bench/generator_speed.py --customers 10000`.
"""

from __future__ import annotations

import argparse
import time
from datetime import date

from sandbox.generator import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = parser.parse_args()
    best = float("inf")
    for _ in range(args.repeat):
        started = time.perf_counter()
        data = generate(seed=args.seed, customers=args.customers, today=date(2026, 6, 15))
        best = min(best, time.perf_counter() - started)
    rows = {
        "flexpos customers": len(data.flexpos_customers),
        "journals": len(data.journals),
        "tickets": len(data.tickets),
        "memberships": len(data.memberships),
        "ticketmaster customers": len(data.tm_customers),
        "ticketmaster orders": len(data.tm_orders),
    }
    total = sum(rows.values())
    print(f"generate(seed={args.seed}, customers={args.customers}): best of {args.repeat}")
    for name, count in rows.items():
        print(f"  {name:24} {count:>9,}")
    print(f"  {'total rows':24} {total:>9,} in {best:.2f} s = {total / best:,.0f} rows/s")


if __name__ == "__main__":
    main()
