"""Field mappings: defaults as data, overrides, and the DuckDB JSON-path SQL they compile to."""

from __future__ import annotations

import json

import duckdb
import pytest

from memberflow.mapping import (
    MappingError,
    available_entities,
    choice_values,
    json_path_sql,
    load_mapping,
    mapping_summary,
    rule_sql,
)


@pytest.fixture()
def db():
    conn = duckdb.connect()
    yield conn
    conn.close()


def extract(conn: duckdb.DuckDBPyConnection, record: dict, path: str, separator: str = ","):
    sql = json_path_sql("payload", path, separator)
    return conn.execute(f"SELECT {sql} FROM (SELECT ?::VARCHAR AS payload)", [json.dumps(record)])


def one(conn, record, path, separator=","):
    return extract(conn, record, path, separator).fetchone()[0]


def test_each_source_kind_offers_its_default_entities():
    flexpos = available_entities("flexpos")
    assert flexpos.members == {"customers"}
    assert flexpos.events == {"journals", "tickets", "memberships"}
    ticketmaster = available_entities("ticketmaster")
    assert ticketmaster.members == {"customers"} and ticketmaster.events == {"orders"}
    assert available_entities("no_such_vendor").all == frozenset()


@pytest.mark.parametrize(
    ("kind", "entity"),
    [
        ("flexpos", "customers"),
        ("flexpos", "journals"),
        ("flexpos", "tickets"),
        ("ticketmaster", "customers"),
        ("ticketmaster", "orders"),
    ],
)
def test_every_default_mapping_loads(kind, entity):
    mapping = load_mapping(kind, entity)
    assert mapping.source == kind and mapping.entity == entity and mapping.record_id
    if mapping.role == "members":
        assert mapping.field("email").type == "email"
        assert mapping.field("mobile").type == "mobile"
        assert mapping.modified
    else:
        assert mapping.customer_id
        assert mapping.field("date").required
        event_type = mapping.field("event_type")
        assert event_type.value in ("bought", "membership") or (
            event_type.type == "choice"
            and ("sold", "bought") in {(k.lower(), v) for k, v in event_type.values}
        )


def test_flexpos_customer_defaults():
    mapping = load_mapping("flexpos", "customers")
    assert mapping.record_id == "CustomerId" and mapping.modified == "Modified"
    assert mapping.consent is None
    assert mapping.field("cardnumber").path == "cards.Cardnumber"
    assert choice_values(mapping.field("gender")) == {"M": "m", "F": "f"}


def test_override_none_removes_and_string_adds_a_field():
    default = load_mapping("flexpos", "customers")
    mapping = load_mapping(
        "flexpos",
        "customers",
        {"birthday": None, "favourite_store": "StoreId", "first_name": "NickName"},
    )
    names = [r.target for r in mapping.fields]
    assert "birthday" not in names
    assert mapping.field("favourite_store").path == "StoreId"
    assert mapping.field("favourite_store").type == "text"
    assert mapping.field("first_name").path == "NickName"  # replaced in place
    assert names.index("first_name") == [r.target for r in default.fields].index("first_name")
    assert mapping.fingerprint != default.fingerprint


def test_override_as_a_mapping_sets_type_values_and_constants():
    mapping = load_mapping(
        "flexpos",
        "customers",
        {
            "club": {"path": "IsClubMember", "type": "boolean"},
            "tier": {"path": "Tier", "type": "choice", "values": {1: "Gold", 2: "Silver"}},
            "origin": {"value": "pos"},
            "email": {"path": "Email", "type": "email", "required": True},
        },
    )
    assert mapping.field("club").type == "boolean"
    assert choice_values(mapping.field("tier")) == {"1": "Gold", "2": "Silver"}
    assert mapping.field("origin").path is None and mapping.field("origin").value == "pos"
    assert mapping.field("email").required


