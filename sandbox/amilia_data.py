"""Deterministic demo data for the Amilia emulator: a Québec sports centre.

Programs → categories → subcategories → activities (some drop-in, some cancelled), families
(an owner, sometimes a spouse, often children under 18), a few owners who share one email across
two accounts, French accents, registrations over the last 26 months (drop-ins included, a few
cancelled), memberships bought per account, archived persons and accounts. Everything derives
from the sandbox seed with one `random.Random`; no Faker, so it is fast and stable.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

Row = dict[str, Any]
ORG_ID = 8008

FIRST_F = [
    "Émilie",
    "Léa",
    "Chloé",
    "Zoé",
    "Mégane",
    "Geneviève",
    "Josée",
    "Hélène",
    "Andrée",
    "Marie-Ève",
    "Noémie",
    "Rosalie",
    "Béatrice",
    "Anaïs",
    "Maëlle",
    "Sophie",
    "Julie",
]
FIRST_M = [
    "François",
    "Jérôme",
    "Étienne",
    "Benoît",
    "Frédéric",
    "Hugo",
    "Olivier",
    "Mathéo",
    "Loïc",
    "Jean-Sébastien",
    "Gaël",
    "Noé",
    "Raphaël",
    "Félix",
    "Samuel",
    "Luc",
    "Éric",
]
LAST = [
    "Tremblay",
    "Gagnon",
    "Bélanger",
    "Côté",
    "Bouchard",
    "Gauthier",
    "Lévesque",
    "Pelletier",
    "Bérubé",
    "Thériault",
    "Lefebvre",
    "Ouellet",
    "Fréchette",
    "Dupré",
    "Chrétien",
    "Séguin",
    "Létourneau",
    "Poirier",
    "Desjardins",
    "Théberge",
    "Nguyen",
    "Bédard",
    "Leblanc",
]
STREETS = [
    "rue Saint-Denis",
    "boulevard René-Lévesque",
    "avenue du Mont-Royal",
    "rue Sainte-Catherine",
    "chemin de la Côte-des-Neiges",
    "rue Beaubien",
    "avenue Papineau",
    "rue Fleury",
    "boulevard Saint-Laurent",
    "rue de l'Église",
]
CITIES = [
    ("Montréal", "H2J"),
    ("Laval", "H7N"),
    ("Longueuil", "J4K"),
    ("Québec", "G1R"),
    ("Lévis", "G6V"),
    ("Trois-Rivières", "G9A"),
    ("Sherbrooke", "J1H"),
]
DOMAINS = ["videotron.ca", "gmail.com", "hotmail.com", "sympatico.ca", "outlook.com", "yahoo.ca"]
AREA_CODES = ["514", "438", "450", "418", "819"]
SKILLS = [
    "Natation niveau 1",
    "Natation niveau 3",
    "Premiers soins",
    "Sauveteur national",
    "Patinage Étape 2",
    "Arbitre niveau 1",
]
# program -> category -> subcategory -> [(activity, drop-in?)]
HIERARCHY: dict[str, dict[str, dict[str, list[tuple[str, bool]]]]] = {
    "Programme aquatique": {
        "Natation": {
            "Enfants": [("Étoile de mer", False), ("Canard", False), ("Tortue de mer", False)],
            "Adultes": [("Longueurs dirigées", True), ("Aquaforme", False)],
        },
        "Plongeon": {"Compétitif": [("Équipe régionale", False)]},
    },
    "Sports de glace": {
        "Patinage": {"Initiation": [("Patinage Plus", False), ("Patin libre", True)]},
        "Hockey": {"Mineur": [("Novice", False), ("Atome", False), ("Pee-Wee", False)]},
    },
    "Activités récréatives": {
        "Danse": {"Jeunesse": [("Hip-hop", False), ("Ballet classique", False)]},
        "Mise en forme": {
            "Adultes": [("Yoga doux", False), ("Zumba", False), ("Entraînement en circuit", False)]
        },
        "Sports de raquette": {
            "Badminton": [("Badminton libre", True)],
            "Pickleball": [("Pickleball libre", True)],
        },
    },
}
CANCELLED = {"Aquaforme", "Ballet classique"}  # cancelled for everyone (AC6)
GROUPS = ["Samedi 9 h", "Mardi 18 h 30", "Jeudi 19 h"]
MEMBERSHIPS = [
    "Carte de membre annuelle — Famille",
    "Carte de membre annuelle — Adulte",
    "Abonnement Aînés 65+",
    "Accès piscine illimité",
]
HISTORY_DAYS = 790  # registrations reach ~26 months back, past AC1's 24-month first sync


def offset(day: date) -> timezone:
    """[I] Eastern time, DST approximated by month (April–October is EDT)."""
    return timezone(timedelta(hours=-4 if 4 <= day.month <= 10 else -5))


def iso(moment: datetime) -> str:
    """AM-A15: ISO 8601 with an offset, whole seconds."""
    local = moment.replace(tzinfo=offset(moment.date()))
    return local.isoformat(timespec="seconds")


@dataclass
class AmiliaData:
    """The generated org, in Amilia's own field names (see `sandbox.amilia` for the shapes)."""

    programs: list[Row] = field(default_factory=list)
    activities: list[Row] = field(default_factory=list)
    occurrences: dict[int, list[Row]] = field(default_factory=dict)  # activity id -> occurrences
    accounts: list[Row] = field(default_factory=list)  # {Id, IsArchived, OwnerId, MemberIds}
    persons: list[Row] = field(default_factory=list)  # person-detail rows
    registrations: list[Row] = field(default_factory=list)  # internal rows, see _registration
    memberships: list[Row] = field(default_factory=list)  # {Id, Name, IsArchived}
    account_memberships: list[Row] = field(default_factory=list)  # AM-A8 rows + AccountId


