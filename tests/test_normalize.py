"""Value normalisation and the data-quality gate: good values canonical, bad ones a reason."""

from __future__ import annotations

import pandas as pd
import pytest

from memberflow import normalize, validation
from memberflow.mapping import load_mapping

FLEXPOS_FORMAT = "%Y-%m-%dT%H:%M:%S"
TICKETMASTER_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def series(*values) -> pd.Series:
    return pd.Series(list(values), dtype=object)


def fine(problems: pd.Series) -> list[bool]:
    """Which rows have no problem (None, not NaN: NaN reads as a problem downstream)."""
    return [p is None for p in problems]


# --- emails -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("anna@example.dk", "anna@example.dk"),
        ("Anna.Berg@Example.DK", "anna.berg@example.dk"),
        ("  ANNA@EXAMPLE.DK ", "anna@example.dk"),
    ],
)
def test_email_is_trimmed_and_lower_cased(raw, expected):
    assert normalize.email(raw) == (expected, None)


@pytest.mark.parametrize("raw", ["anna.example.dk", "anna@", "anna@example", "an na@example.dk"])
def test_invalid_email_gives_a_reason(raw):
    value, problem = normalize.email(raw)
    assert value is None
    assert problem.startswith(f"invalid email '{raw[0]}***")
    assert raw not in problem  # masked: never the whole address


def test_blank_email_is_missing_not_invalid():
    assert normalize.email("   ") == (None, None)


# --- mobiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "12345678",
        "+45 12 34 56 78",
        "0045 12345678",
        "12 34 56 78",
        "+4512345678",
        "004512345678",
        " 12345678 ",
    ],
)
def test_danish_mobile_in_every_spelling_is_e164(raw):
    assert normalize.mobile_for("DK")(raw) == ("+4512345678", None)


def test_a_mobile_in_the_sandbox_ranges_is_e164():
    assert normalize.mobile_for("DK")("20 30 40 50") == ("+4520304050", None)


def test_a_foreign_number_keeps_its_country():
    assert normalize.mobile_for("DK")("+46 70 123 45 67") == ("+46701234567", None)
    assert normalize.mobile_for("SE")("070-123 45 67") == ("+46701234567", None)


@pytest.mark.parametrize("raw", ["1234", "12345", "abc", "000", "+45 1234", "123456789012"])
def test_invalid_mobile_gives_a_reason(raw):
    value, problem = normalize.mobile_for("DK")(raw)
    assert value is None
    assert problem.startswith("invalid mobile '")
    assert raw not in problem  # masked: at most the last digits


def test_blank_mobile_is_missing_not_invalid():
    assert normalize.mobile_for("DK")("  ") == (None, None)


def test_per_distinct_maps_every_row_and_keeps_missing_values_missing():
    values, problems = normalize._per_distinct(
        series("12345678", None, "abc", "12 34 56 78", "12345678"), normalize.mobile_for("DK")
    )
    assert list(values) == ["+4512345678", None, None, "+4512345678", "+4512345678"]
    assert fine(problems) == [True, True, False, True, True]


# --- dates ------------------------------------------------------------------------------------


def test_dates_in_the_source_format():
    values, problems = normalize.dates(series("31-12-1990", "01-02-2001"), "%d-%m-%Y", False)
    assert list(values) == ["1990-12-31", "2001-02-01"]
    assert fine(problems) == [True, True]


def test_dates_fall_back_to_iso_8601():
    values, problems = normalize.dates(
        series("31-12-1990", "1990-12-31", "2024-03-01T10:00:00"), "%d-%m-%Y", False
    )
    assert list(values) == ["1990-12-31", "1990-12-31", "2024-03-01"]
    assert fine(problems) == [True, True, True]


def test_datetimes_with_the_source_format_and_aware_iso_converted_to_utc():
    values, problems = normalize.dates(
        series("2024-03-01T10:00:00Z", "2024-03-01T10:00:00+02:00", "2024-03-01"),
        TICKETMASTER_FORMAT,
        True,
    )
    assert list(values) == ["2024-03-01 10:00:00", "2024-03-01 08:00:00", "2024-03-01 00:00:00"]
    assert fine(problems) == [True, True, True]


def test_unreadable_and_missing_dates():
    values, problems = normalize.dates(
        series("garbage", None, "  ", "1990-12-31", "31/12/1990"), FLEXPOS_FORMAT, False
    )
    assert list(values) == [None, None, None, "1990-12-31", None]
    assert fine(problems) == [False, True, True, True, False]
    assert problems[0] == f"unreadable date 'garbage' (format {FLEXPOS_FORMAT})"


# --- numbers, booleans, choices ---------------------------------------------------------------


def test_numbers_accept_a_decimal_comma_and_give_canonical_text():
    values, problems = normalize.numbers(series("12,50", "100", "100.0", "-3.25", "1e3", None))
    assert list(values) == ["12.5", "100", "100", "-3.25", "1000", None]
    assert fine(problems) == [True] * 6


