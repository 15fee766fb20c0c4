"""Deterministic, realistic Danish demo data for the emulators.

The data is dirty on purpose (duplicate and malformed emails, mixed mobile spellings, missing
fields) because memberflow's staging must cope with exactly that, and Ticketmaster customers
overlap FlexPOS customers so the match-key logic has real work to do. Everything derives from one
`random.Random(seed)`; Faker only builds small name/street pools, so 100,000 customers stay fast.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from faker import Faker

Row = dict[str, Any]
DAY = 86400
_HISTORY_DAYS = 1100  # customers may have been created up to ~3 years before the window

CITIES: list[tuple[str, str]] = [
    ("1050", "København K"),
    ("2100", "København Ø"),
    ("2200", "København N"),
    ("2300", "København S"),
    ("2000", "Frederiksberg"),
    ("8000", "Aarhus C"),
    ("8200", "Århus N"),
    ("8210", "Århus V"),
    ("4600", "Køge"),
    ("4700", "Næstved"),
    ("5000", "Odense C"),
    ("9000", "Aalborg"),
    ("2800", "Kongens Lyngby"),
    ("3000", "Helsingør"),
    ("4000", "Roskilde"),
    ("7100", "Vejle"),
    ("6700", "Esbjerg"),
    ("8600", "Silkeborg"),
    ("2970", "Hørsholm"),
    ("3400", "Hillerød"),
    ("4300", "Holbæk"),
    ("8900", "Randers"),
    ("7400", "Herning"),
    ("6000", "Kolding"),
    ("5700", "Svendborg"),
    ("4800", "Nykøbing F"),
    ("9800", "Hjørring"),
    ("8700", "Horsens"),
    ("6400", "Sønderborg"),
    ("4200", "Slagelse"),
    ("2630", "Tåstrup"),
    ("2750", "Ballerup"),
    ("2605", "Brøndby"),
    ("3500", "Værløse"),
]
EXTRA_FIRST_MALE = ["Søren", "Bjørn", "Jørgen", "Øjvind", "Bent", "Anders", "Mads", "Jens", "Ole"]
EXTRA_FIRST_FEMALE = ["Åse", "Sørine", "Bodil", "Mette", "Birthe", "Solvej", "Mærsk", "Kirstine"]
EXTRA_LAST = ["Sørensen", "Møller", "Kjær", "Bækgaard", "Jørgensen", "Højgaard", "Østergård"]
DOMAINS = [
    "gmail.com",
    "hotmail.com",
    "mail.dk",
    "live.dk",
    "yahoo.dk",
    "outlook.dk",
    "jubii.dk",
    "stofanet.dk",
    "tdcadsl.dk",
    "youmail.dk",
    "icloud.com",
]
MOBILE_PREFIXES = [
    "20",
    "21",
    "22",
    "23",
    "24",
    "25",
    "26",
    "27",
    "28",
    "29",
    "30",
    "31",
    "40",
    "41",
    "42",
    "50",
    "51",
    "52",
    "53",
    "60",
    "61",
    "71",
    "81",
    "91",
    "92",
    "93",
]
CARD_NAMES = ["Pension", "Guld", "Familie", "Sølv", "Medlem", "Student"]
STORES: dict[int, str] = {
    1: "Butik København",
    2: "Butik Aarhus",
    3: "Butik Odense",
    4: "Webshop",
    5: "Butik Køge",
}
PRODUCTS: list[tuple[int, str, str, float]] = [
    (101, "Kaffe latte", "Café", 42.0),
    (102, "Rugbrødsmad", "Café", 65.0),
    (103, "Is med guf", "Café", 38.0),
    (104, "Sodavand 50 cl", "Café", 30.0),
    (105, "Wienerbrød", "Café", 28.0),
    (201, "Plakat", "Butik", 129.0),
    (202, "Krus med logo", "Butik", 89.0),
    (203, "T-shirt", "Butik", 199.0),
    (204, "Bamse", "Butik", 149.0),
    (205, "Årbog", "Butik", 249.95),
    (301, "Entré voksen", "Entré", 160.0),
    (302, "Entré barn", "Entré", 80.0),
    (303, "Familiebillet", "Entré", 420.0),
    (304, "Rundvisning", "Oplevelser", 75.0),
    (401, "Gavekort", "Gavekort", 500.0),
]
FP_EVENTS = [
    "Sommerkoncert i Haven",
    "Juleforestilling",
    "Halloween i Parken",
    "Fredagsrock",
    "Operaaften",
    "Børneteater: Pippi",
    "Jazz på Plænen",
    "Nytårskoncert",
    "Cirkus Summarum",
    "Påskemarked",
    "Sankthans ved Søen",
    "Kammerkoncert",
]
FP_ZONES = ["Parket", "Balkon", "Ståplads", "Loge", "Tribune"]
FP_PRODUCTS = [
    (1, "Voksen", 245.0),
    (2, "Barn", 145.0),
    (3, "Pensionist", 195.0),
    (4, "Studerende", 175.0),
]
MEMBERSHIP_TYPES = [
    (1, "Årskort Voksen", 795.0),
    (2, "Årskort Barn", 395.0),
    (3, "Familieårskort", 1495.0),
    (4, "Guldkort", 1995.0),
]
TM_ARTISTS = [
    "Lukas Graham",
    "Volbeat",
    "Medina",
    "Aqua",
    "Tobias Rahim",
    "Nik & Jay",
    "MØ",
    "Rasmus Seebach",
    "The Minds of 99",
    "Gasolin' Tribute",
    "Suspekt",
    "Christopher",
    "Danmarks Radio Big Band",
    "Søren Huss",
    "Kim Larsen Jam",
]
TM_VENUES = [
    ("V1001", "Royal Arena", "København"),
    ("V1002", "Tivoli Koncertsal", "København"),
    ("V1003", "Musikhuset Aarhus", "Aarhus"),
    ("V1004", "Jyske Bank Boxen", "Herning"),
    ("V1005", "Odense Koncerthus", "Odense"),
    ("V1006", "Parken", "København"),
]
TM_SECTIONS = ["Parterre", "Tribune A", "Tribune B", "101", "102", "Balkon", "Gulv"]
TM_TYPES = [
    ("PK1", "Voksen", 695.0),
    ("PK2", "Voksen", 545.0),
    ("PK3", "Barn", 295.0),
    ("PK2", "Pensionist", 445.0),
]
TM_CHANNELS = ["web", "web", "mobile", "mobile", "box_office", "call_center"]
_TRANSLIT = str.maketrans({"æ": "ae", "ø": "oe", "å": "aa", "é": "e", "ü": "u", "ö": "o"})


@dataclass
class SandboxData:
    """Everything the emulators serve, as plain dicts in the vendors' own field names."""

    seed: int
    today: date
    # lean: FlexPOS records are made on demand from (seed, customer_count, days) by the FlexPOS
    # emulator (sandbox.flexpos_lean) and the lists below stay empty (a million customers)
    lean: bool = False
    customer_count: int = 0
    days: int = 400
    flexpos_customers: list[Row] = field(default_factory=list)
    journals: list[Row] = field(default_factory=list)
    tickets: list[Row] = field(default_factory=list)
    memberships: list[Row] = field(default_factory=list)
    tm_customers: list[Row] = field(default_factory=list)
    tm_orders: list[Row] = field(default_factory=list)


