"""Demo credentials the sandbox emulators accept.

The names are the environment variables the integration files refer to, so a demo run can export
`SANDBOX_ENV` and point every client at the sandbox without touching real secrets.

`SANDBOX_ENV` is computed on access from the `credentials` of every discovered emulator
(`sandbox.emulator`), so a vendor declares its demo credentials in its own module and never
edits this file. Any of those names also reads as an attribute here
(`sandbox.credentials.HEYLOYALTY_API_KEY`). Computing them lazily (PEP 562) keeps this module
importable by the emulator modules that discovery itself imports.
"""

from __future__ import annotations

from typing import Any


def sandbox_env() -> dict[str, str]:
    """Every demo credential by env var name, gathered from the discovered emulators."""
    from sandbox.app import discovered_emulators  # lazy: app imports the emulators

    env: dict[str, str] = {}
    for emulator in discovered_emulators().values():
        for name, value in emulator.credentials.items():
            if name in env and env[name] != value:
                raise ValueError(f"sandbox emulator {emulator.name!r} redefines {name}")
            env[name] = value
    return env


def __getattr__(name: str) -> Any:
    """`SANDBOX_ENV`, or one credential by its env var name; computed at each access (the
    imports behind discovery are cached)."""
    if name.startswith("__") or name == "EMULATOR":  # discovery asks every module for one
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    env = sandbox_env()
    if name == "SANDBOX_ENV":
        return env
    if name in env:
        return env[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
