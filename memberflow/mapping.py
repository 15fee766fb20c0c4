"""Field mappings as data: the defaults in `mappings/`, merged with an integration's overrides.

A mapping turns a raw JSON payload into named target fields. It compiles to DuckDB JSON-path
expressions, so extraction runs inside DuckDB over the landing files, and a mapping change is
replayed over the stored raw data without fetching the source again (X3).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

MAPPINGS_DIR = Path(__file__).resolve().parents[1] / "mappings"
FIELD_TYPES = {
    "text",
    "email",
    "mobile",
    "date",
    "datetime",
    "number",
    "boolean",
    "choice",
    "present",
    "object",
}
RULE_KEYS = frozenset(
    {"path", "type", "values", "value", "required", "format", "timezone", "true_values", "strip"}
)
# The computed canonical field: "<source kind>:<record id>", never read from a payload.
EXTERNAL_ID = "external_id"
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_TARGET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class MappingError(ValueError):
    """A mapping that cannot work: names the file or integration key and what is wrong."""


@dataclass(frozen=True)
class FieldRule:
    """How one target field is read from a source record."""

    target: str
    path: str | None = None
    type: str = "text"
    values: tuple[tuple[str, str], ...] = ()
    value: str | None = None
    required: bool = False
    format: str | None = None  # strptime format of this field's dates; else the integration's
    timezone: str | None = None  # IANA zone of naive datetimes; else UTC
    true_values: tuple[str, ...] = ()  # boolean: texts meaning true (lower-case); others false
    strip: str = ""  # characters removed before a number is parsed ("%" for "10%")
    fields: tuple[FieldRule, ...] = ()  # type object: its members, paths relative to the record

    def describe(self) -> str:
        if self.type == "object":
            return "{" + ", ".join(f"{f.target}: {f.describe()}" for f in self.fields) + "}"
        return f"{self.value!r}" if self.path is None else self.path


@dataclass(frozen=True)
class EntityMapping:
    """The mapping of one source entity, defaults and overrides already merged."""

    source: str
    entity: str
    role: Literal["members", "events"]
    record_id: str
    fields: tuple[FieldRule, ...]
    modified: str | None = None
    consent: str | None = None
    customer_id: str | None = None  # events: the path of the customer the event is tracked for
    explode: str | None = None
    # events: every customer the event concerns, `customer_id` first (a registration concerns
    # the registered person and the account's owner); groups and member facts use them all
    customer_ids: tuple[str, ...] = ()
    cancelled: str | None = None  # events: path of a flag; true = the event no longer counts

    def field(self, name: str) -> FieldRule | None:
        return next((f for f in self.fields if f.target == name), None)

    @property
    def fingerprint(self) -> str:
        """Changes whenever the mapping does, so staging knows to replay history (X3)."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SourceEntities:
    members: frozenset[str]
    events: frozenset[str]

    @property
    def all(self) -> frozenset[str]:
        return self.members | self.events


def available_entities(source_kind: str) -> SourceEntities:
    """The entities a source kind has, as its integration-file section declares them (the one
    place); a kind no section declares falls back to its default mapping files."""
    from resources.registry import source_entities  # the vendor sections, found on first use

    declared = source_entities(source_kind)
    if declared:
        return SourceEntities(
            frozenset(e.name for e in declared if e.role == "members"),
            frozenset(e.name for e in declared if e.role == "events"),
        )
    members, events = set(), set()
    for path in sorted((MAPPINGS_DIR / source_kind).glob("*.yaml")):
        raw = _read_default(path)
        (members if raw.get("role") == "members" else events).add(path.stem)
    return SourceEntities(frozenset(members), frozenset(events))


@cache
def _read_default(path: Path) -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise MappingError(f"{path}: expected a mapping")
    return raw


