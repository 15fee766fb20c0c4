"""Integration files: strict loading, errors that name file and key, rules spanning files."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from memberflow.config import (
    INTEGRATIONS_DIR,
    ImportType,
    IntegrationFileError,
    check_match_on_supported,
    discover_files,
    load_all,
    load_integration,
    target_mapping_of,
)

DEMO = INTEGRATIONS_DIR / "demo_flexpos.yaml"


def demo() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(DEMO.read_text(encoding="utf-8")))


def write(tmp_path: Path, name: str, data: dict[str, Any] | str) -> Path:
    path = tmp_path / name
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(IntegrationFileError) as caught:
        load_integration(path)
    return str(caught.value)


def test_demo_file_loads_with_defaults_filled_in(monkeypatch):
    monkeypatch.delenv("MEMBERFLOW_SANDBOX_URL", raising=False)
    integration = load_integration(DEMO)
    assert integration.name == "demo_flexpos"
    assert integration.source_file == str(DEMO)
    assert integration.source.kind == "flexpos"
    assert integration.target.list_id == "4711"
    assert integration.tracking == ["journals", "tickets"]
    assert integration.import_.type is ImportType.create_and_update
    assert integration.import_.reimport_unsubscribed is False
    assert integration.import_.phone_region == "DK"
    assert integration.list_key == "heyloyalty_demo_4711"


def test_env_refs_take_the_default_when_unset_and_the_value_when_set(tmp_path, monkeypatch):
    path = write(tmp_path, "fp.yaml", demo())
    monkeypatch.delenv("MEMBERFLOW_SANDBOX_URL", raising=False)
    unset = load_integration(path)
    assert unset.source.pos_base_url == "http://127.0.0.1:8765/flexpos/pos"
    assert unset.target.bi_base_url == "http://127.0.0.1:8765/heyloyalty/bi/api"

    monkeypatch.setenv("MEMBERFLOW_SANDBOX_URL", "http://sandbox.test:9000")
    set_ = load_integration(path)
    assert set_.source.pos_base_url == "http://sandbox.test:9000/flexpos/pos"
    assert set_.source.attractions.base_url == "http://sandbox.test:9000/flexpos/attractions"
    assert set_.target.base_url == "http://sandbox.test:9000/heyloyalty/loyalty/v1"


def test_env_ref_default_also_applies_to_an_empty_variable(tmp_path, monkeypatch):
    path = write(tmp_path, "fp.yaml", demo())
    monkeypatch.setenv("MEMBERFLOW_SANDBOX_URL", "")
    assert load_integration(path).source.pos_base_url == "http://127.0.0.1:8765/flexpos/pos"


def test_name_defaults_to_the_file_stem_and_must_be_an_identifier(tmp_path):
    assert load_integration(write(tmp_path, "shop-north.yaml", demo())).name == "shop_north"
    data = demo()
    data["name"] = "Shop North"
    path = write(tmp_path, "fp.yaml", data)
    text = load_error(path)
    assert str(path) in text and "name:" in text and "'Shop North'" in text


def _unknown_key(data):
    data["schedule"]["interval_minutez"] = 5


def _bad_enum(data):
    data["import"]["type"] = "create_or_update"


def _bad_match_on(data):
    data["match_on"] = "phone"


def _bad_env_name(data):
    data["source"]["client_id_env"] = "flexpos-client-id"


def _missing_required(data):
    del data["target"]["list_id"]


def _unknown_source_key(data):
    data["source"]["client_secret"] = "hunter2"


@pytest.mark.parametrize(
    ("breakage", "key", "detail"),
    [
        (_unknown_key, "schedule.interval_minutez", "Extra inputs are not permitted"),
        (_bad_enum, "import.type", "'create_or_update'"),
        (_bad_match_on, "match_on", "'phone'"),
        pytest.param(
            _bad_env_name,
            "source.client_id_env",
            "expected the NAME",  # the value itself is never echoed (C2)
            id="bad-env-name",
        ),
        pytest.param(
            _missing_required,
            "target.list_id",
            "Field required",
            id="missing-required",
        ),
        pytest.param(
            _unknown_source_key,
            "source.client_secret",
            "Extra inputs are not permitted",
            id="unknown-source-key",
        ),
    ],
)
def test_a_broken_file_names_the_file_and_the_dotted_key(tmp_path, breakage, key, detail):
    data = demo()
    breakage(data)
    path = write(tmp_path, "broken.yaml", data)
    text = load_error(path)
    assert text.startswith(f"{path}: ")
    assert f"  - {key}: " in text
    assert detail in text


@pytest.mark.parametrize(
    ("breakage", "leaf", "detail"),
    [
        (_bad_env_name, "client_id_env", "expected the NAME of an environment variable"),
        (_missing_required, "list_id", "Field required"),
    ],
)
def test_errors_inside_the_source_and_target_sections_name_the_leaf_key(
    tmp_path, breakage, leaf, detail
):
    data = demo()
    breakage(data)
    path = write(tmp_path, "broken.yaml", data)
    text = load_error(path)
    assert str(path) in text
    line = next(x for x in text.splitlines() if leaf in x)
    assert detail in line


def test_every_problem_of_a_file_is_listed_at_once(tmp_path):
    data = demo()
    _unknown_key(data)
    _bad_enum(data)
    text = load_error(write(tmp_path, "broken.yaml", data))
    assert "schedule.interval_minutez" in text and "import.type" in text


def test_a_secret_pasted_where_an_env_var_name_belongs_is_refused(tmp_path):
    data = demo()
    data["source"]["client_secret_env"] = "s3cr3t-value!"
    text = load_error(write(tmp_path, "broken.yaml", data))
    assert "client_secret_env" in text and "expected the NAME of an environment variable" in text


def test_a_secret_pasted_where_an_env_var_name_belongs_is_not_echoed(tmp_path):
    data = demo()
    data["source"]["client_secret_env"] = "s3cr3t-value!"
    text = load_error(write(tmp_path, "broken.yaml", data))
    assert "s3cr3t-value!" not in text


def test_not_yaml_and_not_a_mapping_name_the_file(tmp_path):
    bad_yaml = write(tmp_path, "bad.yaml", "source: [unclosed\n")
    assert load_error(bad_yaml).startswith(f"{bad_yaml}: not valid YAML")
    a_list = write(tmp_path, "list.yaml", "- a\n- b\n")
    assert load_error(a_list) == f"{a_list}: expected a mapping at the top level"


def test_tracking_kind_the_source_does_not_offer_is_an_error(tmp_path):
    data = demo()
    data["tracking"] = ["journals", "orders"]
    path = write(tmp_path, "fp.yaml", data)
    text = load_error(path)
    assert text.startswith(f"{path}: tracking: 'orders'")
    assert "journals" in text and "tickets" in text  # the kinds that exist


def test_customers_is_not_a_tracking_kind(tmp_path):
    data = demo()
    data["tracking"] = ["customers"]
    assert "tracking: 'customers'" in load_error(write(tmp_path, "fp.yaml", data))


def test_tickets_without_the_attractions_api_is_an_error(tmp_path):
    data = demo()
    del data["source"]["attractions"]
    data["tracking"] = ["tickets"]
    path = write(tmp_path, "fp.yaml", data)
    text = load_error(path)
    assert str(path) in text and "tickets" in text


def test_mapping_of_an_unknown_entity_is_an_error(tmp_path):
    data = demo()
    data["mapping"] = {"orders": {"x": "y"}}
    path = write(tmp_path, "fp.yaml", data)
    assert load_error(path).startswith(f"{path}: mapping.orders: no such entity for flexpos")


def test_tracking_id_needs_the_bi_url(tmp_path):
    data = demo()
    del data["target"]["bi_base_url"]
    text = load_error(write(tmp_path, "fp.yaml", data))
    assert "tracking_id needs bi_base_url" in text


def _second(data: dict[str, Any], name: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    data["name"] = name
    return data


def test_two_integrations_may_share_a_list_when_they_agree(tmp_path):
    first = write(tmp_path, "a.yaml", demo())
    other = demo()
    other["tracking"] = ["journals"]
    other["import"]["date_format"] = "%d-%m-%Y"  # per-source settings may differ
    second = write(tmp_path, "b.yaml", other)
    loaded = load_all([first, second])
    assert [i.name for i in loaded] == ["a", "b"]
    assert loaded[0].list_key == loaded[1].list_key


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["target"].update(api_key_env="OTHER_HEYLOYALTY_KEY"),
        lambda d: d["target"].update(base_url="http://other.test/heyloyalty/loyalty/v1"),
        lambda d: d.update(match_on="mobile"),
        lambda d: d["import"].update(type="create_only"),
        lambda d: d["import"].update(reimport_unsubscribed=True),
        lambda d: d.update(target_fields={"sex": None}),
        lambda d: d.update(timezone="Europe/Copenhagen"),
    ],
    ids=["credentials", "host", "match_on", "import-type", "reimport", "target-fields", "tz"],
)
def test_two_integrations_on_one_list_that_disagree_name_both_files(tmp_path, change):
    first = write(tmp_path, "a.yaml", demo())
    other = demo()
    change(other)
    second = write(tmp_path, "b.yaml", other)
    with pytest.raises(IntegrationFileError) as caught:
        load_all([first, second])
    text = str(caught.value)
    assert str(first) in text and str(second) in text
    assert "4711" in text


def test_a_different_list_id_is_a_different_list(tmp_path):
    first = write(tmp_path, "a.yaml", demo())
    other = demo()
    other["target"]["list_id"] = 4712
    other["match_on"] = "mobile"
    loaded = load_all([first, write(tmp_path, "b.yaml", other)])
    assert loaded[0].list_key != loaded[1].list_key
    assert loaded[1].target.list_id == "4712"


def test_duplicate_names_name_both_files(tmp_path):
    first = write(tmp_path, "a.yaml", _second(demo(), "shop"))
    second = write(tmp_path, "b.yaml", _second(demo(), "shop"))
    with pytest.raises(IntegrationFileError) as caught:
        load_all([first, second])
    assert str(first) in str(caught.value) and str(second) in str(caught.value)


def test_discover_files_reads_the_environment_setting(tmp_path, monkeypatch):
    folder = tmp_path / "dir"
    folder.mkdir()
    a = write(folder, "a.yaml", demo())
    write(folder, "notes.txt", "not an integration")
    single = write(tmp_path, "c.yaml", demo())
    monkeypatch.setenv("MEMBERFLOW_INTEGRATIONS", f"{folder}{os.pathsep}{single}")
    assert discover_files() == [a, single]
    assert discover_files(folder) == [a]


@pytest.mark.parametrize(("merge", "match_on"), [(True, "mobile"), (False, "external_id")])
def test_merge_by_phone_sets_match_on(tmp_path, merge, match_on):
    data = demo()
    del data["match_on"]
    data["merge_by_phone"] = merge
    data["mapping"] = {"customers": {}}
    assert load_integration(write(tmp_path, "fp.yaml", data)).match_on == match_on


def test_an_explicit_match_on_that_contradicts_merge_by_phone_names_file_and_keys(tmp_path):
    data = demo()
    data["merge_by_phone"] = True  # the demo says match_on: email
    path = write(tmp_path, "fp.yaml", data)
    text = load_error(path)
    assert text.startswith(f"{path}: match_on: 'email' conflicts with merge_by_phone: true")


def test_match_on_external_id_needs_no_mapped_field(tmp_path):
    data = demo()
    data["match_on"] = "external_id"
    assert load_integration(write(tmp_path, "fp.yaml", data)).match_on == "external_id"


def test_target_fields_override_the_target_mapping_and_a_typo_names_the_key(tmp_path):
    data = demo()
    data["target_fields"] = {"sex": None, "firstname": "nick_name"}
    mapping = target_mapping_of(load_integration(write(tmp_path, "fp.yaml", data)))
    assert [f.name for f in mapping.columns(["gender", "nick_name"])] == ["firstname"]
    data["target_fields"] = {"sexx": None}
    path = write(tmp_path, "fp.yaml", data)
    assert f"{path}: target_fields.sexx: no such target field" in load_error(path)


def test_timezone_and_segments_are_read_and_a_bad_zone_is_an_error(tmp_path):
    data = demo()
    data["timezone"] = "Europe/Moscow"
    data["segments"] = [
        {"name": "birthday_this_month", "rule": {"anniversary_of": "birthday", "within": "month"}}
    ]
    loaded = load_integration(write(tmp_path, "fp.yaml", data))
    assert loaded.timezone == "Europe/Moscow"
    assert [s.name for s in loaded.segments] == ["birthday_this_month"]
    data["timezone"] = "Moscow"
    assert "timezone" in load_error(write(tmp_path, "fp.yaml", data))


def test_match_on_is_checked_against_what_the_target_recognises(tmp_path):
    data = demo()
    data["match_on"] = "external_id"
    path = write(tmp_path, "fp.yaml", data)
    integration = load_integration(path)
    check_match_on_supported(integration, {"external_id", "email"})
    with pytest.raises(IntegrationFileError, match=rf"{path}: match_on: 'external_id' is not"):
        check_match_on_supported(integration, {"email", "mobile"})
