"""Demo credentials the sandbox emulators accept.

The names are the environment variables the integration files refer to, so a demo run can export
`SANDBOX_ENV` and point every client at the sandbox without touching real secrets.
"""

from __future__ import annotations

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

SANDBOX_ENV: dict[str, str] = {
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
