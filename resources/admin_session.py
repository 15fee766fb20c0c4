"""One Admin API session: the token, `apisettings`, pacing, paging and Admin's error answers, so
the client (resources/admin.py) and the write-back (resources/admin_write_back.py) only state
what they read and write.

- AD-A2: `GET token/{api_key}` -> TokenGuid, valid until TimeToLive (server-local time), sent as
  `synetonToken`; renewed a minute before it expires and once after a 401. The key sits in that
  URL's path (quoted): it is one of the HTTP layer's masked secrets, so no log line or error
  shows it. An unreadable TimeToLive is taken as now + DurationToken, with a warning.
- The server's clock: TimeToLive - DurationToken is the server's "now" at the token call
  (`clock_offset`). The change log speaks server-local time, so the client writes its time
  cursors in the server's time and warns when the two differ by more than CLOCK_TOLERANCE (a
  wrong zone or a skew).
- AD-A3: `apisettings` is read once; from then on every try waits for room in the RateLimit calls
  per 60 s (a limiter shared by every run using this key), and a 403 "You are throttling the
  system" that still comes is waited out like a 429, never failed on.
- AD-A4: lists are plain arrays, `per_page` = MaxRecordsPerPage, the next page in the `Link`
  header (only its path and query, under our base, sent to the configured host: a reverse proxy
  may name itself, and the token must never go elsewhere); 204 and 404 "Nothing found" are
  empty.
- AD-A12: refusals carry Admin's own `ErrorMessage`, with the call and host named.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urljoin, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import httpx

from resources.admin_write_back import admin_message, throttling
from resources.auth import CachedToken
from resources.base import CallCounter, VendorError
from resources.http import VendorHttp, parse_retry_after
from resources.rate_budget import SharedRateLimiter, Window

TOKEN_MARGIN_SECONDS = 60.0  # AD-A2: renewed a minute before TimeToLive
THROTTLE_WAIT_SECONDS = 60.0  # AD-A3: a throttled call waits out the 60 s window
PAGE_SIZE_FALLBACK = 100  # when apisettings names no MaxRecordsPerPage
DURATION_FALLBACK_MINUTES = 30  # AD-A3's DurationToken, when apisettings is not read yet
CLOCK_TOLERANCE_SECONDS = 120.0  # server clock vs ours in the configured zone

Row = dict[str, Any]


class AdminSession:
    """Authenticated, paced calls to one Admin host (thread-safe like VendorHttp)."""

    vendor = "admin"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        zone: ZoneInfo,
        calls: CallCounter,
        pace: bool = True,
        budget_dir: Path | None = None,
        throttle_seconds: float = THROTTLE_WAIT_SECONDS,
        timeout: float | None = None,
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,  # wall clock, epoch seconds
    ) -> None:
        if not api_key:
            raise ValueError("admin needs an API key")
        self.base = base_url.rstrip("/")
        self.host = urlsplit(self.base).netloc or self.base
        self._key = api_key
        self._zone = zone
        self._pace, self._budget_dir = pace, budget_dir
        self._throttle_seconds = throttle_seconds
        self._sleep, self._clock = sleep, clock
        self._http = VendorHttp(
            vendor=self.vendor,
            timeout=timeout,
            max_tries=max_tries,
            transport=transport,
            sleep=sleep,
            calls=calls,
            secrets=[api_key, quote(api_key, safe="")],
            classify=classify,
            throttle_wait=self._throttle_wait,
        )
        self._token = CachedToken(self._fetch_token, margin=TOKEN_MARGIN_SECONDS, clock=clock)
        self._lock = threading.Lock()
        self._settings: Row | None = None
        self._limiter: SharedRateLimiter | None = None
        # (TimeToLive as server-local naive time, our epoch seconds) of the last token call
        self._token_seen: tuple[datetime, float] | None = None
        self.warnings: list[str] = []

    def close(self) -> None:
        self._http.close()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # --- AD-A3 ---------------------------------------------------------------------------------

    def settings(self, refresh: bool = False) -> Row:
        """`apisettings`, read once (again when `refresh`); pacing starts once it is known."""
        with self._lock:
            known = self._settings
        if known is not None and not refresh:
            return known
        body = self.call_json("GET", "apisettings", "apisettings", paced=False)
        if not isinstance(body, dict):
            raise VendorError(self.vendor, 0, f"apisettings on {self.host}: not an object")
        with self._lock:
            self._settings = body
            limit = positive(body.get("RateLimit"))
            made = self._pace and bool(limit) and self._limiter is None
            if made:
                self._limiter = SharedRateLimiter(
                    self.vendor,
                    self._key,
                    [Window("minute", limit or 1, 60.0, wait=True)],
                    directory=self._budget_dir,
                    clock=self._clock,
                    sleep=self._sleep,
                    counter=self._http.calls,  # waits reach the run's metadata
                )
        if made and self._limiter is not None:
            self._limiter.acquire()  # the apisettings call just made counts too
        return body

    # --- the server's clock ----------------------------------------------------------------------

    def clock_offset(self) -> float | None:
        """Seconds the server's clock is ahead of ours in the configured zone, from the last token
        answer (TimeToLive - DurationToken); None when TimeToLive was unreadable. Read both as
        wall-clock text and as moments, the nearer kept: a token that spans a DST change is
        not a skew."""
        self._token.token()
        duration = positive(self.settings().get("DurationToken")) or DURATION_FALLBACK_MINUTES
        with self._lock:
            seen = self._token_seen
        if seen is None:
            return None
        expires, at = seen
        server = expires - timedelta(minutes=duration)
        ours = datetime.fromtimestamp(at, UTC)
        by_text = (server - _naive(ours, self._zone)).total_seconds()
        by_moment = (server.replace(tzinfo=self._zone).astimezone(UTC) - ours).total_seconds()
        return min(by_text, by_moment, key=abs)

    # --- calls ---------------------------------------------------------------------------------

    def list_rows(
        self, path: str, endpoint: str, filter_: str | None, per_page: int | None = None
    ) -> Iterator[list[Row]]:
        """Pages of a list (AD-A4); 204 and 404 "Nothing found" end it empty."""
        size = per_page or positive(self.settings().get("MaxRecordsPerPage"))
        params: dict[str, Any] | None = {"per_page": size or PAGE_SIZE_FALLBACK}
        if filter_:
            params = {**(params or {}), "Filter": filter_}
        url, followed = f"{self.base}/{path}", set()
        while True:
            try:
                response = self._call("GET", url, endpoint, params=params)
            except VendorError as exc:
                if nothing_found(exc):
                    return
                raise
            rows = self._rows(response, endpoint)
            if rows:
                yield rows
            link = response.links.get("next", {}).get("url")
            if not link or not rows:
                return
            url, params = self._next_url(link, url), None
            if url in followed:
                return
            followed.add(url)

    def call_json(
        self, method: str, path: str, endpoint: str, *, paced: bool = True, **kwargs: Any
    ) -> Any:
        """One call's JSON body (None for a 204)."""
        response = self._call(method, f"{self.base}/{path}", endpoint, paced=paced, **kwargs)
        return self._body(response, endpoint)

    def _call(
        self, method: str, url: str, endpoint: str, *, paced: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """One request with a current token; a 401 renews it once (AD-A2)."""
        for attempt in (1, 2):
            token = self._token.token()

            def headers(token: str = token) -> dict[str, str]:
                if paced and self._limiter is not None:
                    self._limiter.acquire()  # before every try: Admin counts retries too
                return {"synetonToken": token, "Accept": "application/json"}

            try:
                return self._http.request(method, url, endpoint=endpoint, headers=headers, **kwargs)
            except VendorError as exc:
                if exc.status == 401 and attempt == 1:
                    self._token.invalidate(token)
                    continue
                raise self._named(exc, endpoint) from None
        raise AssertionError("unreachable")

    # --- AD-A2 ---------------------------------------------------------------------------------

    def _fetch_token(self) -> tuple[str, float]:
        if self._pace and self._limiter is not None:
            self._limiter.acquire()  # a token call counts like any other [I]
        asked_at = self._clock()
        try:
            body = self._http.get_json(
                f"{self.base}/token/{quote(self._key, safe='')}",
                endpoint="token",
                validate=self._token_body,
            )
        except VendorError as exc:
            if exc.status in (401, 403) and not throttling(exc):
                raise VendorError(
                    self.vendor,
                    exc.status,
                    f"{admin_message(exc)} (on {self.host}: the API key was refused; check the "
                    "environment variable it comes from)",
                    exc.body,
                ) from None
            raise self._named(exc, "token") from None
        try:
            written = datetime.fromisoformat(str(body.get("TimeToLive")).strip())
            expires = _naive(written, self._zone)
        except ValueError:
            return str(body["TokenGuid"]), token_lifetime(self._unreadable_expiry())
        with self._lock:
            self._token_seen = (expires, asked_at)
        moment = expires.replace(tzinfo=self._zone).astimezone(UTC)
        return str(body["TokenGuid"]), token_lifetime((moment - self.now()).total_seconds())

    def _unreadable_expiry(self) -> float:
        """Seconds a token with an unreadable TimeToLive is used: DurationToken (AD-A3's default
        before apisettings is read); a 401 before then renews it anyway."""
        with self._lock:
            known = self._settings
            self._token_seen = None
        minutes = positive((known or {}).get("DurationToken")) or DURATION_FALLBACK_MINUTES
        self.warnings.append(
            f"admin: unreadable TimeToLive in the token answer of {self.host}; the token is "
            f"used for DurationToken ({minutes} min) and the server clock is not checked"
        )
        return minutes * 60.0

    def _token_body(self, body: Any) -> Row:
        if not isinstance(body, dict) or not body.get("TokenGuid"):
            raise ValueError("token answer without a TokenGuid")
        return body

    # --- answers -------------------------------------------------------------------------------

    def _throttle_wait(self, response: httpx.Response) -> float | None:
        """AD-A3: a throttled call waits for the window (Retry-After when Admin sends one)."""
        if classify(response) != "throttled":
            return None
        asked = parse_retry_after(response.headers.get("Retry-After"))
        return self._throttle_seconds if asked is None else asked

    def _rows(self, response: httpx.Response, endpoint: str) -> list[Row]:
        body = self._body(response, endpoint)
        if body is None:
            return []
        if not isinstance(body, list):
            raise VendorError(self.vendor, 0, f"{endpoint} on {self.host}: expected a list")
        return [row for row in body if isinstance(row, dict)]

    def _body(self, response: httpx.Response, endpoint: str) -> Any:
        if response.status_code == 204 or not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError:
            message = f"{endpoint} on {self.host}: unreadable answer"
            raise VendorError(self.vendor, 0, message) from None

    def _next_url(self, link: str, current: str) -> str:
        """A Link's path and query on our scheme and host: behind a reverse proxy Admin may name
        its own host, and the token is only ever sent to the configured one. A path outside our
        base is refused."""
        parts, ours = urlsplit(urljoin(current, link)), urlsplit(self.base)
        base_path = ours.path.rstrip("/") + "/"
        if not parts.path.startswith(base_path):
            raise VendorError(
                self.vendor,
                0,
                f"a page link on {self.host} leads outside the API ({parts.path}); not followed",
            )
        return urlunsplit((ours.scheme, ours.netloc, parts.path, parts.query, ""))

    def _named(self, exc: VendorError, endpoint: str) -> VendorError:
        """Admin's own `ErrorMessage` with the call and host named (AD-A12, C8)."""
        if self.host in exc.message or type(exc) is not VendorError:
            return exc
        message = f"{admin_message(exc)} ({endpoint} on {self.host})"
        return VendorError(self.vendor, exc.status, message, exc.body)


def token_lifetime(seconds: float) -> float:
    """The lifetime to give CachedToken, which renews TOKEN_MARGIN_SECONDS early: a token that
    lives less than two margins (DurationToken 1) is used for its first half instead of being
    fetched anew for every call."""
    if seconds > 2 * TOKEN_MARGIN_SECONDS:
        return seconds
    return max(seconds, 0.0) / 2 + TOKEN_MARGIN_SECONDS


def classify(response: httpx.Response) -> Literal["throttled"] | None:
    """AD-A3: a 403 "You are throttling the system" is a rate limit, waited out."""
    if response.status_code == 403 and "throttl" in response.text.lower():
        return "throttled"
    return None


def nothing_found(exc: VendorError) -> bool:
    """AD-A4: the 404 of an empty filtered lookup."""
    return exc.status == 404 and "nothing found" in admin_message(exc).lower()


def positive(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _naive(moment: datetime, zone: ZoneInfo) -> datetime:
    """A moment as the server's wall-clock time (naive); a naive one is taken as that already."""
    if moment.tzinfo is None:
        return moment.replace(microsecond=0)
    return moment.astimezone(zone).replace(tzinfo=None, microsecond=0)
