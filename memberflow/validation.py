"""The data-quality gate (X4): mapped, normalised rows are checked with pandera, and every row
that fails gets a reason instead of stopping the batch.

Normalisation (memberflow.normalize) already turns unreadable values into reasons; this gate adds
the structural rules: the match key is present and canonical, required fields are set, dates and
numbers have the shape the target expects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # pandera is imported where a gate runs: loading the definitions never needs it
    import pandera.pandas as pa

from memberflow import normalize
from memberflow.mapping import EntityMapping, FieldRule, choice_values

_SHAPES = {
    "email": r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
    "mobile": r"^\+[1-9]\d{6,14}$",
    "date": r"^\d{4}-\d{2}-\d{2}$",
    "datetime": r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$",
    "number": r"^-?\d+(\.\d+)?(e-?\d+)?$",
    "boolean": r"^[01]$",
}


def schema_for(mapping: EntityMapping, match_on: str | None) -> pa.DataFrameSchema:
    """A pandera schema for the staged rows of one mapped entity."""
    import pandera.pandas as pa

    columns: dict[str, pa.Column] = {"record_id": pa.Column(str, nullable=False)}
    for rule in mapping.fields:
        shape = _SHAPES.get("boolean" if rule.type == "present" else rule.type)
        checks = [pa.Check.str_matches(shape)] if shape else []
        columns[rule.target] = pa.Column(
            object, checks=checks, nullable=not rule.required, required=True, coerce=False
        )
    if match_on is not None:
        columns["match_key"] = pa.Column(str, nullable=False)
    return pa.DataFrameSchema(columns, strict=False, unique=None)


def normalise(
    frame: pd.DataFrame, mapping: EntityMapping, date_format: str, phone_region: str
) -> dict[str, pd.Series]:
    """Normalise mapped columns in place (a bad value becomes None); returns, per field, each
    row's problem with that field's value (None if fine). Whether a problem withholds the row or
    only drops the field is the caller's decision (match key and required fields vs the rest)."""
    issues: dict[str, pd.Series] = {}
    for rule in mapping.fields:
        if rule.type == "present":
            frame[rule.target] = normalize.present(frame[rule.target])
            issues[rule.target] = normalize.no_problems(frame.index)
            continue
        if rule.type == "object":
            parse = _object_parser(rule, date_format, phone_region)
            values, typed = normalize._per_distinct(frame[rule.target], parse)
            frame[rule.target] = values
            issues[rule.target] = typed
            continue
        column, plain_issues = normalize.plain(frame[rule.target])
        parse = value_parser(rule, date_format, phone_region)
        if parse is None:
            values, typed = column, normalize.no_problems(frame.index)
        else:
            values, typed = normalize._per_distinct(column, parse)
        if rule.type == "boolean" and rule.true_values:
            # with its own true spellings, a flag that is blank or absent is false, not unknown:
            # a consent cleared at the source must reach the target as cleared (no consent)
            values = values.where(values.notna(), "0")
        frame[rule.target] = values
        issues[rule.target] = plain_issues.where(plain_issues.notna(), typed)
    return issues


def value_parser(
    rule: FieldRule, date_format: str, phone_region: str
) -> Callable[[str], normalize.Result] | None:
    """The one-value normaliser of a rule's type (None: text, kept as trimmed)."""
    if rule.type == "email":
        return normalize.email
    if rule.type == "mobile":
        return normalize.mobile_for(phone_region)
    if rule.type in ("date", "datetime"):
        return normalize.date_parser(
            rule.format or date_format, rule.type == "datetime", rule.timezone
        )
    if rule.type == "number":
        return normalize.number_parser(rule.strip)
    if rule.type == "boolean":
        return normalize.boolean_parser(rule.true_values)
    if rule.type == "choice":
        return normalize.choice_parser(choice_values(rule))
    return None


def _object_parser(
    rule: FieldRule, date_format: str, phone_region: str
) -> Callable[[str], normalize.Result]:
    """A JSON object of raw member texts -> the object with each member normalised.

    A bad member is left out of the object (its problem reported as `member: problem`); an
    object with no member left is no value at all.
    """
    parsers = {f.target: (f, value_parser(f, date_format, phone_region)) for f in rule.fields}

    def one(text: str) -> normalize.Result:
        raw = json.loads(text) if isinstance(text, str) else {}
        out: dict[str, object] = {}
        problems = []
        for name, (member, parse) in parsers.items():
            value = raw.get(name)
            if member.type == "present":
                out[name] = "1" if isinstance(value, str) and value.strip() else "0"
                continue
            if value is None:
                continue
            clean, problem = normalize._plain_one(str(value))
            if problem is None and clean is not None and parse is not None:
                clean, problem = parse(clean)
            if problem:
                problems.append(f"{name}: {problem}")
            elif clean is not None:
                out[name] = clean
        if not any(v is not None and v != "0" for k, v in out.items()):
            out = {}
        value = json.dumps(out, ensure_ascii=False, separators=(",", ":")) if out else None
        return value, "; ".join(problems) or None

    return one


def row_problems(issues: dict[str, pd.Series], index: pd.Index) -> pd.Series:
    """`field: problem; field: problem` per row ('' if none), over the given fields' issues."""
    problems = pd.Series("", index=index, dtype=object)
    for target, column in issues.items():
        hit = column.notna() & (column.astype(str) != "")
        if not hit.any():
            continue
        before = problems[hit]
        problems[hit] = before.where(before == "", before + "; ") + f"{target}: " + column[hit]
    return problems


def gate(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.Series:
    """Run the pandera schema lazily and turn its failure cases into one reason per row."""
    reasons = pd.Series("", index=frame.index, dtype=object)
    for column, failures in sorted(gate_by_column(frame, schema).items()):
        named = failures.map(lambda m, c=column: f"{c}: {m}" if m else "")
        reasons = _append(reasons, named)
    return reasons


def gate_by_column(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> dict[str, pd.Series]:
    """The pandera schema's failures per column: a reason per failing row, '' elsewhere."""
    import pandera.pandas as pa

    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        cases = cases[cases["index"].notna()]
        out: dict[str, pd.Series] = {}
        for (index, column), group in cases.groupby(["index", "column"], dropna=False):
            checks = ", ".join(sorted({_explain(c) for c in group["check"].astype(str)}))
            out.setdefault(str(column), pd.Series("", index=frame.index, dtype=object))
            out[str(column)].loc[index] = checks
        return out
    return {}


def _explain(check: str) -> str:
    if check.startswith("not_nullable"):
        return "missing (required)"
    if check.startswith("str_matches"):
        return "wrong shape " + check.removeprefix("str_matches")
    return check


def _append(left: pd.Series, right: pd.Series) -> pd.Series:
    return pd.Series(
        [_join(a, b) for a, b in zip(left, right, strict=True)], index=left.index, dtype=object
    )


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a and b else (a or b)
