"""CPU per customers page, without HTTP (issue 10): a 500-record FlexPOS page body like the
sandbox's (compact JSON, Danish text, cards) read and turned into landing's Arrow tables the way
the client and landing do now (`RawPage`: msgspec cuts the records' texts and reads their id and
`Modified`) and the way they did before (`loads` to dicts, then `page_meta` and `orjson.dumps`
per record), alternating, with what a bare loop's parse costs beside them.

Thread CPU time of this process only (no sockets, no other process), so the figures hold on a
loaded machine better than any wall time; medians of `--rounds` rounds of `--pages` pages each.

    PYTHONPATH=$PWD .venv/bin/python bench/page_cpu.py
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

import msgspec  # noqa: E402
import orjson  # noqa: E402

from memberflow import landing  # noqa: E402
from resources import flexpos  # noqa: E402

CITIES = ["Århus V", "Herning", "Vejle", "København Ø", "Næstved", "Ølstykke"]
STREETS = ["Lysefjordsgade", "Sundevedsvej", "Telemarksstræde", "Kalkbrænderihavnsgade"]


def page_body(first: int, size: int = 500, seed: int = 42) -> bytes:
    """A customers page as the sandbox sends it (its fields, compact JSON, UTF-8 unescaped)."""
    rng = random.Random(seed + first)
    start = datetime(2025, 1, 1)
    items = []
    for n in range(first, first + size):
        modified = start + timedelta(seconds=rng.randrange(0, 700 * 86_400))
        items.append(
            {
                "CustomerId": n,
                "CustomerNo": f"K{n:07d}",
                "FirstName": rng.choice(["Stina", "Frida", "Majken", "Søren"]),
                "LastName": rng.choice(["Bruun", "Lauritsen", "Eriksen", "Møller"]),
                "Email": f"c{n}@jubii.dk",
                "Mobile": f"{rng.randrange(20_000_000, 99_999_999)}",
                "Address": f"{rng.choice(STREETS)} {rng.randrange(1, 200)}",
                "ZipCode": f"{rng.randrange(1000, 9999)}",
                "City": rng.choice(CITIES),
                "Country": "DK",
                "BirthDate": f"{rng.randrange(1940, 2005)}-0{rng.randrange(1, 9)}-15",
                "Gender": rng.choice("FM"),
                "IsActive": rng.random() < 0.9,
                "IsClubMember": rng.randrange(2),
                "GetsNewsletter": rng.randrange(2),
                "StoreId": rng.randrange(1, 6),
                "Created": (modified - timedelta(days=30)).isoformat(),
                "Modified": modified.isoformat(),
                "cards": [
                    {"Cardnumber": 40_000_000 + 3 * n + i, "Cardname": "Medlem"}
                    for i in range(rng.randrange(3))
                ],
            }
        )
    envelope = {"Items": items, "Page": 1 + first // size, "PageSize": size, "TotalCount": 10**5}
    return orjson.dumps(envelope)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    bodies = [page_body(i * 500) for i in range(args.pages)]
    client = flexpos.FlexPOSClient(
        pos_base_url="http://127.0.0.1:9", client_id="bench", client_secret="bench"
    )
    entity = flexpos._ENTITIES["customers"]
    now = datetime.now(UTC)

    def before(body: bytes) -> Any:  # main before this change: dicts, page_meta, dumps
        return landing._page_by_day(client, "customers", flexpos.loads(body)["Items"], now)

    def after(body: bytes) -> Any:
        envelope = flexpos._raw_envelope(body, entity)
        assert envelope is not None, "an ordinary page must be read raw"
        return landing._page_by_day(client, "customers", envelope["Items"], now)

    raw = msgspec.json.Decoder(flexpos._Envelope)
    ways: dict[str, Callable[[bytes], Any]] = {
        "memberflow now: RawPage -> Arrow tables": after,
        "memberflow before: loads -> dicts -> Arrow tables": before,
        "bare parse: json.loads (the ceiling)": json.loads,
        "bare parse: orjson.loads (the orjson ceiling)": orjson.loads,
        "msgspec: records' texts only (part of now)": raw.decode,
    }
    figures: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            started = time.thread_time()
            for body in bodies:
                way(body)
            figures[name].append((time.thread_time() - started) / len(bodies) * 1000)
    size = statistics.mean(map(len, bodies)) / 1024
    print(f"\n{args.pages} pages of 500 customers (~{size:.0f} KiB each), {args.rounds} rounds")
    print("\n| per page | CPU ms (median) | min | max |\n| --- | ---: | ---: | ---: |")
    for name, values in figures.items():
        print(
            f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"
        )


if __name__ == "__main__":
    main()
