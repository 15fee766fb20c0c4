"""Member delivery to Axle-CRM, batched against one call per member, side by side.

The target seam hands a client batches of member changes; Axle's client sends them as
`POST /clients/batch` (up to 500 clients, one result each). The baseline hands the same client
one change at a time, as memberflow's delivery did before the seam (one upsert per member).
Both write the same N clients into a fresh Axle emulator (in-process sandbox, rate limits off)
and are timed without the client's 5 requests/s pacer, so the figures show the calls and the
work; the paced time (calls / 5 s) is what a real Axle account would take, printed beside it.

    .venv/bin/python bench/axle_batching.py --members 2000
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from resources.axle import AxleClient
from resources.base import UpsertFlags
from resources.target import MemberChange, WritePolicy
from sandbox.axle import AXLE_API_KEY, PREFIX
from sandbox.server import SandboxServer

POLICY = WritePolicy("external_id", "create_and_update", False, UpsertFlags())
PACE = 5  # requests per second per key (AX-A4)


def changes(count: int, tag: str) -> list[MemberChange]:
    """`count` new clients, one Teyca card each, with the canonical values a run would send."""
    return [
        MemberChange(
            match_key=f"teyca:{tag}{n}",
            action="create",
            values={
                "external_id": f"teyca:{tag}{n}",
                "phone": f"+791{tag}{n:07d}",
                "first_name": "Анна",
                "birthday": "1990-03-01",
                "consent_mailing": "1",
                "bonus_balance": "1250",
                "card_installed_at": "2026-03-01 09:30:00",
                "cards": [f'{{"source":"teyca","user_id":"{n}","barcode":"BC{n}"}}'],
            },
            modified=datetime(2026, 3, 1, tzinfo=UTC),
        )
        for n in range(count)
    ]


def run(client: AxleClient, work: list[MemberChange], per_call: int) -> tuple[float, int, int]:
    """Seconds, calls and acknowledged members for `work` handed over `per_call` at a time."""
    before = client.calls.total
    started = time.perf_counter()
    acked = 0
    for start in range(0, len(work), per_call):
        acks = list(client.write_members(work[start : start + per_call], POLICY))
        acked += sum(a.outcome in ("created", "updated") for a in acks)
    return time.perf_counter() - started, client.calls.total - before, acked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2000)
    args = parser.parse_args()
    with SandboxServer(seed=1, customers=5, days=5, rate_limits=False) as sandbox:
        client = AxleClient(
            base_url=sandbox.url + PREFIX, api_key=AXLE_API_KEY, account="acc_demo", pacer=None
        )
        rows = [
            ("batched (seam, 500 per call)", *run(client, changes(args.members, "1"), 500)),
            ("one call per member (before)", *run(client, changes(args.members, "2"), 1)),
        ]
        client.close()
    print(f"Axle member delivery, {args.members} new clients, sandbox, pacer off\n")
    print("| mode | seconds | members/s | API calls | acked | paced at 5/s (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, seconds, calls, acked in rows:
        rate = acked / seconds if seconds else 0
        paced = calls / PACE
        print(f"| {label} | {seconds:.2f} | {rate:,.0f} | {calls} | {acked} | {paced:,.0f} |")
    (_, s1, c1, _), (_, s2, c2, _) = rows
    print(f"\nratio one-per-member / batched: {s2 / s1:.1f}x time, {c2 / c1:.0f}x calls")


if __name__ == "__main__":
    main()
