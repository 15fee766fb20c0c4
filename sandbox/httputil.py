"""Request parsing shared by the emulators: Basic credentials, JSON, form and multipart bodies,
and the refusal whose body is one message.

Multipart is parsed with the standard library's `email` package so the sandbox needs no
python-multipart; the emulators read raw bodies and never rely on Starlette's form parser.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """(username, password) from an `Authorization: Basic` header, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer` header, or None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower-cased."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def json_object(request: Request) -> dict[str, Any]:
    """The JSON object body of a control request; {} for an empty, invalid or non-object body."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def parse_urlencoded(body: bytes) -> list[tuple[str, str]]:
    """`a=1&b=2` pairs, keeping repeats and blanks."""
    return parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)


@dataclass
class Multipart:
    """A parsed multipart/form-data body: text fields (repeatable) and file parts."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    file_types: dict[str, str] = field(default_factory=dict)  # file part -> its content type

    def get(self, name: str, default: str | None = None) -> str | None:
        """The last value of a text field."""
        values = self.get_all(name)
        return values[-1] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value of a repeated text field, in order."""
        return [v for k, v in self.fields if k == name]


def parse_multipart(content_type: str, body: bytes) -> Multipart:
    """Split a multipart/form-data body into fields and files; raises ValueError if malformed."""
    if "boundary=" not in content_type:
        raise ValueError("multipart body without boundary")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("not a multipart body")
    result = Multipart()
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            result.files[str(name)] = (filename, payload)
            result.file_types[str(name)] = part.get_content_type()
        else:
            result.fields.append((str(name), payload.decode("utf-8", errors="replace")))
    return result


class MessageError(Exception):
    """A refused request whose body is `{<message_key>: <text>}` (each vendor's own casing),
    with optional headers (a 429's `Retry-After`)."""

    message_key: ClassVar[str] = "message"

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> Response:
        return JSONResponse({self.message_key: self.message}, self.status, headers=self.headers)
