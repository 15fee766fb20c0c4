"""Shared HTTP plumbing for the vendor clients: one place that counts calls, retries and turns a
vendor's refusal into a VendorError, so each client only states its vendor's rules.

Errors are classified once (STYLE 4): 429, 5xx, timeouts and connection errors are retried with
exponential backoff honouring `Retry-After` (or a vendor throttle signal through `throttle_wait`);
any other 4xx fails at once with the vendor's own error text. Secrets never reach a log line or an
exception message: query parameters such as `apikey` are redacted, Authorization headers are never
printed, and known secret values are masked wherever they might be echoed.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from resources.base import CallCounter, VendorError

# httpx logs every request URL at INFO, and Ticketmaster's URLs carry `apikey=` (TM-A1).
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
SECRET_QUERY_PARAMS = ("apikey", "api_key", "client_secret", "password", "token", "access_token")
_MASK = "***"

HeaderSource = Mapping[str, str] | Callable[[], Mapping[str, str]]
ThrottleWait = Callable[[httpx.Response], float | None]


class _RetryableStatus(Exception):
    """A 429/5xx answer that the retry loop may try again; carries the response for the wait."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


_RETRYABLE_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class VendorHttp:
    """One `httpx.Client` for one vendor, with call counting, retries and error classification.

    Thread-safe: httpx.Client and CallCounter are, and no other state changes after construction,
    so a target client may share one instance across a thread pool.
    """

    def __init__(
        self,
        *,
        vendor: str,
        timeout: float = 30.0,
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        calls: CallCounter | None = None,
        throttle_wait: ThrottleWait | None = None,
        secrets: Iterable[str] = (),
        backoff_base: float = 0.5,
        max_wait: float = MAX_WAIT_SECONDS,
    ) -> None:
        self.vendor = vendor
        self.calls = calls if calls is not None else CallCounter()
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._max_tries = max(1, max_tries)
        self._sleep = sleep
        self._throttle_wait = throttle_wait
        self._secrets = tuple(s for s in secrets if s)
        self._backoff_base = backoff_base
        self._max_wait = max_wait

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        endpoint: str,
        params: Mapping[str, Any] | None = None,
        headers: HeaderSource | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send one logical request, retrying transient failures; returns a 2xx/3xx response.

        `headers` may be a callable so signatures and tokens are fresh on every try (HL-A1).
        Raises VendorError for a refusal or once the retries are spent.
        """
        retrying = Retrying(
            stop=stop_after_attempt(self._max_tries),
            wait=self._wait,
            retry=retry_if_exception_type((_RetryableStatus, *_RETRYABLE_TRANSPORT)),
            sleep=self._sleep,
            before_sleep=lambda state: self._log_retry(method, url, endpoint, state),
            reraise=True,
        )
        try:
            return retrying(self._send_once, method, url, endpoint, params, headers, kwargs)
        except _RetryableStatus as exc:
            raise self.error_from(exc.response) from None
        except httpx.TransportError as exc:
            message = self.redact(f"{type(exc).__name__} on {endpoint}: {exc}")
            raise VendorError(self.vendor, 0, message) from None

    def get_json(self, url: str | httpx.URL, *, endpoint: str, **kwargs: Any) -> Any:
        """GET and parse the JSON body."""
        return self.request("GET", url, endpoint=endpoint, **kwargs).json()

    def _send_once(
        self,
        method: str,
        url: str | httpx.URL,
        endpoint: str,
        params: Mapping[str, Any] | None,
        headers: HeaderSource | None,
        kwargs: dict[str, Any],
    ) -> httpx.Response:
        self.calls.add(endpoint)
        resolved = headers() if callable(headers) else headers
        response = self._client.request(method, url, params=params, headers=resolved, **kwargs)
        status = response.status_code
        if status == 429 or status >= 500:
            raise _RetryableStatus(response)
        if status >= 400:
            raise self.error_from(response)
        return response

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next try: the vendor's own signal if any, else exponential backoff."""
        exc = state.outcome.exception() if state.outcome else None
        backoff = self._backoff_base * 2 ** (state.attempt_number - 1)
        if isinstance(exc, _RetryableStatus):
            asked = self._asked_wait(exc.response)
            if asked is not None:
                return min(max(asked, 0.0), self._max_wait)
        return min(backoff, self._max_wait)

    def _asked_wait(self, response: httpx.Response) -> float | None:
        if self._throttle_wait is not None:
            hooked = self._throttle_wait(response)
            if hooked is not None:
                return hooked
        return parse_retry_after(response.headers.get("Retry-After"))

    def _log_retry(
        self, method: str, url: str | httpx.URL, endpoint: str, state: RetryCallState
    ) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = exc.response.status_code if isinstance(exc, _RetryableStatus) else repr(exc)
        wait = state.next_action.sleep if state.next_action else 0.0
        log.info(
            "%s %s %s (%s): %s, try %d of %d, waiting %.2f s",
            self.vendor,
            method,
            redact_url(url),
            endpoint,
            self.redact(str(reason)),
            state.attempt_number,
            self._max_tries,
            wait,
        )

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


def redact_url(url: str | httpx.URL) -> str:
    return redact_query_secrets(str(url))


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
