"""The one HTTP pool of an upload call (assetprep/_s3http.py HttpPool) and the preflight over it, against local
servers that misbehave on purpose: connections dropped while idle or on reuse, Range ignored, redirects, silence."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from assetprep import PreflightError
from assetprep._s3http import HttpPool
from assetprep.upload import preflight
from tests._media import http_server


class Handler(http.server.BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1. Paths: /echo/X → X; /drop-reuse → the second request on a connection is dropped unanswered;
    /close-after → answered, then the connection closed without saying so; /huge → 200 with 20 MB, Range ignored;
    /go → 302 to /media (relative); /loop → 302 to itself; /silent → read, never answered."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK wait between them
    connections = 0
    huge_written = 0
    lock = threading.Lock()
    release = threading.Event()

    def setup(self) -> None:
        super().setup()
        with Handler.lock:
            Handler.connections += 1
        self.answered_here = 0

    def log_message(self, *args: object) -> None:
        pass

    def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.answered_here += 1

    def do_GET(self) -> None:
        path = self.path
        if path.startswith("/echo/"):
            self.answer(200, path[6:].encode())
        elif path == "/drop-reuse":
            if self.answered_here:
                self.close_connection = True  # no answer: the client sees the connection drop under its request
                return
            self.answer(200, b"first")
        elif path == "/close-after":
            self.answer(200, b"ok")
            self.close_connection = True
        elif path == "/huge":
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(20 * 1024 * 1024))
            self.end_headers()
            try:
                for _ in range(320):
                    self.wfile.write(b"\0" * 65536)
                    Handler.huge_written += 65536
            except OSError:
                self.close_connection = True
        elif path == "/go":
            self.answer(302, b"", {"Location": "/media"})
        elif path == "/loop":
            self.answer(302, b"", {"Location": "/loop"})
        elif path == "/media":
            self.answer(206, b"R", {"Content-Type": "audio/wav", "Content-Range": "bytes 0-0/1234"})
        elif path == "/silent":
            Handler.release.wait(30)
            self.close_connection = True


@pytest.fixture
def server():
    Handler.connections = 0
    Handler.huge_written = 0
    Handler.release.clear()
    with http_server(Handler) as srv:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
        Handler.release.set()


def test_connections_are_kept_alive_and_shared_by_threads(server):
    pool = HttpPool(4)
    with ThreadPoolExecutor(4) as ex:
        answers = list(ex.map(lambda i: pool.request("GET", f"{server}/echo/{i}"), range(200)))
    assert [a.body for a in answers] == [str(i).encode() for i in range(200)]
    assert all(a.status == 200 for a in answers)
    assert Handler.connections <= 4  # 200 requests, at most one connection per thread
    pool.clear()


def test_a_connection_the_server_dropped_is_not_reused_and_a_drop_on_reuse_is_sent_again(server):
    pool = HttpPool(1)
    # Closed after each answer, without "Connection: close": the idle socket reads EOF, so a new one is opened.
    assert [pool.request("GET", f"{server}/close-after").body for _ in range(5)] == [b"ok"] * 5
    assert Handler.connections == 5
    # Dropped unanswered when reused (the race of an idle timeout): sent once more on a new connection.
    before = Handler.connections
    assert [pool.request("GET", f"{server}/drop-reuse").body for _ in range(3)] == [b"first"] * 3
    assert Handler.connections == before + 3
    # A new connection that drops the request is an error, not a loop.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def drop_one() -> None:
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.close()

        t = threading.Thread(target=drop_one, daemon=True)
        t.start()
        with pytest.raises(OSError):
            HttpPool(1).request("GET", f"http://127.0.0.1:{port}/x")
        t.join(5)


def test_preflight_of_a_server_that_ignores_range_reads_a_little_and_drops_that_connection(server):
    pool = HttpPool(1)
    started = time.monotonic()
    preflight(f"{server}/huge", content_type="audio/wav", http=pool)
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    assert Handler.huge_written < 20 * 1024 * 1024  # the 20 MB were not all read
    assert pool.request("GET", f"{server}/echo/next").body == b"next"
    assert Handler.connections == 2  # the half-read connection was not given back


def test_preflight_follows_redirects_and_stops_at_a_loop(server):
    preflight(f"{server}/go", content_type="audio/wav", size=1234)
    with pytest.raises(PreflightError, match="serves 1234 bytes, expected 99"):
        preflight(f"{server}/go", size=99)
    with pytest.raises(PreflightError, match="answered 302"):
        preflight(f"{server}/loop")


def test_preflight_is_bounded_when_a_server_trickles_its_answer():
    """A byte of header every 0.2 s keeps every read under the socket timeout; the whole-request deadline ends it."""
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def trickle() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 206 Partial Content\r\n")
                while not stop.is_set():
                    try:
                        conn.sendall(b"X")  # one endless header line
                    except OSError:
                        return
                    stop.wait(0.2)

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        errors: list[Exception] = []

        def check() -> None:
            try:
                preflight(f"http://127.0.0.1:{port}/a.wav", timeout=1.5)
            except Exception as exc:
                errors.append(exc)

        checker = threading.Thread(target=check, daemon=True)
        checker.start()
        checker.join(4)
        waiting = checker.is_alive()
        stop.set()
        t.join(5)
    assert not waiting, "the preflight was still waiting after 4 s"
    assert len(errors) == 1 and "not reachable: TimeoutError" in str(errors[0])


def test_preflight_is_bounded_when_a_server_never_answers_or_is_not_there(server):
    started = time.monotonic()
    with pytest.raises(PreflightError, match="not reachable: TimeoutError"):
        preflight(f"{server}/silent?X-Amz-Signature=secret", timeout=1.0)
    assert time.monotonic() - started < 4
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(PreflightError, match="not reachable: ConnectionRefusedError") as info:
            preflight(f"http://127.0.0.1:{port}/a.wav?X-Amz-Signature=secret")
    assert "secret" not in str(info.value)
    with pytest.raises(PreflightError, match="not reachable: ValueError"):
        preflight("ftp://example.invalid/a.wav")
    with pytest.raises(PreflightError, match=r"http://127\.0\.0\.1:99999/a\.wav\?… is not reachable: ValueError"):
        preflight("http://127.0.0.1:99999/a.wav?X-Amz-Signature=secret")  # the message itself used to raise


@pytest.mark.parametrize("reads_mib", [6, 16])
def test_a_file_body_cut_off_by_the_server_takes_back_what_it_counted(tmp_path, reads_mib):
    """A part sent with sendfile to a server that reads 6 MiB of it (or all 16) and resets: an error, and the
    progress counted for the slices that went out is taken back (botocore's retry of the part counts them again).
    With all of it read, the reset meets the answer's read, not the sending: that was not taken back (found when
    the loopback buffers took the rest of the 6 MiB case under load, 1 run in many)."""
    import struct

    from assetprep._s3http import FileSlice

    f = tmp_path / "part.bin"
    f.write_bytes(b"\0" * (16 * 1024 * 1024))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        got = []

        def read_then_reset() -> None:
            conn, _ = listener.accept()
            total = 0
            while total < reads_mib * 1024 * 1024:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
            got.append(total)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
            conn.close()

        t = threading.Thread(target=read_then_reset, daemon=True)
        t.start()
        counted: list[int] = []
        with pytest.raises(OSError):
            HttpPool(1).request(
                "PUT",
                f"http://127.0.0.1:{port}/k?partNumber=1",
                body=FileSlice(str(f), 0, f.stat().st_size, counted.append),
            )
        t.join(5)
    assert got and got[0] >= reads_mib * 1024 * 1024  # the server did take bytes, and the first slice was counted
    assert counted[0] > 0 and sum(counted) == 0


def test_https_urls_are_verified_and_kept_alive(tmp_path, monkeypatch):
    """Real S3 and Tavus fetch over TLS: a certificate the system does not trust fails the preflight by name; one it
    trusts (SSL_CERT_FILE pointed at it) answers, over one kept-alive connection."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    Handler.connections = 0
    with http_server(Handler) as srv:
        srv.socket = context.wrap_socket(srv.socket, server_side=True)
        url = f"https://127.0.0.1:{srv.server_address[1]}"
        with pytest.raises(PreflightError, match="not reachable: SSLCertVerificationError"):
            preflight(f"{url}/media")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        pool = HttpPool(1)
        preflight(f"{url}/media", content_type="audio/wav", size=1234, http=pool)
        assert [pool.request("GET", f"{url}/echo/{i}").body for i in range(3)] == [b"0", b"1", b"2"]
        assert Handler.connections == 1  # one connection for the four requests (the refused handshake made none)
        pool.clear()


