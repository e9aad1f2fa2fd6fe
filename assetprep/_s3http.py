"""Small S3 requests without botocore's per-call machinery, and the one HTTP pool an upload call uses.

A botocore call costs ~1.8 ms of CPU (parameter validation, event hooks, endpoint rules, response parsing); signing
the same request here (_sigv4: botocore's signature, byte for byte) costs ~0.02 ms. Hundreds of small files are
bound by CPU (the client's and, on one machine, the server's: scripts/bench_upload.py), so HEAD, the single PUT of a
small file, each part of a big one and the preflight GETs go this way. Only the expected answers are handled here:
anything else (an error status, a redirect to another region, a broken connection) returns None and the caller
makes the same request through botocore, whose retries and error messages stay the reference.

The pool speaks HTTP/1.1 over plain sockets (TLS from the standard library's ssl): a request is one write (head and
body together), the answer one or two reads, its head split in bytes. Per request that is ~0.15 ms of CPU against
~0.45 ms through http.client (whose header checks, two writes per request and email-parser headers were a third of
the client's CPU for small files) and 0.39 / 0.45 ms (GET / PUT) through urllib3. Parts are sent with sendfile: the
kernel copies them from the page cache, where botocore reads and sends 16 KiB at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote_plus, urlsplit

from ._sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, SigV4
from .errors import CancelledError

if TYPE_CHECKING:
    import ssl

# ssl, http.client and urllib.request are imported only where needed: ~9 ms of every `assetprep upload` otherwise.

log = logging.getLogger("assetprep.upload")


class BadAnswer(Exception):
    """An answer that is not HTTP/1.x, is cut off, or has a head or line over 64 KiB."""


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


class Headers(dict[str, str]):
    """An answer's header fields by lower-case name; a repeated field's values joined by ", " (RFC 9110 5.3)."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Headers  # case-insensitive .get()
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
        self._idle: dict[_Where, list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._watchdog = _Watchdog()

    def request(self, method: str, url: str, *, body: bytes | FileSlice | None = None,
                headers: dict[str, str] | None = None, limit: int = 1 << 20, timeout: float | None = None,
                deadline: float | None = None) -> Answer:  # fmt: skip
        """Send one request; raises OSError (refused, timed out, reset), BadAnswer (an answer that is not
        HTTP/1.x, cut off, or a head over 64 KiB) or ValueError (not an http(s) URL, a header with a line
        break). `timeout` bounds each read and write; `deadline` (seconds) the whole request, against a server that
        trickles its answer a byte at a time."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        default_port = 443 if parts.scheme == "https" else 80
        where = (parts.scheme, parts.hostname, parts.port or default_port)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        head = _request_head(method, target, _host_header(where, default_port), headers or {}, body)
        read_timeout = timeout or self.timeout
        cutoff = time.monotonic() + deadline if deadline else None
        while True:
            sock = self._take(where)
            reused = sock is not None
            sent = 0  # of a file body, counted as sent: taken back when the request fails after all
            try:
                if sock is None:
                    sock = self._connect(where)
                sock.settimeout(read_timeout)
                watch = self._watchdog.watch(sock, cutoff) if cutoff is not None else None
                try:
                    if isinstance(body, FileSlice):
                        sock.sendall(head)
                        sent = _send_file(sock, body)
                    else:
                        sock.sendall(head + body if body else head)  # one write: one packet for a small request
                    status, fields, data, reusable = _read_answer(sock, method, limit)
                finally:
                    if watch is not None and self._watchdog.unwatch(watch):  # cut off: whatever broke, that is why
                        raise TimeoutError(f"no complete answer within {deadline:g} s")
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
                _take_back(body, sent)
                if sock is not None:
                    sock.close()
                if reused:  # the server dropped an idle connection just as we took it: once more, on a new one
                    log.debug("%s on a reused connection: sent again", type(exc).__name__)
                    continue
                raise
            except BaseException:
                _take_back(body, sent)
                if sock is not None:
                    sock.close()
                raise
            if reusable:  # the whole answer read and the server keeps the connection open
                self._give(where, sock)
            else:  # more than `limit` (a server that ignored Range), or the server closes it
                sock.close()
            return Answer(status, fields, data)

    def clear(self) -> None:
        self._watchdog.close()
        with self._lock:
            idle, self._idle = self._idle, {}
        for socks in idle.values():
            for sock in socks:
                sock.close()

    def _connect(self, where: _Where) -> socket.socket:
        scheme, host, port = where
        sock = socket.create_connection((host, port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one write: send it now
            if scheme == "https":
                if self._tls is None:
                    import ssl

                    self._tls = ssl.create_default_context()  # the system's CAs, like a consumer fetching the URL
                sock = self._tls.wrap_socket(sock, server_hostname=host)  # the handshake, under the connect timeout
        except BaseException:
            sock.close()
            raise
        return sock

    def _take(self, where: _Where) -> socket.socket | None:
        with self._lock:
            idle = self._idle.get(where)
            while idle:
                sock = idle.pop()
                if _idle_and_open(sock):
                    return sock
                sock.close()
        return None

    def _give(self, where: _Where, sock: socket.socket) -> None:
        with self._lock:
            idle = self._idle.setdefault(where, [])
            if len(idle) < self.size:
                idle.append(sock)
                return
        sock.close()


def _host_header(where: _Where, default_port: int) -> str:
    """The Host field exactly as botocore's SigV4 signs it (lower-case host, [IPv6], the port unless default)."""
    _, host, port = where
    name = f"[{host}]" if ":" in host else host
    return name if port == default_port else f"{name}:{port}"


def _request_head(method: str, target: str, host: str, headers: dict[str, str],
                  body: bytes | FileSlice | None) -> bytes:  # fmt: skip
    length = body.length if isinstance(body, FileSlice) else len(body) if body is not None else None
    if length is None and method in ("PUT", "POST", "PATCH"):
        length = 0
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Accept-Encoding: identity"]
    for name, value in headers.items():
        if name.lower() in _OWN_FIELDS:
            continue
        if not name or any(c in name for c in _NOT_IN_NAME) or "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} cannot be sent")  # no request splitting through a header
        lines.append(f"{name}: {value}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")  # non-Latin-1 text: UnicodeEncodeError, a ValueError


