"""Target mappings: canonical member fields -> the names (and values) a target kind uses."""

from __future__ import annotations

import pytest

from memberflow import target_mapping
from memberflow.target_mapping import TargetMappingError, load_target_mapping

CANONICAL = ["email", "mobile", "first_name", "gender", "card", "cardnumber"]


def names(mapping: target_mapping.TargetMapping, canonical=CANONICAL) -> list[str]:
    return [c.name for c in mapping.columns(canonical)]


def test_heyloyalty_names_the_canonical_fields_as_the_list_does():
    mapping = load_target_mapping("heyloyalty")
    assert names(mapping) == ["email", "mobile", "firstname", "sex", "card", "cardnumber"]
    sex = next(c for c in mapping.columns(CANONICAL) if c.name == "sex")
    assert sex.source == "gender" and sex.value_map() == {"m": "1", "f": "2"}
    assert mapping.match_field("email") == "email"
    assert mapping.match_field("external_id") is None  # the list has no such field


def test_fields_no_source_produces_are_not_columns():
    """A flexpos-only list gets no `language` column: C7 would ask the list for it."""
    assert "language" not in names(load_target_mapping("heyloyalty"))
    assert "language" in names(load_target_mapping("heyloyalty"), [*CANONICAL, "language"])


def test_a_kind_without_a_file_passes_every_canonical_field_through():
    mapping = load_target_mapping("no_such_target")
    assert names(mapping) == CANONICAL
    assert mapping.match_field("mobile") == "mobile"


def test_overrides_replace_add_and_remove_target_fields():
    mapping = load_target_mapping(
        "heyloyalty",
        {"sex": None, "firstname": "nick_name", "client_id": "external_id"},
        where="x.yaml: target_fields",
    )
    got = names(mapping, [*CANONICAL, "nick_name"])
    assert "sex" not in got and "gender" not in got  # removed, and not passed through either
    assert "first_name" in got  # no longer named: passes through under its own name
    assert got.count("firstname") == 1 and got[-1] == "client_id"  # external_id is computed
    assert mapping.match_field("external_id") == "client_id"


def test_collect_and_values_are_read(tmp_path, monkeypatch):
    (tmp_path / "crm.yaml").write_text(
        "target: crm\nfields:\n  cards: {from: card, collect: true}\n"
        "  phone: mobile\n  sex: {from: gender, values: {m: male, f: female}}\n"
    )
    monkeypatch.setattr(target_mapping, "TARGETS_DIR", tmp_path)
    mapping = load_target_mapping("crm")
    cols = {c.name: c for c in mapping.columns(CANONICAL)}
    assert cols["cards"].collect and cols["cards"].source == "card"
    assert mapping.match_field("mobile") == "phone"
    assert cols["sex"].value_map() == {"m": "male", "f": "female"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("target: crm\nfields: {a: email}\nextra: 1\n", "unknown key(s) ['extra']"),
        ("target: other\nfields: {a: email}\n", "target: expected 'crm'"),
        ("target: crm\nfields: {a: {from: email, colect: true}}\n", "fields.a: unknown key(s)"),
        ("target: crm\nfields: {a: {values: {x: y}}}\n", "fields.a: from: expected"),
        ("target: crm\nfields: {withdrawn: email}\n", "fields.withdrawn: 'withdrawn' is a column"),
        ("target: crm\nfields: {a: {from: card, collect: yes please}}\n", "collect: expected"),
    ],
)
def test_a_broken_file_names_the_file_and_key(tmp_path, monkeypatch, text, message):
    (tmp_path / "crm.yaml").write_text(text)
    monkeypatch.setattr(target_mapping, "TARGETS_DIR", tmp_path)
    target_mapping._read.cache_clear()
    with pytest.raises(TargetMappingError) as caught:
        load_target_mapping("crm")
    assert str(tmp_path / "crm.yaml") in str(caught.value) and message in str(caught.value)


def test_removing_an_unknown_field_names_the_integration_key():
    with pytest.raises(TargetMappingError, match=r"x.yaml: target_fields.sexx: no such target"):
        load_target_mapping("heyloyalty", {"sexx": None}, where="x.yaml: target_fields")
