"""Shared HTTP plumbing for the vendor clients: one place that counts calls, retries and turns a
vendor's refusal into a VendorError, so each client only states its vendor's rules.

Errors are classified once (STYLE 4), and what may be retried depends on whether the request is
idempotent (sending it twice has the effect of sending it once):

- Always retried: the connection could not be made (connect error/timeout, no free connection),
  the request body could not be fully written (see `_NOT_FULLY_SENT`), 429, and 503.
- Retried only when idempotent: a read timeout, a reset or a closed connection after the request
  went out, 500/502/504 and other 5xx, and a 2xx whose body cannot be parsed. For a request that
  is not idempotent these are an *uncertain outcome*: `UncertainOutcome` is raised at once, never
  retried, so the caller can record it instead of duplicating what the vendor may have stored.
- Any other 4xx fails at once with the vendor's own error text.

Waits honour `Retry-After` (or a vendor throttle signal through `throttle_wait`), else back off
exponentially. Every retry is logged at WARNING on this module's logger (a Dagster managed logger,
so it lands in the run's log) and counted on the CallCounter. Secrets never reach a log line or
an exception message: logs carry the URL path only (queries may hold keys or member emails),
Authorization headers are never printed, and known secret values are masked wherever they might
be echoed.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
from pydantic import AfterValidator

from resources.base import CallCounter, UncertainOutcome, VendorError
from resources.pacing import Pace

# httpx logs every request URL at INFO, and Ticketmaster's URLs carry `apikey=` (TM-A1).
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
SECRET_QUERY_PARAMS = ("apikey", "api_key", "client_secret", "password", "token", "access_token")
_MASK = "***"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# ASSUMPTION (the one place it is made): a 429 or a 503 is answered before the server acts on the
# request (throttled, or not accepting work), so even a request that is not idempotent may be
# sent again. Any other 5xx may come after the server acted (a 500 thrown mid-way, a 502/504
# from a proxy whose backend carried on) and is an uncertain outcome for such a request.
REFUSED_BEFORE_PROCESSING = frozenset({429, 503})
# Never connected: the server cannot have seen the request.
_NOT_CONNECTED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The request body could not be fully written. Safe to send again: HTTP framing (Content-Length
# or the chunked terminator) tells the server the request is incomplete, and a server does not
# act on a request it has not fully received. (A failure after the last byte left would surface
# as a read error or timeout instead, which is treated as uncertain.)
_NOT_FULLY_SENT = (httpx.WriteError, httpx.WriteTimeout)
# The request went out and its answer was lost: the server may have acted.
_ANSWER_LOST = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.CloseError)

HeaderSource = Mapping[str, str] | Callable[[], Mapping[str, str]]
ThrottleWait = Callable[[httpx.Response], float | None]
# A vendor's own reading of an error answer: "throttled" (retry after a wait, e.g. a 403 that
# means "slow down"), "final" (never retry, e.g. a 429 for a spent monthly quota), None: default.
Classify = Callable[[httpx.Response], Literal["throttled", "final"] | None]
T = TypeVar("T")


@dataclass(frozen=True)
class _Failure:
    """One try that may be retried: what went wrong, in words fit for a log line."""

    reason: str
    response: httpx.Response | None = None  # a 429/5xx answer, for Retry-After and the error
    unreadable: bool = False  # a 2xx whose body could not be read
    sent: bool = True  # False when the request certainly never reached the server's logic
    throttled: bool = False  # the vendor asked us to slow down (a 429, or its own signal)


DEFAULT_TIMEOUT_SECONDS = 30.0
TIMEOUT_ENV = "MEMBERFLOW_HTTP_TIMEOUT"


def default_timeout() -> float:
    """Seconds a vendor call may take (connect, each read): `MEMBERFLOW_HTTP_TIMEOUT`, else 30.

    One setting for every client, so an operator can shorten it for a slow vendor's hangs (and
    the fault tests can make a hang outlast it) without touching integration files."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected seconds between 0 and 3600")
    return value


_SSL_CONTEXT: ssl.SSLContext | None = None
_SSL_LOCK = threading.Lock()


