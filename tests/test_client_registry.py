"""Integration-file sections: strict parsing, env var names, resources that build clients."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from resources.flexpos import FlexPOSClient, FlexPOSResource, FlexPOSSource
from resources.heyloyalty import HeyloyaltyClient, HeyloyaltyTarget
from resources.http import MissingEnvVarError
from resources.registry import parse_source, parse_target
from resources.ticketmaster import TicketmasterClient, TicketmasterSource

FLEXPOS_YAML = """
source:
  kind: flexpos
  pos_base_url: http://127.0.0.1:8765/flexpos/pos
  client_id_env: FLEXPOS_CLIENT_ID
  client_secret_env: FLEXPOS_CLIENT_SECRET
  attractions:
    base_url: http://127.0.0.1:8765/flexpos/attractions
    client_id_env: FLEXPOS_ATTRACTIONS_CLIENT_ID
    client_secret_env: FLEXPOS_ATTRACTIONS_CLIENT_SECRET
  customers:
    only_active: false
    only_club_members: true
    only_newsletter: false
"""

TICKETMASTER_YAML = """
source:
  kind: ticketmaster
  base_url: http://127.0.0.1:8765/ticketmaster
  market_code: TM_DK
  apikey_env: TICKETMASTER_APIKEY
  username_env: TICKETMASTER_USERNAME
  password_env: TICKETMASTER_PASSWORD
"""

HEYLOYALTY_YAML = """
target:
  kind: heyloyalty
  account: demo
  base_url: http://127.0.0.1:8765/heyloyalty/loyalty/v1
  bi_base_url: http://127.0.0.1:8765/heyloyalty/bi/api
  api_key_env: HEYLOYALTY_API_KEY
  api_secret_env: HEYLOYALTY_API_SECRET
  list_id: "4711"
  tracking_id: 99
"""


def load(text: str, key: str) -> dict:
    return yaml.safe_load(text)[key]


def test_parses_the_three_sections():
    flexpos = parse_source(load(FLEXPOS_YAML, "source"))
    assert isinstance(flexpos, FlexPOSSource) and flexpos.customers.only_club_members
    assert flexpos.env_vars() == [
        "FLEXPOS_CLIENT_ID",
        "FLEXPOS_CLIENT_SECRET",
        "FLEXPOS_ATTRACTIONS_CLIENT_ID",
        "FLEXPOS_ATTRACTIONS_CLIENT_SECRET",
    ]
    tm = parse_source(load(TICKETMASTER_YAML, "source"))
    assert isinstance(tm, TicketmasterSource) and tm.market_code == "TM_DK"
    hl = parse_target(load(HEYLOYALTY_YAML, "target"))
    assert isinstance(hl, HeyloyaltyTarget)
    assert (hl.list_id, hl.tracking_id) == ("4711", "99")


def test_minimal_flexpos_defaults():
    section = parse_source(
        {
            "kind": "flexpos",
            "pos_base_url": "https://pos.example.com/",
            "client_id_env": "A",
            "client_secret_env": "B",
        }
    )
    assert section.attractions is None and not section.customers.only_active
    assert section.pos_base_url == "https://pos.example.com"


@pytest.mark.parametrize(
    ("yaml_text", "key", "change", "needle"),
    [
        (FLEXPOS_YAML, "source", {"colour": "red"}, "colour"),
        (FLEXPOS_YAML, "source", {"client_id_env": "flexpos-id"}, "client_id_env"),
        (FLEXPOS_YAML, "source", {"pos_base_url": "ftp://x"}, "pos_base_url"),
        (FLEXPOS_YAML, "source", {"kind": "square"}, "kind"),
        (TICKETMASTER_YAML, "source", {"apikey_env": "1APIKEY"}, "apikey_env"),
        (TICKETMASTER_YAML, "source", {"apikey": "literal-secret"}, "apikey"),
        (HEYLOYALTY_YAML, "target", {"api_secret_env": "lower_case"}, "api_secret_env"),
        (HEYLOYALTY_YAML, "target", {"lists": ["1"]}, "lists"),
        (HEYLOYALTY_YAML, "target", {"bi_base_url": None}, "bi_base_url"),
    ],
)
def test_rejects_unknown_keys_bad_env_names_and_urls(yaml_text, key, change, needle):
    data = {**load(yaml_text, key), **change}
    parse = parse_source if key == "source" else parse_target
    with pytest.raises(ValidationError, match=needle):
        parse(data)


def test_rejects_unknown_key_in_nested_sections():
    data = load(FLEXPOS_YAML, "source")
    data["customers"]["only_vip"] = True
    with pytest.raises(ValidationError, match="only_vip"):
        parse_source(data)


def test_resources_build_clients_from_env(monkeypatch):
    for name in ("FLEXPOS_CLIENT_ID", "FLEXPOS_CLIENT_SECRET", "FLEXPOS_ATTRACTIONS_CLIENT_ID"):
        monkeypatch.setenv(name, "value")
    monkeypatch.setenv("FLEXPOS_ATTRACTIONS_CLIENT_SECRET", "value")
    for name in ("TICKETMASTER_APIKEY", "TICKETMASTER_USERNAME", "TICKETMASTER_PASSWORD"):
        monkeypatch.setenv(name, "value")
    monkeypatch.setenv("HEYLOYALTY_API_KEY", "k")
    monkeypatch.setenv("HEYLOYALTY_API_SECRET", "s")
    flexpos = parse_source(load(FLEXPOS_YAML, "source")).resource().client()
    assert isinstance(flexpos, FlexPOSClient) and len(flexpos.entities()) == 4
    tm = parse_source(load(TICKETMASTER_YAML, "source")).resource().client()
    assert isinstance(tm, TicketmasterClient)
    hl_resource = parse_target(load(HEYLOYALTY_YAML, "target")).resource()
    assert isinstance(hl_resource.client(), HeyloyaltyClient) and hl_resource.list_id == "4711"


def test_missing_env_var_names_the_variable(monkeypatch):
    monkeypatch.setenv("FLEXPOS_CLIENT_ID", "id-value")
    monkeypatch.delenv("FLEXPOS_CLIENT_SECRET", raising=False)
    resource = parse_source(load(FLEXPOS_YAML, "source")).resource()
    assert isinstance(resource, FlexPOSResource)
    with pytest.raises(MissingEnvVarError, match="FLEXPOS_CLIENT_SECRET") as info:
        resource.client()
    assert "id-value" not in str(info.value)


# --- vendors are found, not listed ----------------------------------------------------------------

ACME_MODULE = """
from typing import ClassVar, Literal

