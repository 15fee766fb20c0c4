"""Masked forms of member emails and phone numbers, for anything a person may read.

Run metadata, quarantine reasons, logs and the UI show enough to recognise and debug a value
(its first letter and domain, its last digits) but never a whole address or number.
"""

from __future__ import annotations

import re
from typing import Any

_EMAIL_IN_TEXT = re.compile(r"[^\s@'\"<>(),;:]+@[^\s@'\"<>(),;:]+")
_PHONE_IN_TEXT = re.compile(r"\+?\d[\d ]{6,}\d")


def mask_email(value: Any) -> str:
    """`jens.hansen@example.dk` -> `j***@example.dk`; anything without one `@` is masked whole."""
    text = "" if value is None else str(value).strip()
    if not text:
        return ""
    local, at, domain = text.rpartition("@")
    if not at or not local:
        return _mask_all(text)
    return f"{local[0]}***@{domain}"


def mask_phone(value: Any) -> str:
    """`+4512345678` -> `+45 ****5678`: the country code (if written) and the last four digits;
    a short number keeps only its last two, so `123` reads `*23`."""
    text = "" if value is None else str(value).strip()
    if not text:
        return ""
    digits = "".join(ch for ch in text if ch.isdigit())
    if len(digits) < 8:
        keep = digits[-2:] if len(digits) > 2 else ""
        return "*" * max(len(digits) - len(keep), 1) + keep
    country = ""
    if text.startswith("+"):
        country = "+" + digits[:2] + " "
        digits = digits[2:]
    return country + "*" * (len(digits) - 4) + digits[-4:]


def mask_match_key(value: Any) -> str:
    """A match key is an email or a mobile number; mask it as whichever it is."""
    text = "" if value is None else str(value)
    return mask_email(text) if "@" in text else mask_phone(text)


def mask_text(text: Any) -> str:
    """Free text (a vendor's refusal, a quarantine reason) with every email and phone number in it
    masked: such text is written by others and may quote the value it refused."""
    masked = _EMAIL_IN_TEXT.sub(lambda m: mask_email(m.group(0)), str(text))
    return _PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group(0)), masked)


def _mask_all(text: str) -> str:
    return text[0] + "***" if len(text) > 1 else "***"
