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
