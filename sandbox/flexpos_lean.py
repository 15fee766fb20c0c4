"""FlexPOS demo data made on demand, for sandboxes of a million customers (`--lean`).

The eager generator (`sandbox.generator`) draws everything from one random stream, so a record
depends on all before it and the whole data set must be built (and held) up front: ~2-3 GB at
100,000 customers. Here what a listing filters on (Modified, business day, customer, store,
flags) is drawn for all records at once with numpy, a few bytes a record, and the rest of a
record (names, lines, seats) is drawn from a stream seeded by its block of ids when a page asks
for it (`sandbox.lean_store`). The shapes and proportions are the eager generator's (same pools,
same dirt: missing and malformed emails, copied emails, mobile spellings, refunds), the values
are not: a lean sandbox of N customers is not the eager one of N customers.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

import numpy as np

from sandbox.generator import (
    _HISTORY_DAYS,
    DAY,
    FP_PRODUCTS,
    FP_ZONES,
    MEMBERSHIP_TYPES,
    STORES,
    _cards,
    _Clock,
    _dirty_email,
    _dirty_mobile,
    _fp_events,
    _line,
    _person,
    _Pools,
    _pools,
)
from sandbox.lean_store import BLOCK, LeanClock, LeanCollection, Record
from sandbox.store import Collection

CUSTOMERS, JOURNALS = 1, 2  # random stream kinds
FIRST_CUSTOMER, FIRST_JOURNAL, FIRST_TICKET, FIRST_MEMBERSHIP = 1000, 500_000, 800_000, 60_000


class LeanFlexposData:
    """The four FlexPOS collections of a lean sandbox: `customers` customers, 3 journals and
    0.4 ticket orders per customer over the last `days` days, as the eager generator scales."""

    def __init__(self, seed: int, customers: int, days: int, today: date) -> None:
        self.seed, self.total = seed, customers
        self.clock = _Clock(today, days)
        self.lean_clock = LeanClock(today - timedelta(days=days + _HISTORY_DAYS))
        self.pools: _Pools = _pools(seed)
        draw = np.random.default_rng([seed, 4711])
        self.customers = self._customers(draw)
        self.journals = self._journals(draw, customers * 3)
        self.tickets = self._tickets(draw, max(1, int(customers * 0.4)))
        self.memberships = self._memberships()

    def _stream(self, kind: int, block: int) -> random.Random:
        return random.Random((self.seed << 40) + (kind << 32) + block)

    # -- customers ----------------------------------------------------------------------------
    def _customers(self, draw: np.random.Generator) -> LeanCollection:
        n, clock = self.total, self.clock
        created = draw.integers(clock.window_start - _HISTORY_DAYS * DAY, clock.horizon, n)
        modified = draw.integers(np.maximum(created, clock.window_start), clock.horizon)
        self._created = created
        columns = {
            "IsActive": (draw.random(n) < 0.92).astype(np.int8),
            "IsClubMember": (draw.random(n) < 0.6).astype(np.int8),
            "GetsNewsletter": (draw.random(n) < 0.7).astype(np.int8),
        }
        self._customer_columns = columns
        return LeanCollection(
            "CustomerId",
            "Modified",
            None,
            FIRST_CUSTOMER,
            modified,
            self._customer_block,
            self.lean_clock,
            columns=columns,
        )

    def _customer_block(self, block: int) -> list[Record]:
        rng = self._stream(CUSTOMERS, block)
        start, rows = block * BLOCK, []
        for i in range(start, min(start + BLOCK, self.total)):
            rows.append(self._customer(rng, i, rows))
        return rows

    def _customer(self, rng: random.Random, i: int, earlier: list[Record]) -> Record:
        """Customer `i`; a copied email comes from an earlier one of its block (`earlier`)."""
        person = _person(rng, self.pools, i)
        customer_id = FIRST_CUSTOMER + i
        columns = self._customer_columns
        return {
            "CustomerId": customer_id,
            "CustomerNo": f"K{customer_id:07d}",
            "FirstName": person["first"],
            "LastName": person["last"],
            "Email": _dirty_email(rng, person, earlier),
            "Mobile": _dirty_mobile(rng, person["mobile"]),
            "Address": person["street"],
            "ZipCode": person["zip"],
            "City": person["city"],
            "Country": "DK" if rng.random() < 0.97 else rng.choice(["SE", "NO", "DE"]),
            "BirthDate": None if rng.random() < 0.08 else person["birth"],
            "Gender": None if rng.random() < 0.06 else person["gender"],
            "IsActive": bool(columns["IsActive"][i]),
            "IsClubMember": int(columns["IsClubMember"][i]),
            "GetsNewsletter": int(columns["GetsNewsletter"][i]),
            "StoreId": rng.choice(list(STORES)),
            "Created": self.clock.local(int(self._created[i])),
            "Modified": self.clock.local(int(self.customers.modified[i])),
            "cards": _cards(rng, customer_id),
        }

    # -- journals -----------------------------------------------------------------------------
    def _journals(self, draw: np.random.Generator, count: int) -> LeanCollection:
        clock = self.clock
        window = (clock.horizon - clock.window_start) // DAY
        stamps = np.sort(
            clock.window_start
            + draw.integers(0, window, count) * DAY
            + draw.integers(9 * 3600, 21 * 3600, count)
        )
        late = np.where(draw.random(count) < 0.8, 0, draw.integers(60, 3 * DAY, count))
        modified = np.minimum(stamps + late, clock.horizon - 1)
        anonymous = draw.random(count) < 0.03
        customer = draw.integers(FIRST_CUSTOMER, FIRST_CUSTOMER + max(1, self.total), count)
        self._journal_stamps = stamps
        columns = {
            "CustomerId": np.where(anonymous, -1, customer),
            "StoreId": draw.integers(1, len(STORES) + 1, count).astype(np.int8),
        }
        self._journal_columns = columns
        return LeanCollection(
            "JournalId",
            "Modified",
            "Date",
            FIRST_JOURNAL,
            modified,
            self._journal_block,
            self.lean_clock,
            days=stamps // DAY,
            columns=columns,
        )

    def _journal_block(self, block: int) -> list[Record]:
        rng = self._stream(JOURNALS, block)
        start = block * BLOCK
        end = min(start + BLOCK, len(self._journal_stamps))
        return [self._journal(rng, n) for n in range(start, end)]

    def _journal(self, rng: random.Random, n: int) -> Record:
        journal_id = FIRST_JOURNAL + n
        store_id = int(self._journal_columns["StoreId"][n])
        customer_id = int(self._journal_columns["CustomerId"][n])
        sign = -1 if rng.random() < 0.02 else 1
        lines = [_line(rng, k + 1, sign) for k in range(rng.choice([1, 1, 2, 2, 3, 4]))]
        return {
            "JournalId": journal_id,
            "JournalNo": f"J{store_id}-{journal_id}",
            "Date": self.clock.local(int(self._journal_stamps[n])),
            "StoreId": store_id,
            "StoreName": STORES[store_id],
            "CustomerId": None if customer_id < 0 else customer_id,
            "TotalAmount": round(sum(line["Amount"] for line in lines), 2),
            "TotalDiscount": round(sum(line["Discount"] for line in lines), 2),
            "Currency": "DKK",
            "Modified": self.clock.local(int(self.journals.modified[n])),
            "Lines": lines,
        }

    # -- tickets ------------------------------------------------------------------------------
    def _tickets(self, draw: np.random.Generator, orders: int) -> LeanCollection:
        clock = self.clock
        self._events = _fp_events(random.Random(f"lean-events-{self.seed}"), clock)
        event_at = np.array([when for _, _, when in self._events], dtype=np.int64)
        event = draw.integers(0, len(self._events), orders)
        latest = np.minimum(event_at[event], clock.horizon) - 1
        earliest = np.maximum(clock.window_start, event_at[event] - 90 * DAY)
        booked = earliest + (draw.random(orders) * np.maximum(latest - earliest, 1)).astype(
            np.int64
        )
        order = np.argsort(booked[latest > earliest], kind="stable")
        booked, event = booked[latest > earliest][order], event[latest > earliest][order]
        sizes = np.array([1, 2, 2, 3, 4])[draw.integers(0, 5, len(booked))]
        refunded = draw.random(len(booked)) < 0.04
        customer = draw.integers(FIRST_CUSTOMER, FIRST_CUSTOMER + max(1, self.total), len(booked))
        of_order = np.repeat(np.arange(len(booked)), sizes)
        delay = np.where(refunded[of_order], draw.integers(0, DAY, len(of_order)), 0)
        modified = np.minimum(booked[of_order] + delay, clock.horizon - 1)
        first = np.cumsum(sizes) - sizes
        self._orders = (booked, event, refunded, first)
        self._ticket_order = of_order
        position = np.arange(len(of_order)) - first[of_order]  # a ticket's place in its order
        self._ticket_draws = {  # an order's seats are adjacent, in one zone, sold on one channel
            "channel": draw.integers(0, 3, len(booked)).astype(np.int8)[of_order],
            "zone": draw.integers(0, len(FP_ZONES), len(booked)).astype(np.int8)[of_order],
            "row": draw.integers(1, 31, len(booked)).astype(np.int8)[of_order],
            "seat": draw.integers(1, 41, len(booked))[of_order] + position,
            "product": draw.integers(0, len(FP_PRODUCTS), len(of_order)).astype(np.int8),
        }
        columns = {"CustomerId": customer[of_order]}
        self._ticket_columns = columns
        return LeanCollection(
            "TicketId",
            "Modified",
            "BookingDate",
            FIRST_TICKET,
            modified,
            self._ticket_block,
            self.lean_clock,
            days=booked[of_order] // DAY,
            columns=columns,
        )

    def _ticket_block(self, block: int) -> list[Record]:
        start = block * BLOCK
        end = min(start + BLOCK, len(self._ticket_order))
        return [self._ticket(n) for n in range(start, end)]

    def _ticket(self, n: int) -> Record:
        order = int(self._ticket_order[n])
        booked, event, refunded, _ = (column[order] for column in self._orders)
        draws = {name: int(column[n]) for name, column in self._ticket_draws.items()}
        product_id, product_name, price = FP_PRODUCTS[draws["product"]]
        event_id, event_name, event_at = self._events[int(event)]
        return {
            "TicketId": FIRST_TICKET + n,
            "OrderId": 700_000 + order,
            "CustomerId": int(self._ticket_columns["CustomerId"][n]),
            "EventId": event_id,
            "EventName": event_name,
            "EventDate": self.clock.local(event_at),
            "BookingDate": self.clock.local(int(booked)),
            "Channel": ["Online", "Online", "POS"][draws["channel"]],
            "Status": "Refunded" if refunded else "Sold",
            "Modified": self.clock.local(int(self.tickets.modified[n])),
            "Zone": FP_ZONES[draws["zone"]],
            "Row": str(draws["row"]),
            "Seat": str(draws["seat"]),
            "ProductId": product_id,
            "ProductName": product_name,
            "Price": price,
        }

    # -- memberships (a tenth of the customers: small enough to hold) -----------------------
    def _memberships(self) -> Collection:
        rng, clock = random.Random(f"lean-memberships-{self.seed}"), self.clock
        today = date.fromisoformat(clock.day(clock.horizon))
        stamps = sorted(
            rng.randrange(clock.window_start, clock.horizon) for _ in range(self.total // 10)
        )
        rows: list[Record] = []
        for n, stamp in enumerate(stamps):
            customer_id = FIRST_CUSTOMER + rng.randrange(self.total)
            type_id, name, price = rng.choice(MEMBERSHIP_TYPES)
            valid_from = date.fromisoformat(clock.day(stamp))
            valid_to = valid_from + timedelta(days=364)
            cancelled = rng.random() < 0.05
            status = "Cancelled" if cancelled else ("Active" if valid_to >= today else "Expired")
            modified = min(stamp + rng.randrange(30 * DAY), clock.horizon - 1)
            rows.append(
                {
                    "MembershipId": FIRST_MEMBERSHIP + n,
                    "CustomerId": customer_id,
                    "MembershipTypeId": type_id,
                    "Name": name,
                    # the pass's own card number (the customer's cards are made only on demand)
                    "Cardnumber": 50_000_000 + n,
                    "PurchaseDate": clock.local(stamp),
                    "ValidFrom": valid_from.isoformat(),
                    "ValidTo": valid_to.isoformat(),
                    "Price": price,
                    "Status": status,
                    "Modified": clock.local(modified if cancelled else stamp),
                }
            )
        return Collection(rows, "MembershipId", "Modified", "PurchaseDate")
