"""Carrying Flexmail's feedback back into Admin (AF3-AF5): untick the newsletter box, record a
click as a communication, create a relation that exists only on the list.

Each action looks before it writes, so a write-back handed over again (after a crash between the
call and its bookkeeping) never does anything twice: an unsubscribe finds the box already
unticked, a resumed click finds its communication, a create finds the relation by its email.
Refusals become results with Admin's own `ErrorMessage` (AD-A12, C8); what may pass (the host
down, throttled past every try, an answer lost after a POST) is raised as VendorError, so the
pipeline keeps the change pending.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from resources.admin_filter import literal, local_text, same_local, text
from resources.base import UncertainOutcome, VendorError
from resources.source import WriteBack, WriteBackResult

Row = dict[str, Any]
COMMUNICATION_TYPE = "Flexmail"  # AD-A9
LANGUAGE_LIST = "lists/19"  # section 2.2: list 19 = languages
# Section 2.2 "customer addresses: separate endpoint"; named as the SDK's CustomerAddressList
# (customer_address.py), filtered on the relation and its registered office (the HQ address).
ADDRESS_PATH = "customeraddresses"
# AD-A7/SY-sdk customer.py: what PUT customers takes back from a fresh GET, when the GET has it.
WRITABLE = (
    "Name",
    "CommercialName",
    "AccCode",
    "CupboardNumber",
    "RegistrationNr",
    "SocialSecurityNumber",
    "Firstname",
    "Email",
    "Mobile",
    "Phone",
    "Language",
    "IsCompany",
    "CustomerCrmType",
    "CustomerGroup",
    "CustCode",
    "Homepage",
    "Title",
    "VATNr",
    "NaceCode",
    "Remarks",
    "RPR",
)
# Ids the GET answers 0 for "none", which a PUT must write as null (SY-sdk customer.py does so
# for CustomerGroup): a 0 written back names a group or type that does not exist.
ZERO_IS_NONE = ("CustomerGroup", "CustomerCrmType")
# SY-sdk: the registered-office address as GET customeraddresses names it -> PUT customers. A
# server that replaces the whole relation on PUT would otherwise wipe the head-office address.
ADDRESS_FIELDS = {
    "StreetName": "Street1",
    "Street2": "Street2",
    "HouseNr": "Nr",
    "HouseBox": "Box",
    "ZipCode": "Zipcode",
    "City": "City",
    "CountryCode": "CountryCode",
}


class AdminApi(Protocol):
    """The two calls write-back needs from the client (token, pacing and errors are its own)."""

    def call_json(self, method: str, path: str, endpoint: str, **kwargs: Any) -> Any: ...

    def list_rows(self, path: str, endpoint: str, filter_: str | None) -> Iterator[list[Row]]: ...


class AdminWriteBack:
    """Applies WriteBacks through an `AdminApi`, one result per change."""

    def __init__(
        self,
        api: AdminApi,
        *,
        zone: ZoneInfo,
        crm_type: str | None,
        language_default: str | None,
    ) -> None:
        self._api = api
        self._zone = zone
        self._crm_type = crm_type
        self._language = language_default
        self._languages: dict[str, str] | None = None  # casefolded code or ExtCode -> code

    def apply(self, change: WriteBack) -> WriteBackResult:
        """The result of one change; raises VendorError when it may succeed later."""
        handlers = {
            "unsubscribe": self.unsubscribe,
            "record_click": self.record_click,
            "create": self.create,
        }
        handler = handlers.get(change.action)
        if handler is None:
            return WriteBackResult("refused", change.record_id, f"unknown action {change.action}")
        try:
            return handler(change)
        except VendorError as exc:
            if transient(exc):
                raise
            return WriteBackResult("refused", change.record_id, admin_message(exc))

    # --- AF4 / AD-A7 ----------------------------------------------------------------------------

    def unsubscribe(self, change: WriteBack) -> WriteBackResult:
        """Untick `Newsletter` with a PUT of the fresh GET's writable fields and the registered
        office's address, as the SDK sends them; a relation whose box is already unticked is
        "already". A 400 naming Newsletter means the real API does not take it (AD-A7):
        "skipped", for the report; any other 400 is refused with Admin's words."""
        customer_id = change.record_id
        if not customer_id:
            return WriteBackResult("refused", None, "unsubscribe names no relation")
        current = self._api.call_json("GET", f"customers/{customer_id}", "customers/{id}")
        if not isinstance(current, dict):
            return WriteBackResult("refused", customer_id, "relation not found")
        if "Newsletter" not in current:
            reason = "the relation's answer has no Newsletter field: its box cannot be read"
            return WriteBackResult("skipped", customer_id, reason)
        if not truthy(current.get("Newsletter")):
            return WriteBackResult("already", customer_id)
        body = put_body(current, self._address(customer_id))
        body["CustomerId"] = current.get("CustomerId", id_value(customer_id))
        body["Newsletter"] = False
        try:
            self._api.call_json("PUT", "customers", "customers", json=body)
        except VendorError as exc:
            if exc.status == 400 and "newsletter" in admin_message(exc).lower():
                reason = f"Newsletter not writable: {admin_message(exc)}"
                return WriteBackResult("skipped", customer_id, reason)
            raise
        return WriteBackResult("done", customer_id)

    def _address(self, customer_id: str) -> Row:
        """The relation's registered-office address as PUT fields; empty when it has none, or
        when the server offers no such endpoint (its path is the SDK's, not documented): the PUT
        is then AD-A7's body from the fresh GET, which is all the documented contract asks."""
        filter_ = f"CustomerId eq {literal(customer_id)} and RegisteredOffice eq true"
        try:
            for page in self._api.list_rows(ADDRESS_PATH, ADDRESS_PATH, filter_):
                for row in page:
                    # only the relation's own registered office (a server that ignored the
                    # filter would hand every address)
                    if str(row.get("CustomerId")) == str(customer_id) and truthy(
                        row.get("RegisteredOffice")
                    ):
                        return {
                            put: row.get(got) for got, put in ADDRESS_FIELDS.items() if got in row
                        }
        except VendorError as exc:
            # unreachable, 5xx, throttled: later; any other refusal (no such endpoint, not
            # permitted for this key): without the address, as the documented contract does
            if exc.status == 0 or exc.status >= 500 or exc.status == 429 or throttling(exc):
                raise
        return {}

    # --- AF5 / AD-A9 ----------------------------------------------------------------------------

    def record_click(self, change: WriteBack) -> WriteBackResult:
        """One communication per click; a resumed one first looks for its communication (same
        Date and Description) so a lost answer never makes two."""
        customer_id = change.record_id
        if not customer_id:
            return WriteBackResult("refused", None, "click names no relation")
        occurred = change.detail.get("occurred_at")
        if not occurred:
            return WriteBackResult("refused", customer_id, "click without occurred_at")
        try:
            when = local_text(datetime.fromisoformat(str(occurred)), self._zone)
        except ValueError:
            return WriteBackResult("refused", customer_id, f"unreadable occurred_at {occurred!r}")
        description = f"Click: {change.detail.get('link_url') or ''}".strip()
        if change.resumed:
            found = self._communication(customer_id, when, description)
            if found is not None:
                return WriteBackResult("already", found)
        body = {
            "CustomerId": id_value(customer_id),
            "Date": when,
            "CommunicationType": COMMUNICATION_TYPE,
            "Subject": str(change.detail.get("campaign_name") or ""),
            "Description": description,
        }
        answer = self._api.call_json("POST", "communications", "communications", json=body)
        made = answer.get("CommunicationId") if isinstance(answer, dict) else None
        return WriteBackResult("done", None if made is None else str(made))

    def _communication(self, customer_id: str, when: str, description: str) -> str | None:
        """The CommunicationId of this click's communication, when it exists."""
        filter_ = f"CustomerId eq {literal(customer_id)}"
        for page in self._api.list_rows("communications", "communications", filter_):
            for row in page:
                if row.get("Description") == description and same_local(
                    row.get("Date"), when, self._zone
                ):
                    return str(row.get("CommunicationId"))
        return None

    # --- AF3 / AD-A8 ----------------------------------------------------------------------------

    def create(self, change: WriteBack) -> WriteBackResult:
        """A relation for a contact only on the list, unless one with its email exists (in any
        state: never a second relation for one email)."""
        values = change.values
        email = str(values.get("Email") or "").strip()
        if not email:
            return WriteBackResult("refused", None, "no email to create a relation with")
        existing = self._by_email(email)
        if existing is not None:
            return WriteBackResult("already", existing)
        answer = self._api.call_json("POST", "customers", "customers", json=self._new(values))
        made = answer.get("CustomerId") if isinstance(answer, dict) else None
        if made is None:
            raise VendorError("admin", 0, "POST customers answered without a CustomerId")
        return WriteBackResult("done", str(made))

    def _by_email(self, email: str) -> str | None:
        """The lowest CustomerId with this email. `Email eq` first (AD-A8); when it finds none,
        `Contains(Email, ...)` checked here, since offices type addresses with stray spaces
        (" jan@x.be") that an exact match misses: one more call, only before a real create."""
        found = self._ids(f"Email eq {text(email)}", None)
        if not found:
            found = self._ids(f"Contains(Email,{text(email)})", email.casefold())
        return min(found, key=_id_order) if found else None

    def _ids(self, filter_: str, exact: str | None) -> list[str]:
        """CustomerIds the filter finds; with `exact`, only those whose trimmed email is it."""
        return [
            str(row["CustomerId"])
            for page in self._api.list_rows("customers", "customers", filter_)
            for row in page
            if row.get("CustomerId") is not None
            and (exact is None or str(row.get("Email") or "").strip().casefold() == exact)
        ]

    def _new(self, values: Mapping[str, Any]) -> Row:
        """AD-A8's body. A relation needs a Name: the email stands in when the list has none."""
        email = str(values["Email"]).strip()
        body: Row = {
            "Name": values.get("Name") or email,
            "Firstname": values.get("Firstname"),
            "Email": email,
            "Language": self._known_language(values.get("Language")),
            "IsCompany": False,
            "CustomerCrmType": None if self._crm_type is None else id_value(self._crm_type),
            "Newsletter": True,
        }
        return {key: value for key, value in body.items() if value is not None}

    def _known_language(self, value: Any) -> str | None:
        """A code of list 19 (read once, at the first create): the value when it is one (or its
        ExtCode, `nl` for `N`), else `language_default`. Admin refuses an unknown code, and a
        list it will not hand out leaves only the default."""
        if self._languages is None:
            self._languages = {}
            try:
                for page in self._api.list_rows(LANGUAGE_LIST, "lists/{id}", None):
                    for item in page:
                        code = str(item.get("ListValue") or "").strip()
                        for name in (code, str(item.get("ExtCode") or "").strip()):
                            if code and name:
                                self._languages.setdefault(name.casefold(), code)
            except VendorError as exc:
                if exc.status not in (403, 404) or throttling(exc):
                    raise
        wanted = str(value or "").strip().casefold()
        if not wanted:
            return self._language
        if not self._languages:  # a list whose items we could not read: the value as it is
            return str(value).strip()
        return self._languages.get(wanted, self._language)