def load_mapping(
    source_kind: str, entity: str, overrides: dict[str, Any] | None = None, where: str = ""
) -> EntityMapping:
    """The default mapping of `entity` with an integration's overrides applied.

    An override of None removes a field; a string or mapping adds or replaces one.
    """
    path = MAPPINGS_DIR / source_kind / f"{entity}.yaml"
    if not path.exists():
        raise MappingError(f"{where or path}: no default mapping for {source_kind}.{entity}")
    raw = _read_default(path)
    specs: dict[str, Any] = dict(raw.get("fields") or {})
    origin = where or str(path)
    for name, spec in (overrides or {}).items():
        if spec is None:
            if name not in specs:  # a typo would silently keep sending the field
                raise MappingError(
                    f"{origin}: {entity}.{name}: no such field to remove "
                    f"(known: {', '.join(sorted(specs))})"
                )
            del specs[name]
        elif isinstance(spec, str) and isinstance(specs.get(name), dict):
            # A new path for a default field keeps its type: `email: Mail` is still an email,
            # normalised like one (a raw match key would miss unsubscribes on the list).
            specs[name] = {**specs[name], "path": spec}
            specs[name].pop("value", None)
        else:
            specs[name] = spec
    rules = tuple(
        _field_rule(name, spec, f"{origin}: {entity}.{name}") for name, spec in specs.items()
    )
    customers = _customer_paths(raw, origin)
    return EntityMapping(
        source=source_kind,
        entity=entity,
        role=raw.get("role", "members"),
        record_id=raw["record_id"],
        fields=rules,
        modified=raw.get("modified"),
        consent=raw.get("consent"),
        customer_id=customers[0] if customers else None,
        explode=raw.get("explode"),
        customer_ids=customers,
        cancelled=_optional_path(raw, "cancelled", origin),
    )


def _customer_paths(raw: dict[str, Any], where: str) -> tuple[str, ...]:
    """`customer_id`: one path, or a list of paths (the first is the tracked customer)."""
    value = raw.get("customer_id")
    if value is None:
        return ()
    paths = [value] if isinstance(value, str) else value
    if (
        not isinstance(paths, list)
        or not paths
        or not all(isinstance(p, str) and p.strip() for p in paths)
    ):
        raise MappingError(f"{where}: customer_id: expected a record path or a list of paths")
    return tuple(paths)


def _optional_path(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise MappingError(f"{where}: {key}: expected a record path")
    return value


# Columns the pipeline itself keeps beside mapped fields; a target field may not take their names.
RESERVED = frozenset(
    {
        "record_id",
        "modified",
        "consent",
        "ever_consented",
        "match_key",
        "payload",
        "event_id",
        "line_no",
        "customer_id",
        "business_date",
        "integration",
        "entity",
        "rank",
        "sources",
        "source_records",
        "withdrawn",
        "fields_hash",
        "event_hash",
        "line",
        "action",
        "deleted",
        "customer_ids",
        "live",
        EXTERNAL_ID,
    }
)
DELETED_FLAG = "_memberflow_deleted"  # a raw record with this key true is a tombstone


def _field_rule(name: str, spec: Any, where: str, nested: bool = False) -> FieldRule:
    if not _TARGET_NAME.match(name):
        raise MappingError(f"{where}: target field name must be letters, digits and _")
    if not nested and (name in RESERVED or name.startswith("_")):
        raise MappingError(f"{where}: {name!r} is a name memberflow uses itself; pick another")
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict):
        raise MappingError(f"{where}: expected a path string or a mapping, got {spec!r}")
    kind = spec.get("type", "text")
    if kind not in FIELD_TYPES:
        raise MappingError(f"{where}: type {kind!r} is not one of {sorted(FIELD_TYPES)}")
    if kind == "object":
        return _object_rule(name, spec, where, nested)
    unknown = set(spec) - RULE_KEYS
    if unknown:
        raise MappingError(f"{where}: unknown key(s) {sorted(unknown)}")
    path, value = spec.get("path"), spec.get("value")
    if (path is None) == (value is None):
        raise MappingError(f"{where}: give exactly one of 'path' or 'value'")
    if path is not None and not _PATH.match(str(path)):
        raise MappingError(f"{where}: path {path!r} is not a dot-path like cards.Cardnumber")
    values = spec.get("values") or {}
    if kind == "choice" and not isinstance(values, dict):
        raise MappingError(f"{where}: 'values' must map source values to canonical values")
    _check_extras(spec, kind, where)
    true_values = spec.get("true_values") or ()
    return FieldRule(
        target=name,
        path=None if path is None else str(path),
        type=kind,
        values=tuple((str(k), str(v)) for k, v in values.items()),
        value=None if value is None else str(value),
        required=bool(spec.get("required", False)),
        format=None if spec.get("format") is None else str(spec["format"]),
        timezone=None if spec.get("timezone") is None else str(spec["timezone"]),
        true_values=tuple(str(v).strip().lower() for v in true_values),
        strip=str(spec.get("strip") or ""),
    )


