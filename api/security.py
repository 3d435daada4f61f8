"""Request guards of the management API: API keys compared in constant time, a body size limit.

The size limit is ASGI middleware so it holds before anything reads the body: a declared
``Content-Length`` over the limit is refused at once, and any other body is read
(up to the limit) before the application sees it.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from fastapi import HTTPException, Request, status
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ApiKeyGuard", "BodySizeLimit"]

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


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413 before the application reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self._app = app
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _plain(send, 400, b"invalid Content-Length")
                    return
                if declared > self._max:
                    await _too_large(send, self._max)
                    return
        # No (or a small) declared length: read the body here, up to the limit, and hand the
        # application a replay of it. Raising from inside ``receive`` would not do: FastAPI turns
        # any error while reading the body into a 400.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self._app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self._max:
                await _too_large(send, self._max)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        await self._app(
            scope,
            _replay([{"type": "http.request", "body": body, "more_body": False}], receive),
            send,
        )


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()  # after the body: the disconnect notice, when it comes
        return {"type": "http.disconnect"}

    return receive


async def _too_large(send: Send, limit: int) -> None:
    await _plain(send, 413, f'{{"detail":"request body over {limit} bytes"}}'.encode(), json=True)


async def _plain(send: Send, code: int, body: bytes, *, json: bool = False) -> None:
    content_type = b"application/json" if json else b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
