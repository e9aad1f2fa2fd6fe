"""URL and HTTP-answer helpers shared by upload, the Tavus client and the sandbox."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact_url(url: str) -> str:
    """The URL without query string or credentials: presigned signatures and secret tokens never reach messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port: int | str | None = parts.port
    except ValueError:  # over 65535 or not a number: shown as written, never a second error while reporting one
        port = parts.netloc.rpartition(":")[2]
    netloc = f"{host}:{port}" if port else host
    return f"{parts.scheme}://{netloc}{parts.path}{'?…' if parts.query else ''}"


def s3_error_reason(body: str) -> str:
    """The <Message> (or <Code>) of an S3 XML error body ("Request has expired", "SignatureDoesNotMatch")."""
    for tag in ("Message", "Code"):
        start, end = body.find(f"<{tag}>"), body.find(f"</{tag}>")
        if 0 <= start < end:
            return body[start + len(tag) + 2 : end][:200]
    return ""