def shared_ssl_context() -> ssl.SSLContext:
    """The one TLS context of this process, the CA bundle httpx would load (certifi's).

    Each `httpx.Client` otherwise loads the bundle anew (~25 ms), and a sensor tick or a run builds
    several clients; a context is safe to share between clients and threads once made."""
    global _SSL_CONTEXT
    with _SSL_LOCK:
        if _SSL_CONTEXT is None:
            import certifi

            _SSL_CONTEXT = ssl.create_default_context(cafile=certifi.where())
        return _SSL_CONTEXT


def http_client(**kwargs: Any) -> httpx.Client:
    """An httpx.Client on the shared TLS context (unless a transport or `verify` is given)."""
    if kwargs.get("transport") is None and "verify" not in kwargs:
        kwargs["verify"] = shared_ssl_context()
    return httpx.Client(**kwargs)


class VendorHttp:
    """One `httpx.Client` for one vendor, with call counting, retries and error classification.

    Thread-safe: httpx.Client and CallCounter are, and the only other state that changes after
    construction is the server clock's offset (one attribute, replaced whole), so a target client
    may share one instance across a thread pool.
    """

    def __init__(
        self,
        *,
        vendor: str,
        timeout: float | None = None,
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        calls: CallCounter | None = None,
        throttle_wait: ThrottleWait | None = None,
        secrets: Iterable[str] = (),
        backoff_base: float = 0.5,
        max_wait: float = MAX_WAIT_SECONDS,
        classify: Classify | None = None,
        pace: Pace | Callable[[str], Pace | None] | None = None,
    ) -> None:
        """`pace`: the client-side limit every try waits for (resources/pacing.py), or a function
        of the URL that picks it (one vendor, two credentials); None: no pacing."""
        self.vendor = vendor
        self.calls = calls if calls is not None else CallCounter()
        self._client = http_client(
            timeout=timeout if timeout is not None else default_timeout(), transport=transport
        )
        self.pace = pace
        self._max_tries = max(1, max_tries)
        self._sleep = sleep
        self._throttle_wait = throttle_wait
        self._secrets = tuple(s for s in secrets if s)
        self._backoff_base = backoff_base
        self._max_wait = max_wait
        self._classify = classify
        self._server_ahead: timedelta | None = None

    def close(self) -> None:
        self._client.close()

    def server_clock_ahead(self) -> timedelta | None:
        """How far the server's clock is ahead of ours at least (negative: behind), from the
        HTTP `Date` header of the latest answer that had one; None before any such answer.

        A lower bound: the server stamped `Date` (whole seconds, rounded down) no later than we
        received the answer, so its clock then read at least `Date` while ours read `received`.
        """
        return self._server_ahead

    def _note_server_date(self, response: httpx.Response, received: datetime) -> None:
        stamps = []
        for value in response.headers.get_list("date"):
            try:
                stamps.append(as_utc(parsedate_to_datetime(value)))
            except (TypeError, ValueError, IndexError):
                continue
        if stamps:  # two Date headers (a server's and its app's): the lower one is still safe
            self._server_ahead = min(stamps) - received

    def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        endpoint: str,
        idempotent: bool | None = None,
        params: Mapping[str, Any] | None = None,
        headers: HeaderSource | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send one logical request, retrying what is safe to retry; returns a 2xx/3xx response.

        `idempotent` defaults to the method's nature (GET/PUT/DELETE yes, POST no); pass True for
        a POST that is an upsert. `headers` may be a callable so signatures and tokens are fresh
        on every try (HL-A1). Raises VendorError for a refusal or once the retries are spent, and
        UncertainOutcome when a request that is not idempotent may have been acted on.
        """
        return self._send(method, url, endpoint, idempotent, params, headers, kwargs, None)

    def request_json(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        endpoint: str,
        idempotent: bool | None = None,
        validate: Callable[[Any], T] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: HeaderSource | None = None,
        **kwargs: Any,
    ) -> Any:
        """Like `request`, and parse the JSON body (then `validate(body)`) inside the retry loop.

        A 2xx whose body is cut off, not JSON, or refused by `validate` (which raises ValueError)
        is retried like a 5xx when the request is idempotent, and ends as VendorError status 0
        once the tries are spent; for a request that is not idempotent it is UncertainOutcome.
        """
        check = validate or _identity
        return self._send(
            method, url, endpoint, idempotent, params, headers, kwargs, lambda r: check(r.json())
        )

    def get_json(self, url: str | httpx.URL, *, endpoint: str, **kwargs: Any) -> Any:
        """GET and parse the JSON body; an unreadable 2xx is retried (GET is idempotent)."""
        return self.request_json("GET", url, endpoint=endpoint, **kwargs)

    def _send(
        self,
        method: str,
        url: str | httpx.URL,
        endpoint: str,
        idempotent: bool | None,
        params: Mapping[str, Any] | None,
        headers: HeaderSource | None,
        kwargs: dict[str, Any],
        parse: Callable[[httpx.Response], Any] | None,
    ) -> Any:
        method = method.upper()
        safe_to_repeat = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        pace = self.pace(str(url)) if callable(self.pace) else self.pace
        for attempt in range(1, self._max_tries + 1):
            if pace is not None:
                pace.acquire(self.calls)  # before every try: vendors count retries too
            self.calls.add(endpoint)
            try:
                outcome = self._try_once(method, url, endpoint, params, headers, kwargs, parse)
            finally:
                if pace is not None:
                    pace.release()
            if not isinstance(outcome, _Failure):
                return outcome.value
            if not safe_to_repeat and not self._repeatable(outcome):
                raise self._uncertain(method, url, endpoint, outcome)
            if attempt == self._max_tries:
                raise self._given_up(method, url, endpoint, outcome)
            self._pause(method, url, outcome, attempt)
        raise AssertionError("unreachable")

    def _try_once(
        self,
        method: str,
        url: str | httpx.URL,
        endpoint: str,
        params: Mapping[str, Any] | None,
        headers: HeaderSource | None,
        kwargs: dict[str, Any],
        parse: Callable[[httpx.Response], Any] | None,
    ) -> _Answer | _Failure:
        resolved = headers() if callable(headers) else headers
        try:
            response = self._client.request(method, url, params=params, headers=resolved, **kwargs)
            self._note_server_date(response, datetime.now(UTC))
        except _NOT_CONNECTED + _NOT_FULLY_SENT as exc:
            return _Failure(transport_reason(exc), sent=False)
        except _ANSWER_LOST as exc:
            return _Failure(transport_reason(exc))
        status = response.status_code
        verdict = self._classify(response) if self._classify and status >= 400 else None
        if verdict == "final":
            raise self.error_from(response)
        if verdict == "throttled" or status == 429 or status >= 500:
            return _Failure(
                f"{status} {response.reason_phrase}".strip(),
                response=response,
                throttled=verdict == "throttled" or status == 429,
            )
        if status >= 400:
            raise self.error_from(response)
        if parse is None:
            return _Answer(response)
        try:
            return _Answer(parse(response))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            reason = f"unreadable {status} answer ({_short(self.redact(str(exc)))})"
            return _Failure(reason, unreadable=True)

    @staticmethod
    def _repeatable(failure: _Failure) -> bool:
        """May a request that is not idempotent be sent again after this failure?"""
        if failure.throttled:
            return True
        if failure.response is not None:
            return failure.response.status_code in REFUSED_BEFORE_PROCESSING
        return not failure.sent

    def _uncertain(
        self, method: str, url: str | httpx.URL, endpoint: str, failure: _Failure
    ) -> UncertainOutcome:
        status = failure.response.status_code if failure.response is not None else 0
        if failure.unreadable:
            status = 200
        message = (
            f"{method} {endpoint} to {_host(url)}: {failure.reason} after the request was sent; "
            "the vendor may have acted on it, so it was not sent again (not idempotent)"
        )
        return UncertainOutcome(self.vendor, status, self.redact(message))

    def _given_up(
        self, method: str, url: str | httpx.URL, endpoint: str, failure: _Failure
    ) -> VendorError:
        tries = f"after {self._max_tries} {'try' if self._max_tries == 1 else 'tries'}"
        if failure.response is not None:  # the vendor's own words stay as they are (C8)
            return self.error_from(failure.response)
        if failure.unreadable:
            message = f"{method} {endpoint} on {_host(url)}: {failure.reason} {tries}"
        else:
            message = f"could not reach {_host(url)}: {failure.reason} {tries}"
        return VendorError(self.vendor, 0, self.redact(message))

    def _pause(self, method: str, url: str | httpx.URL, failure: _Failure, attempt: int) -> None:
        wait = self._wait(failure, attempt)
        throttled = failure.throttled
        self.calls.add_retry(throttled=throttled)
        # Throttling is the vendor's rate limit doing its job: INFO, still in the run's log (the
        # instance's python_log_level), but not on a quiet console; a fault is a WARNING.
        log.log(
            logging.INFO if throttled else logging.WARNING,
            "%s %s %s: %s, waiting %.1f s (try %d of %d)",
            self.vendor,
            method,
            self.redact(_path(url)),
            failure.reason,
            wait,
            attempt + 1,
            self._max_tries,
        )
        self._sleep(wait)

    def _wait(self, failure: _Failure, attempt: int) -> float:
        """Seconds before the next try: the vendor's own signal if any, else exponential backoff."""
        if failure.response is not None:
            asked = self._asked_wait(failure.response)
            if asked is not None:
                return min(max(asked, 0.0), self._max_wait)
        return min(self._backoff_base * 2 ** (attempt - 1), self._max_wait)

    def _asked_wait(self, response: httpx.Response) -> float | None:
        if self._throttle_wait is not None:
            hooked = self._throttle_wait(response)
            if hooked is not None:
                return hooked
        return parse_retry_after(response.headers.get("Retry-After"))

    def error_from(self, response: httpx.Response) -> VendorError:
        """The VendorError for a refused response, with the vendor's own reason (C8)."""
        body: Any = None
        try:
            body = response.json()
        except ValueError:
            text = response.text.strip()
        else:
            text = vendor_message(body)
        message = self.redact(text[:1000] or response.reason_phrase or "no reason given")
        return VendorError(self.vendor, response.status_code, message, self._redact_body(body))

    def redact(self, text: str) -> str:
        """Mask secret query parameters and every known secret value."""
        text = redact_query_secrets(text)
        for secret in self._secrets:
            text = text.replace(secret, _MASK)
        return text

    def _redact_body(self, body: Any) -> Any:
        if isinstance(body, str):
            return self.redact(body)
        if isinstance(body, list):
            return [self._redact_body(item) for item in body]
        if isinstance(body, dict):
            return {key: self._redact_body(value) for key, value in body.items()}
        return body


