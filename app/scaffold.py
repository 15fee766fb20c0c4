"""`memberflow scaffold`: a commented integration file for a source kind and a target kind.

Written from the registered `source:`/`target:` section models (resources/registry.py) and the
integration model (memberflow/config.py), not from a template per vendor pair: a new vendor
module scaffolds without a line here. Required keys get a placeholder the file validates with
(env var names after the kind and key, an example URL); every optional key is written commented
out with its default and description, so the file lists what can be set. The text is loaded
back before it is returned: a scaffold `memberflow validate` refuses is a bug, not a user error.
"""

from __future__ import annotations

import tempfile
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from memberflow.config import Integration, IntegrationFileError, load_integration
from memberflow.mapping import available_entities
from resources.registry import source_sections, target_sections
from resources.target import TargetClient

PLACEHOLDER = "CHANGE_ME"
EXAMPLE_URL = "https://api.example.com"
# Tried in turn on a required key its validator refuses (an id as digits, a count as 1).
FALLBACKS: tuple[Any, ...] = ("1", 1, PLACEHOLDER, True)
MATCH_PREFERENCE = ("email", "mobile", "external_id")
# Keys of the integration model the scaffold writes itself, not from the model's defaults.
OWN_KEYS = {"name", "description", "source", "target", "match_on", "tracking"}


class ScaffoldError(ValueError):
    """Unknown kinds, or a pair that cannot make a valid file; the message says what to do."""


def scaffold(source: str, target: str, name: str) -> str:
    """The integration file's text for `source` -> `target`, named `name`."""
    sources, targets = source_sections(), target_sections()
    if source not in sources:
        raise ScaffoldError(f"unknown source kind {source!r}; source kinds: {', '.join(sources)}")
    if target not in targets:
        raise ScaffoldError(f"unknown target kind {target!r}; target kinds: {', '.join(targets)}")
    _check_name(name)
    source_values = _required_values(sources[source], source)
    target_values = _required_values(targets[target], target)
    tried = []
    for match_on in _match_keys(target):
        text = _render(name, source, target, match_on, source_values, target_values)
        try:
            _load(text, name)
        except IntegrationFileError as exc:
            tried.append(f"match_on {match_on}: {exc}")
            continue
        return text
    raise ScaffoldError(
        f"no valid {source} -> {target} file could be written:\n" + "\n".join(tried)
    )


def _check_name(name: str) -> None:
    """The integration model's own rule for names, before anything else is tried."""
    try:
        Integration.model_validate({"name": name})
    except ValidationError as exc:
        for error in exc.errors():
            if error["loc"] == ("name",):
                raise ScaffoldError(f"--name {name!r}: {error['msg']}") from None


