"""Deterministic Russian demo data for the Teyca emulator: passes (loyalty cards) and operations.

The data is shaped like what Teyca's API returns and dirty where Teyca's is known to be (TY-A6,
TY-A7): Cyrillic names, `7XXXXXXXXXX` phones, `DD.MM.YYYY` birthdays, Moscow-time timestamps,
numbers as strings beside a few real numbers, consent in custom `key1` spelled several ways
(or missing), some cards without email, and a few people holding two cards under one phone (so
merge-by-phone, TX2, has work to do). Everything derives from the sandbox seed; Faker only builds
small name pools, as in `sandbox.generator`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from faker import Faker

Row = dict[str, object]
MOSCOW = timezone(timedelta(hours=3), "MSK")  # TY-A7: timestamps are Moscow time, UTC+3
SHARE = 0.4  # passes per generated (Danish) customer: the Teyca account is a smaller shop
FIRST_USER_ID = 100_001
TEMPLATES = ["Основная карта", "Основная карта", "Золотая карта", "Макет1"]
LOYALTY_LEVELS = ["Базовый", "Базовый", "Серебряный", "Золотой"]
DISCOUNTS = ["0%", "3%", "5%", "5%", "10%"]
# TY-A6: consent lives in custom `key1`; `None` means the key is absent from the pass.
CONSENT_SPELLINGS: list[str | None] = [
    "1",
    "true",
    "yes",
    "да",
    "confirmed",
    "confirmed",
    "blocked",
    "0",
    "нет",
    "",
    None,
    None,
]
CONSENTING = {"1", "true", "yes", "да", "confirmed"}  # TY-A6, for tests and summaries
OPERATING_SYSTEMS = ["ios", "ios", "android", "android", "android", ""]  # TY-A6: push = non-empty
STORES = [1, 2, 3, 4]
CAR_LETTERS = "АВЕКМНОРСТУХ"  # the Cyrillic letters allowed on Russian plates
EMAIL_DOMAINS = ["mail.ru", "yandex.ru", "gmail.com", "bk.ru", "list.ru", "rambler.ru"]
_TRANSLIT = str.maketrans(
    {
        "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh",
        "з": "z", "и": "i", "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o",
        "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts",
        "ч": "ch", "ш": "sh", "щ": "sch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu",
        "я": "ya",
    }
)  # fmt: skip


@dataclass
class TeycaData:
    """The generated account: passes by ascending user_id, operations by ascending id."""

    passes: list[Row]
    operations: list[Row]


@dataclass
class _Pools:
    male: tuple[list[str], list[str], list[str]]  # first names, last names, patronymics
    female: tuple[list[str], list[str], list[str]]
    cities: list[str]


def moscow(moment: datetime) -> str:
    """TY-A7 timestamp: `YYYY-MM-DD HH:MM:SS` in Moscow time."""
    return moment.astimezone(MOSCOW).strftime("%Y-%m-%d %H:%M:%S")


def pass_count(customers: int) -> int:
    """How many passes go with a sandbox of `customers` generated customers."""
    return max(1, round(customers * SHARE)) if customers else 0


def generate_teyca(seed: int, count: int, today: date) -> TeycaData:
    """`count` passes and their operations; same arguments, same data."""
    rng = random.Random(f"teyca-{seed}")
    pools = _pools(seed)
    now = datetime.combine(today, time(0, 0), MOSCOW)
    passes: list[Row] = []
    created: list[datetime] = []
    for index in range(count):
        created.append(now - timedelta(seconds=rng.randrange(3600, 3 * 365 * 86400)))
        twin = _twin_of(rng, passes)
        passes.append(_pass(rng, pools, now, created[-1], FIRST_USER_ID + index, twin))
    return TeycaData(passes, _operations(rng, now, passes, created))


def _pools(seed: int) -> _Pools:
    fake = Faker("ru_RU")
    fake.seed_instance(seed)

    def pool(make: Callable[[], str], size: int) -> list[str]:
        return sorted({make() for _ in range(size)})

    male = (
        pool(fake.first_name_male, 120),
        pool(fake.last_name_male, 200),
        pool(fake.middle_name_male, 80),
    )
    female = (
        pool(fake.first_name_female, 120),
        pool(fake.last_name_female, 200),
        pool(fake.middle_name_female, 80),
    )
    return _Pools(male, female, pool(fake.city_name, 60))


def _twin_of(rng: random.Random, earlier: list[Row]) -> Row | None:
    """Now and then a person registers a second card with the same phone (TX2)."""
    return rng.choice(earlier) if earlier and rng.random() < 0.06 else None


def _pass(
    rng: random.Random,
    pools: _Pools,
    now: datetime,
    created: datetime,
    user_id: int,
    twin: Row | None,
) -> Row:
    if twin is not None:  # the same person: names and phone carried over, the rest their own
        gender, first, last, pat = (
            twin["gender"],
            twin["first_name"],
            twin["last_name"],
            twin["pat_name"],
        )
        phone = str(twin["phone"])
    else:
        gender = "м" if rng.random() < 0.48 else "ж"
        firsts, lasts, pats = pools.male if gender == "м" else pools.female
        first, last, pat = rng.choice(firsts), rng.choice(lasts), rng.choice(pats)
        phone = f"79{user_id * 387_420_489 % 1_000_000_000:09d}"  # 3**18: distinct per user_id
    visits = rng.choice([0, 0, 1, 2, 3, 5, 8, 13, 21])
    summ = sum(rng.randrange(200, 5000) for _ in range(visits))
    record: Row = {
        "user_id": user_id,
        "template": rng.choice(TEMPLATES),
        "fio": f"{last} {first} {pat}",
        "first_name": first,
        "last_name": last,
        "pat_name": pat if rng.random() < 0.9 else "",
        "phone": phone,
        "sms_verify": rng.random() < 0.7,
        "email": _email(rng, str(first), str(last), user_id),
        "birthday": _birthday(rng),
        "gender": gender,
        "car_number": _car_number(rng) if rng.random() < 0.15 else "",
        "city": rng.choice(pools.cities) if rng.random() < 0.8 else "",
        "discount": rng.choice(DISCOUNTS),
        "bonus": str(rng.randrange(0, 3000) if visits else 0),  # TY-A7: numbers as strings
        "bonus_last": str(rng.randrange(0, 300) if visits else 0),
        "write_off_last": str(rng.randrange(0, 200) if visits else 0),
        "loyalty_level": rng.choice(LOYALTY_LEVELS),
        "summ": f"{summ * 0.9:.2f}",
        "summ_all": str(summ),
        "summ_last": str(rng.randrange(200, 5000) if visits else 0),
        "check_summ": str(summ // visits if visits else 0),
        "visits": visits,  # a real number beside the strings: the client must take both
        "visits_all": visits + rng.choice([0, 0, 1]),
        "date_last": _date_last(rng, created, now) if visits else None,
        "referal": "",
        "tags": sorted(rng.sample([1, 2, 3, 4, 5], rng.choice([0, 0, 1, 2]))),
        "barcode": f"{2_000_000_000_000 + user_id * 37:013d}",
        "link": f"https://cards.teyca.ru/download/{rng.getrandbits(40):010x}",
        "o_s": rng.choice(OPERATING_SYSTEMS),
        "telegram": rng.random() < 0.2,
        "created_at": moscow(created),
        "key2": rng.choice(["", "", "сайт", "касса", "промо"]),
    }
    consent = rng.choice(CONSENT_SPELLINGS)
    if consent is not None:
        record["key1"] = consent
    return record


def _email(rng: random.Random, first: str, last: str, user_id: int) -> str | None:
    roll = rng.random()
    if roll < 0.08:
        return None
    if roll < 0.12:
        return ""
    latin_first = first.lower().translate(_TRANSLIT)
    latin_last = last.lower().translate(_TRANSLIT)
    local = rng.choice([f"{latin_first}.{latin_last}", f"{latin_last}{user_id % 1000}"])
    return f"{local}@{rng.choice(EMAIL_DOMAINS)}"


def _birthday(rng: random.Random) -> str:
    """TY-A7: `DD.MM.YYYY`, or empty when the holder gave none."""
    if rng.random() < 0.1:
        return ""
    born = date(1950, 1, 1) + timedelta(days=rng.randrange(0, 365 * 55))
    return born.strftime("%d.%m.%Y")


def _car_number(rng: random.Random) -> str:
    letters = [rng.choice(CAR_LETTERS) for _ in range(3)]
    return f"{letters[0]}{rng.randrange(100, 1000)}{letters[1]}{letters[2]}{rng.randrange(1, 200)}"


def _date_last(rng: random.Random, created: datetime, now: datetime) -> str:
    span = int((now - created).total_seconds())
    return moscow(created + timedelta(seconds=rng.randrange(0, max(1, span))))


def _operations(
    rng: random.Random, now: datetime, passes: list[Row], created_at: list[datetime]
) -> list[Row]:
    """TY-A11 operations: one purchase per visit (a few returns); `integration` and
    `promotion_uuid` are kept for the filters and are not part of the answer."""
    moments: list[tuple[datetime, Row]] = []
    for card, created in zip(passes, created_at, strict=True):
        span = max(1, int((now - created).total_seconds()))
        for _ in range(int(str(card["visits"]))):
            moment = created + timedelta(seconds=rng.randrange(0, span))
            summ = rng.randrange(200, 5000)
            moments.append(
                (
                    moment,
                    {
                        "user_id": card["user_id"],
                        "operation_type": "return" if rng.random() < 0.05 else "purchase",
                        "summ": f"{summ:.2f}",
                        "bonus": str(summ // 20),
                        "store_id": rng.choice(STORES),
                        "integration": rng.choice(["rmk", "rmk", "api"]),
                        "promotion_uuid": None,
                    },
                )
            )
    moments.sort(key=lambda pair: (pair[0], pair[1]["user_id"]))
    return [
        {"id": number, **row, "created_at": moscow(moment)}
        for number, (moment, row) in enumerate(moments, start=1)
    ]
