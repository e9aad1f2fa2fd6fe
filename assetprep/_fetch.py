"""Download a clip or picture that a background URL points at (a lead's "website" that is really a video file).

Bounded like every wait here: connect and each read within `timeout`, the whole download within a deadline, the
size capped. With `block_private_networks` the request goes through the same guard proxy as the browser, so a
manifest's URL cannot reach an internal host by being a clip instead of a page.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx

from ._files import atomic_output
from ._netguard import BLOCKED_HEADER, guard_proxy
from ._process import check_cancelled
from .errors import MediaError

MAX_BYTES = 2 << 30  # a background clip of more than 2 GiB is not a background
DEADLINE = 600.0  # seconds for the whole download (a server that trickles a byte a second is not waited for)
_GUARDED = "the network guard is on (batch: --allow-private-networks)"


def fetch_media(url: str, dest: Path, *, timeout: float, block_private_networks: bool = False,
                proxy: str | None = None, headers: dict[str, str] | None = None, max_bytes: int = MAX_BYTES,
                deadline: float = DEADLINE) -> None:  # fmt: skip
    """Download `url` to `dest` (whole or not at all); stops within a read when _process.cancel_all() is called.
    `proxy`: a guard already running (the recording's, which then counts what it blocked), else a new one when
    `block_private_networks`; `headers`: sent with the request (the browser's, for a page's video)."""
    with contextlib.ExitStack() as stack:
        guard = None
        if block_private_networks and proxy is None:
            guard = stack.enter_context(guard_proxy())
            proxy = f"http://127.0.0.1:{guard.server_address[1]}"
        client = stack.enter_context(httpx.Client(proxy=proxy, timeout=timeout, follow_redirects=True))
        ends = time.monotonic() + deadline
        try:
            with client.stream("GET", url, headers=headers) as answer, atomic_output(dest) as tmp, \
                    open(tmp, "wb") as out:  # fmt: skip
                if answer.headers.get(BLOCKED_HEADER):
                    raise MediaError(f"{url}: blocked request to a private address", hint=_GUARDED)
                if answer.status_code >= 400:
                    raise MediaError(f"{url} answered HTTP {answer.status_code}", hint="fix the URL")
                size = 0
                for chunk in answer.iter_bytes(1 << 20):
                    check_cancelled(f"the download of {url}")  # Ctrl-C, SIGTERM: batch stops its work at once
                    size += len(chunk)
                    if size > max_bytes:
                        raise MediaError(f"{url} is more than {max_bytes >> 20} MiB", hint="give a shorter clip")
                    if time.monotonic() > ends:
                        raise MediaError(f"{url} did not download within {deadline:g} s",
                                         hint="download it and give the file")  # fmt: skip
                    out.write(chunk)
        except httpx.HTTPError as exc:
            if guard is not None and guard.blocked:
                raise MediaError(f"{url}: blocked request to a private address ({guard.blocked[0]})",
                                 hint=_GUARDED) from None  # fmt: skip
            raise MediaError(f"cannot download {url}: {type(exc).__name__}",
                             hint="check the URL and that the site is reachable") from None  # fmt: skip
