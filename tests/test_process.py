from __future__ import annotations

import subprocess
import sys
import time

import pytest

from assetprep import OutputError, ProcessError, ProcessTimeoutError, ToolMissingError
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


def test_a_trailer_ffmpeg_could_not_write_is_a_failure_even_when_it_exits_0(tmp_path):
    """ffmpeg 5.1 (Debian 12's) exits 0 when only its trailer could not be written, as when the disk filled while
    +faststart moved the index: the recording then failed later with "not a media file ffmpeg can read: .bg.mp4….part"
    (seen with `record` on a full disk). The program here prints ffmpeg's lines and exits 0, as that ffmpeg did."""
    part = tmp_path / ".bg.mp4.4242-0a1b2c3d.part"

    def say(*lines: str) -> list[str]:
        return ["sh", "-c", 'for line in "$@"; do echo "$line" >&2; done; exit 0', "sh", *lines]

    with pytest.raises(OutputError) as full:
        run(say("av_interleaved_write_frame(): No space left on device",
                f"Error writing trailer of {part}: No space left on device"), timeout=30, what="ffmpeg")  # fmt: skip
    assert full.value.message == f"no space left on the disk of {tmp_path} (writing bg.mp4)"
    assert full.value.hint == "free space there, or write elsewhere, and run again"
    with pytest.raises(OutputError) as unnamed:
        run(say("av_interleaved_write_frame(): No space left on device"), timeout=30, what="ffmpeg")
    assert unnamed.value.message == "no space left on the disk ffmpeg writes to"
    with pytest.raises(OutputError, match="no space left on the disk of"):  # a user's quota (EDQUOT)
        run(say(f"Error closing file {part}: Disk quota exceeded"), timeout=30)
    with pytest.raises(ProcessError, match="Input/output error") as other:
        run(say(f"Error closing file {part}: Input/output error"), timeout=30)
    assert other.value.returncode == 1
    assert run(say("[mp4 @ 0x1] a warning that is not an error"), timeout=30).returncode == 0


@pytest.mark.parametrize("command", ["record", "normalize", "audio"])
def test_a_full_disk_is_named_once_with_no_partial_file(command, gen, tmp_path):
    """`record`, `normalize video` and `normalize audio` (whose passes write temp files of their own) onto a full
    disk (a tmpfs of 12 KB in the command's own mount namespace)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if command == "record":
        page = tmp_path / "page.html"
        page.write_text('<body style="margin:0"><canvas id="c" width="640" height="360"></canvas><script>'
                        "const g = c.getContext('2d'); (function draw(t) { for (let i = 0; i < 400; i++) {"
                        "g.fillStyle = `hsl(${(i * 37 + t) % 360},90%,50%)`; g.fillRect((i * 53) % 640, (i * 29) % 360,"
                        " 24, 24); } requestAnimationFrame(draw); })(0);</script></body>")  # fmt: skip
        args = ["record", str(page), "-o", str(disk / "bg.mp4"), "--duration", "2", "--preset", "background-720p"]
    elif command == "audio":
        speech = gen("speech.flac", "-f", "lavfi", "-i", "sine=f=440:d=3")
        args = ["normalize", "audio", str(speech), "-o", str(disk / "bg.wav")]
    else:
        clip = gen("clip.mp4", "-f", "lavfi", "-i", "testsrc2=s=640x360:r=30:d=2", "-pix_fmt", "yuv420p")
        args = ["normalize", "video", str(clip), "-o", str(disk / "bg.mp4"), "--preset", "background-720p"]
    script = 'mount -t tmpfs -o size=12k none "$1" && shift && "$@"; code=$?; ls -A "$0"; exit $code'
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, str(disk), str(disk), sys.executable, "-m",
                           "assetprep", *args], capture_output=True, text=True, timeout=180)  # fmt: skip
    assert done.returncode == 1, done.stderr
    name = "bg.wav" if command == "audio" else "bg.mp4"
    assert done.stderr.strip() == (f"error: no space left on the disk of {disk} (writing {name}) (free space there, "
                                   "or write elsewhere, and run again)"), done.stderr  # fmt: skip
    assert done.stdout == "", done.stdout  # `ls -A` of the full disk: no partial file is left
