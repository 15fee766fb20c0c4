"""Assets declare their run config with one shared schema per Config class (assets/run_config.py,
issue 12): the schema must stay the one Dagster infers from a `config: <Class>` parameter, and
the settings read back must be the object Dagster would pass."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._config.snap import snap_from_field  # test-only: compares the two schemas

from assets.deliver import DeliverConfig
from assets.deliver_events import EventsDeliveredConfig
from assets.extract import ExtractConfig
from assets.model import ModelConfig
from assets.run_config import config_of, schema_of

CLASSES = [ExtractConfig, DeliverConfig, EventsDeliveredConfig, ModelConfig]


def _inferred(config_class):
    """The config field of an asset declared the usual way, with a `config:` parameter."""

    def compute(context, config):
        return None

    compute.__annotations__ = {"config": config_class}
    return dg.asset(name="probe")(compute).op.config_field


@pytest.mark.parametrize("config_class", CLASSES, ids=lambda c: c.__name__)
def test_shared_schema_is_the_one_dagster_infers(config_class):
    shared = dg.asset(name="probe", config_schema=schema_of(config_class))(lambda: None)
    assert snap_from_field("config", shared.op.config_field) == snap_from_field(
        "config", _inferred(config_class)
    )
    assert schema_of(config_class) is schema_of(config_class)  # built once


def test_config_of_reads_the_run_config_with_its_defaults():
    seen = []

    @dg.asset(config_schema=schema_of(ExtractConfig))
    def probe(context):
        seen.append(config_of(ExtractConfig, context))

    dg.materialize([probe])
    dg.materialize(
        [probe], run_config=dg.RunConfig(ops={"probe": ExtractConfig(webhook_through=7)})
    )
    assert seen == [ExtractConfig(), ExtractConfig(webhook_through=7)]
