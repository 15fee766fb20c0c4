"""Deterministic demo data for the Admin emulator: the relations of a Belgian accountancy office.

Persons and companies (a company has `IsCompany: true`, its name in `Name` and no `Firstname`),
Dutch and French names with accents, the office's own codes for language and CRM type, about one
relation in ten without the newsletter box, some inactive, a few without email, emails kept as the
office typed them (mixed case, stray spaces) and a few shared mailboxes (one address on two or
three relations, the duplicates of AF1), CRM interests on about half of them and the office's
"maatwerk velden" (custom fields) for each. Everything derives from the sandbox seed with one
`random.Random`; no Faker, so it is fast and stable.

Codes, as Admin keeps them ([I]: the real list 19 and `customercrmtypes` values are per office):
- `Language`: "N" Nederlands, "F" Frans, "E" Engels, "D" Duits (LANGUAGES; served as list 19).
- `CustomerCrmType`: the ids of CRM_TYPES (1 Klant, 2 Prospect, 3 Nieuwsbrief, 4 Ex-klant,
  5 Leverancier); served as `customercrmtypes`.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

Row = dict[str, Any]
OFFICE_COMPANY_ID = 1  # the office's own entity, Admin's `CompanyId`
FIRST_CUSTOMER_ID = 10_001
LANGUAGES: dict[str, str] = {"N": "Nederlands", "F": "Frans", "E": "Engels", "D": "Duits"}
CRM_TYPES: dict[int, str] = {
    1: "Klant",
    2: "Prospect",
    3: "Nieuwsbrief",
    4: "Ex-klant",
    5: "Leverancier",
}
CUSTOMER_GROUPS: dict[int, str] = {1: "Particulieren", 2: "KMO", 3: "Vrije beroepen"}
INTERESTS: list[str] = [
    "Fiscaliteit",
    "Vennootschapsrecht",
    "Successieplanning",
    "Btw",
    "Boekhouding",
    "Personenbelasting",
    "Sociaal recht",
    "Vastgoed",
]
ACC_SOFTWARE = ["Exact Online", "Octopus", "Yuki", "WinBooks", "Horus", "BOB 50", "Admisol"]
KANTOREN = ["Gent", "Brugge", "Kortrijk", "Namur"]  # the office's branches (custom field kantoor)

FIRST_NL_M = ["Jan", "Pieter", "Koen", "Stijn", "Wouter", "Jens", "Bart", "Geert", "Tom", "Luc"]
FIRST_NL_M += ["Joris", "Arne", "Sander", "Lowie"]
FIRST_NL_F = ["An", "Els", "Sofie", "Lien", "Hanne", "Ine", "Griet", "Nathalie", "Marleen"]
FIRST_NL_F += ["Liesbeth", "Ilse", "Noëlla", "Chloë", "Zoë", "Anaïs"]
FIRST_FR_M = ["Jérôme", "François", "Benoît", "Frédéric", "Cédric", "Hélio", "Loïc", "Gaëtan"]
FIRST_FR_M += ["Jean-Luc", "Olivier", "Rémi", "Théo"]
FIRST_FR_F = ["Émilie", "Hélène", "Mélanie", "Céline", "Geneviève", "Aurélie", "Françoise"]
FIRST_FR_F += ["Noémie", "Maëlle", "Léa", "Ségolène"]
LAST_NL = ["Peeters", "Janssens", "Maes", "Jacobs", "Mertens", "Willems", "Claes", "Goossens"]
LAST_NL += ["Wouters", "De Smet", "Van de Velde", "Vermeulen", "De Wilde", "Van Damme"]
LAST_NL += ["Verhaegen", "D'Hondt", "Vandenbroucke", "Coppens", "Van Hoëcke"]
LAST_FR = ["Dubois", "Lambert", "Dupont", "Martin", "Leroy", "Lefèvre", "Dumont", "Renard"]
LAST_FR += ["Lemaître", "Gérard", "Collard", "Hénin", "Frère", "Noël", "Thiébaut"]
TRADES_NL = ["Bakkerij", "Bouwbedrijf", "Schrijnwerkerij", "Tandartspraktijk", "Garage"]
TRADES_NL += ["Architectenbureau", "Brasserie", "Slagerij", "Transport", "Dakwerken"]
TRADES_FR = ["Boulangerie", "Menuiserie", "Cabinet dentaire", "Garage", "Brasserie"]
TRADES_FR += ["Toiture", "Boucherie", "Transports"]
FORMS_NL = ["BV", "NV", "CommV", "VOF", "VZW"]
FORMS_FR = ["SRL", "SA", "SCS", "ASBL"]
CITIES_NL = [("9000", "Gent"), ("8000", "Brugge"), ("8500", "Kortrijk"), ("2000", "Antwerpen")]
CITIES_NL += [("3000", "Leuven"), ("9300", "Aalst"), ("8800", "Roeselare"), ("9100", "Temse")]
CITIES_FR = [("5000", "Namur"), ("4000", "Liège"), ("7000", "Mons"), ("1300", "Wavre")]
CITIES_FR += [("6000", "Charleroi"), ("7500", "Tournai")]
STREETS_NL = ["Kerkstraat", "Stationsstraat", "Molenstraat", "Dorpsstraat", "Nieuwstraat"]
STREETS_FR = ["Rue de la Station", "Rue de l'Église", "Chaussée de Bruxelles", "Rue du Moulin"]
DOMAINS = ["telenet.be", "skynet.be", "proximus.be", "gmail.com", "hotmail.com", "outlook.be"]
NACE = ["69201", "47241", "43320", "86230", "56101", "49410", "71111", "47221"]
HISTORY_YEARS = 12


@dataclass
class AdminData:
    """The generated office, in Admin's own field names (see `sandbox.admin` for the shapes)."""

    customers: list[Row] = field(default_factory=list)  # GET customers/{id} rows
    addresses: dict[int, Row] = field(default_factory=dict)  # CustomerId -> write-only address
    interests: list[Row] = field(default_factory=list)  # {InterestId, Description}
    customer_interests: dict[int, list[int]] = field(default_factory=dict)  # id -> InterestIds
    extradata: dict[int, Row] = field(default_factory=dict)  # CustomerId -> custom field values


