"""The HTTP activity's host and address rules (pure: no sockets, no DNS)."""

from __future__ import annotations

import ipaddress

import pytest

from tasks.builtin.netguard import (
    InvalidHostError,
    address_refusal,
    canonical_host,
    host_allowed,
)


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
        ("::ffff:a9fe:a9fe", "169.254.169.254"),
        ("[::1]", "::1"),
        ("Api.Example.COM.", "api.example.com"),
        ("0x.example.com", "0x.example.com"),
    ],
)
def test_every_spelling_has_one_canonical_host(host: str, canonical: str) -> None:
    assert canonical_host(host) == canonical


@pytest.mark.parametrize("host", ["256.1.1.1", "1.2.3.4.5", "0x100000000", "09.1", "[::zz]", ""])
def test_malformed_numeric_hosts_are_invalid(host: str) -> None:
    with pytest.raises(InvalidHostError):
        canonical_host(host)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "168.63.129.16",
        "0.0.0.0",
        "::",
        "100.64.0.1",
        "224.0.0.1",
        "fe80::1",
        "fc00::1",
        "::ffff:10.0.0.1",
        "2002:a9fe:a9fe::1",
        "64:ff9b::a9fe:a9fe",
    ],
)
def test_internal_addresses_are_refused(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


def test_allow_loopback_opens_loopback_only() -> None:
    def refused(address: str) -> bool:
        return address_refusal(ipaddress.ip_address(address), allow_loopback=True) is not None

    assert not refused("127.0.0.1")
    assert not refused("::1")
    assert not refused("::ffff:127.0.0.1")
    assert refused("169.254.169.254")
    assert refused("10.0.0.1")
    assert refused("168.63.129.16")


def test_allow_list_matching() -> None:
    allowed = ["api.example.com", "*.devices.example.net", "127.0.0.1"]

    assert host_allowed("api.example.com", allowed)
    assert host_allowed("eu.devices.example.net", allowed)
    assert not host_allowed("devices.example.net", allowed)
    assert not host_allowed("evil-api.example.com", allowed)
    assert not host_allowed("api.example.com.evil.org", allowed)
    assert host_allowed(canonical_host("2130706433"), allowed)
    assert host_allowed("anything.org", ["*"])
    assert not host_allowed("api.example.com", [])