@dataclass
class _Pools:
    male: list[str]
    female: list[str]
    last: list[str]
    streets: list[str]


class _Clock:
    """Integer seconds since an origin, formatted without datetime objects (speed)."""

    def __init__(self, today: date, days: int) -> None:
        total = days + _HISTORY_DAYS + 400
        origin = today - timedelta(days=days + _HISTORY_DAYS)
        self.days = [(origin + timedelta(days=d)).isoformat() for d in range(total)]
        self.horizon = (days + _HISTORY_DAYS) * DAY  # today 00:00: all generated times are before
        self.window_start = self.horizon - days * DAY

    def local(self, s: int) -> str:
        """FP-A3: `YYYY-MM-DDTHH:MM:SS`, Copenhagen local, no offset."""
        d, r = divmod(s, DAY)
        return f"{self.days[d]}T{r // 3600:02d}:{r % 3600 // 60:02d}:{r % 60:02d}"

    def utc(self, s: int) -> str:
        """TM-A2: ISO 8601 UTC with `Z`."""
        return self.local(s) + "Z"

    def day(self, s: int) -> str:
        return self.days[s // DAY]


def generate(
    seed: int = 42,
    customers: int = 300,
    days: int = 400,
    today: date | None = None,
    tm_overlap: float = 0.6,
    lean: bool = False,
) -> SandboxData:
    """Build the demo data; the same arguments (and `today`) always give identical output.

    `lean` builds nothing here: the FlexPOS emulator makes its records on demand (the other
    emulators get their smallest data sets)."""
    today = today or date.today()
    if lean:
        return SandboxData(seed=seed, today=today, lean=True, customer_count=customers, days=days)
    rng = random.Random(seed)
    pools = _pools(seed)
    clock = _Clock(today, days)
    data = SandboxData(seed=seed, today=today, customer_count=customers, days=days)
    people = [_person(rng, pools, i) for i in range(customers)]
    data.flexpos_customers = _fp_customers(rng, clock, people)
    ids = [c["CustomerId"] for c in data.flexpos_customers]
    data.journals = _journals(rng, clock, ids, customers * 3)
    data.tickets = _tickets(rng, clock, ids, max(1, int(customers * 0.4)))
    data.memberships = _memberships(rng, clock, data.flexpos_customers, today)
    data.tm_customers = _tm_customers(rng, clock, pools, people, data.flexpos_customers, tm_overlap)
    data.tm_orders = _tm_orders(rng, clock, data.tm_customers)
    return data


def _pools(seed: int) -> _Pools:
    fake = Faker("da_DK")
    fake.seed_instance(seed)
    male = sorted({fake.first_name_male() for _ in range(200)} | set(EXTRA_FIRST_MALE))
    female = sorted({fake.first_name_female() for _ in range(200)} | set(EXTRA_FIRST_FEMALE))
    last = sorted({fake.last_name() for _ in range(300)} | set(EXTRA_LAST))
    streets = sorted({fake.street_name() for _ in range(300)})
    return _Pools(male, female, last, streets)


def _person(rng: random.Random, pools: _Pools, index: int) -> Row:
    """A person's true attributes; each system then spells them its own way."""
    gender = "M" if rng.random() < 0.5 else "F"
    first = rng.choice(pools.male if gender == "M" else pools.female)
    last = rng.choice(pools.last)
    zip_code, city = rng.choice(CITIES)
    return {
        "first": first,
        "last": last,
        "gender": gender,
        "email": _email(rng, first, last, 1000 + index),
        "mobile": rng.choice(MOBILE_PREFIXES) + f"{(index * 7919 + 123_457) % 1_000_000:06d}",
        "street": f"{rng.choice(pools.streets)} {rng.randint(1, 180)}{_floor(rng)}",
        "zip": zip_code,
        "city": city,
        "birth": _birth(rng),
    }


def _email(rng: random.Random, first: str, last: str, number: int) -> str:
    f = "".join(ch for ch in first.lower().translate(_TRANSLIT) if ch.isalnum())
    ln = "".join(ch for ch in last.lower().translate(_TRANSLIT) if ch.isalnum())
    local = rng.choice([f"{f}.{ln}{number}", f"{f}{number}", f"{f[:1]}{ln}{number}"])
    return f"{local}@{rng.choice(DOMAINS)}"


def _floor(rng: random.Random) -> str:
    return rng.choice(["", "", "", ", st. tv.", ", 1. th.", ", 2. mf.", "A", "B"])


def _birth(rng: random.Random) -> str:
    return (date(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 66))).isoformat()