def relation_count(customers: int) -> int:
    """As many relations as the sandbox has shop customers (the demo's ~300), at least 20."""
    return max(20, customers)


def generate_admin(seed: int, relations: int, today: date) -> AdminData:
    """The whole office; the same (seed, relations, today) always gives identical output."""
    rng = random.Random(f"admin-{seed}")
    data = AdminData()
    data.interests = [
        {"InterestId": 101 + i, "Description": name} for i, name in enumerate(INTERESTS)
    ]
    for n in range(relations):
        cid = FIRST_CUSTOMER_ID + n
        row, address = (_company if rng.random() < 0.3 else _person)(rng, cid, today)
        data.customers.append(row)
        data.addresses[cid] = address
        data.extradata[cid] = _extradata(rng, cid, row)
        if rng.random() < 0.5:
            picked = rng.sample(data.interests, rng.randint(1, 3))
            data.customer_interests[cid] = sorted(i["InterestId"] for i in picked)
    _unique_emails(data.customers)
    _share_mailboxes(rng, data.customers)
    return data


def _unique_emails(customers: list[Row]) -> None:
    """Namesakes get a number in their address, so the only shared mailboxes are the chosen ones."""
    seen: set[str] = set()
    for row in customers:
        email = (row["Email"] or "").strip()
        if not email:
            continue
        local, _, domain = email.partition("@")
        n = 1
        while email.lower() in seen:
            n += 1
            email = f"{local}{n}@{domain}"
        seen.add(email.lower())
        if n > 1:
            row["Email"] = email


def dutch(language: str) -> bool:
    """Dutch, English and German speakers get Dutch names here; French speakers French ones."""
    return language != "F"


