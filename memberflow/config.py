"""Integration files: one YAML file per integration, validated strictly on load.

An error names the file, the key and what was expected, so a typo fails at load instead of
silently changing what a sync does. Unknown keys are errors. Credentials appear only as the names
of environment variables (C2).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from memberflow.mapping import (
    EXTERNAL_ID,
    MappingError,
    SourceEntities,
    available_entities,
    load_mapping,
)
from memberflow.member_events import MemberEventSettings
from memberflow.segments import SegmentSettings
from memberflow.target_mapping import TargetMapping, TargetMappingError, load_target_mapping
from resources.registry import SourceSection, TargetSection

REPO_ROOT = Path(__file__).resolve().parents[1]
INTEGRATIONS_DIR = REPO_ROOT / "integrations"
# libyaml's safe loader where PyYAML was built with it: 200 integration files parse in 1.6 s
# against 18 s with the pure-Python one (issue 12, a loaded machine); same documents, same
# errors with line marks.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


class IntegrationFileError(ValueError):
    """A broken integration file: says which file, which key and what was expected."""


class ImportType(StrEnum):
    create_only = "create_only"
    create_and_update = "create_and_update"
    update_only = "update_only"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImportSettings(_Strict):
    """C6: how members are created and updated on the target list."""

    type: ImportType = ImportType.create_and_update
    date_format: str | None = Field(
        default=None, description="strptime format of source dates; default: the source's own"
    )
    option_separator: str = Field(default=",", min_length=1, max_length=3)
    reimport_unsubscribed: bool = True
    send_optin: bool = False
    send_automations: bool = False
    send_webhooks: bool = False
    error_report_to: str | None = None
    phone_region: str = Field(default="DK", pattern=r"^[A-Z]{2}$")


class ScheduleSettings(_Strict):
    """C4/X5: the sensor interval, the first day backfills can reach, and whether the
    integration's sensors and schedules start running as soon as Dagster loads the file."""

    interval_minutes: int = Field(default=5, ge=1, le=1440)
    history_start: date = date(2024, 1, 1)
    enabled: bool = Field(
        default=False,
        description="true: the integration's sensors and schedule start running when Dagster "
        "loads the file; false: they wait to be switched on in the UI (a switch in the UI wins)",
    )


_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class AlertSettings(_Strict):
    """Who is told when something goes wrong with this integration, and when a list counts as
    stale."""

    email_on_failure: list[Annotated[str, Field(pattern=_EMAIL)]] = Field(
        default_factory=list,
        description="addresses mailed when a run of this integration fails (besides the "
        "deployment's MEMBERFLOW_ALERT_TO)",
    )
    stale_after_intervals: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="the list's freshness check fails when it has not been synced, or checked "
        "in sync by the sensor, for this many sensor intervals",
    )


class FeedbackSettings(_Strict):
    """What becomes of the list's feedback (unsubscribes, clicks, bounces, members only on the
    list) for a two-way integration (AF3-AF6)."""

    write_back: bool = Field(
        default=False,
        description="opt-in: write feedback back into the source (an unsubscribe clears the "
        "source's flag, a click is recorded, a member only on the list is created there)",
    )
    bounces_to: str | None = Field(
        default=None, description="address mailed the run's new bounced addresses"
    )
    summary_to: str | None = Field(
        default=None, description="address mailed a summary after every full sync"
    )


FieldOverride = str | dict[str, Any] | None


