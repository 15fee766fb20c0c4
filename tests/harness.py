"""End-to-end harness: the real sandbox on a local port, real integration files, real Dagster runs.

Each test gets its own data dir, its own Dagster instance and a fresh sandbox, so tests never see
each other's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import yaml

from app import runner
from memberflow.config import INTEGRATIONS_DIR, Integration, load_all
from pipelines.factory import build_definitions, warehouse_path


@dataclass
class Harness:
    tmp: Path
    sandbox: Any
    instance: dg.DagsterInstance
    integrations: list[Integration] = field(default_factory=list)
    defs: dg.Definitions | None = None

    def load(self, *names: str, edit: dict[str, dict[str, Any]] | None = None) -> None:
        """Load demo integration files by name, optionally with keys changed (dotted paths)."""
        paths = []
        for name in names:
            raw = yaml.safe_load((INTEGRATIONS_DIR / f"{name}.yaml").read_text())
            for dotted, value in (edit or {}).get(name, {}).items():
                _set(raw, dotted.split("."), value)
            path = self.tmp / "integrations" / f"{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(raw, allow_unicode=True))
            paths.append(path)
        self.integrations = load_all(paths)
        self.defs = build_definitions(self.integrations)

    def integration(self, name: str) -> Integration:
        return next(i for i in self.integrations if i.name == name)

    def backfill(self, name: str, days: int = 130, **kw: Any) -> runner.RunSummary:
        end = date.today()
        return self._run(name, start=end - timedelta(days=days), end=end, **kw)

    def tick(self, name: str, **kw: Any) -> runner.RunSummary:
        return self._run(name, **kw)

    def _run(self, name: str, **kw: Any) -> runner.RunSummary:
        assert self.defs is not None
        result = runner.run_sync(self.defs, self.integration(name), self.instance, **kw)
        summary = runner.summarise(result)
        summary.failures = runner.failure_messages(result)  # type: ignore[attr-defined]
        return summary

    def listed_tm_customer(self, list_id: int = 4711) -> dict[str, Any]:
        """A consenting Ticketmaster customer who is on the list now (for withdrawal tests)."""
        listed = {lower(m["email"]) for m in self.sandbox.emulator("heyloyalty").members(list_id)}
        return next(
            c
            for c in self.sandbox.data.tm_customers
            if c["marketingConsent"] and lower(c["email"]) in listed
        )

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        path = warehouse_path(self.integrations[0].list_key)
        with duckdb.connect(str(path), read_only=True) as conn:
            return conn.execute(sql, params or []).fetchall()


def lower(value: str | None) -> str:
    """An email as the list compares it: trimmed, lower-case; '' for none."""
    return (value or "").strip().lower()


def _set(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        raw = raw.setdefault(key, {})
    raw[keys[-1]] = value
