"""The integration-file sections of every vendor, found rather than listed.

A vendor module `resources/<vendor>.py` defines its `source:` or `target:` section as a pydantic
model subclassing `SourceSectionBase` or `TargetSectionBase` with `kind: Literal["<vendor>"]`,
`env_vars()` and `resource()`. This module imports every module of the `resources` package once,
on first use, and builds the discriminated unions on `kind` from the subclasses it finds: adding
a vendor edits no line here (STYLE 2). Two sections claiming one kind fail loudly, naming both.

`SourceSection` / `TargetSection` (the union types for the integration model) and
`parse_source` / `parse_target` are what the rest of the project uses.
"""

from __future__ import annotations

import importlib
import pkgutil
import typing
from collections.abc import Sequence
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter

from resources.feedback import FeedbackWebhook
from resources.source import EntitySpec
from resources.webhooks import WebhookCapability

PACKAGE = "resources"


class SectionBase(BaseModel):
    """What every vendor section offers: its kind, the env vars it needs, a Dagster resource."""

    model_config = ConfigDict(extra="forbid")

    def env_vars(self) -> list[str]:
        """Names of the environment variables holding this section's secrets."""
        raise NotImplementedError

    def resource(self) -> Any:
        """The Dagster resource (secrets as dg.EnvVar) whose `client()` builds the client."""
        raise NotImplementedError


class SourceSectionBase(SectionBase):
    """A `source:` section. `entities` is the one declaration of what the source can read."""

    entities: ClassVar[tuple[EntitySpec, ...]] = ()
    # Set by the integration that owns the section (`bind`), for vendors whose client needs it:
    # a per-integration token name, or how often the sensor reads.
    _integration: str = PrivateAttr(default="default")
    _interval_minutes: int = PrivateAttr(default=5)

    def bind(self, integration: str, interval_minutes: int) -> None:
        """Called once the integration file is loaded: the section learns who owns it."""
        self._integration = integration
        self._interval_minutes = interval_minutes

    def unavailable_entities(self) -> dict[str, str]:
        """Entities this configuration cannot fetch, with why: checked when the file loads."""
        return {}

    def mapping_overrides(self) -> dict[str, dict[str, Any]]:
        """Mapping overrides this section's settings imply (e.g. which record field holds
        consent), merged under the integration file's own `mapping:` overrides."""
        return {}

    def webhook(self) -> WebhookCapability | None:
        """How the receiver verifies and reads this source's webhooks; None when they are off.

        Built from the section alone (no client), so the receiver needs no API call."""
        return None


class TargetSectionBase(SectionBase):
    """A `target:` section: an `account` and, inside it, the `destination` members land in."""

    account: str

    def feedback_webhook(self) -> FeedbackWebhook | None:
        """How the receiver verifies and reads this target's feedback webhooks (unsubscribes,
        clicks, bounces); None when the target pushes none or they are off."""
        return None

    @property
    def destination(self) -> str:
        """Where members land inside the account (a list id, a client base): with the kind and
        the account it names the member table integrations share (X6)."""
        raise NotImplementedError


class DuplicateKindError(TypeError):
    """Two vendor sections of one role claim the same `kind`."""


def discover(package: str = PACKAGE) -> None:
    """Import every module of `package` so their section classes exist (idempotent)."""
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__, prefix=f"{package}."):
        if info.name != __name__:
            importlib.import_module(info.name)


def sections(base: type[SectionBase]) -> dict[str, type[SectionBase]]:
    """Every concrete subclass of `base` by its `kind`; DuplicateKindError on a clash."""
    found: dict[str, type[SectionBase]] = {}
    for cls in _subclasses(base):
        kind = _kind_of(cls)
        if kind is None:
            continue  # an intermediate base without its own kind
        if kind in found and found[kind] is not cls:
            other = found[kind]
            raise DuplicateKindError(
                f"two {base.__name__} sections claim kind {kind!r}: "
                f"{other.__module__}.{other.__qualname__} and {cls.__module__}.{cls.__qualname__}"
            )
        found[kind] = cls
    return dict(sorted(found.items()))


def _subclasses(base: type) -> list[type]:
    out: list[type] = []
    for sub in base.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def _kind_of(cls: type[BaseModel]) -> str | None:
    field = cls.model_fields.get("kind")
    if field is None or typing.get_origin(field.annotation) is not Literal:
        return None
    (kind,) = typing.get_args(field.annotation)
    return str(kind)


def _union(classes: Sequence[type]) -> Any:
    if not classes:
        raise LookupError("no vendor section found in the resources package")
    members = classes[0] if len(classes) == 1 else Union[tuple(classes)]  # noqa: UP007
    return Annotated[members, Field(discriminator="kind")]


@cache
def source_sections() -> dict[str, type[SourceSectionBase]]:
    """Source section classes by kind, after importing every vendor module."""
    discover()
    return sections(SourceSectionBase)  # type: ignore[return-value]


@cache
def target_sections() -> dict[str, type[TargetSectionBase]]:
    """Target section classes by kind, after importing every vendor module."""
    discover()
    return sections(TargetSectionBase)  # type: ignore[return-value]


@cache
def _adapter(role: str) -> TypeAdapter[Any]:
    found = source_sections() if role == "source" else target_sections()
    return TypeAdapter(_union(list(found.values())))


def parse_source(data: Any) -> SourceSectionBase:
    """Validate a `source:` mapping; raises pydantic.ValidationError naming the bad key."""
    return _adapter("source").validate_python(data)


def parse_target(data: Any) -> TargetSectionBase:
    """Validate a `target:` mapping; raises pydantic.ValidationError naming the bad key."""
    return _adapter("target").validate_python(data)


def source_entities(kind: str) -> tuple[EntitySpec, ...] | None:
    """The entities a source kind declares; None when no section has that kind."""
    cls = source_sections().get(kind)
    return None if cls is None else cls.entities


def __getattr__(name: str) -> Any:
    """`SourceSection` / `TargetSection`: the discriminated unions, built on first use (so a
    vendor module may import the bases from here without an import cycle)."""
    if name == "SourceSection":
        return _union(list(source_sections().values()))
    if name == "TargetSection":
        return _union(list(target_sections().values()))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DuplicateKindError",
    "SourceSectionBase",
    "TargetSectionBase",
    "discover",
    "parse_source",
    "parse_target",
    "source_entities",
    "source_sections",
    "target_sections",
]
