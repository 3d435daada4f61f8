"""Keep URLs' paths and queries out of httpx's own log lines.

httpx logs every request at INFO as ``HTTP Request: METHOD URL "HTTP/1.1 200 OK"``, the full URL
included. A webhook URL carries its token in the path (Slack, Teams) and API URLs often carry keys
in the query, so a filter on the ``httpx`` logger shortens every URL argument to scheme, host and
port. The activities' own log lines name what they call (``http.request`` without the query).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["install"]


class RedactUrls(logging.Filter):
    """Rewrites ``httpx.URL`` arguments of a record to ``scheme://host:port/...``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_shorten(arg) for arg in record.args)
        return True


def _shorten(value: Any) -> Any:
    import httpx

    if isinstance(value, httpx.URL):
        port = f":{value.port}" if value.port else ""
        return f"{value.scheme}://{value.host}{port}/..."
    return value


def install() -> None:
    """Add the filter to the ``httpx`` logger, once."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(existing, RedactUrls) for existing in logger.filters):
        logger.addFilter(RedactUrls())
