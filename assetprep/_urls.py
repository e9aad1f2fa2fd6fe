"""URL and HTTP-answer helpers shared by upload, the Tavus client and the sandbox."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# A host name (in its ASCII form) with a dot and an alphabetic or IDN top-level label, then an optional port and
# path: "acme.com/team", "xn--mnchen-3ya.de".
_SITE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})"
    r"\.?(?::\d{1,5})?(?:[/?#]\S*)?$"
)
_FILE_SUFFIXES = (".html", ".htm", ".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif", ".png", ".jpg", ".jpeg",
                  ".pdf", ".txt", ".csv", ".json", ".zip", ".wav", ".mp3", ".m4a")  # fmt: skip


def site_url(text: str) -> str | None:
    """Lead lists hold websites as "acme.com" or "www.acme.com/team": the https URL of such a value, None for
    anything else (a missing "intro.mp4" stays a file). Callers first check that no local file has that name."""
    text = text.strip().removeprefix("//")  # " acme.com", a protocol-relative "//acme.com/team"
    host = re.split(r"[/?#:]", text, maxsplit=1)[0]
    rest = text[len(host) :].replace(" ", "%20")
    try:
        ascii_host = host.encode("idna").decode("ascii")  # münchen.de is xn--mnchen-3ya.de
    except UnicodeError:
        return None
    if not _SITE.match(ascii_host + rest) or Path(host).suffix.lower() in _FILE_SUFFIXES:
        return None
    return f"https://{host}{rest}"


def looks_like_website(text: str) -> bool:
    """An http(s) URL or a scheme-less website ("acme.com/team"); not an e-mail address or a file name."""
    text = text.strip()
    return bool(re.match(r"^https?://\S+$", text, re.IGNORECASE)) or ("@" not in text and site_url(text) is not None)


def website_or_path(text: str, local: Path) -> str:
    """A background as written, the way publish and manifests both read it: an http(s) URL as a browser sends it
    (spaces as %20), any other URL as it is, a file or folder that exists (at `local`) as it is, else a scheme-less
    website's https URL ("acme.com"), else the text (a missing file, named as such by the caller)."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        return encode_spaces(text) if re.match(r"^https?://", text, re.IGNORECASE) else text
    if local.exists():
        return text
    return site_url(text) or text


def encode_spaces(url: str) -> str:
    """A website with a space in its path or query ("https://acme.com/about us", as lead lists hold them) as a
    browser sends it (%20); a space in the host stays, to be refused."""
    parts = urlsplit(url)
    if " " not in url or " " in parts.netloc:
        return url
    return urlunsplit(parts._replace(path=parts.path.replace(" ", "%20"), query=parts.query.replace(" ", "%20"),
                                     fragment=parts.fragment.replace(" ", "%20")))  # fmt: skip


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
