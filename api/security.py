"""Request guards of the management API: API keys compared in constant time, and a body guard.

The body guard is ASGI middleware so it holds before anything reads the body:

- size: a declared ``Content-Length`` over the limit is refused at once (413), any other body is
  read up to the limit before the application sees it;
- time: a body that has not fully arrived within ``timeout`` seconds is answered 408 and the
  connection closed (a client that declares 10 bytes and sends one held its connection for good);
- content: a body must be JSON (415 for another declared media type) and pass the strict parse of
  ``interpreter.jsonsafe`` (422 naming the member, in FastAPI's error shape): the refusals the
  event ingress applies to every message, so that no entry point accepts what another refuses.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException, Request, status
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from interpreter import jsonsafe

__all__ = ["ApiKeyGuard", "RequestBodyGuard"]

log = logging.getLogger(__name__)

API_KEY_HEADER = "x-api-key"


class ApiKeyGuard:
    """FastAPI dependency: the request must carry one of the configured keys in ``X-API-Key``."""

    def __init__(self, keys: Sequence[SecretStr], *, allow_anonymous: bool) -> None:
        self._keys = [key.get_secret_value().encode() for key in keys]
        self._anonymous = allow_anonymous and not self._keys

    def __call__(self, request: Request) -> None:
        if self._anonymous:
            return
        offered = request.headers.get(API_KEY_HEADER, "").encode()
        # Compare against every key, without stopping at a match: timing says nothing.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(offered, key)
        if not offered or not matched:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing or invalid API key (header X-API-Key)",
                headers={"WWW-Authenticate": "ApiKey"},
            )


class RequestBodyGuard:
    """Refuse request bodies that are too large (413), too slow (408), not JSON (415) or not
    strict JSON (422) before the application reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self._app = app
        self._max = max_bytes
        self._timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        if b"content-length" in headers:
            try:
                declared = int(headers[b"content-length"])
            except ValueError:
                await _answer(send, 400, "invalid Content-Length")
                return
            if declared > self._max:
                await _answer(send, 413, f"request body over {self._max} bytes", close=True)
                return
        # Read the body here and hand the application a replay of it. Raising from inside
        # ``receive`` would not do: FastAPI turns any error while reading the body into a 400.
        try:
            async with asyncio.timeout(self._timeout):
                body = await self._read(receive)
        except _ClientGoneError:
            return  # nobody to answer
        except TimeoutError:
            log.warning(
                "request body of %s %s not received within %ss: 408, connection closed",
                scope.get("method"),
                scope.get("path"),
                self._timeout,
            )
            detail = f"request body not received within {self._timeout}s"
            await _answer(send, 408, detail, close=True)
            return
        if body is None:
            await _answer(send, 413, f"request body over {self._max} bytes", close=True)
            return
        if body:
            refusal = self._refusal(headers.get(b"content-type"), body)
            if refusal is not None:
                await _answer(send, *refusal)
                return
        whole: Message = {"type": "http.request", "body": body, "more_body": False}
        await self._app(scope, _replay(whole, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None when it is over the limit."""
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGoneError
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self._max:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _refusal(self, content_type: bytes | None, body: bytes) -> tuple[int, Any] | None:
        media = (content_type or b"application/json").split(b";")[0].strip().lower()
        if media != b"application/json" and not media.endswith(b"+json"):
            return 415, "request bodies are JSON (Content-Type: application/json)"
        try:
            jsonsafe.loads(body, max_bytes=self._max)
        except jsonsafe.UnsafeJsonError as exc:
            return 422, [validation_error(exc)]
        return None


class _ClientGoneError(Exception):
    """The client disconnected before its body was complete."""


def validation_error(exc: jsonsafe.UnsafeJsonError) -> dict[str, Any]:
    """A strict-JSON refusal as one of FastAPI's 422 errors: ``loc`` from the pointer."""
    parts = [part.replace("~1", "/").replace("~0", "~") for part in exc.pointer.split("/")[1:]]
    kind = "json_invalid" if exc.code == "invalid-json" else exc.code.replace("-", "_")
    return {"type": kind, "loc": ["body", *parts], "msg": exc.message}


def _replay(body: Message, then: Receive) -> Receive:
    """``receive`` for the application: the body read already, then the server's own."""
    pending = [body]

    async def receive() -> Message:
        if pending:
            return pending.pop()
        return await then()  # after the body: the disconnect notice, when it comes

    return receive


async def _answer(send: Send, code: int, detail: Any, *, close: bool = False) -> None:
    """``{"detail": ...}`` as ASCII JSON; ``close`` asks the server to drop the connection (the
    rest of an unread body must not be taken for the next request)."""
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
