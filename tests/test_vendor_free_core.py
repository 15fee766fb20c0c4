"""The core is vendor-free: no vendor name and no vendor-only concept in memberflow/ (the library
core), assets/ or pipelines/, and the core imports neither the app, the Dagster layer nor the
sandbox. Vendor knowledge lives in resources/<vendor>.py, sandbox/<vendor>.py, mappings/ and
integrations/, so a new vendor never edits the core."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE_DIRS = ("memberflow", "assets", "pipelines")
VENDORS = (
    "flexpos",
    "amero",
    "ticketmaster",
    "heyloyalty",
    "teyca",
    "axle",
    "amilia",
    "cyberimpact",
    "flexmail",
)
# "admin" only as a whole word: the Admin vendor, not "administration".
VENDOR_RE = re.compile(r"(?i)" + "|".join([*VENDORS, r"\badmin\b"]))
CONCEPT_RE = re.compile(r"(?i)list_id|tracking_id|\bhmac\b|option[ _]labels?\b")


def core_files() -> list[Path]:
    """Python files of the core, except any app/ code that may still live under them."""
    files = []
    for folder in CORE_DIRS:
        files += [p for p in sorted((ROOT / folder).rglob("*.py")) if "app" not in p.parts]
    return files


def hits(pattern: re.Pattern[str]) -> list[str]:
    found = []
    for path in core_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = pattern.search(line)
            if match:
                found.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)}")
    return found


def test_the_scan_sees_the_core():
    names = {p.relative_to(ROOT).as_posix() for p in core_files()}
    assert {"memberflow/landing.py", "assets/extract.py", "pipelines/sensors.py"} <= names


def test_no_vendor_names_in_the_core():
    found = hits(VENDOR_RE)
    assert not found, "vendor names in the core:\n" + "\n".join(found)


def test_no_vendor_only_concepts_in_the_core():
    found = hits(CONCEPT_RE)
    assert not found, "vendor-only concepts in the core:\n" + "\n".join(found)


def imported_roots(path: Path) -> set[str]:
    """Top-level packages a module imports, including imports inside functions."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("memberflow", {"app", "assets", "pipelines", "sandbox"}),
        ("assets", {"app", "sandbox"}),
        ("pipelines", {"app", "sandbox"}),
        ("sandbox", {"resources", "assets", "pipelines"}),
    ],
)
def test_layer_imports(folder, forbidden):
    found = [
        f"{path.relative_to(ROOT)} imports {sorted(imported_roots(path) & forbidden)}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "app" not in path.parts and imported_roots(path) & forbidden
    ]
    assert not found, "\n".join(found)


def test_the_checks_can_fail():
    assert VENDOR_RE.search("client = HeyloyaltyClient()")
    assert VENDOR_RE.search("the Admin export") and not VENDOR_RE.search("administration")
    assert CONCEPT_RE.search("target.list_id") and CONCEPT_RE.search("HMAC-SHA256")
    assert imported_roots(Path(__file__)) >= {"ast", "re", "pytest"}
