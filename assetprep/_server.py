"""Local servers. Child processes (the embedded S3, the sandbox): spawned on 127.0.0.1, polled until ready, stopped by
PID. In-process ones (a page server, the network guard, the callback receiver): served from a thread, joined on close.
"""

from __future__ import annotations

import http.server
import logging
import os
import re
import socketserver
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Generic, Self, TypeVar

from . import _process
from .errors import AssetprepError


class ManagedServer:
    """Base of LocalS3 and LocalSandbox. Subclasses say how to start (`command`) and how to know it is up (`ready`)."""

    error_class: type[AssetprepError] = AssetprepError
    title = "server"
    log_name = "server.log"

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / self.log_name

    def command(self) -> list[str]:
        """Pick ports and return the argv; called by start()."""
        raise NotImplementedError

    def child_env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        """One cheap readiness check; exceptions count as not ready."""
        raise NotImplementedError

    def start(self, *, timeout: float = 30.0) -> Self:
        self.proc = _process.spawn(self.command(), log_path=self.log_path, env=self.child_env())
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise self.error_class(f"the {self.title} exited (code {self.proc.returncode}); see {self.log_path}")
            try:
                if self.ready():
                    return
            except Exception as exc:  # not up yet: connection refused, 503 while it starts
                last = type(exc).__name__
            time.sleep(0.2)
        raise self.error_class(f"the {self.title} was not ready within {timeout:g} s ({last}); see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM (then SIGKILL) by PID."""
        if self.proc is not None:
            _process.stop(self.proc)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, for fault tests: no graceful shutdown."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def __enter__(self) -> Self:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()


S = TypeVar("S", bound=socketserver.BaseServer)
log = logging.getLogger("assetprep.server")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) byte a `Range: bytes=A-` or `bytes=A-B` header asks of `size` bytes, `last` cut to the end;
    first > last when none of them exist (answer 416). None: no such header (answer the whole, 200)."""
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", (header or "").strip())
    if m is None:
        return None
    return int(m[1]), min(int(m[2] or size - 1), size - 1)


class QuietErrors:
    """For a socketserver: a peer that resets or times out mid-request (Chromium drops the media ranges it no longer
    needs, a callback sender gives up) is logged at debug, where socketserver printed a traceback on stderr."""

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        log.debug("connection from %s ended badly", client_address[0], exc_info=True)


class QuietHTTPServer(QuietErrors, http.server.ThreadingHTTPServer):
    pass


class ThreadedServer(Generic[S]):
    """Serve a socketserver from a daemon thread from construction until close() (shut down, closed, joined)."""

    def __init__(self, server: S) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> S:
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.close()
