"""Demo credentials the sandbox emulators accept.

The names are the environment variables the integration files refer to, so a demo run can export
`SANDBOX_ENV` and point every client at the sandbox without touching real secrets.

`SANDBOX_ENV` is computed on first access: the built-in emulators' variables below plus the
`credentials` of every discovered emulator (`sandbox.emulator`), so a new vendor adds its demo
credentials in its own module and never edits this file. Computing it lazily (PEP 562) keeps
this module importable by the emulator modules that discovery itself imports.
"""

from __future__ import annotations

from typing import Any

# FlexPOS (FP-A1/FP-A2): one client id/secret pair per API.
FLEXPOS_CLIENT_ID = "demo-pos-client"
FLEXPOS_CLIENT_SECRET = "demo-pos-secret"
FLEXPOS_ATTRACTIONS_CLIENT_ID = "demo-attr-client"
FLEXPOS_ATTRACTIONS_CLIENT_SECRET = "demo-attr-secret"

# Heyloyalty (HL-A1): API key + secret; a second account proves list isolation.
HEYLOYALTY_API_KEY = "demo-hl-key"
HEYLOYALTY_API_SECRET = "demo-hl-secret"
HEYLOYALTY_OTHER_API_KEY = "other-hl-key"
HEYLOYALTY_OTHER_API_SECRET = "other-hl-secret"

# Ticketmaster (TM-A1): apikey + username/password, granted one market.
TICKETMASTER_APIKEY = "demo-tm-key"
TICKETMASTER_USERNAME = "demo-tm-user"
TICKETMASTER_PASSWORD = "demo-tm-pass"
TM_MARKET = "TM_DK"

BUILT_IN_ENV: dict[str, str] = {
    "FLEXPOS_CLIENT_ID": FLEXPOS_CLIENT_ID,
    "FLEXPOS_CLIENT_SECRET": FLEXPOS_CLIENT_SECRET,
    "FLEXPOS_ATTRACTIONS_CLIENT_ID": FLEXPOS_ATTRACTIONS_CLIENT_ID,
    "FLEXPOS_ATTRACTIONS_CLIENT_SECRET": FLEXPOS_ATTRACTIONS_CLIENT_SECRET,
    "HEYLOYALTY_API_KEY": HEYLOYALTY_API_KEY,
    "HEYLOYALTY_API_SECRET": HEYLOYALTY_API_SECRET,
    "HEYLOYALTY_OTHER_API_KEY": HEYLOYALTY_OTHER_API_KEY,
    "HEYLOYALTY_OTHER_API_SECRET": HEYLOYALTY_OTHER_API_SECRET,
    "TICKETMASTER_APIKEY": TICKETMASTER_APIKEY,
    "TICKETMASTER_USERNAME": TICKETMASTER_USERNAME,
    "TICKETMASTER_PASSWORD": TICKETMASTER_PASSWORD,
}


def sandbox_env() -> dict[str, str]:
    """Every demo credential by env var name: the built-in ones, then each discovered emulator's."""
    from sandbox.app import discovered_emulators  # lazy: app imports the emulators, which import us

    env = dict(BUILT_IN_ENV)
    for emulator in discovered_emulators().values():
        for name, value in emulator.credentials.items():
            if name in env and env[name] != value:
                raise ValueError(f"sandbox emulator {emulator.name!r} redefines {name}")
            env[name] = value
    return env


def __getattr__(name: str) -> Any:
    """`SANDBOX_ENV`, computed at each access (discovery results are cached by the imports)."""
    if name == "SANDBOX_ENV":
        return sandbox_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
