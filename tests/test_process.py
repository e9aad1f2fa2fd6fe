from __future__ import annotations

import time

import pytest

from assetprep import ProcessError, ProcessTimeoutError, ToolMissingError
from assetprep._process import find_tool, run


def test_env_override(monkeypatch):
    monkeypatch.setenv("FFMPEG", "/bin/true")
    assert find_tool("ffmpeg") == "/bin/true"
    monkeypatch.setenv("FFMPEG", "/nonexistent/ffmpeg")
    with pytest.raises(ToolMissingError, match="FFMPEG=/nonexistent/ffmpeg"):
        find_tool("ffmpeg")


def test_missing_tool(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissingError, match="apt-get install -y ffmpeg"):
        find_tool("ffprobe")


def test_failure_carries_command_and_stderr_tail():
    with pytest.raises(ProcessError) as info:
        run([find_tool("ffmpeg"), "-v", "error", "-i", "/nonexistent.mp4", "-f", "null", "-"], timeout=30)
    err = info.value
    assert err.returncode != 0 and err.command[-1] == "-"
    assert any("No such file" in line for line in err.stderr_tail)
    assert "No such file" in str(err)


def test_timeout_kills_within_deadline():
    started = time.monotonic()
    with pytest.raises(ProcessTimeoutError):
        run(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - started < 5


def test_progress_is_parsed():
    seen = []
    run([find_tool("ffmpeg"), "-v", "error", "-nostats", "-progress", "pipe:1", "-f", "lavfi", "-i",
         "sine=d=3", "-f", "null", "-"], timeout=30, on_progress=seen.append, progress_total=3.0, stage="t")  # fmt: skip
    assert seen and seen[-1].done == 3.0 and seen[-1].fraction == 1.0


def _frames(n: int, size: int = 200_000):
    for i in range(n):
        yield bytes([i % 256]) * size


def test_stdin_chunks_arrive_whole_and_in_order():
    import hashlib
    import sys

    digest = "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
    result = run([sys.executable, "-c", digest], timeout=60, stdin_chunks=_frames(150))  # 30 MB, far over the pipe
    assert result.stdout.decode().strip() == hashlib.sha256(b"".join(_frames(150))).hexdigest()


def test_failing_producer_stops_the_program_at_once():
    import sys

    def broken():
        yield from _frames(3)
        raise RuntimeError("capture failed")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="capture failed"):  # the producer's error, not a timeout
        run([sys.executable, "-c", "import sys, time; sys.stdin.buffer.read(); time.sleep(30)"], timeout=60,
            stdin_chunks=broken())  # fmt: skip
    assert time.monotonic() - started < 5  # killed, not waited for


def test_program_exiting_early_ends_an_endless_producer():
    import itertools
    import sys

    endless = (b"x" * 100_000 for _ in itertools.count())
    started = time.monotonic()
    with pytest.raises(ProcessError, match="exit code 3"):
        run([sys.executable, "-c", "import sys; sys.exit(3)"], timeout=60, stdin_chunks=endless)
    assert time.monotonic() - started < 10
