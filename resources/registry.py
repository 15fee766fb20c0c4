"""The integration-file sections every vendor offers, as discriminated unions on `kind`.

Adding a vendor is one line here: its section model joins the union, and the model's
`resource()` / `env_vars()` do the rest (STYLE 2).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from resources.flexpos import FlexPOSResource, FlexPOSSource
from resources.heyloyalty import HeyloyaltyResource, HeyloyaltyTarget
from resources.ticketmaster import TicketmasterResource, TicketmasterSource

SourceSection = Annotated[FlexPOSSource | TicketmasterSource, Field(discriminator="kind")]
TargetSection = Annotated[HeyloyaltyTarget, Field(discriminator="kind")]

SourceResource = FlexPOSResource | TicketmasterResource
TargetResource = HeyloyaltyResource

_SOURCE_ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceSection)
_TARGET_ADAPTER: TypeAdapter[Any] = TypeAdapter(TargetSection)


def parse_source(data: Any) -> FlexPOSSource | TicketmasterSource:
    """Validate a `source:` mapping; raises pydantic.ValidationError naming the bad key."""
    return _SOURCE_ADAPTER.validate_python(data)


def parse_target(data: Any) -> HeyloyaltyTarget:
    """Validate a `target:` mapping; raises pydantic.ValidationError naming the bad key."""
    return _TARGET_ADAPTER.validate_python(data)


__all__ = [
    "FlexPOSSource",
    "HeyloyaltyTarget",
    "SourceResource",
    "SourceSection",
    "TargetResource",
    "TargetSection",
    "TicketmasterSource",
    "parse_source",
    "parse_target",
]
