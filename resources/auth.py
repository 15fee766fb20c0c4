"""Reusable authentication parts for vendor clients, in the spirit of dlt's rest_api and Airbyte's
declarative CDK: each scheme is a small function or class that produces request headers, so a
vendor client states *which* scheme its API uses and nothing more.

- `bearer(token)`, `raw_key(header, key)`, `basic(user, password)`: fixed headers.
- `CachedToken`: a token fetched on demand, kept until shortly before it expires, replaced after
  a 401 (`invalidate`); thread-safe. `client_credentials(...)` (OAuth2 client credentials grant)
  and `token_exchange(...)` (trade a long-lived key for a short-lived token) build one. Given a
  `share_key` (a hash of the credential, `share_key(...)`), the token is also kept for the
  process, so the next client of the same credential (the next sensor tick, the next run in a
  long-lived process) uses it until it expires instead of asking for a new one.
- `HmacSigner`: a keyed signature of a message (a timestamp, a body), for signed requests and for
  checking a signed webhook in constant time.

Secrets pass through these objects only; they never build log lines or error messages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from resources.http import VendorHttp

DEFAULT_TOKEN_MARGIN_SECONDS = 60.0
DEFAULT_TOKEN_LIFETIME_SECONDS = 3600.0

TokenFetch = Callable[[], tuple[str, float | None]]  # -> (token, seconds valid or None)

# (share key, clock) -> (token, expires at on that clock): tokens kept for the process. Keyed
# by the clock too, so a test's fake clock never meets a token timed on the real one.
_SHARED_TOKENS: dict[tuple[str, Callable[[], float]], tuple[str, float]] = {}
_SHARED_LOCK = threading.Lock()


def forget_shared_tokens() -> None:
    """Drop every token kept for the process (a test that starts a new vendor does this)."""
    with _SHARED_LOCK:
        _SHARED_TOKENS.clear()


def share_key(*parts: str | None) -> str:
    """A key for a credential that reveals nothing of it (what the token was asked with)."""
    return hashlib.sha256("\0".join(p or "" for p in parts).encode()).hexdigest()


def bearer(token: str) -> dict[str, str]:
    """`Authorization: Bearer <token>`."""
    return {"Authorization": f"Bearer {token}"}


def raw_key(header: str, key: str) -> dict[str, str]:
    """The key as it is in a header of the vendor's choice (`Authorization: <key>`, `X-Api-Key`)."""
    return {header: key}


def basic(user: str, password: str) -> dict[str, str]:
    """HTTP Basic (RFC 7617), the same header httpx.BasicAuth sends."""
    pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {pair}"}


class CachedToken:
    """A short-lived token fetched when needed and shared by every thread of one client.

    `fetch` returns the token and how many seconds it is valid (None: DEFAULT_TOKEN_LIFETIME);
    a token is renewed `margin` seconds before it expires, and forgotten after the vendor
    refused it (`invalidate`), unless another thread already replaced it.
    """

    def __init__(
        self,
        fetch: TokenFetch,
        *,
        margin: float = DEFAULT_TOKEN_MARGIN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        share_key: str | None = None,
    ) -> None:
        self._fetch = fetch
        self._margin = margin
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._shared = (share_key, clock) if share_key else None

    def token(self) -> str:
        """A token valid for at least `margin` seconds more."""
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at - self._margin:
                kept = self._kept()
                if kept is not None:
                    self._token, self._expires_at = kept
                else:
                    token, lifetime = self._fetch()
                    self._token = token
                    self._expires_at = self._clock() + (lifetime or DEFAULT_TOKEN_LIFETIME_SECONDS)
                    if self._shared is not None:
                        with _SHARED_LOCK:
                            _SHARED_TOKENS[self._shared] = (token, self._expires_at)
            return self._token

    def _kept(self) -> tuple[str, float] | None:
        """The process's token for this credential while it has `margin` seconds left."""
        if self._shared is None:
            return None
        with _SHARED_LOCK:
            kept = _SHARED_TOKENS.get(self._shared)
        if kept is None or self._clock() >= kept[1] - self._margin:
            return None
        return kept

    def headers(self) -> dict[str, str]:
        """`Authorization: Bearer <token>` with a current token."""
        return bearer(self.token())

    def invalidate(self, token: str) -> None:
        """Forget `token` after a 401, so the next call fetches a new one."""
        with self._lock:
            if self._token == token:
                self._token = None
        if self._shared is not None:
            with _SHARED_LOCK:
                if _SHARED_TOKENS.get(self._shared, ("",))[0] == token:
                    del _SHARED_TOKENS[self._shared]


def token_answer(token_field: str = "access_token") -> Callable[[Any], dict[str, Any]]:
    """A validator for VendorHttp: an answer without a token is read as a garbled answer."""

    def check(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not body.get(token_field):
            raise ValueError("token response without a token")
        return body

    return check


def token_exchange(
    http: VendorHttp,
    url: str,
    *,
    endpoint: str,
    data: Mapping[str, str] | None = None,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
    token_field: str = "access_token",
    expires_field: str = "expires_in",
    margin: float = DEFAULT_TOKEN_MARGIN_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    share_key: str | None = None,
) -> CachedToken:
    """A CachedToken got by POSTing `data` (form) or `json` to `url`.

    Asking for a token twice only yields two tokens, so the POST is safe to repeat: a lost or
    unreadable answer is retried like a GET's. The answer's `token_field` is the token and
    `expires_field` its lifetime in seconds.
    """

    def fetch() -> tuple[str, float | None]:
        body = http.request_json(
            "POST",
            url,
            endpoint=endpoint,
            idempotent=True,
            data=data,
            json=json,
            headers=headers,
            validate=token_answer(token_field),
        )
        lifetime = body.get(expires_field)
        return str(body[token_field]), float(lifetime) if lifetime else None

    return CachedToken(fetch, margin=margin, clock=clock, share_key=share_key)


def client_credentials(
    http: VendorHttp,
    token_url: str,
    client_id: str,
    client_secret: str,
    *,
    endpoint: str,
    scope: str | None = None,
    margin: float = DEFAULT_TOKEN_MARGIN_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    share: bool = True,
) -> CachedToken:
    """OAuth2 client credentials grant (RFC 6749 4.4), credentials in the form body. `share`:
    keep the token for every client of these credentials in this process (see CachedToken)."""
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret,
    }
    if scope:
        form["scope"] = scope
    key = share_key(token_url, client_id, client_secret, scope) if share else None
    return token_exchange(
        http, token_url, endpoint=endpoint, data=form, margin=margin, clock=clock, share_key=key
    )


class HmacSigner:
    """HMAC of a message with a shared secret, as hex or base64 text.

    For signed requests (sign a timestamp or a body, put it in a header) and for checking a
    webhook's signature (`verify`, constant time).
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        algorithm: str = "sha256",
        encoding: Literal["hex", "base64"] = "hex",
    ) -> None:
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self._digest = getattr(hashlib, algorithm)
        self._encoding = encoding

    def sign(self, message: str | bytes) -> str:
        data = message.encode() if isinstance(message, str) else message
        mac = hmac.new(self._secret, data, self._digest)
        if self._encoding == "hex":
            return mac.hexdigest()
        return base64.b64encode(mac.digest()).decode("ascii")

    def verify(self, message: str | bytes, signature: str) -> bool:
        """Is `signature` this secret's signature of `message`? (constant-time comparison)"""
        return hmac.compare_digest(self.sign(message), signature.strip())
