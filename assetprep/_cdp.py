"""A direct DevTools connection to one page, for exact mode's frame loop.

Through Playwright each CDP call goes Python -> Node driver -> Chromium and back, and every frame's JPEG (130 KB at
720p, 300 KB at 1080p, base64 in JSON) is parsed and re-serialised by the driver on its way: 4-6 ms of CPU a frame on
the chain that draws the frames, one after the other. Here the frame loop talks to the browser itself, over the
WebSocket Chromium opens on 127.0.0.1 for `--remote-debugging-port=0`, and it can also send a call without waiting
for its answer (the next frame's video seeks start while this frame's JPEG travels).

Chromium refuses DevTools WebSockets that carry an Origin header (a web page's), so pages cannot use the port; the
network guard sends their loopback requests through its proxy anyway. Anything unexpected here makes the caller
fall back to Playwright's session.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import FrameLostError, RecordError

_PORT_FILE = "DevToolsActivePort"  # written by Chromium into its profile: "<port>\n<browser WebSocket path>"
_MAX_MESSAGE = 256 * 1024 * 1024  # a 4K frame's JPEG in base64 is a few MB; more is not an answer of ours
LATE_S = 2.0  # a picture still missing this long after a later frame's came was dropped (see Screencast)


def _mask(data: bytes, key: bytes) -> bytes:
    """RFC 6455 client masking, in one big-int XOR (our messages are small)."""
    n = len(data)
    if not n:
        return b""
    pad = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(n, "big")


class DirectPage:
    """CDP calls to one page target over the browser's WebSocket; each wait bounded by `timeout` seconds."""

    def __init__(self, port: int, path: str, target_id: str, timeout: float) -> None:
        self.timeout = timeout
        self._buf = bytearray()
        self._next_id = 0
        self.on_event: Callable[[dict[str, Any]], None] | None = None  # events met while reading
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handshake(port, path)
            self._session: str | None = None
            self._session = str(self.call("Target.attachToTarget", {"targetId": target_id, "flatten": True})[
                "sessionId"])  # fmt: skip
        except BaseException:
            self._sock.close()
            raise

    @classmethod
    def open(cls, profile: Path, target_id: str, timeout: float) -> DirectPage:
        """Connect to the browser whose profile folder is `profile` (its port file appears as it starts)."""
        end = time.monotonic() + min(timeout, 2.0)
        while True:
            try:
                port, path = (profile / _PORT_FILE).read_text().split()[:2]
                break
            except (OSError, ValueError):
                if time.monotonic() > end:
                    raise OSError("Chromium wrote no DevTools port file") from None
                time.sleep(0.02)
        return cls(int(port), path, target_id, timeout)

    def _handshake(self, port: int, path: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self._sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        end = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self._buf:
            self._fill(len(self._buf) + 1, end)
        head, _, rest = bytes(self._buf).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise OSError(f"DevTools refused the WebSocket: {status.decode(errors='replace')}")
        self._buf = bytearray(rest)

    def _fill(self, size: int, end: float) -> None:
        while len(self._buf) < size:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the browser")
            self._sock.settimeout(left)
            chunk = self._sock.recv(max(1 << 20, size - len(self._buf)))
            if not chunk:
                raise ConnectionError("the browser closed its DevTools connection")
            self._buf += chunk

    def _message(self, end: float) -> dict[str, Any]:
        parts: list[bytes] = []
        while True:
            self._fill(2, end)
            first, second = self._buf[0], self._buf[1]
            size, at = second & 0x7F, 2
            if size == 126:
                self._fill(4, end)
                size, at = struct.unpack(">H", self._buf[2:4])[0], 4
            elif size == 127:
                self._fill(10, end)
                size, at = struct.unpack(">Q", self._buf[2:10])[0], 10
            if size > _MAX_MESSAGE:
                raise ConnectionError(f"a {size}-byte DevTools message")
            self._fill(at + size, end)
            payload = bytes(self._buf[at : at + size])
            del self._buf[: at + size]
            opcode = first & 0x0F
            if opcode == 8:
                raise ConnectionError("the browser closed its DevTools connection")
            if opcode == 9:  # ping: answered, as RFC 6455 asks
                self._send(payload, opcode=10)
            elif opcode in (0, 1, 2):
                parts.append(payload)
                if first & 0x80:
                    return dict(json.loads(b"".join(parts)))

    def _send(self, data: bytes, opcode: int = 1) -> None:
        n = len(data)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        key = os.urandom(4)
        self._sock.settimeout(self.timeout)
        self._sock.sendall(head + key + _mask(data, key))

    def post(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Send a call without waiting; its answer is skipped when it comes. The call's id."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self._session is not None:
            message["sessionId"] = self._session
        self._send(json.dumps(message).encode())
        return self._next_id

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a call and wait (at most `timeout` s) for its answer; events and earlier posts' answers are skipped.
        A call Chromium refuses is a RecordError naming it."""
        wanted = self.post(method, params)
        end = time.monotonic() + self.timeout
        while True:
            message = self._message(end)
            if message.get("id") != wanted:
                self._dispatch(message)
                continue
            if "error" in message:
                error = message["error"]
                raise RecordError(f"Chromium refused {method}: {error.get('message', error)}")
            return dict(message.get("result") or {})

    def pump(self, end: float) -> None:
        """Read one message (waiting until `end` at most) and hand it to on_event if it is an event."""
        self._dispatch(self._message(end))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" in message and self.on_event is not None:
            self.on_event(message)

    def close(self) -> None:
        self._sock.close()


class Screencast:
    """The pictures of the frames `draw()` has a headless shell draw, as Chromium's screencast delivers them.

    A beginFrame that takes its own screenshot returns once the picture is read back and JPEG-encoded on the
    browser's main thread: drawing, reading back and encoding ran one after the other. The screencast encodes each
    drawn frame on a worker thread, so the next frame is drawn while this one is encoded (one picture may be
    outstanding). The same pixels and encoder: the frames decode identically either way.

    The screencast's scheduler decides which drawn frames it copies. Two things keep it copying every one: frame
    times of our own, evenly spaced at the frame interval (with Chromium's, the real clock's, it skipped frames that
    came early), and each frame's damage the whole viewport (TIME_SHIM's damage(), a transparent canvas cleared per
    frame: when the damage changed shape, the hero's animation giving way to the scroll, it skipped a run of 23).
    Pictures come stamped with their frame's display time (its frame time plus one interval), which places them:
    two encoded side by side can arrive in either order. A draw without damage gets no picture (it shows the one
    before). A picture that does not come within `lost_after` seconds is a FrameLostError, and so is one still
    missing LATE_S after a later draw's came: encodes overlap, so pictures can pass each other, but by
    milliseconds. A picture can also come before its own beginFrame's answer (the encode finished before the
    browser's main thread sent that): with three recordings at once on 2 cores, 9 of 27 lost a picture so and
    were made again with a screenshot per frame, until the draw was counted from its call on (0 of 12 since).
    """

    def __init__(self, page: DirectPage, *, size: tuple[int, int], quality: int, interval_ms: float,
                 lost_after: float) -> None:  # fmt: skip
        self.page, self.interval, self.lost_after = page, interval_ms, lost_after
        # Renderer TimeTicks are CLOCK_MONOTONIC; pictures are stamped in wall-clock seconds.
        self._start = time.monotonic() * 1000 + 50  # after any frame time Chromium gave itself so far
        self._wall = (time.time() - time.monotonic()) * 1000
        self._draws: deque[tuple[int, bool, bool]] = deque()  # (n, damaged, keep) of draws not given out yet
        self._pictures: dict[int, str] = {}  # n -> base64 JPEG, until its draw is given out
        self._latest: tuple[int, float] = (-1, 0.0)  # the latest draw whose picture came, and when it came
        self._count = 0  # draws made
        self._drawing: int | None = None  # the draw whose beginFrame waits for its answer (its picture may come first)
        self._last: str | None = None
        page.on_event = self._event
        page.call("Page.startScreencast", {"format": "jpeg", "quality": quality, "maxWidth": size[0],
                                           "maxHeight": size[1], "everyNthFrame": 1})  # fmt: skip

    def _event(self, message: dict[str, Any]) -> None:
        if message.get("method") != "Page.screencastFrame":
            return
        params = message.get("params") or {}
        self.page.post("Page.screencastFrameAck", {"sessionId": params.get("sessionId")})
        stamp = (params.get("metadata") or {}).get("timestamp")
        at = self.draw_of(stamp) if stamp is not None else -1.0
        n = round(at)
        # Others (the one the screencast starts with) match no draw that waits for a picture.
        waits = n == self._drawing or any(d[0] == n and d[1] for d in self._draws)
        if abs(at - n) < 0.25 and waits and n not in self._pictures:
            self._pictures[n] = str(params.get("data") or "")
            if n > self._latest[0]:
                self._latest = (n, time.monotonic())

    def draw_of(self, stamp: float) -> float:
        """The draw a picture stamped `stamp` (wall-clock seconds: its frame's display time) shows, as a fraction."""
        return (stamp * 1000 - self._wall - self._start) / self.interval - 1

    def draw(self, *, keep: bool = True) -> None:
        """Draw the next frame (given out by pictures() if `keep`). Chromium drops a frame's picture while three are
        unacknowledged (page_handler.cc, kMaxScreencastFramesInFlight), and each of ours is acknowledged as it
        comes: with at most one still to come at each draw, two are in flight at most. The frame loop keeps to
        that by itself; the redraws of a video back in view had come three in a row."""
        self._wait(lambda: len(self._awaited()) <= 1)
        n = self._drawing = self._count
        ticks = self._start + n * self.interval
        try:
            answer = self.page.call("HeadlessExperimental.beginFrame", {"interval": self.interval,
                                                                         "frameTimeTicks": ticks})  # fmt: skip
        finally:
            self._drawing = None
        self._draws.append((n, bool(answer.get("hasDamage")) or n in self._pictures, keep))
        self._count += 1

    def pictures(self, outstanding: int = 0) -> Iterator[str]:
        """The kept draws' pictures in order, once at most `outstanding` draws still wait for theirs."""
        while True:
            while self._draws:
                n, damaged, keep = self._draws[0]
                if damaged:
                    if n not in self._pictures:
                        break
                    self._last = self._pictures.pop(n)
                elif self._last is None and keep:  # one not kept needs none (frame 0's first draw may have no damage)
                    raise FrameLostError("the first frame drawn had no picture")
                self._draws.popleft()
                if keep:
                    yield self._last
            if len(self._draws) <= outstanding:
                return
            self._wait(lambda: self._draws[0][0] in self._pictures)

    def _awaited(self) -> list[int]:
        """The draws still waiting for their pictures, oldest first (a draw without damage gets none)."""
        return [n for n, damaged, _keep in self._draws if damaged and n not in self._pictures]

    def _wait(self, done: Callable[[], bool]) -> None:
        """Read events until `done()`; the first draw still waiting for its picture is lost after `lost_after`
        seconds, or LATE_S after a later draw's picture came."""
        end = time.monotonic() + self.lost_after
        while not done():
            n = self._awaited()[0]
            later, came = self._latest
            if later > n and time.monotonic() > came + LATE_S:
                raise FrameLostError(f"the screencast sent no picture of frame {n}, and one of a later frame "
                                     f"came {LATE_S:g} s before")  # fmt: skip
            if time.monotonic() > end:
                raise FrameLostError(f"the screencast sent no picture of frame {n} in {self.lost_after:g} s")
            with contextlib.suppress(TimeoutError):
                self.page.pump(min(end, came + LATE_S) if later > n else end)
