"""``http.request``: one HTTP call to an allow-listed public host, guarded against SSRF.

How the guard holds (see ``tasks.builtin.netguard`` for which hosts and addresses pass):

- The URL's host is canonicalised (every decimal/octal/hex/IPv4-mapped spelling of an address is
  one address) and must match ``HttpSettings.allowed_hosts``.
- The name is resolved ONCE; every address it resolves to is checked (one refused address refuses
  the call, which also defeats DNS answers that mix a public and a private address), and the
  connection goes to the first checked address: the request URL carries that IP, so httpx never
  resolves the name again (no DNS rebinding between check and connect).
- The ``Host`` header keeps the original name. For https the TLS server name (SNI) and the
  certificate check use the original name too, through httpcore's ``sni_hostname`` request
  extension: the certificate must be valid for the name, while the socket goes to the checked IP.
- ``allowed_hosts`` entries are hosts (every port) or ``host:port`` (that port only).
- Redirects are never followed by httpx. Same-host, same-port redirects are followed here, up to
  ``max_redirects``, each hop checked against the allow-list and resolved again; a redirect to
  another host, to another port of the same host (but for http on 80 up to https on 443), or from
  https down to http, is refused (``Http.Forbidden``).
- Environment proxies are ignored (``trust_env=False``): a proxy would resolve the name itself.
- The body is streamed and cut off at ``max_response_bytes`` (``Http.ResponseTooLarge``);
  ``Accept-Encoding: identity`` is sent so a compressed bomb is not expanded in memory.
- The whole exchange, redirects included, runs under one deadline (``Http.Timeout``).

Errors: ``Http.Status5xx``, ``Http.Connection``, ``Http.Timeout`` (retryable); ``Http.Status4xx``,
``Http.Forbidden``, ``Http.ResponseTooLarge``, ``Http.TooManyRedirects`` (not retryable).

Secrets: the request headers (``Authorization``...) are never logged or returned; the URL's query
string is not logged; ``Set-Cookie`` and authentication headers of the response are dropped from
the result. The step's idempotency key is sent as ``Idempotency-Key`` (unless the caller sets one)
so a server that honours it also deduplicates a retry whose first answer was lost.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from interpreter.errors import ActivityError
from tasks.builtin import netguard
from tasks.registry import ActivityInput, ActivityOutput

if TYPE_CHECKING:
    import httpx

    from tasks.context import ActivityContext
    from tasks.registry import ActivityRegistry
    from tasks.settings import HttpSettings

__all__ = ["HttpRequestInput", "HttpRequestOutput", "http_request", "register"]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Request headers the caller may not set: the guard owns them.
RESERVED_REQUEST_HEADERS = frozenset({"host", "accept-encoding", "content-length"})
#: Response headers never returned (credentials and session tokens).
SECRET_RESPONSE_HEADERS = frozenset(
    {"set-cookie", "set-cookie2", "authorization", "proxy-authorization", "www-authenticate"}
)


class HttpRequestInput(ActivityInput):
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str = Field(min_length=1, max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json", description="JSON request body")
    timeout_seconds: float | None = Field(default=None, gt=0, le=300)


class HttpRequestOutput(ActivityOutput):
    status: int
    headers: dict[str, str]
    json_body: Any = Field(default=None, alias="json", description="Parsed JSON body, if JSON")
    text: str


def _error(name: str, message: str, *, retryable: bool) -> ActivityError:
    return ActivityError(name, message, retryable=retryable)


def forbidden(message: str) -> ActivityError:
    return _error("Http.Forbidden", message, retryable=False)


@dataclass(frozen=True)
class Target:
    """A checked URL: where the socket goes (``address``) and what the server is told (``host``)."""

    url: httpx.URL
    host: str  # canonical host
    address: netguard.IPAddress

    def connect_url(self) -> httpx.URL:
        return self.url.copy_with(host=str(self.address))

    def host_header(self) -> str:
        default_port = {"http": 80, "https": 443}[self.url.scheme]
        port = self.url.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if port in (None, default_port) else f"{host}:{port}"

    def describe(self) -> str:
        """Scheme, host and path only: the query string may carry credentials."""
        return f"{self.url.scheme}://{self.host_header()}{self.url.path}"


async def _resolve(host: str, port: int) -> list[netguard.IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except socket.gaierror as exc:
        raise _error(
            "Http.Connection", f"cannot resolve {host!r}: {exc.strerror}", retryable=True
        ) from exc
    addresses: list[netguard.IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = netguard.parse_ip_literal(str(sockaddr[0]).split("%", 1)[0])
        if address is not None and address not in addresses:
            addresses.append(address)
    if not addresses:
        raise _error("Http.Connection", f"{host!r} resolved to no address", retryable=True)
    return addresses


def effective_port(url: httpx.URL) -> int:
    """The port the URL connects to (the scheme's default when it names none)."""
    return url.port or (443 if url.scheme == "https" else 80)


async def check_target(url: httpx.URL, settings: HttpSettings) -> Target:
    """Canonicalise, allow-list, resolve once and check every address; ``Http.Forbidden`` if not."""
    if url.scheme not in ("http", "https"):
        raise forbidden(f"scheme {url.scheme!r} refused: only http and https")
    if url.userinfo:
        raise forbidden("credentials in the URL refused: send them in a header")
    try:
        host = netguard.canonical_host(url.host)
    except netguard.InvalidHostError as exc:
        raise forbidden(str(exc)) from exc
    port = effective_port(url)
    if not netguard.host_allowed(host, settings.allowed_hosts, port):
        raise forbidden(
            f"host {host!r} port {port} is not in the allow-list (ORCH_HTTP_ALLOWED_HOSTS)"
        )
    literal = netguard.parse_ip_literal(host)
    addresses = [literal] if literal is not None else await _resolve(host, port)
    for address in addresses:
        reason = netguard.address_refusal(address, allow_loopback=settings.allow_loopback)
        if reason is not None:
            raise forbidden(f"host {host!r} refused: {reason}")
    return Target(url=url, host=host, address=addresses[0])


def _response_headers(response: httpx.Response) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in response.headers.multi_items():
        name = key.lower()
        if name in SECRET_RESPONSE_HEADERS:
            continue
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def _read_capped(response: httpx.Response, limit: int, where: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _error(
            "Http.ResponseTooLarge",
            f"{where} declared {declared} bytes, over the {limit}-byte limit",
            retryable=False,
        )
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise _error(
                "Http.ResponseTooLarge",
                f"{where} sent more than the {limit}-byte limit",
                retryable=False,
            )
    return bytes(body)


def _decode(response: httpx.Response, body: bytes) -> tuple[Any, str]:
    text = body.decode(response.charset_encoding or "utf-8", errors="replace")
    content_type = response.headers.get("content-type", "").lower()
    if "json" in content_type and text.strip():
        try:
            return json.loads(text), text
        except ValueError:
            return None, text
    return None, text


def _redirect(
    target: Target, response: httpx.Response, method: str, body: Any
) -> tuple[httpx.URL, str, Any]:
    """The next hop of a same-host redirect (method and body as browsers rewrite them)."""
    location = response.headers.get("location")
    if not location:
        raise _error(
            "Http.Status4xx", f"{target.describe()} redirected without a Location", retryable=False
        )
    next_url = target.url.join(location)
    try:
        next_host = netguard.canonical_host(next_url.host)
    except netguard.InvalidHostError as exc:
        raise forbidden(f"redirect to an invalid host refused: {exc}") from exc
    if next_host != target.host:
        raise forbidden(f"redirect from {target.host!r} to another host {next_host!r} refused")
    if target.url.scheme == "https" and next_url.scheme != "https":
        raise forbidden(f"redirect from https down to {next_url.scheme!r} refused")
    port, next_port = effective_port(target.url), effective_port(next_url)
    upgrade = (target.url.scheme, port, next_url.scheme, next_port) == ("http", 80, "https", 443)
    if next_port != port and not upgrade:
        # Another port of the same host is another service (an admin port, a database's HTTP
        # interface): the allow-list let the caller reach this one, not every one.
        raise forbidden(f"redirect from port {port} to another port {next_port} refused")
    status = response.status_code
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        return next_url, "GET", None
    return next_url, method, body


async def _exchange(
    client: httpx.AsyncClient,
    request: HttpRequestInput,
    settings: HttpSettings,
    idempotency_key: str | None,
) -> HttpRequestOutput:
    import httpx

    headers = {
        k: v for k, v in request.headers.items() if k.lower() not in RESERVED_REQUEST_HEADERS
    }
    if idempotency_key and not any(k.lower() == "idempotency-key" for k in headers):
        headers["Idempotency-Key"] = idempotency_key
    headers["Accept-Encoding"] = "identity"
    url, body = httpx.URL(request.url), request.json_body
    method: str = request.method
    for hop in range(settings.max_redirects + 1):
        target = await check_target(url, settings)
        extensions = {"sni_hostname": target.host} if url.scheme == "https" else {}
        outgoing = client.build_request(
            method,
            target.connect_url(),
            headers={**headers, "Host": target.host_header()},
            json=body if body is not None and method not in ("GET", "HEAD") else None,
            extensions=extensions,
        )
        response = await client.send(outgoing, stream=True)
        try:
            if response.status_code in REDIRECT_STATUSES:
                if hop == settings.max_redirects:
                    raise _error(
                        "Http.TooManyRedirects",
                        f"more than {settings.max_redirects} redirects from {request_where(url)}",
                        retryable=False,
                    )
                url, method, body = _redirect(target, response, method, body)
                continue
            where = target.describe()
            status = response.status_code
            if status >= 500:
                raise _error("Http.Status5xx", f"{where} answered {status}", retryable=True)
            if status >= 400:
                raise _error("Http.Status4xx", f"{where} answered {status}", retryable=False)
            data = await _read_capped(response, settings.max_response_bytes, where)
        finally:
            await response.aclose()
        parsed, text = _decode(response, data)
        return HttpRequestOutput(
            status=status, headers=_response_headers(response), json_body=parsed, text=text
        )
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


def request_where(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.host}{url.path}"


async def http_request(ctx: ActivityContext, request: HttpRequestInput) -> HttpRequestOutput:
    """Make the request; see the module docstring for the guard and the error names."""
    import httpx

    from tasks.builtin import logredact

    logredact.install()
    settings = ctx.http
    timeout = min(request.timeout_seconds or settings.timeout_seconds, 300.0)
    try:
        log_where = request_where(httpx.URL(request.url))
    except httpx.InvalidURL as exc:
        raise forbidden(f"invalid URL: {exc}") from exc
    ctx.logger.info("http.request %s %s", request.method, log_where)
    try:
        async with (
            asyncio.timeout(timeout),
            httpx.AsyncClient(
                follow_redirects=False, trust_env=False, timeout=httpx.Timeout(timeout)
            ) as client,
        ):
            return await _exchange(client, request, settings, ctx.idempotency_key)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise _error(
            "Http.Timeout", f"{log_where} took longer than {timeout:g}s", retryable=True
        ) from exc
    except httpx.InvalidURL as exc:
        raise forbidden(f"invalid URL: {exc}") from exc
    except httpx.TransportError as exc:
        raise _error(
            "Http.Connection", f"{log_where}: {type(exc).__name__}: {exc}", retryable=True
        ) from exc


def register(registry: ActivityRegistry) -> None:
    registry.activity(
        name="http.request",
        description=(
            "Call an allow-listed public HTTP(S) host (SSRF-guarded: resolved once, private and "
            "metadata addresses refused, same-host same-port redirects only, response size "
            "capped); retryable on 5xx, connection errors and timeouts."
        ),
        retry_safe=True,
        changes_state=True,
    )(http_request)
