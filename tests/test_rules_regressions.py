"""Rules a review found broken once: each test names the rule it keeps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from memberflow import normalize
from memberflow.config import INTEGRATIONS_DIR, IntegrationFileError, load_integration
from memberflow.mapping import MappingError, load_mapping


def _write(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load((INTEGRATIONS_DIR / "demo_flexpos.yaml").read_text())
    for dotted, value in changes.items():
        node = raw
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    path = tmp_path / "demo_flexpos.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_new_path_for_the_email_field_keeps_it_an_email():
    """A raw match key (upper case) would miss the list's unsubscribes and re-subscribe."""
    mapping = load_mapping("flexpos", "customers", {"email": "Mail", "mobile": "Phone"})
    assert mapping.field("email").type == "email" and mapping.field("email").path == "Mail"
    assert mapping.field("mobile").type == "mobile"


@pytest.mark.parametrize("name", ["customer_id", "modified", "match_key", "rank", "_row"])
def test_target_fields_may_not_take_the_pipelines_own_column_names(name):
    with pytest.raises(MappingError, match="memberflow uses itself"):
        load_mapping("flexpos", "journals", {name: "StoreId"})


def test_an_integration_whose_match_field_is_unmapped_fails_at_load(tmp_path):
    path = _write(tmp_path, match_on="mobile", mapping__customers={"mobile": None})
    with pytest.raises(IntegrationFileError, match="match_on"):
        load_integration(path)


def test_a_url_with_a_key_in_it_is_refused_without_echoing_it(tmp_path):
    path = _write(tmp_path, source__pos_base_url="https://pos.example.dk/api?apikey=S3CRET")
    with pytest.raises(IntegrationFileError) as error:
        load_integration(path)
    assert "S3CRET" not in str(error.value) and "pos_base_url" in str(error.value)


def test_empty_choice_and_boolean_codes_are_empty_fields_not_errors():
    values, problems = normalize.choices(pd.Series(["", " ", "M"]), {"M": "Male"})
    assert values.tolist() == [None, None, "Male"] and problems.tolist() == [None, None, None]
    values, problems = normalize.booleans(pd.Series(["", "1"]))
    assert values.tolist() == [None, "1"] and problems.tolist() == [None, None]