_OWN_FIELDS = frozenset({"host", "content-length", "accept-encoding", "transfer-encoding"})
_NOT_IN_NAME = frozenset(":\r\n \t")
_MAX_HEAD = 64 * 1024  # an answer's head, or a chunk-size line, longer than this is not S3's nor a file server's


def _read_answer(sock: socket.socket, method: str, limit: int) -> tuple[int, Headers, bytes, bool]:
    """(status, fields, at most `limit` bytes of body, whether the connection can carry another request)."""
    buf = b""
    while True:  # interim answers (100 Continue, 103 Early Hints) come before the real one
        head, buf = _read_until(sock, buf, b"\r\n\r\n", _MAX_HEAD)
        status, version, fields = _parse_head(head)
        if not 100 <= status < 200 or status == 101:
            break
    tokens = (fields.get("connection") or "").lower()
    keep = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return status, fields, b"", keep and not buf
    coding = fields.get("transfer-encoding")
    length = fields.get("content-length")
    if coding is not None and coding.lower().rsplit(",", 1)[-1].strip() == "chunked":
        body, whole, buf = _read_chunked(sock, buf, limit)
    elif coding is None and length is not None:
        if not length.isdigit():  # "5, 6" (two lengths) or junk: the framing cannot be trusted
            raise BadAnswer(f"bad Content-Length {length[:40]!r}")
        size = int(length)
        body, buf = _read_exact(sock, buf, min(size, limit))
        whole = size <= limit
    else:  # the body runs to the end of the connection
        body, buf = _read_exact(sock, buf, limit, to_close=True)
        whole = keep = False
    return status, fields, body, keep and whole and not buf