def _fp_mobile(rng: random.Random, digits: str) -> str:
    """One Danish number in one of the spellings POS staff type in."""
    pretty = f"{digits[:2]} {digits[2:4]} {digits[4:6]} {digits[6:]}"
    return rng.choice([digits, digits, f"+45{digits}", f"+45 {pretty}", f"0045 {digits}", pretty])


def _fp_customers(rng: random.Random, clock: _Clock, people: list[Row]) -> list[Row]:
    rows: list[Row] = []
    for i, p in enumerate(people):
        created = rng.randrange(clock.window_start - _HISTORY_DAYS * DAY, clock.horizon)
        modified = rng.randrange(max(created, clock.window_start), clock.horizon)
        customer_id = 1000 + i
        rows.append(
            {
                "CustomerId": customer_id,
                "CustomerNo": f"K{customer_id:07d}",
                "FirstName": p["first"],
                "LastName": p["last"],
                "Email": _dirty_email(rng, p, rows),
                "Mobile": _dirty_mobile(rng, p["mobile"]),
                "Address": p["street"],
                "ZipCode": p["zip"],
                "City": p["city"],
                "Country": "DK" if rng.random() < 0.97 else rng.choice(["SE", "NO", "DE"]),
                "BirthDate": None if rng.random() < 0.08 else p["birth"],
                "Gender": None if rng.random() < 0.06 else p["gender"],
                "IsActive": rng.random() < 0.92,
                "IsClubMember": 1 if rng.random() < 0.6 else 0,
                "GetsNewsletter": 1 if rng.random() < 0.7 else 0,
                "StoreId": rng.choice(list(STORES)),
                "Created": clock.local(created),
                "Modified": clock.local(modified),
                "cards": _cards(rng, customer_id),
            }
        )
    return rows