from resources.registry import SourceSectionBase
from resources.source import EntitySpec


class AcmeSource(SourceSectionBase):
    entities: ClassVar[tuple[EntitySpec, ...]] = (
        EntitySpec("shoppers", "members", id_field="ShopperId"),
        EntitySpec("receipts", "events", id_field="ReceiptId"),
    )

    kind: Literal["acme_test_vendor"]
    token_env: str

    def env_vars(self) -> list[str]:
        return [self.token_env]
"""


@pytest.fixture
def fresh_registry():
    """Registry caches rebuilt before and after, so a test's vendors do not leak."""
    import resources.registry as registry

    def clear() -> None:
        for cached in (registry.source_sections, registry.target_sections, registry._adapter):
            cached.cache_clear()

    clear()
    yield registry
    clear()


def test_a_new_vendor_module_is_picked_up_with_no_hub_edit(tmp_path, monkeypatch, fresh_registry):
    import gc
    import sys

    import resources
    from memberflow.mapping import available_entities

    section = None
    (tmp_path / "acme_test_vendor.py").write_text(ACME_MODULE)
    monkeypatch.setattr(resources, "__path__", [*resources.__path__, str(tmp_path)])
    try:
        section = parse_source({"kind": "acme_test_vendor", "token_env": "ACME_TOKEN"})
        assert type(section).__name__ == "AcmeSource" and section.env_vars() == ["ACME_TOKEN"]
        assert "acme_test_vendor" in fresh_registry.source_sections()
        entities = available_entities("acme_test_vendor")
        assert entities.members == {"shoppers"} and entities.events == {"receipts"}
        with pytest.raises(ValidationError, match="token_env"):
            parse_source({"kind": "acme_test_vendor"})
    finally:
        sys.modules.pop("resources.acme_test_vendor", None)
        if hasattr(resources, "acme_test_vendor"):
            delattr(resources, "acme_test_vendor")
        del section
        gc.collect()


def test_every_shipped_vendor_is_found_and_declares_its_entities(fresh_registry):
    from memberflow.mapping import available_entities

    assert {"flexpos", "ticketmaster"} <= set(fresh_registry.source_sections())
    assert "heyloyalty" in fresh_registry.target_sections()
    flexpos = available_entities("flexpos")
    assert flexpos.members == {"customers"}
    assert flexpos.events == {"journals", "tickets", "memberships"}
    assert available_entities("ticketmaster").events == {"orders"}


def test_two_vendors_with_one_kind_fail_clearly():
    from typing import Literal

    from resources.registry import DuplicateKindError, SectionBase, sections

    class ToyBase(SectionBase):  # not a source or target base: nothing leaks into the registry
        pass

    class One(ToyBase):
        kind: Literal["twin"]

    class Two(ToyBase):
        kind: Literal["twin"]

    with pytest.raises(DuplicateKindError, match=r"kind 'twin'.*One.*Two"):
        sections(ToyBase)