def _read_until(sock: socket.socket, buf: bytes, end: bytes, most: int) -> tuple[bytes, bytes]:
    """(bytes before `end`, bytes after it), reading more as needed; at most `most` bytes are waited for."""
    start = 0
    while (at := buf.find(end, start)) < 0:
        if len(buf) > most:
            raise BadAnswer("an answer's head or line over 64 KiB")
        start = max(0, len(buf) - len(end) + 1)
        chunk = sock.recv(65536)
        if not chunk:
            if buf:
                raise BadAnswer(f"an answer cut off after {len(buf)} bytes")
            raise ConnectionResetError("the server closed the connection without an answer")
        buf += chunk
    if at > most:
        raise BadAnswer("an answer's head or line over 64 KiB")
    return buf[:at], buf[at + len(end) :]


def _parse_head(head: bytes) -> tuple[int, str, Headers]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit() or rest[3:4] not in ("", " "):
        raise BadAnswer(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    fields = Headers()
    name = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and name:  # an obsolete folded continuation line
            fields[name] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not sep or not name:
            name = ""
            continue  # not a field: ignored, as http.client does
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return int(code), version, fields


def _read_exact(sock: socket.socket, buf: bytes, size: int, *, to_close: bool = False) -> tuple[bytes, bytes]:
    """(`size` bytes, what was read past them); `to_close`: up to `size` bytes, fewer when the server closes."""
    if len(buf) >= size:
        return buf[:size], buf[size:]
    chunks, have = [buf], len(buf)
    while have < size:
        chunk = sock.recv(min(size - have, 1 << 20))  # never past the body: nothing of a next answer is taken
        if not chunk:
            if to_close:
                break
            raise BadAnswer(f"an answer cut off {size - have} bytes short")
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks), b""


def _read_chunked(sock: socket.socket, buf: bytes, limit: int) -> tuple[bytes, bool, bytes]:
    """(at most `limit` bytes of a chunked body, whether it was read to its end, what was read past it)."""
    body: list[bytes] = []
    have = 0
    while True:
        line, buf = _read_until(sock, buf, b"\r\n", _MAX_HEAD)
        try:
            size = int(line.split(b";", 1)[0].strip() or b"x", 16)
        except ValueError:
            raise BadAnswer(f"bad chunk size {line[:40]!r}") from None
        if size == 0:
            while True:  # trailer fields, up to the empty line
                line, buf = _read_until(sock, buf, b"\r\n", _MAX_HEAD)
                if not line:
                    return b"".join(body), True, buf
        if have + size > limit:
            chunk, _ = _read_exact(sock, buf, limit - have)
            return b"".join([*body, chunk]), False, b""
        chunk, buf = _read_exact(sock, buf, size + 2)
        if chunk[-2:] != b"\r\n":
            raise BadAnswer("a chunk longer than its size line says")
        body.append(chunk[:-2])
        have += size


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


def _take_back(body: bytes | FileSlice | None, sent: int) -> None:
    """A file body all sent, and then the answer failed (a reset: the loopback buffers took the whole part before
    the server said no): not sent after all, and a retry counts it again."""
    if sent and isinstance(body, FileSlice) and body.on_sent is not None:
        with contextlib.suppress(Exception):
            body.on_sent(-sent)


def _send_file(sock: socket.socket, body: FileSlice) -> int:
    """Send the slice, counting as it goes; a failure takes back what it counted. Returns the bytes sent."""
    sent = 0
    try:
        with open(body.path, "rb") as f:
            while sent < body.length:
                n = sock.sendfile(f, body.start + sent, min(_SLICE, body.length - sent))
                if n <= 0:
                    raise EOFError(f"{body.path} ended before byte {body.start + body.length}")
                sent += n
                if body.on_sent is not None:
                    body.on_sent(n)
    except BaseException:
        _take_back(body, sent)  # not sent after all: a retry (or botocore) counts it again
        raise
    return sent