def test_not_a_number_gives_a_reason():
    values, problems = normalize.numbers(series("abc", "7", " "))
    assert list(values) == [None, "7", None]
    assert problems[0] == "not a number: 'abc'"
    assert fine(problems) == [False, True, True]


def test_booleans():
    values, problems = normalize.booleans(series("true", "FALSE", "1", "no", "maybe", None))
    assert list(values) == ["1", "0", "1", "0", None, None]
    assert fine(problems) == [True, True, True, True, False, True]
    assert problems[4] == "not a boolean: 'maybe'"


def test_choices_map_codes_to_labels_and_an_empty_label_leaves_the_field_empty():
    values, problems = normalize.choices(
        series("M", "F", "U", "X", None), {"M": "Male", "F": "Female", "U": ""}
    )
    assert list(values) == ["Male", "Female", None, None, None]
    assert fine(problems) == [True, True, True, False, True]
    assert problems[3] == "no option for 'X' (known: F, M, U)"


# --- validation: normalise + gate -------------------------------------------------------------


def customers_frame(**columns) -> pd.DataFrame:
    mapping = load_mapping("flexpos", "customers")
    rows = len(next(iter(columns.values())))
    data = {"record_id": [str(i) for i in range(rows)]}
    data |= {r.target: columns.get(r.target, [None] * rows) for r in mapping.fields}
    return pd.DataFrame(data, dtype=object)


def fine_fields(issues: dict[str, pd.Series]) -> dict[str, list]:
    """The fields that have a problem in some row, with each row's problem."""
    return {f: list(v) for f, v in issues.items() if v.notna().any()}


def test_normalise_leaves_good_rows_without_problems():
    mapping = load_mapping("flexpos", "customers")
    frame = customers_frame(
        email=["Anna@Example.DK", "bo@example.dk"],
        mobile=["12 34 56 78", None],
        first_name=["  Anna ", ""],
        birthday=["1990-12-31T00:00:00", None],
        gender=["F", None],
        cardnumber=["40000001,40000002", None],
    )
    issues = validation.normalise(frame, mapping, FLEXPOS_FORMAT, "DK")
    assert fine_fields(issues) == {}
    assert list(frame["email"]) == ["anna@example.dk", "bo@example.dk"]
    assert list(frame["mobile"]) == ["+4512345678", None]
    assert list(frame["first_name"]) == ["Anna", None]
    assert list(frame["birthday"]) == ["1990-12-31", None]
    assert list(frame["gender"]) == ["f", None]


def test_normalise_names_each_bad_field_of_a_row():
    mapping = load_mapping("flexpos", "customers")
    frame = customers_frame(
        email=["not-an-email", "ok@example.dk"],
        mobile=["1234", "12345678"],
        birthday=["1990-12-31T00:00:00", "yesterday"],
        gender=["F", "X"],
    )
    issues = validation.normalise(frame, mapping, FLEXPOS_FORMAT, "DK")
    first, second = validation.row_problems(issues, frame.index)
    assert first.startswith("email: invalid email 'n***'")
    assert "; mobile: invalid mobile '**34'" in first
    assert second == (
        f"birthday: unreadable date 'yesterday' (format {FLEXPOS_FORMAT}); "
        "gender: no option for 'X' (known: F, M)"
    )
    assert list(frame["birthday"]) == ["1990-12-31", None]  # the bad value is gone


@pytest.mark.parametrize(
    ("field", "raw", "problem"),
    [
        ("first_name", "x" * 300, "longer than 255 characters (300)"),
        ("first_name", "Anna\u202eevil", "contains control or bidi character U+202E"),
        ("first_name", "Anna\x00", "contains control or bidi character U+0000"),
        ("first_name", "An\u0085na", "contains control or bidi character U+0085"),
        ("first_name", "Anna\u2066x", "contains control or bidi character U+2066"),
        ("address", '{"street": "Vej 1"}', "a JSON object where a plain value is expected"),
        ("city", "[1, 2]", "a JSON array where a plain value is expected"),
        ("birthday", "0001-01-01T00:00:00", "implausible date '0001-01-01T00:00:00'"),
        ("birthday", "2025-13-01T00:00:00", "unreadable date"),
        ("email", "a" * 65 + "@example.dk", "invalid email 'a***@example.dk'"),
    ],
)
def test_values_the_target_cannot_take_are_problems(field, raw, problem):
    mapping = load_mapping("flexpos", "customers")
    frame = customers_frame(**{field: [raw, None]})
    issues = validation.normalise(frame, mapping, FLEXPOS_FORMAT, "DK")
    assert fine_fields(issues) == {field: [issues[field][0], None]}
    assert issues[field][0].startswith(problem)
    assert len(issues[field][0]) < 140  # a long value is never echoed whole
    assert frame[field][0] is None


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-inf", "1e400", "1e300", "1_000", "0x10"])
def test_numbers_that_are_not_plain_finite_numbers_are_problems(raw):
    values, problems = normalize.numbers(series(raw))
    assert values[0] is None and problems[0]