@dataclass(frozen=True)
class _Answer:
    value: Any


def _identity(body: Any) -> Any:
    return body


def transport_reason(exc: httpx.TransportError) -> str:
    """A transport failure in a few plain words, without URLs or secrets."""
    text = str(exc).lower()
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, httpx.PoolTimeout):
        return "no free connection (pool timeout)"
    if isinstance(exc, httpx.ConnectError):
        if "refused" in text:
            return "connection refused"
        if "name or service" in text or "nodename" in text or "getaddrinfo" in text:
            return "host name not resolved"
        return "could not connect"
    if isinstance(exc, httpx.WriteTimeout):
        return "write timeout"
    if isinstance(exc, httpx.WriteError):
        return "connection broken while sending"
    if isinstance(exc, httpx.ReadTimeout):
        return "read timeout"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed before a complete answer"
    if isinstance(exc, httpx.ReadError):
        return "connection reset while reading the answer"
    return type(exc).__name__


def _host(url: str | httpx.URL) -> str:
    """`api.heyloyalty.com` (with a port if one is given): never the userinfo or the query."""
    parts = urlsplit(str(url))
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


_EMAIL_SEGMENT = re.compile(r"[^/@]+@[^/@]+")


def _path(url: str | httpx.URL) -> str:
    """The URL's path only: queries may carry keys (TM-A1) or member emails (filters); a path
    segment that is an email (a member addressed by it, CI-A3) is masked too."""
    path = unquote(urlsplit(str(url)).path) or "/"
    return _EMAIL_SEGMENT.sub(lambda m: m.group(0)[0] + "***@***", path)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def vendor_message(body: Any) -> str:
    """The human reason in a vendor's JSON error body, whatever its dialect.

    Covers ASP.NET problem details (FP-A8: title/detail/errors), Ticketmaster's `fault.faultstring`
    and `errors[].detail` (TM-A1/TM-A5), Heyloyalty's `error`/`message` (HL 2.7) and OAuth errors.
    """
    if not isinstance(body, dict):
        return str(body)
    fault = body.get("fault")
    if isinstance(fault, dict) and fault.get("faultstring"):
        return str(fault["faultstring"])
    parts = [str(body[key]) for key in ("title", "detail") if body.get(key)]
    parts += _errors_text(body.get("errors"))
    for key in ("error", "message", "error_description"):
        value = body.get(key)
        if value and isinstance(value, str | int | float):
            parts.append(str(value))
    return "; ".join(dict.fromkeys(parts)) or str(body)


