"""The private-network guard: every special-purpose address range is refused, in the proxy as in its check."""

from __future__ import annotations

import socket

import pytest

from assetprep._netguard import guard_proxy, is_private

# (range, an address in it): one per range of IANA's special-purpose registries, multicast, and the IPv6 forms that
# carry an IPv4 address (mapped, NAT64, 6to4) with a private one inside.
REFUSED = [
    ("0.0.0.0/8 this network", "0.1.2.3"),
    ("10.0.0.0/8 private", "10.1.2.3"),
    ("100.64.0.0/10 shared address space (cloud metadata)", "100.100.100.200"),
    ("127.0.0.0/8 loopback", "127.0.0.2"),
    ("169.254.0.0/16 link-local (cloud metadata)", "169.254.169.254"),
    ("172.16.0.0/12 private", "172.31.255.1"),
    ("192.0.0.0/24 IETF protocol assignments", "192.0.0.170"),
    ("192.0.2.0/24 documentation", "192.0.2.1"),
    ("192.31.196.0/24 AS112", "192.31.196.1"),
    ("192.52.193.0/24 AMT", "192.52.193.1"),
    ("192.88.99.0/24 6to4 relay anycast", "192.88.99.1"),
    ("192.168.0.0/16 private", "192.168.1.1"),
    ("192.175.48.0/24 AS112 direct delegation", "192.175.48.1"),
    ("198.18.0.0/15 benchmarking", "198.19.0.1"),
    ("198.51.100.0/24 documentation", "198.51.100.7"),
    ("203.0.113.0/24 documentation", "203.0.113.9"),
    ("224.0.0.0/4 multicast", "239.1.2.3"),
    ("240.0.0.0/4 reserved", "250.1.2.3"),
    ("255.255.255.255 broadcast", "255.255.255.255"),
    ("::1 loopback", "::1"),
    (":: unspecified", "::"),
    ("::/96 IPv4-compatible (deprecated)", "::808:808"),
    ("::ffff:0:0/96 IPv4-mapped, private inside", "::ffff:10.0.0.1"),
    ("::ffff:0:0/96 IPv4-mapped, shared space inside", "::ffff:100.64.0.1"),
    ("64:ff9b::/96 NAT64, private inside", "64:ff9b::192.168.0.1"),
    ("64:ff9b::/96 NAT64, metadata inside", "64:ff9b::a9fe:a9fe"),
    ("64:ff9b:1::/48 local-use NAT64", "64:ff9b:1::8.8.8.8"),
    ("100::/64 discard-only", "100::1"),
    ("2001::/32 Teredo", "2001:0:4136:e378:8000:63bf:3fff:fdd2"),
    ("2001::/23 IETF protocol assignments", "2001:2::1"),
    ("2001:db8::/32 documentation", "2001:db8::1"),
    ("2002::/16 6to4, private inside", "2002:a00:1::1"),
    ("2002::/16 6to4, loopback inside", "2002:7f00:1::"),
    ("2620:4f:8000::/48 AS112", "2620:4f:8000::1"),
    ("3fff::/20 documentation", "3fff::1"),
    ("5f00::/16 SRv6", "5f00::1"),
    ("fc00::/7 unique local", "fd12:3456::1"),
    ("fe80::/10 link-local", "fe80::1%eth0"),
    ("fec0::/10 site-local (deprecated)", "fec0::1"),
    ("ff00::/8 multicast", "ff02::1"),
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8",
           "64:ff9b::8.8.8.8", "2002:808:808::1", "2a00:1450:4001::1"]  # fmt: skip


@pytest.mark.parametrize(("name", "address"), REFUSED, ids=[r[0] for r in REFUSED])
def test_every_special_purpose_range_is_refused(name, address):
    assert is_private(address), name


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address):
    assert not is_private(address)


def _ask(port: int, request: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        return s.recv(4096).decode()


def test_the_proxy_refuses_shared_space_and_6to4_and_says_unresolved_names_apart():
    """What the browser would send: a plain http request to the metadata address in shared space, a tunnel to a
    6to4 address around 127.0.0.1, and a name with no DNS answer (not a site that is down)."""
    with guard_proxy() as guard:
        port = guard.server_address[1]
        answer = _ask(port, "GET http://100.100.100.200/latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith("HTTP/1.1 403") and "X-Assetprep-Blocked: 1" in answer
        assert _ask(port, "CONNECT [2002:7f00:1::]:443 HTTP/1.1\r\n\r\n").startswith("HTTP/1.1 403")
        assert guard.blocked == ["http://100.100.100.200/latest/meta-data/", "https://[2002:7f00:1::]:443/"]
        assert _ask(port, "CONNECT nowhere.invalid:443 HTTP/1.1\r\n\r\n").startswith("HTTP/1.1 502")
        assert guard.unresolved == {"nowhere.invalid"}