def test_fingerprint_is_stable_for_the_same_mapping():
    one_ = load_mapping("flexpos", "customers", {"x": "X"})
    two = load_mapping("flexpos", "customers", {"x": "X"})
    assert one_.fingerprint == two.fingerprint
    assert load_mapping("flexpos", "customers", {"x": "Y"}).fingerprint != one_.fingerprint


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("cardnumber2", "cards..Cardnumber", "is not a dot-path"),
        ("cardnumber2", "cards[0].Cardnumber", "is not a dot-path"),
        ("age", {"path": "Age", "type": "integer"}, "type 'integer' is not one of"),
        ("age", {"path": "Age", "kind": "number"}, "unknown key(s) ['kind']"),
        ("age", {"path": "Age", "value": "1"}, "exactly one of 'path' or 'value'"),
        ("age", {"type": "number"}, "exactly one of 'path' or 'value'"),
        ("age", 42, "expected a path string or a mapping"),
        ("tier", {"path": "Tier", "type": "choice", "values": ["a"]}, "'values' must map"),
        ("first-name", "FirstName", "target field name"),
        ("birthdte", None, "no such field to remove"),
        ("external_id", "Id", "a name memberflow uses itself"),
        ("age", {"path": "Age", "type": "number", "format": "%d"}, "'format' applies to type"),
        ("seen", {"path": "Seen", "type": "datetime", "timezone": "Mars/Base"}, "IANA zone"),
        ("ok", {"path": "Ok", "type": "boolean", "true_values": "yes"}, "must be a list"),
        ("ok", {"path": "Ok", "type": "text", "true_values": ["yes"]}, "applies to type boolean"),
        ("card", {"type": "object"}, "needs 'fields"),
        ("card", {"type": "object", "path": "Card", "fields": {"n": "N"}}, "unknown key(s)"),
        ("card", {"type": "object", "fields": {"n": {"path": "N", "type": "no"}}}, "n: type 'no'"),
        (
            "card",
            {"type": "object", "fields": {"n": {"type": "object", "fields": {"x": "X"}}}},
            "cannot hold another object",
        ),
    ],
)
def test_a_bad_override_names_the_key(name, spec, message):
    where = "integrations/shop.yaml: mapping"
    with pytest.raises(MappingError) as caught:
        load_mapping("flexpos", "customers", {name: spec}, where=where)
    text = str(caught.value)
    assert text.startswith(f"{where}: customers.{name}")  # .member for an object's member
    assert message in text


def test_an_entity_without_a_default_is_an_error():
    with pytest.raises(MappingError, match=r"no default mapping for flexpos\.orders"):
        load_mapping("flexpos", "orders")


def test_array_path_is_joined_with_the_separator(db):
    record = {"cards": [{"Cardnumber": 40000001}, {"Cardnumber": 40000002, "Cardname": "Gold"}]}
    assert one(db, record, "cards.Cardnumber") == "40000001,40000002"
    assert one(db, record, "cards.Cardnumber", "|") == "40000001|40000002"
    assert one(db, record, "cards.Cardname") == "Gold"  # elements without the key are skipped


def test_array_path_over_an_empty_or_missing_array_is_null(db):
    assert one(db, {"cards": []}, "cards.Cardnumber") is None
    assert one(db, {}, "cards.Cardnumber") is None
    assert one(db, {"cards": None}, "cards.Cardnumber") is None


def test_a_separator_with_a_quote_is_escaped(db):
    record = {"cards": [{"Cardnumber": "a"}, {"Cardnumber": "b"}]}
    assert one(db, record, "cards.Cardnumber", "'") == "a'b"


def test_object_paths_and_plain_fields_read_directly(db):
    record = {"email": "a@b.dk", "address": {"line1": "Vej 1", "postalCode": 8000}, "n": 1.5}
    assert one(db, record, "email") == "a@b.dk"
    assert one(db, record, "address.line1") == "Vej 1"
    assert one(db, record, "address.postalCode") == "8000"
    assert one(db, record, "n") == "1.5"
    assert one(db, record, "missing") is None
    assert one(db, {"cards": {"Cardnumber": 7}}, "cards.Cardnumber") == "7"