def _language(rng: random.Random) -> str:
    return rng.choices(list(LANGUAGES), weights=[60, 30, 6, 4])[0]


def _stamp(moment: datetime) -> str:
    """Admin's GET datetime: ISO without offset, Brussels local time ([I])."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def _created(rng: random.Random, today: date) -> datetime:
    start = datetime.combine(today, datetime.min.time()) - timedelta(days=HISTORY_YEARS * 365)
    return start + timedelta(seconds=rng.randrange(HISTORY_YEARS * 365 * 86400 - 86400))


def _ascii(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return plain.lower().replace(" ", "").replace("'", "")


def _typed(rng: random.Random, email: str) -> str:
    """The address as an office worker typed it: sometimes capitalised, sometimes with spaces."""
    roll = rng.random()
    if roll < 0.12:
        local, _, domain = email.partition("@")
        return f"{local.title()}@{domain.capitalize()}"
    if roll < 0.18:
        return f" {email} "
    return email


def _phone(rng: random.Random, mobile: bool) -> str:
    if mobile:
        return rng.choice(["+32 4{0}{1} {2} {3} {4}", "04{0}{1}/{2}.{3}.{4}"]).format(
            rng.choice("789"),
            rng.randrange(10),
            f"{rng.randrange(100):02d}",
            f"{rng.randrange(100):02d}",
            f"{rng.randrange(100):02d}",
        )
    zone, number = rng.choice("923"), rng.randrange(200, 999)
    return f"0{zone} {number} {rng.randrange(10, 99)} {rng.randrange(10, 99)}"


def _base(rng: random.Random, cid: int, today: date, language: str) -> Row:
    """The fields persons and companies share, with the office's habits."""
    active = rng.random() > 0.08
    created = _created(rng, today)
    disabled = created + timedelta(days=rng.randrange(30, 900)) if not active else None
    if disabled is not None and disabled.date() >= today:
        disabled = datetime.combine(today - timedelta(days=3), datetime.min.time())
    crm = rng.choices(list(CRM_TYPES), weights=[70, 12, 8, 6, 4])[0]
    return {
        "CustomerId": cid,
        "CommercialName": None,
        "IsActive": active,
        "DisabledDate": _stamp(disabled) if disabled else None,
        "CustKind": "K",
        "CustomerCrmType": 4 if not active else crm,
        "CustomerGroup": rng.choice([None, *CUSTOMER_GROUPS]),
        "CompanyId": OFFICE_COMPANY_ID,
        "CreationDate": _stamp(created),
        "Phone": rng.choice([None, _phone(rng, False)]),
        "Phone2": None,
        "Mobile": rng.choice([None, _phone(rng, True), _phone(rng, True)]),
        "Fax": None,
        "Homepage": None,
        "Language": language,
        "Newsletter": rng.random() > 0.1,
        "DateOfBirth": None,
        "PlaceOfBirth": None,
        "Nationality": None,
        "Sex": None,
        "Title": None,
        "VATNr": None,
        "NaceCode": None,
        "Sector": None,
        "RPR": None,
        "Remarks": None,
    }


def _address(rng: random.Random, language: str) -> Row:
    zipcode, city = rng.choice(CITIES_NL if dutch(language) else CITIES_FR)
    return {
        "Street1": rng.choice(STREETS_NL if dutch(language) else STREETS_FR),
        "Street2": None,
        "Nr": str(rng.randrange(1, 220)),
        "Box": rng.choice([None, None, None, "A", "bus 2", "b3"]),
        "Zipcode": zipcode,
        "City": city,
        "CountryCode": "BE",
    }


