"""One call to the Prefect API under a deadline, an unreachable Prefect turned into one error.

The Prefect client retries a refused connection with backoff on its own, which holds a caller for
a minute while the server is down. ``call_prefect(call, seconds=..., unavailable=...)`` awaits the
call for at most ``seconds`` and raises ``unavailable(message)`` (from the original) when
Prefect did not answer in time, could not be reached (an httpx ``TransportError``) or answered
5xx. Every other failure, a 4xx answer included, passes through unchanged: what it means is the
caller's to say.

The resumer (``flows.timers``, ``PrefectUnreachableError``) and the ingress port
(``listeners.control``, ``ControlUnavailableError``) call Prefect through it. Only the standard
library and httpx are imported, so any layer may use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

__all__ = ["call_prefect"]

T = TypeVar("T")


async def call_prefect(
    call: Awaitable[T], *, seconds: float, unavailable: Callable[[str], Exception]
) -> T:
    """``await call`` within ``seconds``; Prefect down, slow or 5xx raises ``unavailable``."""
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError as exc:
        raise unavailable(f"Prefect did not answer within {seconds:g}s") from exc
    except httpx.TransportError as exc:
        raise unavailable(f"Prefect unreachable ({exc!r})") from exc
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code >= 500:
            raise unavailable(f"Prefect answered {exc.response.status_code}") from exc
        raise
