"""Target mappings as data: canonical member fields -> the field names a target kind uses.

Source mappings (memberflow.mapping) turn raw records into canonical fields (`first_name`,
`birthday`, `gender`, ...); a target mapping, one file per target kind in `mappings/targets/`,
names them the way the target does. So N sources and M targets need N + M files, not N x M.

    target: <kind>
    fields:                      # target field: canonical name, or a rule
      firstname: first_name
      sex: {from: gender, values: {m: "1", f: "2"}}   # canonical value -> value sent
      cards: {from: card, collect: true}              # every merged record's value, as a list

A canonical field the file does not name passes through under its own name (custom fields such
as a card number). An integration overrides single target fields with `target_fields:
{<target field>: <canonical name> | null}`; null drops the field (and its canonical field is not
passed through either).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from memberflow.mapping import EXTERNAL_ID, MAPPINGS_DIR, RESERVED

TARGETS_DIR = MAPPINGS_DIR / "targets"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")  # dots: namespaced custom fields (Vendor.Field)
FIELD_TYPES = frozenset({"text", "date", "integer", "decimal"})
# Columns of the `members` table beside the target fields; no target field may take them.
MEMBER_COLUMNS = frozenset(
    {"match_key", "sources", "source_records", "modified", "withdrawn", "fields_hash", "groups"}
)


class TargetMappingError(ValueError):
    """A target mapping that cannot work: names the file (or integration key) and the key."""


@dataclass(frozen=True)
class TargetField:
    """One target field: the canonical field it is filled from and how."""

    name: str
    source: str
    values: tuple[tuple[str, str], ...] = ()  # canonical value -> value sent; others: none
    collect: bool = False  # a list of every contributing record's value, not one survivor
    type: str | None = None  # for a target that creates missing custom fields: their type

    def value_map(self) -> dict[str, str]:
        return dict(self.values)


@dataclass(frozen=True)
class TargetMapping:
    """A target kind's field names, integration overrides already applied."""

    target: str
    fields: tuple[TargetField, ...] = ()
    dropped: frozenset[str] = frozenset()  # canonical fields an override took off the target

    def columns(self, canonical: Iterable[str]) -> list[TargetField]:
        """The target fields for these canonical fields, in their order.

        Each canonical field gives the target fields named from it, or (if none, and not
        dropped) itself under its own name. The computed `external_id` reaches a target only
        when the target mapping names it.
        """
        produced = list(dict.fromkeys([*canonical, EXTERNAL_ID]))
        out: list[TargetField] = []
        for name in produced:
            named = [f for f in self.fields if f.source == name]
            if named:
                out += named
            elif name not in self.dropped and name != EXTERNAL_ID:
                out.append(TargetField(name=name, source=name))
        return out

    def match_field(self, match_on: str) -> str | None:
        """The target field that carries the match key, or None when no field does."""
        for f in self.fields:
            if f.source == match_on and not f.collect:
                return f.name
        if match_on in self.dropped or match_on == EXTERNAL_ID:
            return None
        return match_on


def identity(target: str = "") -> TargetMapping:
    """Every canonical field under its own name (a target kind without a mapping file)."""
    return TargetMapping(target=target)


def load_target_mapping(
    kind: str, overrides: Mapping[str, Any] | None = None, where: str = ""
) -> TargetMapping:
    """The mapping file of target `kind` with an integration's `target_fields` applied."""
    path = TARGETS_DIR / f"{kind}.yaml"
    specs: dict[str, Any] = dict(_read(path)["fields"]) if path.exists() else {}
    defaults = {name: _field(name, spec, f"{path}: fields.{name}") for name, spec in specs.items()}
    fields = dict(defaults)
    dropped: set[str] = set()
    origin = where or "target_fields"
    for name, spec in (overrides or {}).items():
        key = f"{origin}.{name}"
        if spec is None:
            if name not in fields:
                raise TargetMappingError(
                    f"{key}: no such target field to remove (known: {', '.join(sorted(fields))})"
                )
            dropped.add(fields.pop(name).source)
        else:
            fields[name] = _field(name, spec, key)
    dropped -= {f.source for f in fields.values()}
    return TargetMapping(target=kind, fields=tuple(fields.values()), dropped=frozenset(dropped))


@cache
def _read(path: Path) -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise TargetMappingError(f"{path}: expected a mapping at the top level")
    unknown = set(raw) - {"target", "fields"}
    if unknown:
        raise TargetMappingError(
            f"{path}: unknown key(s) {sorted(unknown)} (expected target, fields)"
        )
    if raw.get("target") != path.stem:
        raise TargetMappingError(
            f"{path}: target: expected {path.stem!r}, got {raw.get('target')!r}"
        )
    if not isinstance(raw.get("fields"), dict):
        raise TargetMappingError(f"{path}: fields: expected a mapping of target field: canonical")
    return raw


def _field(name: str, spec: Any, where: str) -> TargetField:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TargetMappingError(
            f"{where}: target field name must be letters, digits, _ and . (not first)"
        )
    if name in MEMBER_COLUMNS:
        raise TargetMappingError(f"{where}: {name!r} is a column memberflow keeps itself")
    if isinstance(spec, str):
        spec = {"from": spec}
    if not isinstance(spec, dict):
        raise TargetMappingError(f"{where}: expected a canonical field name or a mapping")
    unknown = set(spec) - {"from", "values", "collect", "type"}
    if unknown:
        raise TargetMappingError(f"{where}: unknown key(s) {sorted(unknown)}")
    source = spec.get("from")
    if not isinstance(source, str) or not _NAME.match(source) or "." in source:
        raise TargetMappingError(f"{where}: from: expected a canonical field name")
    if source in RESERVED and source != EXTERNAL_ID:
        raise TargetMappingError(f"{where}: from: {source!r} is not a member field")
    values = spec.get("values") or {}
    if not isinstance(values, dict):
        raise TargetMappingError(f"{where}: values: expected canonical value: value sent")
    collect = spec.get("collect", False)
    if not isinstance(collect, bool):
        raise TargetMappingError(f"{where}: collect: expected true or false")
    kind = spec.get("type")
    if kind is not None and kind not in FIELD_TYPES:
        raise TargetMappingError(
            f"{where}: type: expected one of {', '.join(sorted(FIELD_TYPES))}, got {kind!r}"
        )
    return TargetField(
        name=name,
        source=source,
        values=tuple((str(k), str(v)) for k, v in values.items()),
        collect=collect,
        type=kind,
    )