def _person(rng: random.Random, cid: int, today: date) -> tuple[Row, Row]:
    language = _language(rng)
    female = rng.random() < 0.5
    if dutch(language):
        first = rng.choice(FIRST_NL_F if female else FIRST_NL_M)
        last = rng.choice(LAST_NL)
        title = "Mevr." if female else "Dhr."
    else:
        first = rng.choice(FIRST_FR_F if female else FIRST_FR_M)
        last = rng.choice(LAST_FR)
        title = "Mme" if female else "M."
    row = _base(rng, cid, today, language)
    born = today - timedelta(days=rng.randrange(22 * 365, 85 * 365))
    row.update(
        {
            "Name": last,
            "Firstname": first,
            "IsCompany": False,
            "CustCode": f"{_ascii(last)[:3].upper()}{cid % 1000:03d}",
            "Email": _person_email(rng, first, last),
            "DateOfBirth": _stamp(datetime.combine(born, datetime.min.time())),
            "Sex": "V" if female else "M",
            "Title": title,
            "Nationality": "BE",
        }
    )
    return row, _address(rng, language)


def _person_email(rng: random.Random, first: str, last: str) -> str | None:
    if rng.random() < 0.07:
        return None if rng.random() < 0.5 else ""
    email = f"{_ascii(first)}.{_ascii(last)}@{rng.choice(DOMAINS)}"
    return _typed(rng, email)


def _company(rng: random.Random, cid: int, today: date) -> tuple[Row, Row]:
    language = rng.choices(["N", "F", "E"], weights=[65, 30, 5])[0]
    owner = rng.choice(LAST_NL if dutch(language) else LAST_FR)
    trade = rng.choice(TRADES_NL if dutch(language) else TRADES_FR)
    form = rng.choice(FORMS_NL if dutch(language) else FORMS_FR)
    name = f"{trade} {owner}"
    slug = f"{_ascii(trade)}-{_ascii(owner)}"
    row = _base(rng, cid, today, language)
    vat = rng.randrange(200_000_000, 999_999_999)
    row.update(
        {
            "Name": name,
            "Firstname": None,
            "CommercialName": rng.choice([None, f"{name} {form}"]),
            "IsCompany": True,
            "CustCode": f"{_ascii(owner)[:3].upper()}{cid % 1000:03d}",
            "Email": _typed(rng, f"{rng.choice(['info', 'boekhouding', 'admin'])}@{slug}.be")
            if rng.random() > 0.05
            else None,
            "Homepage": rng.choice([None, f"https://www.{slug}.be"]),
            "Title": form,
            "VATNr": f"BE0{str(vat)[:3]}.{str(vat)[3:6]}.{str(vat)[6:]}",
            "NaceCode": rng.choice(NACE),
            "Sector": trade,
            "RPR": rng.choice(["Gent", "Antwerpen", "Brussel", "Liège", "Namur"]),
        }
    )
    return row, _address(rng, language)


def _share_mailboxes(rng: random.Random, customers: list[Row]) -> None:
    """A few shared mailboxes: one address on two or three relations (AF1's duplicates).

    The first is the brief's `info@kantoor-peeters.be` on three active, subscribed relations; the
    others copy an existing address onto another relation, sometimes in another case."""
    candidates = [c for c in customers if c["IsActive"] and c["Newsletter"]]
    if len(candidates) < 8:
        return
    picked = rng.sample(candidates, 3 + 2 * max(1, len(customers) // 100))
    for row in picked[:3]:
        row["Email"] = rng.choice(["info@kantoor-peeters.be", "Info@Kantoor-Peeters.be"])
    for source, target in zip(picked[3::2], picked[4::2], strict=False):
        if not (source["Email"] or "").strip():
            source["Email"] = f"info@{_ascii(source['Name'])[:12]}.be"
        target["Email"] = rng.choice([source["Email"], source["Email"].strip().upper()])


def _extradata(rng: random.Random, cid: int, row: Row) -> Row:
    """The office's custom fields for one relation (AD-A11): software, branch, client since."""
    return {
        "CustomerId": cid,
        "acc_software": rng.choice(ACC_SOFTWARE) if row["IsCompany"] else None,
        "kantoor": rng.choice(KANTOREN),
        "klant_sinds": row["CreationDate"][:10],
    }
