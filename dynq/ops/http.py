"""A small HTTP/1.1 server on the node's event loop (stdlib asyncio streams only).

Enough for an admin API and a static console: one request per connection (``Connection:
close``), request line and headers bounded (``MAX_HEAD_BYTES``), a body only with a
``Content-Length`` up to ``MAX_BODY_BYTES``, a deadline for reading each request. What
does not parse gets a 400 with a JSON body; nothing a client sends can raise out of the
connection handler, and a handler's bug becomes a 500 (logged), never a crashed loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024  # request line and headers together
MAX_HEADERS = 100
MAX_BODY_BYTES = 64 * 1024  # the API takes small JSON bodies only
READ_TIMEOUT_S = 10.0  # a client must send its whole request within this

REASONS = {200: "OK", 204: "No Content", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Payload Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class HttpError(Exception):
    """Ends a request with ``status`` and a JSON body ``{"error": code, "message": ...}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass
class HttpRequest:
    method: str
    path: str  # decoded, without the query
    query: dict[str, str]  # the last value of each name
    headers: dict[str, str]  # names lower-cased
    body: bytes = b""

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty); 400 otherwise."""
        if not self.body.strip():
            return {}
        try:
            value = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, "bad_json", f"the body is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise HttpError(400, "bad_json", f"the body must be a JSON object, got {type(value).__name__}")
        return value


@dataclass
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, status: int, value: Any, headers: dict[str, str] | None = None) -> HttpResponse:
        body = json.dumps(value, indent=None, sort_keys=False, default=_json_default).encode() + b"\n"
        return cls(status, body, "application/json", headers or {})

    @classmethod
    def of_error(cls, error: HttpError) -> HttpResponse:
        return cls.of_json(error.status, {"error": error.code, "message": error.message, "status": error.status},
                           error.headers)

    def encode(self, head_only: bool = False) -> bytes:
        reason = REASONS.get(self.status, "Unknown")
        lines = [f"HTTP/1.1 {self.status} {reason}", f"Content-Type: {self.content_type}",
                 f"Content-Length: {len(self.body)}", "Connection: close", "Cache-Control: no-store",
                 "X-Content-Type-Options: nosniff", "Referrer-Policy: no-referrer"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            return "base64:" + base64.b64encode(value).decode()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def parse_head(head: bytes) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """Method, path, query and headers of a request head (without the blank line); raises
    :class:`HttpError` 400 on anything malformed."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "bad_request", "undecodable request head") from exc
    lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha() or not parts[1]:
        raise HttpError(400, "bad_request", f"malformed request line: {lines[0][:80]!r}")
    method, target = parts[0].upper(), parts[1]
    if not target.startswith("/"):
        raise HttpError(400, "bad_request", "the request target must be a path starting with '/'")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or not all(33 <= ord(c) <= 126 for c in name):
            raise HttpError(400, "bad_request", f"malformed header line: {line[:80]!r}")
        headers[name.lower()] = value.strip()
    if len(headers) > MAX_HEADERS:
        raise HttpError(431, "too_many_headers", f"more than {MAX_HEADERS} headers")
    split = urlsplit(target)
    path = unquote(split.path)
    if "\x00" in path or "/../" in path + "/" or "\\" in path:
        raise HttpError(400, "bad_request", "bad characters or '..' in the path")
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    return method, path, query, headers


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def read_request(reader: asyncio.StreamReader) -> HttpRequest:
    """One request from the stream; :class:`HttpError` for malformed or oversized ones."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise HttpError(431, "head_too_large", f"request line and headers exceed {MAX_HEAD_BYTES} bytes") from exc
    except asyncio.IncompleteReadError as exc:
        raise ConnectionError("client closed before the end of the request head") from exc
    method, path, query, headers = parse_head(head[:-4])
    if "transfer-encoding" in headers:
        raise HttpError(400, "bad_request", "chunked bodies are not accepted; send a Content-Length")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise HttpError(400, "bad_request", f"bad Content-Length {length_text[:20]!r}")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise HttpError(413, "body_too_large", f"bodies are limited to {MAX_BODY_BYTES} bytes, got {length}")
    body = await reader.readexactly(length) if length else b""
    return HttpRequest(method, path, query, headers, body)


async def serve_http(host: str, port: int, handler: Handler) -> asyncio.AbstractServer:
    """Serve ``handler`` on ``host:port`` from the running loop."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            try:
                request = await asyncio.wait_for(read_request(reader), READ_TIMEOUT_S)
                head_only = request.method == "HEAD"
                try:
                    response = await handler(request)
                except HttpError:
                    raise
                except Exception as exc:  # a bug costs one request, never the node
                    log.exception("HTTP %s %s failed", request.method, request.path)
                    raise HttpError(500, "internal", f"{type(exc).__name__}: {exc}") from exc
            except HttpError as exc:
                response = HttpResponse.of_error(exc)
            writer.write(response.encode(head_only))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # pragma: no cover - the last guard of the loop
            log.exception("HTTP connection failed")
        finally:
            writer.close()

    return await asyncio.start_server(connection, host, port, limit=MAX_HEAD_BYTES)
