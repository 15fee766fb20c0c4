"""The code location Dagster loads (workspace.yaml): every integration file, one Definitions.

Which files: MEMBERFLOW_INTEGRATIONS (a folder, or files separated by the OS path separator),
default `integrations/`. A broken file fails the load with its path and key.
"""

from __future__ import annotations

from memberflow.config import load_all
from pipelines.factory import build_definitions

defs = build_definitions(load_all())