def _dirty_email(rng: random.Random, person: Row, earlier: list[Row]) -> str | None:
    """~5% missing, ~2% malformed, ~2% a copy of an earlier customer's (maybe other case)."""
    roll = rng.random()
    if roll < 0.05:
        person["clean"] = False
        return None
    if roll < 0.07:
        person["clean"] = False
        local, domain = person["email"].split("@")
        return rng.choice(
            [
                f"{local}@@{domain}",
                f"{local}(at){domain}",
                f"{local}@",
                f"{local}.{domain}",
                f"{local}@{domain.split('.')[0]}",
            ]
        )
    if roll < 0.09 and earlier:
        other = earlier[rng.randrange(len(earlier))]["Email"]
        if other and "@" in other:
            person["clean"] = False
            return rng.choice([other, other.upper(), other.capitalize()])
    person["clean"] = True
    return person["email"]


def _dirty_mobile(rng: random.Random, digits: str) -> str | None:
    roll = rng.random()
    if roll < 0.08:
        return None
    if roll < 0.09:
        return rng.choice(["1234", "abc", "12345", "000"])
    return _fp_mobile(rng, digits)


def _cards(rng: random.Random, customer_id: int) -> list[Row]:
    count = rng.choices([0, 1, 2], weights=[40, 45, 15])[0]
    return [
        {"Cardnumber": 40_000_000 + customer_id * 3 + k, "Cardname": rng.choice(CARD_NAMES)}
        for k in range(count)
    ]


def _journals(rng: random.Random, clock: _Clock, ids: list[int], count: int) -> list[Row]:
    """Sales during opening hours, ids in date order, ~3% anonymous, ~2% refunds."""
    window = (clock.horizon - clock.window_start) // DAY
    stamps = sorted(
        clock.window_start + rng.randrange(window) * DAY + rng.randrange(9 * 3600, 21 * 3600)
        for _ in range(count)
    )
    rows: list[Row] = []
    for n, stamp in enumerate(stamps):
        journal_id = 500_000 + n
        store_id = rng.choice(list(STORES))
        sign = -1 if rng.random() < 0.02 else 1
        lines = [_line(rng, k + 1, sign) for k in range(rng.choice([1, 1, 2, 2, 3, 4]))]
        late = 0 if rng.random() < 0.8 else rng.randrange(60, 3 * DAY)
        rows.append(
            {
                "JournalId": journal_id,
                "JournalNo": f"J{store_id}-{journal_id}",
                "Date": clock.local(stamp),
                "StoreId": store_id,
                "StoreName": STORES[store_id],
                "CustomerId": None if rng.random() < 0.03 or not ids else rng.choice(ids),
                "TotalAmount": round(sum(line["Amount"] for line in lines), 2),
                "TotalDiscount": round(sum(line["Discount"] for line in lines), 2),
                "Currency": "DKK",
                "Modified": clock.local(min(stamp + late, clock.horizon - 1)),
                "Lines": lines,
            }
        )
    return rows


def _line(rng: random.Random, line_no: int, sign: int) -> Row:
    product_id, name, group, price = rng.choice(PRODUCTS)
    quantity = rng.choice([1, 1, 1, 2, 2, 3])
    discount = round(price * quantity * 0.1, 2) if rng.random() < 0.15 else 0.0
    return {
        "LineNo": line_no,
        "ProductId": product_id,
        "ProductName": name,
        "ProductGroup": group,
        "Quantity": sign * quantity,
        "UnitPrice": price,
        "Discount": sign * discount,
        "Amount": round(sign * (price * quantity - discount), 2),
    }


