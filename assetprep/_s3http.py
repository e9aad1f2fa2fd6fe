"""Small S3 requests without botocore's per-call machinery, and the one HTTP pool an upload call uses.

A botocore call costs ~1.8 ms of CPU (parameter validation, event hooks, endpoint rules, response parsing); signing
the same request with botocore's own SigV4 signer costs ~0.06 ms. Hundreds of small files are bound by CPU (the
client's and, on one machine, the server's: scripts/bench_upload.py), so HEAD, the single PUT of a small file, each
part of a big one and the preflight GETs go this way. Only the expected answers are handled here: anything else (an
error status, a redirect to another region, a broken connection) returns None and the caller makes the same request
through botocore, whose retries and error messages stay the reference.

The pool is the standard library's http.client with keep-alive: a request costs ~0.17 ms of CPU (GET) and ~0.22 ms
(PUT of 100 KB) against urllib3's 0.39 / 0.45 ms — urllib3 re-parses and re-encodes every long presigned URL in
Python and wraps each response; the two requests per small file made that a quarter of the client's CPU. Parts are
sent with sendfile: the kernel copies them from the page cache, where botocore reads and sends 16 KiB at a time.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest

from .errors import CancelledError

log = logging.getLogger("assetprep.upload")

# A HEAD's answer: the object's size and its x-amz-meta-sha256 ("" when it has none), or ABSENT (404).
Head = tuple[int, str]
ABSENT: Head = (-1, "")
_Where = tuple[str, str, int]  # scheme, host, port


@dataclass(frozen=True)
class FileSlice:
    """A request body that is a range of a file, sent with sendfile (the kernel copies from the page cache: no
    buffer in Python, ~half the client CPU of botocore's 16 KiB read/send loop); `on_sent(n)` after each slice of
    it, and `on_sent(-n)` for what was counted when the send then breaks off."""

    path: str
    start: int
    length: int
    on_sent: Callable[[int], None] | None = None


_SLICE = 4 * 1024 * 1024  # progress (and a stop request) is looked at between slices


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage  # case-insensitive .get()
    body: bytes  # at most the request's `limit` bytes


class HttpPool:
    """Keep-alive HTTP/1.1 connections, at most `size` idle per host, with bounded timeouts (connect at most 5 s,
    then `timeout` per read/write, and a whole-request `deadline` where asked) and no retries of its own beyond
    one: a request on a reused connection that the server had closed meanwhile (an idle keep-alive timeout) is sent
    again on a new one. Thread-safe: a connection belongs to one request at a time. Proxies are not used (the
    endpoints are S3's and the consumer's URLs)."""

    def __init__(self, size: int = 10, *, timeout: float = 60.0) -> None:
        self.size = max(1, size)
        self.timeout = timeout
        self.connect_timeout = min(5.0, timeout)
        self._idle: dict[_Where, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._watchdog = _Watchdog()

    def request(self, method: str, url: str, *, body: bytes | FileSlice | None = None,
                headers: dict[str, str] | None = None, limit: int = 1 << 20, timeout: float | None = None,
                deadline: float | None = None) -> Answer:  # fmt: skip
        """Send one request; raises OSError (refused, timed out, reset), http.client.HTTPException or ValueError
        (not an http(s) URL, a header http.client cannot send). `timeout` bounds each read and write; `deadline`
        (seconds) the whole request, against a server that trickles its answer a byte at a time."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        where = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        read_timeout = timeout or self.timeout
        cutoff = time.monotonic() + deadline if deadline else None
        while True:
            conn = self._take(where)
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._connect(where)
                assert conn.sock is not None
                conn.sock.settimeout(read_timeout)
                watch = self._watchdog.watch(conn.sock, cutoff) if cutoff is not None else None
                try:
                    if isinstance(body, FileSlice):
                        _send_file(conn, method, target, body, headers or {})
                    else:
                        conn.request(method, target, body=body, headers=headers or {})
                    resp = conn.getresponse()
                    data = resp.read(limit)
                finally:
                    if watch is not None and self._watchdog.unwatch(watch):  # cut off: whatever broke, that is why
                        raise TimeoutError(f"no complete answer within {deadline:g} s")
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
                if conn is not None:
                    conn.close()
                if reused:  # the server dropped an idle connection just as we took it: once more, on a new one
                    log.debug("%s on a reused connection: sent again", type(exc).__name__)
                    continue
                raise
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            if resp.isclosed() and not resp.will_close:  # the whole answer read: the connection can serve another
                self._give(where, conn)
            else:  # more than `limit` (a server that ignored Range), or the server closes it
                conn.close()
            return Answer(resp.status, resp.headers, data)

    def clear(self) -> None:
        self._watchdog.close()
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _connect(self, where: _Where) -> http.client.HTTPConnection:
        scheme, host, port = where
        conn: http.client.HTTPConnection
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()  # the system's CAs, like a consumer fetching the URL
            conn = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one write: send it now
        return conn

    def _take(self, where: _Where) -> http.client.HTTPConnection | None:
        with self._lock:
            idle = self._idle.get(where)
            while idle:
                conn = idle.pop()
                if _idle_and_open(conn):
                    return conn
                conn.close()
        return None

    def _give(self, where: _Where, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(where, [])
            if len(idle) < self.size:
                idle.append(conn)
                return
        conn.close()


class _Watchdog:
    """Shuts the socket of a request that passed its whole-request deadline (the socket timeout bounds each read,
    so a server that trickles a byte at a time would never trip it). One thread, started on first use, ended by
    close(); watching costs a dict entry, and the thread is woken only when a deadline is earlier than its wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[int, tuple[float, socket.socket]] = {}
        self._fired: set[int] = set()
        self._count = 0
        self._wakes_at = float("inf")
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, sock: socket.socket, cutoff: float) -> int:
        with self._cond:
            self._count += 1
            self._due[self._count] = (cutoff, sock)
            self._closed = False  # a pool used again after clear()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="assetprep-http-deadline", daemon=True)
                self._thread.start()
            elif cutoff < self._wakes_at:
                self._cond.notify()
            return self._count

    def unwatch(self, token: int) -> bool:
        """Stop watching; True when the deadline had cut the request off."""
        with self._cond:
            self._due.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for token, (cutoff, sock) in list(self._due.items()):
                    if cutoff <= now:
                        del self._due[token]
                        self._fired.add(token)
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)  # the blocked read or write returns at once
                self._wakes_at = min((cutoff for cutoff, _ in self._due.values()), default=float("inf"))
                self._cond.wait(None if self._wakes_at == float("inf") else self._wakes_at - now)
            self._wakes_at = float("inf")


def _send_file(conn: http.client.HTTPConnection, method: str, target: str, body: FileSlice,
               headers: dict[str, str]) -> None:  # fmt: skip
    conn.putrequest(method, target)
    for name, value in {**headers, "Content-Length": str(body.length)}.items():
        conn.putheader(name, value)
    conn.endheaders()
    assert conn.sock is not None
    sent = 0
    try:
        with open(body.path, "rb") as f:
            while sent < body.length:
                n = conn.sock.sendfile(f, body.start + sent, min(_SLICE, body.length - sent))
                if n <= 0:
                    raise EOFError(f"{body.path} ended before byte {body.start + body.length}")
                sent += n
                if body.on_sent is not None:
                    body.on_sent(n)
    except BaseException:
        if sent and body.on_sent is not None:  # not sent after all: a retry (or botocore) counts it again
            with contextlib.suppress(Exception):
                body.on_sent(-sent)
        raise


def _idle_and_open(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive socket that is readable has been closed by the server (or sent junk): not reusable."""
    if conn.sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


class SignedS3:
    """HEAD, PUT and multipart parts of one bucket's objects, signed like `client` signs them, sent through `pool`."""

    def __init__(self, client: Any, bucket: str, pool: HttpPool) -> None:
        self._credentials = client._request_signer._credentials  # botocore keeps the refreshable set only here
        if self._credentials is None:
            raise ValueError("the client sends unsigned requests")
        # The object URL exactly as this client builds it (endpoint, addressing style, region): ask it once.
        sample = client.generate_presigned_url("head_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60)
        base = sample.split("?", 1)[0]
        if not base.endswith("/k"):
            raise ValueError(f"unexpected object URL shape for {client.meta.endpoint_url}")
        self._base = base[:-1]
        host = urlsplit(base).hostname or ""
        if client.meta.config.proxies or (getproxies_environment() and not proxy_bypass_environment(host)):
            # botocore would go through the proxy; a direct connection might hang until its timeout on every request
            raise ValueError("requests to S3 go through a proxy")
        self._region = client.meta.region_name
        self._config = client.meta.config  # carries payload_signing_enabled (make_s3_client turns it off)
        self._unsigned_payload = (self._config.s3 or {}).get("payload_signing_enabled") is False
        self._pool = pool

    @classmethod
    def for_client(cls, client: Any, bucket: str, pool: HttpPool) -> SignedS3 | None:
        """The fast path for `client`, or None when it cannot sign like it (then every request goes via botocore)."""
        try:
            return cls(client, bucket, pool)
        except Exception as exc:
            log.debug("S3 requests go through botocore only: %s", exc)
            return None

    def url(self, key: str) -> str:
        return self._base + quote(key, safe="/~")  # botocore's quoting of a key in the path

    def presign_get(self, key: str, expires_in: int) -> str:
        """The presigned GET URL botocore's generate_presigned_url gives for this key (tested equal)."""
        request = AWSRequest(method="GET", url=self.url(key))
        S3SigV4QueryAuth(self._credentials.get_frozen_credentials(), "s3", self._region, expires=expires_in).add_auth(
            request
        )
        return request.url

    def _send(self, method: str, key: str, body: bytes | FileSlice | None = None, headers: dict[str, str] | None = None,
              query: str = "") -> Answer | None:  # fmt: skip
        url = self.url(key) + (f"?{query}" if query else "")
        try:
            signed = AWSRequest(method=method, url=url, data=body if isinstance(body, bytes) else None,
                                headers=headers or {})  # fmt: skip
            signed.context["client_config"] = self._config
            S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(signed)
            return self._pool.request(method, url, body=body, headers=dict(signed.headers.items()))
        except CancelledError:
            raise
        except Exception as exc:  # any failure: botocore makes the request again and reports it its way
            log.debug("%s %s via botocore: %s", method, key, type(exc).__name__)
            return None

    def head(self, key: str) -> Head | None:
        """(size, sha256 metadata) of the object, ABSENT when there is none, None when botocore should ask."""
        resp = self._send("HEAD", key)
        if resp is None:
            return None
        if resp.status == 404:
            return ABSENT
        if resp.status != 200:
            return None
        return int(resp.headers.get("content-length", -1)), resp.headers.get("x-amz-meta-sha256", "")

    def put(self, key: str, data: bytes, *, sha256_b64: str, content_type: str, content_disposition: str,
            metadata: dict[str, str]) -> bool:  # fmt: skip
        """Store `data` (the server checks its SHA-256); False when botocore should try."""
        headers = {
            "Content-Type": content_type,
            "Content-Disposition": content_disposition,
            "Content-Length": str(len(data)),
            "x-amz-checksum-sha256": sha256_b64,
            **{f"x-amz-meta-{k}": v for k, v in metadata.items()},
        }
        resp = self._send("PUT", key, data, headers)
        return resp is not None and resp.status == 200

    def put_part(self, key: str, upload_id: str, number: int, body: FileSlice, *, sha256_b64: str) -> str | None:
        """Send one part of a multipart upload from the file (the server checks its SHA-256): its ETag, or None
        when botocore should send it. Needs unsigned payloads (make_s3_client's setting): a signed one would
        mean reading the part once more to hash it."""
        if not self._unsigned_payload:
            return None
        counted = 0

        def count(n: int) -> None:
            nonlocal counted
            counted += n
            if body.on_sent is not None:
                body.on_sent(n)

        query = f"partNumber={number}&uploadId={quote(upload_id, safe='')}"
        resp = self._send("PUT", key, replace(body, on_sent=count), {"x-amz-checksum-sha256": sha256_b64}, query=query)
        if resp is None or resp.status != 200 or not resp.headers.get("etag"):
            if counted and body.on_sent is not None:  # botocore sends it again and counts it again
                body.on_sent(-counted)
            return None
        return resp.headers["etag"]