def test_dates_the_datetime64_range_cannot_hold_are_still_read():
    values, problems = normalize.dates(
        series("1899-12-31", "2100-12-31", "9999-12-31"), "%Y", False
    )
    assert list(values) == [None, "2100-12-31", None]
    assert problems[0].startswith("implausible date '1899-12-31'")


def test_gate_turns_pandera_failures_into_one_reason_per_row():
    mapping = load_mapping("flexpos", "journals")
    schema = validation.schema_for(mapping, None)
    frame = pd.DataFrame(
        {
            "record_id": ["J1", "J2", "J3"],
            **{r.target: ["x"] * 3 for r in mapping.fields},
        },
        dtype=object,
    )
    frame["date"] = ["2024-03-01 10:00:00", None, "2024-03-01"]
    frame["amount"] = ["12.5", "12.5", "twelve"]
    reasons = validation.gate(frame, schema)
    assert reasons[0] == ""
    assert reasons[1] == "date: missing (required)"
    assert reasons[2].startswith("amount: wrong shape") and "; date: wrong shape" in reasons[2]


def test_gate_requires_a_match_key_for_members():
    mapping = load_mapping("flexpos", "customers")
    frame = customers_frame(email=["a@example.dk", None])
    frame["match_key"] = frame["email"]
    reasons = validation.gate(frame, validation.schema_for(mapping, "email"))
    assert list(reasons) == ["", "match_key: missing (required)"]


# --- rule keys: format, timezone, true_values, present, strip, object ---------------------------


def test_a_fields_own_format_and_timezone_win_over_the_integrations():
    values, problems = normalize.dates(series("31.12.1990", "1990-12-31", "bad"), "%d.%m.%Y", False)
    assert list(values) == ["1990-12-31", "1990-12-31", None]  # ISO 8601 still read
    assert fine(problems) == [True, True, False]
    moscow, _ = normalize.dates(
        series("2025-03-01 00:30:00", "2025-03-01T00:30:00+00:00"),
        "%Y-%m-%d %H:%M:%S",
        True,
        "Europe/Moscow",
    )
    assert list(moscow) == ["2025-02-28 21:30:00", "2025-03-01 00:30:00"]  # UTC out


def test_true_values_make_every_other_text_false():
    values, problems = normalize.booleans(series("Да", "YES ", "нет", "0", "", None), ("да", "yes"))
    # blank is "0" here; an absent value is filled "0" by normalise (a cleared consent is none)
    assert list(values) == ["1", "1", "0", "0", "0", None]
    assert fine(problems) == [True] * 6


def test_present_is_true_for_any_non_blank_value_and_false_otherwise():
    assert list(normalize.present(series("tok", " ", "", None))) == ["1", "0", "0", "0"]


def test_strip_removes_characters_before_a_number_is_read():
    values, problems = normalize.numbers(series("10%", "1 250", "12,5 %", "x%"), strip="% ")
    assert list(values) == ["10", "1250", "12.5", None]
    assert fine(problems) == [True, True, True, False]


def test_rules_apply_per_field_in_normalise():
    mapping = load_mapping(
        "flexpos",
        "customers",
        {
            "birthday": {"path": "BirthDate", "type": "date", "format": "%d.%m.%Y"},
            "consent_mailing": {"path": "Ok", "type": "boolean", "true_values": ["да"]},
            "push_allowed": {"path": "Push", "type": "present"},
            "discount_percent": {"path": "Discount", "type": "number", "strip": "%"},
            "card": {
                "type": "object",
                "fields": {
                    "number": "Card",
                    "balance": {"path": "Bonus", "type": "number"},
                    "issued": {"path": "Issued", "type": "date", "format": "%d.%m.%Y"},
                },
            },
        },
    )
    frame = pd.DataFrame(
        {
            "record_id": ["1", "2"],
            **{r.target: [None, None] for r in mapping.fields},
        },
        dtype=object,
    )
    frame["birthday"] = ["05.06.1990", None]
    frame["consent_mailing"] = ["Да", "no"]
    frame["push_allowed"] = ["token", None]
    frame["discount_percent"] = ["10%", None]
    frame["card"] = [
        '{"number": "77", "balance": "1250", "issued": "01.02.2024"}',
        '{"number": null, "balance": "lots", "issued": null}',
    ]
    issues = validation.normalise(frame, mapping, FLEXPOS_FORMAT, "DK")
    assert list(frame["birthday"]) == ["1990-06-05", None]
    assert list(frame["consent_mailing"]) == ["1", "0"]
    assert list(frame["push_allowed"]) == ["1", "0"]
    assert list(frame["discount_percent"]) == ["10", None]
    assert frame["card"][0] == '{"number":"77","balance":"1250","issued":"2024-02-01"}'
    assert frame["card"][1] is None  # nothing good left in it
    assert fine_fields(issues) == {"card": [None, "balance: not a number: 'lots'"]}