def _errors_text(errors: Any) -> list[str]:
    if isinstance(errors, dict):  # problem details: {"<param>": ["<msg>", ...]}
        return [
            f"{name}: {', '.join(map(str, msgs if isinstance(msgs, list) else [msgs]))}"
            for name, msgs in errors.items()
        ]
    if isinstance(errors, list):  # Ticketmaster: [{"code", "detail", "status"}]
        texts = []
        for item in errors:
            if isinstance(item, dict):
                texts.append(str(item.get("detail") or item.get("message") or item.get("code")))
            else:
                texts.append(str(item))
        return texts
    return []


_SECRET_PARAM_RE = re.compile(
    r"(?i)\b(" + "|".join(re.escape(p) for p in SECRET_QUERY_PARAMS) + r")=([^&\s#'\"]+)"
)


def redact_query_secrets(text: str) -> str:
    """`...?apikey=abc&page=2` -> `...?apikey=***&page=2`."""
    return _SECRET_PARAM_RE.sub(lambda m: f"{m.group(1)}={_MASK}", text)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds asked by a `Retry-After` header: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def date_windows(start: date, end: date, max_days: int = 366) -> Iterator[tuple[date, date]]:
    """Split [start, end] (inclusive) into windows of at most `max_days` days (FP-A3, TM-A2).

    Counting the window inclusively keeps it valid whichever way the vendor counts its limit.
    """
    if end < start:
        raise ValueError(f"range end {end} is before its start {start}")
    cursor = start
    while cursor <= end:
        window_end = min(end, cursor + timedelta(days=max_days - 1))
        yield cursor, window_end
        cursor = window_end + timedelta(days=1)


