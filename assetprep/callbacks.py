"""The callback receiver: one small HTTP server per run or per batch, events routed by video_id.

Tavus signs nothing, so only POSTs to /callback/<secret token> count; duplicates are harmless (the waiter re-reads
the record through the API before trusting a status).
"""

from __future__ import annotations

import http.server
import json
import logging
import queue
import secrets
from typing import Any
from urllib.parse import urlsplit

from ._server import QuietHTTPServer, ThreadedServer
from ._urls import redact_url
from .errors import ConfigError

MAX_BODY = 1 << 20
log = logging.getLogger("assetprep.callbacks")


def check_listen(listen: str, public_base: str | None = None) -> tuple[str, str]:
    """(host, port) of `listen`, or ConfigError: what --dry-run checks and the receiver needs."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen must look like HOST:PORT (port 0-65535), got {listen!r}")
    if public_base is not None:
        parts = urlsplit(public_base)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(f"--listen-url must be an http(s) URL without a query, got {redact_url(public_base)!r}")
    elif host.strip("[]") in ("0.0.0.0", "::"):
        raise ConfigError(
            f"--listen {listen} takes callbacks on every interface, but Tavus needs an address to send them to",
            hint="add --listen-url with the public URL that reaches this port (e.g. https://hooks.example.com)",
        )
    return host, port


class CallbackReceiver:
    """Collects callback bodies in `events` (a queue of dicts with at least a video_id)."""

    def __init__(self, listen: str, public_base: str | None = None, *, idle_timeout: float = 10.0) -> None:
        """`public_base`: the URL Tavus reaches this port at (a proxy, a tunnel, a public host name); by default
        http://HOST:PORT of `listen`, which must then be an address Tavus can reach."""
        host, port = check_listen(listen, public_base)
        self.token = secrets.token_urlsafe(18)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            # The port faces whoever can reach it (Tavus must): a connection that sends nothing, or trickles, is
            # dropped after this many idle seconds instead of holding a thread for the whole batch.
            timeout = idle_timeout

            def do_POST(self) -> None:
                length = self.headers.get("Content-Length") or "0"
                if not length.isdigit():  # no framing to trust: answer and end the connection
                    self.close_connection = True
                    self.answer(400)
                    return
                # A proxy in front (--listen-url) may forward its own path prefix too; the token is the secret.
                ok = self.path.endswith(f"/callback/{receiver.token}")
                body = self.rfile.read(min(int(length), MAX_BODY))
                if ok:
                    try:
                        event = json.loads(body)
                        ok = isinstance(event, dict) and isinstance(event.get("video_id"), str)
                    except ValueError:
                        ok = False
                    if ok:
                        receiver.events.put(event)
                self.answer(200 if ok else 404)

            def answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        try:
            server = QuietHTTPServer((host, int(port)), Handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen} for callbacks: {exc.strerror}") from None
        base = public_base or f"http://{host}:{server.server_port}"
        self.url = f"{base.rstrip('/')}/callback/{self.token}"
        self.serving = ThreadedServer(server)

    def drain(self) -> list[dict[str, Any]]:
        """Every event received so far (without waiting)."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.serving.close()