class Scripted:
    """A raw server that answers the n-th request it reads with `replies[n]`, byte for byte, on kept connections;
    it records each request's bytes and how many connections it accepted."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = replies
        self.requests: list[bytes] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.replies:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                buf = b""
                while self.replies:
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                    if b"\r\n\r\n" not in buf:
                        break
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = next((int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
                                   if k.strip().lower() == b"content-length"), 0)  # fmt: skip
                    while len(buf) < length:
                        buf += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + buf[:length])
                    buf = buf[length:]
                    conn.sendall(self.replies.pop(0))

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.mark.parametrize(
    ("reply", "method", "body", "reused"),
    [
        # chunked, with a chunk extension and a trailer field
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
            "GET",
            b"abcde",
            True,
        ),
        # an interim 100 Continue before the real answer
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", "PUT", b"ok", True),
        # a HEAD's Content-Length says the object's size, not a body's
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n", "HEAD", b"", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", "GET", b"", True),
        # the server says it closes, or speaks HTTP/1.0, or frames the body by closing: not reused
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi", "GET", b"hi", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", "GET", b"hi", False),
        (b"HTTP/1.1 200 OK\r\n\r\nto the end", "GET", b"to the end", False),
        # more than the limit (10 bytes here): the rest is not read, the connection not reused
        (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"x" * 20, "GET", b"x" * 10, False),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n"
            + b"y" * 8
            + b"\r\n8\r\n"
            + b"z" * 8
            + b"\r\n0\r\n\r\n",
            "GET",
            b"y" * 8 + b"zz",
            False,
        ),
    ],
)
def test_answers_are_framed_as_http_1_1_says(reply, method, body, reused):
    close_reply = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"
    srv = Scripted([reply, close_reply])
    try:
        pool = HttpPool(1)
        answer = pool.request(method, f"{srv.url}/a?b=c", body=b"ok" if method == "PUT" else None, limit=10)
        assert (answer.body, pool.request("GET", f"{srv.url}/n").body) == (body, b"next")
        assert srv.connections == (1 if reused else 2)
        assert answer.headers.get("CONTENT-LENGTH") == answer.headers.get("content-length")  # any case
        first = srv.requests[0]
        assert first.startswith(f"{method} /a?b=c HTTP/1.1\r\nHost: 127.0.0.1:{srv.url.rsplit(':', 1)[1]}".encode())
        assert first.endswith(b"Content-Length: 2\r\n\r\nok" if method == "PUT" else b"\r\n\r\n")
        pool.clear()
    finally:
        srv.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"ICY 200 OK\r\n\r\n",  # not HTTP/1.x
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",  # two lengths: no framing
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a chunk size that is not hex
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed before the body ended
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",  # a head over 64 KiB
    ],
)
def test_answers_that_cannot_be_framed_are_errors_not_data(reply):
    from assetprep._s3http import BadAnswer

    srv = Scripted([reply])  # one answer, then the connection is closed
    try:
        with pytest.raises(BadAnswer):
            HttpPool(1).request("GET", f"{srv.url}/x")
    finally:
        srv.close()


def test_a_header_that_would_split_the_request_is_refused_before_anything_is_sent():
    srv = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    try:
        for name, value in [("X-A", "1\r\nX-Injected: 1"), ("X-B\r\nX-Injected", "1"), ("X C", "1")]:
            with pytest.raises(ValueError):
                HttpPool(1).request("GET", f"{srv.url}/x", headers={name: value})
        assert srv.requests == []
    finally:
        srv.close()