def _fp_events(rng: random.Random, clock: _Clock) -> list[tuple[int, str, int]]:
    count = max(12, (clock.horizon - clock.window_start) // DAY // 20)
    events = []
    for k in range(count):
        start = clock.window_start + 30 * DAY
        when = rng.randrange(start, clock.horizon + 90 * DAY) // DAY * DAY + 19 * 3600
        events.append((9000 + k, f"{rng.choice(FP_EVENTS)} {clock.day(when)[:4]}", when))
    return events


def _tickets(rng: random.Random, clock: _Clock, ids: list[int], orders: int) -> list[Row]:
    """Attractions tickets in orders of 1-4 adjacent seats; ~4% of orders refunded."""
    events = _fp_events(rng, clock)
    booked = []
    for _ in range(orders):
        event = rng.choice(events)
        latest = min(event[2], clock.horizon) - 1
        earliest = max(clock.window_start, event[2] - 90 * DAY)
        if latest > earliest:
            booked.append((rng.randrange(earliest, latest), event))
    booked.sort()
    rows: list[Row] = []
    for n, (stamp, (event_id, event_name, event_at)) in enumerate(booked):
        order_id, refunded = 700_000 + n, rng.random() < 0.04
        channel, zone = rng.choice(["Online", "Online", "POS"]), rng.choice(FP_ZONES)
        row, seat, customer_id = str(rng.randint(1, 30)), rng.randint(1, 40), rng.choice(ids)
        for k in range(rng.choice([1, 2, 2, 3, 4])):
            product_id, product_name, price = rng.choice(FP_PRODUCTS)
            modified = min(stamp + rng.randrange(DAY), clock.horizon - 1) if refunded else stamp
            rows.append(
                {
                    "TicketId": 800_000 + len(rows),
                    "OrderId": order_id,
                    "CustomerId": customer_id,
                    "EventId": event_id,
                    "EventName": event_name,
                    "EventDate": clock.local(event_at),
                    "BookingDate": clock.local(stamp),
                    "Channel": channel,
                    "Status": "Refunded" if refunded else "Sold",
                    "Modified": clock.local(modified),
                    "Zone": zone,
                    "Row": row,
                    "Seat": str(seat + k),
                    "ProductId": product_id,
                    "ProductName": product_name,
                    "Price": price,
                }
            )
    return rows


def _memberships(rng: random.Random, clock: _Clock, customers: list[Row], today: date) -> list[Row]:
    """A few annual passes; Status follows ValidTo so "has membership" is testable."""
    rows: list[Row] = []
    stamps = sorted(
        rng.randrange(clock.window_start, clock.horizon) for _ in range(len(customers) // 10)
    )
    for n, stamp in enumerate(stamps):
        customer = rng.choice(customers)
        type_id, name, price = rng.choice(MEMBERSHIP_TYPES)
        valid_from = date.fromisoformat(clock.day(stamp))
        valid_to = valid_from + timedelta(days=364)
        cancelled = rng.random() < 0.05
        status = "Cancelled" if cancelled else ("Active" if valid_to >= today else "Expired")
        cards = customer["cards"]
        rows.append(
            {
                "MembershipId": 60_000 + n,
                "CustomerId": customer["CustomerId"],
                "MembershipTypeId": type_id,
                "Name": name,
                "Cardnumber": cards[0]["Cardnumber"] if cards else 50_000_000 + n,
                "PurchaseDate": clock.local(stamp),
                "ValidFrom": valid_from.isoformat(),
                "ValidTo": valid_to.isoformat(),
                "Price": price,
                "Status": status,
                "Modified": clock.local(
                    min(stamp + rng.randrange(30 * DAY), clock.horizon - 1) if cancelled else stamp
                ),
            }
        )
    return rows


def _tm_customers(
    rng: random.Random,
    clock: _Clock,
    pools: _Pools,
    people: list[Row],
    fp_customers: list[Row],
    overlap: float,
) -> list[Row]:
    """Half as many TM customers as FlexPOS ones; `overlap` of them are the same people."""
    total = len(people) // 2
    eligible = [i for i, p in enumerate(people) if p.get("clean")]
    shared = rng.sample(eligible, min(len(eligible), round(overlap * total)))
    persons: list[tuple[Row, bool]] = [(people[i], bool(fp_customers[i]["Mobile"])) for i in shared]
    for j in range(total - len(shared)):
        person = _person(rng, pools, len(people) + j)
        person["email"] = _email(rng, person["first"], person["last"], 900_000 + j)
        persons.append((person, rng.random() < 0.85))
    rng.shuffle(persons)
    return [_tm_customer(rng, clock, n, p, has_mobile) for n, (p, has_mobile) in enumerate(persons)]


def _tm_customer(rng: random.Random, clock: _Clock, n: int, p: Row, has_mobile: bool) -> Row:
    created = rng.randrange(clock.window_start - 700 * DAY, clock.horizon)
    modified = rng.randrange(max(created, clock.window_start), clock.horizon)
    consent = rng.random() < 0.8
    email = p["email"]
    if rng.random() < 0.25:
        email = rng.choice([email.upper(), email.capitalize(), email.title()])
    return {
        "customerId": f"TMC{100_001 + n}",
        "email": email,
        "mobile": f"+45{p['mobile']}" if has_mobile else None,
        "firstName": p["first"],
        "lastName": p["last"],
        "birthDate": p["birth"] if rng.random() < 0.7 else None,
        "gender": p["gender"] if rng.random() < 0.9 else "U",
        "address": {
            "line1": p["street"],
            "postalCode": p["zip"],
            "city": p["city"],
            "country": "DK",
        },
        "language": rng.choice(["da"] * 8 + ["en", "sv"]),
        "marketingConsent": consent,
        "marketingConsentDate": clock.utc(rng.randint(created, modified)) if consent else None,
        "smsConsent": rng.random() < 0.4,
        "createdDate": clock.utc(created),
        "modifiedDate": clock.utc(modified),
    }


def _tm_orders(rng: random.Random, clock: _Clock, customers: list[Row]) -> list[Row]:
    """0-3 orders per TM customer, 1-4 tickets each, ids in order-date order."""
    events = []
    for k in range(max(10, len(customers) // 25)):
        venue = rng.choice(TM_VENUES)
        when = rng.randrange(clock.window_start + 20 * DAY, clock.horizon + 120 * DAY)
        events.append((f"EV{20_000 + k}", rng.choice(TM_ARTISTS), when // DAY * DAY + 72000, venue))
    planned = []
    for customer in customers:
        for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
            event = rng.choice(events)
            latest = min(event[2], clock.horizon) - 1
            earliest = max(clock.window_start, event[2] - 120 * DAY)
            if latest > earliest:
                planned.append((rng.randrange(earliest, latest), customer["customerId"], event))
    planned.sort()
    by_id = {c["customerId"]: c for c in customers}
    return [_tm_order(rng, clock, n, *plan, by_id[plan[1]]) for n, plan in enumerate(planned)]


def _tm_order(
    rng: random.Random,
    clock: _Clock,
    n: int,
    stamp: int,
    customer_id: str,
    event: tuple[str, str, int, tuple[str, str, str]],
    customer: Row,
) -> Row:
    event_id, artist, event_at, (venue_id, venue_name, venue_city) = event
    order_id = f"ORD{3_000_001 + n}"
    section, row, seat = rng.choice(TM_SECTIONS), str(rng.randint(1, 40)), rng.randint(1, 30)
    tickets = []
    for k in range(rng.choice([1, 2, 2, 3, 4])):
        category, ticket_type, price = rng.choice(TM_TYPES)
        tickets.append(
            {
                "ticketId": f"{order_id}-{k + 1}",
                "eventId": event_id,
                "eventName": f"{artist} - {venue_name}",
                "eventDate": clock.utc(event_at),
                "venueId": venue_id,
                "venueName": venue_name,
                "venueCity": venue_city,
                "section": section,
                "row": row,
                "seat": str(seat + k),
                "priceCategory": category,
                "ticketType": ticket_type,
                "price": price,
                "status": "refunded" if rng.random() < 0.05 else "sold",
            }
        )
    refunded = sum(t["status"] == "refunded" for t in tickets)
    status = "completed" if not refunded else "refunded"
    if 0 < refunded < len(tickets):
        status = "partially_refunded"
    late = rng.randrange(60, 5 * DAY) if refunded else 0
    return {
        "orderId": order_id,
        "customerId": customer_id,
        "email": customer["email"],
        "orderDate": clock.utc(stamp),
        "channel": rng.choice(TM_CHANNELS),
        "currency": "DKK",
        "totalAmount": round(sum(t["price"] for t in tickets), 2),
        "status": status,
        "modifiedDate": clock.utc(min(stamp + late, clock.horizon - 1)),
        "tickets": tickets,
    }
