"""Which hosts and addresses ``http.request`` may reach (pure: no sockets, no DNS).

The allow-list holds hosts, each optionally with a port: ``example.com`` allows every port of the
host, ``example.com:8443`` that port only (``http.request`` keeps a redirect on the port it came
from either way).

A host is first brought to one canonical spelling, so that ``2130706433``, ``0x7f.1``, ``0177.1``
and ``[::ffff:127.0.0.1]`` are all seen as ``127.0.0.1`` (the WHATWG URL standard's IPv4 parser,
which is also what ``inet_aton`` and browsers accept). The canonical host must be on the
allow-list; then every address it resolves to must be public: loopback (unless allowed for local
development), private, link-local (cloud metadata at 169.254.169.254), Azure's platform address
168.63.129.16, unspecified, multicast, reserved and other non-global ranges are refused, including
IPv4 addresses embedded in IPv6 (mapped, 6to4, Teredo, NAT64).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = [
    "IPAddress",
    "InvalidHostError",
    "address_refusal",
    "canonical_host",
    "host_allowed",
    "parse_ip_literal",
    "split_entry",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Azure's wireserver (DHCP, health probes, VM agent): public space, but never a legitimate target.
AZURE_PLATFORM = ipaddress.IPv4Address("168.63.129.16")
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


class InvalidHostError(ValueError):
    """The host is not a valid name or address (e.g. a numeric host outside IPv4's range)."""


def _ipv4_number(part: str) -> int | None:
    """One dotted part in decimal, octal (leading 0) or hex (0x); None if not a number."""
    if part[:2].lower() == "0x":
        digits, radix = part[2:], 16
        if digits == "":
            return 0
    elif len(part) > 1 and part.startswith("0"):
        digits, radix = part[1:], 8
    else:
        digits, radix = part, 10
    alphabet = "0123456789abcdef"[:radix]
    if not digits or any(ch not in alphabet for ch in digits.lower()):
        return None
    return int(digits, radix)


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The WHATWG IPv4 parser: None for a domain name; ``InvalidHostError`` for a bad number."""
    parts = host.split(".")
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
    if not parts or _ipv4_number(parts[-1]) is None:
        return None  # does not end in a number: a domain name
    numbers = [_ipv4_number(part) for part in parts]
    if len(parts) > 4 or any(number is None for number in numbers):
        raise InvalidHostError(f"host {host!r} ends in a number but is not an IPv4 address")
    values = [number for number in numbers if number is not None]
    *head, last = values
    if any(value > 255 for value in head) or last >= 256 ** (5 - len(values)):
        raise InvalidHostError(f"host {host!r} is an IPv4 address out of range")
    address = last
    for index, value in enumerate(head):
        address += value * 256 ** (3 - index)
    return ipaddress.IPv4Address(address)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host spells, in any accepted form; None when it is a domain name."""
    bare = host.strip("[]") if host.startswith("[") else host
    if ":" in bare:
        try:
            v6 = ipaddress.IPv6Address(bare)
        except ValueError as exc:
            raise InvalidHostError(f"host {host!r} is not a valid IPv6 address") from exc
        return v6.ipv4_mapped or v6
    return _parse_ipv4(bare)


def canonical_host(host: str) -> str:
    """Lowercase, no trailing dot, an IP literal in its one standard spelling (mapped v6 as v4)."""
    lowered = host.lower()
    address = parse_ip_literal(lowered)
    if address is not None:
        return str(address)
    name = lowered.rstrip(".")
    if not name:
        raise InvalidHostError("empty host")
    return name


def split_entry(entry: str) -> tuple[str, int | None]:
    """An allow-list entry as (host pattern, port or None for any port).

    ``example.com``, ``*.example.com:8443``, ``10.0.0.1:80``, ``[2001:db8::1]:443``; a bare IPv6
    address (``2001:db8::1``) has no port."""
    text = entry.strip().lower()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise InvalidHostError(f"allow-list entry {entry!r} has an invalid port {port_text!r}")
    return host, int(port_text) if port_text else None


def host_allowed(host: str, allowed_hosts: Iterable[str], port: int | None = None) -> bool:
    """``host`` (canonical) on ``port`` matches an exact entry, a ``*.domain`` entry, or ``*``.

    An entry without a port allows every port of its hosts; ``host:port`` allows that port only
    (``port`` None matches entries without a port alone)."""
    for entry in allowed_hosts:
        try:
            pattern, entry_port = split_entry(entry)
        except InvalidHostError:
            continue
        if entry_port is not None and entry_port != port:
            continue
        if pattern == "*":
            return True
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
            continue
        try:
            if canonical_host(pattern) == host:
                return True
        except InvalidHostError:
            continue
    return False


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address; the server is a public relay
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why ``address`` may not be contacted, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = address_refusal(embedded, allow_loopback=allow_loopback)
            return f"{reason} (embedded in {address})" if reason else None
    if address.is_loopback:
        return None if allow_loopback else f"{address} is a loopback address"
    if address == AZURE_PLATFORM:
        return f"{address} is the Azure platform address"
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_link_local, "link-local (cloud metadata)"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not globally routable"),
    )
    for refused, what in checks:
        if refused:
            return f"{address} is a {what} address"
    return None
