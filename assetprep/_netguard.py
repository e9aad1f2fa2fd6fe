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

from ._server import ThreadedServer

BLOCKED_HEADER = "X-Assetprep-Blocked"
_IDLE_SECONDS = 60.0  # a tunnel with no traffic for this long is closed
_CONNECT_SECONDS = 15.0


def is_private(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved or addr.is_unspecified


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


class _GuardServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, allowed: set[tuple[str, int]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.allowed = allowed
        self.blocked: list[str] = []


@contextlib.contextmanager
def guard_proxy(allowed: set[tuple[str, int]] | None = None) -> Iterator[_GuardServer]:
    """Run the guard on 127.0.0.1 for the duration; `allowed` (host, port) pairs skip the check (our own server)."""
    with ThreadedServer(_GuardServer(allowed or set())) as server:
        yield server