class Integration(_Strict):
    """One source account feeding one target list (C1)."""

    name: str
    description: str = ""
    source: SourceSection
    target: TargetSection
    match_on: Literal["email", "mobile", "external_id"] = "email"
    merge_by_phone: bool | None = Field(
        default=None,
        description="true: match_on mobile (records sharing a phone are one member); "
        "false: match_on external_id (one member per source record)",
    )
    target_fields: dict[str, str | dict[str, Any] | None] = Field(
        default_factory=dict,
        description="overrides of the target mapping: target field -> canonical field, or null",
    )
    timezone: str = Field(default="UTC", description="IANA zone of the integration's calendar")
    segments: list[SegmentSettings] = Field(default_factory=list)
    member_events: MemberEventSettings | None = Field(
        default=None,
        description="who is a member and which member fields follow from the tracked events",
    )
    tracking: list[str] = Field(
        default_factory=list, description="event entities to fetch: journals, tickets, orders…"
    )
    shared_match_keys: Literal["merge", "withhold"] = Field(
        default="merge",
        description="records of this integration sharing one match key: merge them into one "
        "member, or withhold the key and report the records (AF1: duplicates are not synced)",
    )
    feedback: FeedbackSettings = FeedbackSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    alerts: AlertSettings = AlertSettings()
    import_: ImportSettings = Field(default_factory=ImportSettings, alias="import")
    mapping: dict[str, dict[str, FieldOverride]] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("timezone")
    @classmethod
    def _timezone_is_known(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (expected an IANA name)") from None
        return value

    @model_validator(mode="after")
    def _merge_by_phone_sets_match_on(self) -> Integration:
        """merge_by_phone picks match_on unless the file says it; a conflict is caught later
        (_check_semantics), where the message can name the file and both keys."""
        if self.merge_by_phone is not None and "match_on" not in self.model_fields_set:
            self.match_on = "mobile" if self.merge_by_phone else "external_id"
        return self

    @model_validator(mode="after")
    def _bind_source(self) -> Integration:
        """The source section learns its integration (some vendors name a token after it, or
        pace their scans by the interval), and its own mapping defaults join the file's
        overrides; a field the file overrides itself keeps the file's value."""
        self.source.bind(self.name, self.schedule.interval_minutes)
        for entity, fields in self.source.mapping_overrides().items():
            self.mapping[entity] = {**fields, **self.mapping.get(entity, {})}
        return self

    @field_validator("name")
    @classmethod
    def _name_is_an_identifier(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be lowercase letters, digits and _ (it becomes an asset key)")
        return value

    @property
    def list_key(self) -> str:
        """The identity of the target list; integrations that share it share one member table."""
        raw = f"{self.target.kind}_{self.target.account}_{self.target.destination}"
        return re.sub(r"[^A-Za-z0-9_]", "_", raw).lower()

    @property
    def source_file(self) -> str:
        return getattr(self, "_source_file", "<memory>")


def _expand_env_refs(value: Any) -> Any:
    """`${VAR:-default}` in string values, so demo hosts can follow the sandbox's port.

    Only non-secret settings use this; credentials are always env var names, never values.
    """
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: os.environ.get(m.group(1)) or m.group(2) or "", value)
    if isinstance(value, dict):
        return {k: _expand_env_refs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env_refs(v) for v in value]
    return value


def _format_errors(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid integration file"]
    for item in error.errors():
        loc = list(item["loc"])
        if len(loc) > 1 and loc[0] in ("source", "target") and isinstance(loc[1], str):
            loc.pop(1)  # pydantic's union tag (the `kind`), not a key of the file
        key = ".".join(str(p) for p in loc) or "<top>"
        got = item.get("input")
        # Never echo a value that may be a secret pasted into the wrong key (C2).
        secretish = item["type"] == "extra_forbidden" or key.endswith(("_env", "url", "code"))
        shown = "" if secretish or isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"  - {key}: {item['msg']}{shown}")
    return "\n".join(lines)


def load_integration(path: Path) -> Integration:
    """Read and validate one integration file; the name defaults to the file's stem."""
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise IntegrationFileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise IntegrationFileError(f"{path}: expected a mapping at the top level")
    raw = _expand_env_refs(raw)
    raw.setdefault("name", path.stem.replace("-", "_"))
    try:
        integration = Integration.model_validate(raw)
    except ValidationError as exc:
        raise IntegrationFileError(_format_errors(path, exc)) from None
    object.__setattr__(integration, "_source_file", str(path))
    _check_semantics(path, integration)
    return integration


def _check_semantics(path: Path, integration: Integration) -> None:
    """Rules that need the source's entity list: tracking kinds and mapped entities must exist."""

    entities = available_entities(integration.source.kind)
    unavailable = getattr(integration.source, "unavailable_entities", dict)()
    for kind in integration.tracking:
        if kind in unavailable:
            raise IntegrationFileError(f"{path}: tracking: {kind!r} {unavailable[kind]}")
        if kind not in entities.events:
            raise IntegrationFileError(
                f"{path}: tracking: {kind!r} is not an event entity of "
                f"{integration.source.kind} (expected one of {sorted(entities.events)})"
            )
    _check_event_entities(path, integration)
    _check_merge_by_phone(path, integration)
    _check_match_field(path, integration, entities)
    try:
        target_mapping_of(integration)
    except TargetMappingError as exc:
        raise IntegrationFileError(str(exc)) from None
    for entity in integration.mapping:
        if entity not in entities.all:
            raise IntegrationFileError(
                f"{path}: mapping.{entity}: no such entity for {integration.source.kind} "
                f"(expected one of {sorted(entities.all)})"
            )


def _check_event_entities(path: Path, integration: Integration) -> None:
    """Member events and event groups read tracked entities only."""
    wanted: list[tuple[str, str]] = []
    if integration.member_events is not None:
        wanted += [("member_events", e) for e in sorted(integration.member_events.entities())]
    for segment in integration.segments:
        entity = getattr(segment.rule, "from_events", None)
        if entity:
            wanted.append((f"segments.{segment.name}", entity))
    for key, entity in wanted:
        if entity not in integration.tracking:
            raise IntegrationFileError(
                f"{path}: {key}: {entity!r} is not a tracked entity "
                f"(tracking: {integration.tracking}); add it to tracking"
            )


def _check_merge_by_phone(path: Path, integration: Integration) -> None:
    if integration.merge_by_phone is None:
        return
    wanted = "mobile" if integration.merge_by_phone else EXTERNAL_ID
    if integration.match_on != wanted:
        flag = "true" if integration.merge_by_phone else "false"
        raise IntegrationFileError(
            f"{path}: match_on: {integration.match_on!r} conflicts with merge_by_phone: {flag} "
            f"(which means match_on: {wanted}); set one of them"
        )


def target_mapping_of(integration: Integration) -> TargetMapping:
    """The target kind's field names with the integration's `target_fields` applied."""
    return load_target_mapping(
        integration.target.kind,
        integration.target_fields,
        where=f"{integration.source_file}: target_fields",
    )


def check_match_on_supported(integration: Integration, match_keys: Iterable[str]) -> None:
    """The target must recognise members by the integration's match key (its capabilities'
    `match_keys`); raises IntegrationFileError naming the file and key otherwise."""
    keys = sorted(match_keys)
    if integration.match_on not in keys:
        raise IntegrationFileError(
            f"{integration.source_file}: match_on: {integration.match_on!r} is not a key "
            f"{integration.target.kind} recognises members by (it takes: {', '.join(keys)})"
        )


def _check_match_field(path: Path, integration: Integration, entities: SourceEntities) -> None:
    """Without the match field mapped as its type, every customer would be quarantined."""
    if integration.match_on == EXTERNAL_ID:
        return  # computed from the record id, never mapped
    for entity in entities.members:
        try:
            mapping = load_mapping(
                integration.source.kind, entity, integration.mapping.get(entity), str(path)
            )
        except MappingError as exc:
            raise IntegrationFileError(str(exc)) from None
        rule = mapping.field(integration.match_on)
        if rule is None or rule.type != integration.match_on:
            raise IntegrationFileError(
                f"{path}: match_on: {integration.match_on!r} needs mapping.{entity}."
                f"{integration.match_on} mapped with type {integration.match_on}"
            )


def discover_files(directory: Path | None = None) -> list[Path]:
    """The integration files Dagster loads: MEMBERFLOW_INTEGRATIONS (a dir or os.pathsep list)."""
    setting = os.environ.get("MEMBERFLOW_INTEGRATIONS")
    if directory is None and setting:
        paths: list[Path] = []
        for part in setting.split(os.pathsep):
            p = Path(part)
            paths.extend(sorted(p.glob("*.yaml")) if p.is_dir() else [p])
        return paths
    return sorted((directory or INTEGRATIONS_DIR).glob("*.yaml"))


def load_all(paths: list[Path] | None = None) -> list[Integration]:
    """Load every file and check the rules that span files (unique names, shared lists)."""
    integrations = [load_integration(p) for p in (paths if paths is not None else discover_files())]
    _check_unique_names(integrations)
    _check_shared_lists(integrations)
    return integrations


def _check_unique_names(integrations: list[Integration]) -> None:
    seen: dict[str, str] = {}
    for item in integrations:
        if item.name in seen:
            raise IntegrationFileError(
                f"{item.source_file}: name: {item.name!r} is already used by {seen[item.name]}"
            )
        seen[item.name] = item.source_file


def _check_shared_lists(integrations: list[Integration]) -> None:
    """Integrations on one list must agree on the account's host, credentials and match key.

    They share one member table (X6); disagreeing settings would mean two accounts under one
    name, which could leak one client's members into another's list (C1).
    """
    first: dict[str, Integration] = {}
    for item in integrations:
        other = first.setdefault(item.list_key, item)
        if other is item:
            continue
        shared_import = {
            "type",
            "reimport_unsubscribed",
            "send_optin",
            "send_automations",
            "send_webhooks",
        }
        if (
            item.target != other.target
            or item.match_on != other.match_on
            or item.target_fields != other.target_fields
            or item.timezone != other.timezone
            or item.import_.model_dump(include=shared_import)
            != other.import_.model_dump(include=shared_import)
        ):
            raise IntegrationFileError(
                f"{item.source_file}: target: {item.target.destination} of account "
                f"{item.target.account!r} is also used by {other.source_file} with different "
                "target, match_on, target_fields, timezone or import settings; integrations on "
                "one list send one member each, so they must agree"
            )