def put_body(current: Mapping[str, Any], address: Mapping[str, Any]) -> Row:
    """WRITABLE fields the GET answered (ids of 0 as null) with the registered office's address."""
    body = {key: current[key] for key in WRITABLE if key in current}
    for key in ZERO_IS_NONE:
        if key in body and body[key] in (0, "0"):
            body[key] = None
    return {**body, **address}


def admin_message(exc: VendorError) -> str:
    """AD-A12's `ErrorMessage` (or the list of them), else what the HTTP layer made of it."""
    body = exc.body
    items = body if isinstance(body, list) else [body]
    texts = [
        str(item["ErrorMessage"])
        for item in items
        if isinstance(item, dict) and item.get("ErrorMessage")
    ]
    return "; ".join(texts) or exc.message


def transient(exc: VendorError) -> bool:
    """May the same write succeed later? Unreachable, 5xx, an unknown outcome, credentials
    (401), throttling still refused after every try, or a 403 "no valid configuration for
    token" (the key lacks the endpoint: fixed in Admin's console, then retried, never a final
    refusal of the member)."""
    if isinstance(exc, UncertainOutcome) or exc.status == 0 or exc.status >= 500:
        return True
    return exc.status in (401, 403, 429)


def throttling(exc: VendorError) -> bool:
    """AD-A3: Admin's rate limit is a 403 "You are throttling the system"."""
    return exc.status == 403 and "throttl" in admin_message(exc).lower()


def truthy(value: Any) -> bool:
    """A JSON boolean, or a 1/"true" some servers write instead."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return value is True or value == 1


def _id_order(customer_id: str) -> tuple[int, str]:
    return (int(customer_id), "") if customer_id.isdigit() else (2**63, customer_id)


def id_value(value: Any) -> Any:
    """An id as Admin writes it: a number when it is all digits."""
    shown = str(value).strip()
    return int(shown) if shown.isdigit() else value