def test_deeper_paths_cross_an_array_at_any_step(db):
    array_inside_object = {"a": {"b": [{"c": "x"}, {"c": "y"}]}}
    object_inside_array = {"a": [{"b": {"c": "x"}}, {"b": {"c": "y"}}]}
    arrays_in_arrays = {"a": [{"b": [{"c": "x"}, {"c": "y"}]}, {"b": [{"c": "z"}]}]}
    assert one(db, array_inside_object, "a.b.c") == "x,y"
    assert one(db, object_inside_array, "a.b.c") == "x,y"
    assert one(db, arrays_in_arrays, "a.b.c") == "x,y,z"
    assert one(db, {"a": {"b": {"c": "plain"}}}, "a.b.c") == "plain"


def test_rule_sql_reads_line_paths_from_the_line_and_constants_as_literals(db):
    mapping = load_mapping("flexpos", "journals")
    payload = {"CustomerId": 7, "Currency": "DKK", "Lines": [{"ProductId": "P1"}]}
    line = payload["Lines"][0]

    def run(target: str, line_col: str | None) -> str | None:
        sql = rule_sql(mapping.field(target), "payload", line_col, ",")
        return db.execute(
            f"SELECT {sql} FROM (SELECT ?::VARCHAR AS payload, ?::JSON AS line)",
            [json.dumps(payload), json.dumps(line)],
        ).fetchone()[0]

    assert run("product_id", "line") == "P1"
    assert run("currency", "line") == "DKK"  # not a line. path: read from the record
    assert run("event_type", "line") == "bought"
    assert run("product_id", None) is None  # no exploded line: `line.ProductId` on the record


def test_summary_lists_every_field():
    mapping = load_mapping("flexpos", "customers", {"origin": {"value": "pos"}})
    summary = mapping_summary(mapping)
    assert "| cardnumber | cards.Cardnumber | text |" in summary
    assert "| origin | 'pos' | text |" in summary
    assert summary.count("\n") == len(mapping.fields) + 1


def test_new_rule_keys_are_read():
    mapping = load_mapping(
        "flexpos",
        "customers",
        {
            "birthday": {"path": "BirthDate", "type": "date", "format": "%d.%m.%Y"},
            "seen": {"path": "Seen", "type": "datetime", "timezone": "Europe/Moscow"},
            "consent_mailing": {"path": "Ok", "type": "boolean", "true_values": ["Да", "YES"]},
            "push_allowed": {"path": "PushToken", "type": "present"},
            "discount_percent": {"path": "Discount", "type": "number", "strip": "%"},
            "card": {
                "type": "object",
                "fields": {"number": "Card", "balance": {"path": "Bonus", "type": "number"}},
            },
        },
    )
    assert mapping.field("birthday").format == "%d.%m.%Y"
    assert mapping.field("seen").timezone == "Europe/Moscow"
    assert mapping.field("consent_mailing").true_values == ("да", "yes")
    assert mapping.field("push_allowed").type == "present"
    assert mapping.field("discount_percent").strip == "%"
    card = mapping.field("card")
    assert [f.target for f in card.fields] == ["number", "balance"]
    assert card.describe() == "{number: Card, balance: Bonus}"


def test_an_object_rule_reads_its_members_into_one_json_object(db):
    mapping = load_mapping(
        "flexpos",
        "customers",
        {"card": {"type": "object", "fields": {"number": "Card", "balance": "Bonus.Amount"}}},
    )
    sql = rule_sql(mapping.field("card"), "payload", None, ",")
    got = db.execute(
        f"""SELECT {sql} FROM (SELECT '{{"Card": "77", "Bonus": {{"Amount": "1250"}}}}'
            AS payload)"""
    ).fetchone()[0]
    assert json.loads(got) == {"number": "77", "balance": "1250"}