def parse_iso_utc(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as vendors send it (`Z` or an offset; naive, or a date alone, is
    UTC) as aware UTC; anything else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return as_utc(moment)


def as_utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already (the pipeline's convention)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# --- integration-file plumbing shared by every vendor's section model ---------------------------

_ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _check_env_name(value: str) -> str:
    if not _ENV_NAME_RE.fullmatch(value):
        # The value is not repeated: a secret pasted here by mistake must not reach a log (C2).
        raise ValueError("expected the NAME of an environment variable (^[A-Z_][A-Z0-9_]*$)")
    return value


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http(s) URL")  # the value is not echoed: it may hold a key
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment (credentials go in env vars)")
    return value.rstrip("/")


def _as_str_id(value: Any) -> Any:
    if isinstance(value, bool):
        return value  # let pydantic refuse it as a str
    return str(value) if isinstance(value, int) else value


EnvVarName = Annotated[str, AfterValidator(_check_env_name)]
HttpUrlStr = Annotated[str, AfterValidator(_check_http_url)]


def str_id(value: Any) -> Any:
    """BeforeValidator: YAML ids such as `list_id: 4711` or `"4711"` are both kept as str."""
    return _as_str_id(value)


class MissingEnvVarError(RuntimeError):
    """A credential's environment variable is not set; names the variable, never a value."""


def resolve_secret(value: str | None, setting: str) -> str | None:
    """The real value of a resource field that may still be an unresolved `dg.EnvVar`.

    Inside a Dagster run the resource is already resolved; outside one (CLI, tests) the field
    holds the EnvVar itself, whose text is the variable's NAME and must never be used as a secret.
    """
    env_name = getattr(value, "env_var_name", None)
    if env_name is None:
        return value
    resolved = os.environ.get(env_name)
    if not resolved:
        raise MissingEnvVarError(
            f"environment variable {env_name} (for {setting}) is not set or empty"
        )
    return resolved
