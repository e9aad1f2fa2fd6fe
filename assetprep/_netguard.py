"""The network guard for recording URLs that others supply: a tiny forward proxy that refuses private addresses.

Chromium is pointed at it for every request, loopback included (bypass list `<-loopback>`), so each redirect hop
and subresource passes through it — Playwright's request routing never sees redirect hops, which is why the guard
is a proxy. Each host is resolved here, refused if any of its addresses is loopback/private/link-local/reserved, and
otherwise connected to by the address that was checked (no second lookup for a rebinding DNS to exploit).
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import socketserver
from collections.abc import Iterator
from urllib.parse import urlsplit

from ._server import QuietErrors, ThreadedServer

BLOCKED_HEADER = "X-Assetprep-Blocked"
_IDLE_SECONDS = 60.0  # a tunnel with no traffic for this long is closed
_CONNECT_SECONDS = 15.0


# Every range of IANA's IPv4 special-purpose registry, and multicast: none is where a lead's website lives. The
# cloud metadata services sit in link-local (169.254.169.254) and in shared address space (100.100.100.200).
_BLOCKED_V4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16", "192.175.48.0/24",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
))  # fmt: skip
# IPv6 websites are in global unicast (2000::/3); inside it, these are IANA's special-purpose ranges: IETF protocol
# assignments with Teredo (2001::/23), documentation, AS112. Outside it only addresses that carry an IPv4 one are
# looked into: IPv4-mapped (::ffff:0:0/96) and NAT64 (64:ff9b::/96); the rest (ULA fc00::/7, link-local, multicast,
# discard, local-use NAT64 64:ff9b:1::/48, the deprecated IPv4-compatible ::/96) is refused. 6to4 (2002::/16)
# carries an IPv4 address in its bits 16-47: refused when that one is.
_GLOBAL_V6 = ipaddress.IPv6Network("2000::/3")
_BLOCKED_V6 = tuple(ipaddress.IPv6Network(n) for n in (
    "2001::/23", "2001:db8::/32", "2620:4f:8000::/48", "3fff::/20",
))  # fmt: skip
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_private(ip: str) -> bool:
    """Whether an address is anywhere but the public internet (see _BLOCKED_V4 and _BLOCKED_V6)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        elif addr in _NAT64:
            addr = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        elif addr.sixtofour is not None:
            addr = addr.sixtofour
        else:
            return addr not in _GLOBAL_V6 or any(addr in net for net in _BLOCKED_V6)
    return any(addr in net for net in _BLOCKED_V4)  # 255.255.255.255 is in 240.0.0.0/4


def resolve_public(host: str, port: int) -> tuple[str, int] | None:
    """The first address of host if none of its addresses is private; None when refused. OSError: no such host."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if any(is_private(str(info[4][0])) for info in infos):
        return None
    return str(infos[0][4][0]), port


class _Handler(socketserver.StreamRequestHandler):
    server: _GuardServer
    rbufsize = 0  # unbuffered: bytes after the head (a body, a TLS hello) stay in the socket for the relay

    def handle(self) -> None:
        line = self.rfile.readline(65537).decode("latin-1").strip()
        headers: list[str] = []
        while (h := self.rfile.readline(65537).decode("latin-1")) not in ("\r\n", "\n", ""):
            headers.append(h.rstrip("\r\n"))
        try:
            method, target, version = line.split(" ", 2)
        except ValueError:
            return
        if method == "CONNECT":
            host, _, port_text = target.rpartition(":")
            host, port, url = host.strip("[]"), int(port_text or 443), f"https://{target}/"
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                self._answer(400, "absolute http:// URL expected")
                return
            host, port, url = parts.hostname, parts.port or 80, target
        if (host, port) in self.server.allowed:
            address: tuple[str, int] | None = (host, port)
        else:
            try:
                address = resolve_public(host, port)
            except OSError:
                self.server.unresolved.add(host)
                self._answer(502, f"cannot resolve {host}")
                return
        if address is None:
            self.server.blocked.append(url.split("?")[0])
            self._answer(403, f"{host} is a private address", blocked=True)
            return
        try:
            upstream = socket.create_connection(address, timeout=_CONNECT_SECONDS)
        except OSError as exc:
            self._answer(502, f"cannot connect to {host}:{port}: {exc.strerror or exc}")
            return
        with upstream:
            if method == "CONNECT":
                self.wfile.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            else:
                # One request per connection (Connection: close) keeps the relay a plain byte pipe.
                path = urlsplit(target)._replace(scheme="", netloc="").geturl() or "/"
                kept = [h for h in headers if h.split(":", 1)[0].strip().lower() not in _HOP_HEADERS]
                head = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
                upstream.sendall(head.encode("latin-1"))
            self._relay(upstream)

    def _relay(self, upstream: socket.socket) -> None:
        client = self.connection
        pairs = {client: upstream, upstream: client}
        while True:
            ready, _, _ = select.select(list(pairs), [], [], _IDLE_SECONDS)
            if not ready:
                return
            for sock in ready:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    pairs[sock].sendall(data)
                except OSError:
                    return

    def _answer(self, status: int, text: str, *, blocked: bool = False) -> None:
        body = f"assetprep network guard: {text}\n".encode()
        reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
        extra = f"{BLOCKED_HEADER}: 1\r\n" if blocked else ""
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n{extra}"
        self.wfile.write(f"{head}Connection: close\r\n\r\n".encode() + body)


_HOP_HEADERS = {"proxy-connection", "connection", "keep-alive", "proxy-authorization", "te", "trailer", "upgrade"}


class _GuardServer(QuietErrors, socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, allowed: set[tuple[str, int]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.allowed = allowed
        self.blocked: list[str] = []
        self.unresolved: set[str] = set()  # hosts without a DNS answer: not a site that is down


@contextlib.contextmanager
def guard_proxy(allowed: set[tuple[str, int]] | None = None) -> Iterator[_GuardServer]:
    """Run the guard on 127.0.0.1 for the duration; `allowed` (host, port) pairs skip the check (our own server)."""
    with ThreadedServer(_GuardServer(allowed or set())) as server:
        yield server
