"""URL helpers shared by upload, the Tavus client and the sandbox."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact_url(url: str) -> str:
    """The URL without query string or credentials: presigned signatures and secret tokens never reach messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}{'?…' if parts.query else ''}"
