"""The callback receiver: one small HTTP server per run or per batch, events routed by video_id.

Tavus signs nothing, so only POSTs to /callback/<secret token> count; duplicates are harmless (the waiter re-reads
the record through the API before trusting a status).
"""

from __future__ import annotations

import http.server
import json
import queue
import secrets
from typing import Any

from ._server import ThreadedServer
from .errors import ConfigError

MAX_BODY = 1 << 20


class CallbackReceiver:
    """Collects callback bodies in `events` (a queue of dicts with at least a video_id)."""

    def __init__(self, listen: str, public_base: str | None = None) -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--listen must look like HOST:PORT, got {listen!r}")
        self.token = secrets.token_urlsafe(18)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                ok = self.path == f"/callback/{receiver.token}"
                body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), MAX_BODY))
                if ok:
                    try:
                        event = json.loads(body)
                        ok = isinstance(event, dict) and isinstance(event.get("video_id"), str)
                    except ValueError:
                        ok = False
                    if ok:
                        receiver.events.put(event)
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        try:
            server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
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