def _idle_and_open(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed by the server (or sent junk): not reusable."""
    try:
        pending = getattr(sock, "pending", None)  # a TLS socket's decrypted bytes not read yet
        if pending is not None and pending():
            return False
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class StaticCredentials:
    """Keys given outright (settings or the AWS_* environment), shaped like botocore's credentials for SigV4."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)

    def get_frozen_credentials(self) -> StaticCredentials:
        return self


@dataclass(frozen=True)
class Listing:
    """What one page of ListObjectsV2 proves: the keys under a prefix up to `last` (None: all of them)."""

    keys: frozenset[str]
    last: str | None

    def absent(self, key: str) -> bool:
        """Whether no object is stored under `key` (False also when the page does not reach it)."""
        if key in self.keys:
            return False
        return self.last is None or key.encode() <= self.last.encode()  # S3 lists in UTF-8 byte order


_KEY = re.compile(rb"<Key>(.*?)</Key>", re.S)
_ENTITY = re.compile(r"&(#x[0-9a-fA-F]+|#[0-9]+|amp|lt|gt|quot|apos);")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _xml_text(text: str) -> str:
    """XML character data to text: the five entities XML predefines and character references."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name[0] != "#":
            return _NAMED[name]
        code = int(name[2:], 16) if name[1] == "x" else int(name[1:])
        return chr(code) if code <= 0x10FFFF else m.group(0)

    return _ENTITY.sub(one, text)


def _proxied(host: str) -> bool:
    """Whether the environment sends requests for `host` through a proxy (as botocore and urllib read it)."""
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return False  # urllib.request costs ~2 ms to import; it only reads such variables
    from urllib.request import getproxies_environment, proxy_bypass_environment

    return bool(getproxies_environment()) and not proxy_bypass_environment(host)


class SignedS3:
    """HEAD, PUT and multipart parts of one bucket's objects, signed like a botocore client signs them, sent through
    `pool`. `bucket_url`: the bucket's URL as that client builds object URLs (endpoint, addressing style), ending
    in "/"; `unsigned_payload`: bodies are checked by their x-amz-checksum-sha256 instead of a signed hash."""

    def __init__(self, credentials: Any, region: str, bucket_url: str, pool: HttpPool, *,
                 unsigned_payload: bool = True) -> None:  # fmt: skip
        parts = urlsplit(bucket_url)
        host = parts.hostname or ""
        if not region or parts.scheme not in ("http", "https") or not host or not parts.path.endswith("/"):
            raise ValueError(f"cannot sign for {bucket_url} in region {region}")
        if _proxied(host):
            # botocore would go through the proxy; a direct connection might hang until its timeout on every request
            raise ValueError("requests to S3 go through a proxy")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._path = parts.path  # the bucket's path, as quoted in the URL, with its trailing "/"
        default_port = 443 if parts.scheme == "https" else 80
        self._signer = SigV4(credentials, region, _host_header((parts.scheme, host, parts.port or default_port),
                                                                default_port))  # fmt: skip
        self._unsigned_payload = unsigned_payload
        self._pool = pool

    @classmethod
    def from_client(cls, client: Any, bucket: str, pool: HttpPool) -> SignedS3:
        """Signing like `client` (a botocore S3 client); ValueError when it cannot."""
        credentials = client._request_signer._credentials  # botocore keeps the refreshable set only here
        if credentials is None:
            raise ValueError("the client sends unsigned requests")
        if client.meta.config.proxies:
            raise ValueError("requests to S3 go through a proxy")
        # The object URL exactly as this client builds it (endpoint, addressing style, region): ask it once.
        sample = client.generate_presigned_url("head_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60)
        base = sample.split("?", 1)[0]
        if not base.endswith("/k"):
            raise ValueError(f"unexpected object URL shape for {client.meta.endpoint_url}")
        # make_s3_client turns payload signing off; a client that signs payloads gets their SHA-256 signed here too
        unsigned = (client.meta.config.s3 or {}).get("payload_signing_enabled") is False
        return cls(credentials, client.meta.region_name, base[:-1], pool, unsigned_payload=unsigned)

    @classmethod
    def for_client(cls, client: Any, bucket: str, pool: HttpPool) -> SignedS3 | None:
        """The fast path for `client`, or None when it cannot sign like it (then every request goes via botocore)."""
        try:
            return cls.from_client(client, bucket, pool)
        except Exception as exc:
            log.debug("S3 requests go through botocore only: %s", exc)
            return None

    def bucket_exists(self) -> bool | None:
        """True when the bucket answers HEAD with 200; None for anything else (botocore asks and names it)."""
        resp = self._request("HEAD", self._path[:-1] or "/")
        return True if resp is not None and resp.status == 200 else None

    def no_uploads_under(self, prefix: str) -> bool:
        """Whether the bucket is known to hold no unfinished multipart upload under `prefix` (False: there are
        some, or the answer does not say; botocore lists them)."""
        resp = self._request("GET", self._path, query=f"uploads&prefix={quote(prefix, safe='-_.~')}")
        return resp is not None and resp.status == 200 and b"<Upload>" not in resp.body

    def list_keys(self, prefix: str, most: int) -> Listing | None:
        """The first `most` keys under `prefix` (ListObjectsV2, one page); None for any answer but 200 (a missing
        bucket, a key not allowed to list: the caller asks the way it would have without a listing).
        A key this misread would cost a needless check, or a PUT of the same bytes, never a wrong answer."""
        # encoding-type=url: XML cannot carry every character a key may hold (a control character came back
        # as U+FFFD); percent-encoded, each key comes back exact. A server that ignores it is not relied on.
        query = f"encoding-type=url&list-type=2&max-keys={most}&prefix={quote(prefix, safe='-_.~')}"
        resp = self._request("GET", self._path, query=query)
        if resp is None or resp.status != 200 or b"<EncodingType>url</EncodingType>" not in resp.body:
            return None
        # decoded as botocore decodes them
        keys = [unquote_plus(_xml_text(k.decode("utf-8", "replace"))) for k in _KEY.findall(resp.body)]
        truncated = b"<IsTruncated>true</IsTruncated>" in resp.body
        if truncated and not keys:
            return None
        return Listing(frozenset(keys), max(keys, key=str.encode) if truncated else None)

    def _key_path(self, key: str) -> str:
        return self._path + quote(key, safe="/~")  # botocore's quoting of a key in the path

    def url(self, key: str) -> str:
        return self._origin + self._key_path(key)

    def presign_get(self, key: str, expires_in: int) -> str:
        """The presigned GET URL botocore's generate_presigned_url gives for this key (tested equal)."""
        path = self._key_path(key)
        return self._signer.presign_get(self._origin + path, path, expires_in)

    def _send(self, method: str, key: str, body: bytes | FileSlice | None = None, headers: dict[str, str] | None = None,
              query: str = "") -> Answer | None:  # fmt: skip
        return self._request(method, self._key_path(key), body, headers, query)

    def _request(self, method: str, path: str, body: bytes | FileSlice | None = None,
                 headers: dict[str, str] | None = None, query: str = "") -> Answer | None:  # fmt: skip
        url = self._origin + path + (f"?{query}" if query else "")
        if self._unsigned_payload:
            payload = UNSIGNED_PAYLOAD
        else:  # a FileSlice is never sent signed (put_part): it would be read twice
            payload = hashlib.sha256(body).hexdigest() if isinstance(body, bytes) else EMPTY_SHA256
        try:
            signed = self._signer.headers(method, path, query, headers or {}, payload)
            return self._pool.request(method, url, body=body, headers=signed)
        except CancelledError:
            raise
        except Exception as exc:  # any failure: botocore makes the request again and reports it its way
            log.debug("%s %s via botocore: %s", method, path, type(exc).__name__)
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