def account_count(customers: int) -> int:
    """A sports centre about half the size of the shop: 150-300 customers → 75-150 families."""
    return max(8, customers // 2)


def generate_amilia(seed: int, accounts: int, today: date) -> AmiliaData:
    """The whole org; the same (seed, accounts, today) always gives identical output."""
    rng = random.Random(f"amilia-{seed}")
    data = AmiliaData()
    _catalogue(rng, data, today)
    _families(rng, data, accounts, today)
    _registrations(rng, data, today)
    _memberships(rng, data, today)
    return data


def _catalogue(rng: random.Random, data: AmiliaData, today: date) -> None:
    program_id, category_id, activity_id, occurrence_id = 1000, 2000, 50_000, 900_000
    start = today - timedelta(days=HISTORY_DAYS)
    end = today + timedelta(days=120)
    for program, categories in HIERARCHY.items():
        program_id += 1
        data.programs.append(
            {
                "Id": program_id,
                "Name": program,
                "Url": f"https://app.amilia.com/store/fr/centre-sportif/shop/programs/{program_id}",
                "Online": True,
                "StartDate": iso(datetime.combine(start, datetime.min.time())),
                "ExpirationDate": iso(datetime.combine(end, datetime.min.time())),
                "IsArchived": False,
            }
        )
        for category, subcategories in categories.items():
            category_id += 1
            cat_id = category_id
            for subcategory, activities in subcategories.items():
                category_id += 1
                for name, drop_in in activities:
                    for first, last, label in _sessions(start, end, today, drop_in):
                        activity_id += 1
                        data.activities.append(
                            {
                                "Id": activity_id,
                                "Name": f"{name} — {label}" if label else name,
                                "ProgramId": program_id,
                                "ProgramName": program,
                                "CategoryId": cat_id,
                                "CategoryName": category,
                                "SubCategoryId": category_id,
                                "SubCategoryName": subcategory,
                                "Status": "Cancelled"
                                if name in CANCELLED and last > today
                                else "Normal",
                                "StartDate": iso(datetime.combine(first, datetime.min.time())),
                                "EndDate": iso(datetime.combine(last, datetime.min.time())),
                                "Price": float(rng.choice([45, 60, 85, 120, 160, 210])),
                                "IsDropIn": drop_in,
                                "Groups": []
                                if drop_in
                                else [
                                    {"Id": activity_id * 10 + i, "Name": g}
                                    for i, g in enumerate(GROUPS)
                                ],
                            }
                        )
                    if drop_in:
                        occurrences = []
                        day = start + timedelta(days=rng.randrange(7))
                        while day < end:
                            occurrence_id += 1
                            moment = datetime.combine(day, datetime.min.time()) + timedelta(
                                hours=rng.choice([10, 13, 19])
                            )
                            occurrences.append(
                                {
                                    "Id": occurrence_id,
                                    "Date": iso(moment),
                                    "ActivityId": activity_id,
                                }
                            )
                            day += timedelta(days=7)
                        data.occurrences[activity_id] = occurrences


def _sessions(
    start: date, end: date, today: date, drop_in: bool
) -> list[tuple[date, date, str | None]]:
    """A drop-in runs all along; a course runs in sessions: one that ended ~7 months ago (only
    `showEnded=true` lists its registrations) and the current one, each named by its season."""
    if drop_in:
        return [(start, end, None)]
    split = today - timedelta(days=200)
    return [(start, split, _season(start)), (split + timedelta(days=1), end, _season(split))]


def _season(day: date) -> str:
    names = {12: "Hiver", 1: "Hiver", 2: "Hiver", 3: "Printemps", 4: "Printemps", 5: "Printemps"}
    names |= {6: "Été", 7: "Été", 8: "Été", 9: "Automne", 10: "Automne", 11: "Automne"}
    return f"{names[day.month]} {day.year}"


def _ascii(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return plain.lower().replace(" ", "").replace("'", "")


def _phone(rng: random.Random) -> str:
    return f"{rng.choice(AREA_CODES)}-{rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}"


def _person(rng: random.Random, pid: int, last: str, born: date, today: date) -> Row:
    female = rng.random() < 0.5
    first = rng.choice(FIRST_F if female else FIRST_M)
    age = (today - born).days // 365
    return {
        "Id": pid,
        "FirstName": first,
        "LastName": last,
        "FullName": f"{first} {last}",
        "Gender": rng.choice(["Female"] * 9 + ["PreferNotToSay"])
        if female
        else rng.choice(["Male"] * 9 + ["NotSpecified"]),
        "DateOfBirth": born.isoformat(),
        "Email": None,
        "Telephone": None,
        "TelephoneMobile": None,
        "TelephoneWork": None,
        "TelephoneWorkExtension": None,
        "IsChild": age < 18,
        "OrganizationId": ORG_ID,
        "IsArchived": False,
        "Skills": [],
        "Contacts": [],
        "MedicalInformation": None,
        "PictureUrl": None,
        "ExternalId": None,  # [I] the field name is unknown; AC9's Amilia.ExternalId
    }


def _families(rng: random.Random, data: AmiliaData, count: int, today: date) -> None:
    pid = 300_000
    shared: list[str] = []
    for n in range(count):
        account_id = 700_001 + n
        last = rng.choice(LAST)
        city, fsa = rng.choice(CITIES)
        address = {
            "Address1": f"{rng.randrange(10, 9999)}, {rng.choice(STREETS)}",
            "Address2": rng.choice([None, None, None, f"app. {rng.randrange(1, 40)}"]),
            "City": city,
            "StateProvince": "QC",
            "Country": "CA",  # AM-A7
            "PostalCode": f"{fsa} {rng.randrange(1, 9)}{rng.choice('ABCEGHJKLMNPRSTVXY')}"
            f"{rng.randrange(1, 9)}",
            "Latitude": round(45.5 + rng.uniform(-0.8, 1.4), 5),
            "Longitude": round(-73.6 + rng.uniform(-2.0, 1.8), 5),
        }
        members: list[Row] = []
        pid += 1
        owner = _person(
            rng, pid, last, today - timedelta(days=rng.randrange(25 * 365, 70 * 365)), today
        )
        if shared and rng.random() < 0.08:  # the same parent's email on a second account
            owner["Email"] = rng.choice(shared)
        else:
            owner["Email"] = (
                f"{_ascii(owner['FirstName'])}.{_ascii(last)}{rng.randrange(99)}"
                f"@{rng.choice(DOMAINS)}"
            )
            shared.append(owner["Email"])
        owner["TelephoneMobile"] = _phone(rng)
        owner["Telephone"] = rng.choice([None, _phone(rng)])
        members.append(owner)
        if rng.random() < 0.45:  # a spouse, with an email of their own or none
            pid += 1
            spouse = _person(
                rng,
                pid,
                rng.choice([last, rng.choice(LAST)]),
                today - timedelta(days=rng.randrange(25 * 365, 70 * 365)),
                today,
            )
            if rng.random() < 0.6:
                spouse["Email"] = (
                    f"{_ascii(spouse['FirstName'])}.{_ascii(spouse['LastName'])}"
                    f"@{rng.choice(DOMAINS)}"
                )
            members.append(spouse)
        for _ in range(rng.choice([0, 0, 1, 2, 2, 3])):  # children: no email of their own
            pid += 1
            child = _person(
                rng, pid, last, today - timedelta(days=rng.randrange(4 * 365, 17 * 365)), today
            )
            if rng.random() < 0.15:  # some parents type their own email on the child
                child["Email"] = owner["Email"]
            members.append(child)
        archived_account = rng.random() < 0.05
        for person in members:
            person.update(
                {
                    "AccountId": account_id,
                    "AccountOwnerId": owner["Id"],
                    "AccountOwnerFirstName": owner["FirstName"],
                    "AccountOwnerLastName": owner["LastName"],
                    "AccountOwnerFullName": owner["FullName"],
                    "AccountOwnerEmail": owner["Email"],
                    "AccountOwnerTelephoneMobile": owner["TelephoneMobile"],
                    "Address": dict(address),
                    "JoinDate": (today - timedelta(days=rng.randrange(30, 2500))).isoformat(),
                    "IsArchived": archived_account or rng.random() < 0.04,
                    "Skills": [
                        {"Id": 40 + i, "Name": s}
                        for i, s in enumerate(SKILLS)
                        if rng.random() < 0.08
                    ],
                }
            )
            if rng.random() < 0.1:
                person["ExternalId"] = f"EXT-{person['Id']}"
            data.persons.append(person)
        owner["Contacts"] = [
            {
                "FirstName": rng.choice(FIRST_F),
                "LastName": rng.choice(LAST),
                "Relationship": rng.choice(["Grand-mère", "Voisin", "Oncle"]),
                "Type": "EmergencyContact",
                "Telephone": _phone(rng),
            }
        ]
        data.accounts.append(
            {
                "Id": account_id,
                "IsArchived": archived_account,
                "Corporate": False,
                "OwnerId": owner["Id"],
                "MemberIds": [p["Id"] for p in members],
            }
        )


def _registrations(rng: random.Random, data: AmiliaData, today: date) -> None:
    number = 10_000
    activities = data.activities
    for person in data.persons:
        for _ in range(rng.choice([0, 1, 1, 2, 3, 4])):
            created = datetime.combine(today, datetime.min.time()) - timedelta(
                seconds=rng.randrange(3600, HISTORY_DAYS * 86400)
            )
            stamp = iso(created)
            activity = rng.choice(
                [a for a in activities if a["StartDate"] <= stamp < a["EndDate"]] or activities
            )
            drop_in = None
            if activity["IsDropIn"]:
                after = [o for o in data.occurrences[activity["Id"]] if o["Date"] >= iso(created)]
                drop_in = after[0] if after else None
            number += rng.randrange(1, 9)
            data.registrations.append(
                {
                    "Number": number,
                    "Created": created,
                    "PersonId": person["Id"],
                    "AccountId": person["AccountId"],
                    "ActivityId": activity["Id"],
                    "Group": rng.choice(activity["Groups"]) if activity["Groups"] else None,
                    "DropIn": drop_in,
                    "IsCancelled": rng.random() < 0.06,
                }
            )
    data.registrations.sort(key=lambda r: r["Number"])


def _memberships(rng: random.Random, data: AmiliaData, today: date) -> None:
    data.memberships = [
        {"Id": 60 + i, "Name": n, "IsArchived": False} for i, n in enumerate(MEMBERSHIPS)
    ]
    data.memberships.append({"Id": 69, "Name": "Carte saisonnière 2023", "IsArchived": True})
    for account in data.accounts:
        if rng.random() < 0.45:
            continue
        membership = rng.choice(data.memberships[:-1])
        purchased = today - timedelta(days=rng.randrange(1, 700))
        expires = purchased + timedelta(days=365)
        status = "Active" if expires >= today else "Expired"
        if status == "Active" and rng.random() < 0.05:
            status = "Inactive"
        data.account_memberships.append(
            {
                "Id": 80_001 + len(data.account_memberships),  # the purchase, AM-A10's `Id`
                "AccountId": account["Id"],
                "MembershipId": membership["Id"],
                "Name": membership["Name"],
                "PersonId": account["OwnerId"],
                "PurchasedDate": iso(
                    datetime.combine(purchased, datetime.min.time())
                    + timedelta(hours=rng.randrange(8, 21))
                ),
                "EffectiveDate": purchased.isoformat(),
                "ExpirationDate": expires.isoformat(),
                "Status": status,
            }
        )