def write(text: str, out: Path) -> None:
    """Write a new file; never overwrite one (it may hold a user's settings)."""
    if out.exists():
        raise ScaffoldError(f"{out} exists; pass another --out (scaffold never overwrites)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("x", encoding="utf-8") as handle:
        handle.write(text)


def placeholders_left(path: Path) -> list[str]:
    """The keys of a file that still hold a scaffold placeholder (dotted), for `validate` to
    name: such a file validates, but reaches no vendor."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    return sorted(_placeholder_keys(raw, ""))


def _placeholder_keys(value: Any, where: str) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _placeholder_keys(item, f"{where}.{key}" if where else str(key))
    elif value == PLACEHOLDER or (isinstance(value, str) and value.startswith(EXAMPLE_URL)):
        yield where


# --- values -------------------------------------------------------------------------------------


def _required_values(model: type[BaseModel], kind: str) -> dict[str, Any]:
    """A placeholder for each required key of `model`, changed until the model accepts them.

    A rule across keys (e.g. "give one credential pair") refuses the required keys alone; then
    the optional env var keys are set too, in the model's order, until it is met."""
    values = _required_values_nested(model, kind)
    values["kind"] = kind
    extras = iter(
        (_key(n, f), _placeholder(kind, n, f))
        for n, f in model.model_fields.items()
        if not f.is_required() and n.endswith("_env") and f.get_default() is None
    )
    fallbacks: dict[str, Iterator[Any]] = {}
    for _ in range(len(model.model_fields) * len(FALLBACKS) + 1):
        try:
            model.model_validate(values)
        except ValidationError as exc:
            for error in exc.errors():
                _repair(values, error["loc"], extras, fallbacks, kind)
            continue
        return values
    raise ScaffoldError(f"{kind}: no placeholders fit its section")


def _repair(
    values: dict[str, Any],
    loc: tuple[Any, ...],
    extras: Iterator[tuple[str, Any]],
    fallbacks: dict[str, Iterator[Any]],
    kind: str,
) -> None:
    """One refused placeholder: the next fallback for its key, or (a rule across keys) one more
    optional env var key set."""
    key = str(loc[0]) if loc else ""
    if key in values and key != "kind":
        value = next(fallbacks.setdefault(key, iter(FALLBACKS)), None)
        if value is not None:
            values[key] = value
            return
    elif not loc:
        extra = next(extras, None)
        if extra is not None:
            values[extra[0]] = extra[1]
            return
    raise ScaffoldError(f"{kind}: no placeholder fits {'.'.join(map(str, loc)) or 'the section'}")


def _placeholder(kind: str, name: str, field: FieldInfo) -> Any:
    if name.endswith("_env"):
        return f"{kind}_{name.removesuffix('_env')}".upper()
    if "url" in name:
        return EXAMPLE_URL
    literal = _literal(field.annotation)
    if literal is not None:
        return literal
    model = _model(field.annotation)
    if model is not None:
        return _required_values_nested(model, kind)
    return PLACEHOLDER


def _required_values_nested(model: type[BaseModel], kind: str) -> dict[str, Any]:
    return {
        _key(n, f): _placeholder(kind, n, f)
        for n, f in model.model_fields.items()
        if f.is_required()
    }


def _match_keys(target: str) -> list[str]:
    """The match keys the target recognises members by, most useful first."""
    for cls in _subclasses(TargetClient):
        if getattr(cls, "vendor", None) == target and hasattr(cls, "capabilities"):
            keys = cls.capabilities.match_keys
            return [k for k in MATCH_PREFERENCE if k in keys]
    return list(MATCH_PREFERENCE)


def _subclasses(base: type) -> Iterator[type]:
    for sub in base.__subclasses__():
        yield sub
        yield from _subclasses(sub)


# --- text ---------------------------------------------------------------------------------------


def _render(
    name: str,
    source: str,
    target: str,
    match_on: str,
    source_values: dict[str, Any],
    target_values: dict[str, Any],
) -> str:
    sources, targets = source_sections(), target_sections()
    events = sorted(available_entities(source).events)
    lines = [
        f"# {source} -> {target}: written by `memberflow scaffold`. Set the required keys",
        "# (marked `required`), export the env vars named by the *_env keys (their values are",
        "# secrets and never belong in this file), uncomment what you want to change, then run",
        f"# `memberflow validate {name}.yaml` and `memberflow check`.",
        f"name: {name}",
        f"description: {source} -> {target}",
        "source:",
        *_section_lines(sources[source], source_values, 1),
        "target:",
        *_section_lines(targets[target], target_values, 1),
        f"match_on: {match_on}  # what {target} recognises a member by: "
        + ", ".join(_match_keys(target)),
        f"tracking: []  # event entities to send as activity; {source} has: "
        + (", ".join(events) or "none"),
    ]
    for field_name, field in Integration.model_fields.items():
        if field_name not in OWN_KEYS:
            lines += _optional_lines(_key(field_name, field), field, 0)
    return "\n".join(lines) + "\n"


def _section_lines(model: type[BaseModel], values: dict[str, Any], depth: int) -> list[str]:
    pad = "  " * depth
    lines: list[str] = []
    # `kind` first: it says which vendor the keys below belong to
    for field_name, field in sorted(model.model_fields.items(), key=lambda i: i[0] != "kind"):
        key = _key(field_name, field)
        if key in values:
            value = values[key]
            need = "required" if field.is_required() else "needed with the keys set here"
            note = "" if key == "kind" else _comment(need, field.description)
            if isinstance(value, dict):
                lines.append(f"{pad}{key}:{note}")
                nested = _model(field.annotation)
                assert nested is not None
                lines += _section_lines(nested, value, depth + 1)
            else:
                lines.append(f"{pad}{key}: {_scalar(value)}{note}")
        else:
            lines += _optional_lines(key, field, depth, values.get("kind", ""))
    return lines


def _optional_lines(key: str, field: FieldInfo, depth: int, kind: str = "") -> list[str]:
    """An optional key, commented out with its default (a nested model: its keys); env var
    names in it start with the section's `kind`."""
    pad = "  " * depth
    default = field.get_default(call_default_factory=True)
    model = _model(field.annotation)
    if model is not None and (default is None or isinstance(default, BaseModel)):
        head = f"{pad}# {key}:{_comment('optional', field.description)}"
        body = []
        for sub_name, sub in model.model_fields.items():
            sub_key = _key(sub_name, sub)
            if sub.is_required():
                value = _placeholder(f"{kind}_{key}" if kind else key, sub_name, sub)
                note = _comment("required", sub.description)
            else:
                value = getattr(default, sub_name, sub.get_default(call_default_factory=True))
                note = _comment(None, sub.description)
            body.append(f"{pad}#   {sub_key}: {_scalar(value)}{note}")
        return [head, *body]
    if default is PydanticUndefined:
        default = None
    return [f"{pad}# {key}: {_scalar(default)}{_comment(None, field.description)}"]


def _comment(label: str | None, description: str | None) -> str:
    parts = [p for p in (label, " ".join((description or "").split())) if p]
    return f"  # {'; '.join(parts)}" if parts else ""


def _scalar(value: Any) -> str:
    """A value as inline YAML."""
    plain = to_jsonable_python(value)
    text = yaml.safe_dump(plain, default_flow_style=True, allow_unicode=True, width=1000)
    return text.strip().removesuffix("...").strip()


def _key(name: str, field: FieldInfo) -> str:
    return field.alias or name


def _literal(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)[0]
    return None


def _model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model in `annotation` (`Model`, `Model | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if _model(a) is not None]
        return found[0] if len(found) == 1 else None
    return None


def _load(text: str, name: str) -> Integration:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        return load_integration(path)