def _check_extras(spec: dict[str, Any], kind: str, where: str) -> None:
    """The type-specific keys only make sense with their type; a stray one is a typo."""
    allowed = {
        "format": {"date", "datetime"},
        "timezone": {"datetime"},
        "true_values": {"boolean"},
        "strip": {"number"},
    }
    for key, kinds in allowed.items():
        if key in spec and kind not in kinds:
            raise MappingError(f"{where}: {key!r} applies to type {'/'.join(sorted(kinds))} only")
    if "timezone" in spec:
        try:
            ZoneInfo(str(spec["timezone"]))
        except (ZoneInfoNotFoundError, ValueError):
            raise MappingError(
                f"{where}: timezone {spec['timezone']!r} is not an IANA zone"
            ) from None
    if "true_values" in spec and not isinstance(spec["true_values"], list):
        raise MappingError(f"{where}: 'true_values' must be a list of texts")


def _object_rule(name: str, spec: dict[str, Any], where: str, nested: bool) -> FieldRule:
    """type object: `fields: {name: rule}` read from the same record into one JSON object."""
    if nested:
        raise MappingError(f"{where}: an object cannot hold another object")
    unknown = set(spec) - {"type", "fields", "required"}
    if unknown:
        raise MappingError(f"{where}: unknown key(s) {sorted(unknown)} (type object takes fields)")
    members = spec.get("fields")
    if not isinstance(members, dict) or not members:
        raise MappingError(f"{where}: type object needs 'fields: {{name: rule, ...}}'")
    rules = tuple(_field_rule(str(k), v, f"{where}.{k}", nested=True) for k, v in members.items())
    return FieldRule(
        target=name, type="object", required=bool(spec.get("required", False)), fields=rules
    )


def json_path_sql(column: str, path: str, separator: str) -> str:
    """A DuckDB expression reading dot-path `path` from JSON `column` as text.

    A path that crosses arrays (`cards.Cardnumber` over `cards: [...]`) yields every element's
    value joined by `separator` (C6's option separator).
    """
    parts = path.split(".")
    plain = "$." + ".".join(parts)
    direct = f"json_extract_string({column}, {_sql_str(plain)})"
    if len(parts) == 1:
        return direct
    # Any step before the last may be an array (`a.b.c` over `a: {b: [...]}` or `a: [{b: ...}]`):
    # try each mix of walked and plain steps; a step walked over an object yields nothing.
    joined = []
    for mask in range(1, 2 ** (len(parts) - 1)):
        steps = [p + "[*]" if mask >> i & 1 else p for i, p in enumerate(parts[:-1])]
        walked = _sql_str("$." + ".".join([*steps, parts[-1]]))
        listed = f"json_extract_string({column}, {walked})"
        joined.append(f"nullif(array_to_string({listed}, {_sql_str(separator)}), '')")
    return f"coalesce({direct}, {', '.join(joined)})"


def rule_sql(rule: FieldRule, record_col: str, line_col: str | None, separator: str) -> str:
    """The DuckDB expression for one rule, reading `line.` paths from the exploded line."""
    if rule.type == "object":
        # Raw texts of the members, normalised one by one later (memberflow.validation).
        pairs = ", ".join(
            f"{_sql_str(f.target)}, {rule_sql(f, record_col, line_col, separator)}"
            for f in rule.fields
        )
        return f"json_object({pairs})::VARCHAR"
    if rule.path is None:
        return _sql_str(rule.value or "")
    if rule.path.startswith("line.") and line_col is not None:
        return json_path_sql(line_col, rule.path[len("line.") :], separator)
    return json_path_sql(record_col, rule.path, separator)


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def mapping_summary(mapping: EntityMapping) -> str:
    """A Markdown table of the mapping, shown in the asset's description in the UI."""
    rows = [f"| {r.target} | {r.describe()} | {r.type} |" for r in mapping.fields]
    return "\n".join(["| target field | source | type |", "| --- | --- | --- |", *rows])


def choice_values(rule: FieldRule) -> dict[str, str]:
    return dict(rule.values)
