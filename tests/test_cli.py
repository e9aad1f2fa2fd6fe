"""The CLI as users meet it: one clear line on bad input, exit codes, no traceback, no output file left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "assetprep"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def good_mp4(gen) -> Path:
    return gen("good.mp4", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=2", "-f", "lavfi",
               "-i", "sine=d=2", "-c:v", "libx264", "-c:a", "aac")  # fmt: skip


def bad_inputs(tmp_path: Path, good_mp4: Path) -> dict[str, Path]:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    truncated = tmp_path / "truncated.mp4"  # moov at the end, cut off: unreadable
    data = good_mp4.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {"missing": tmp_path / "nope.mp4", "empty": empty, "text": text, "truncated": truncated}


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated"])
@pytest.mark.parametrize("command", ["video", "audio"])
def test_bad_input_files(tmp_path, good_mp4, kind, command):
    src = bad_inputs(tmp_path, good_mp4)[kind]
    out = tmp_path / ("o.mp4" if command == "video" else "o.wav")
    proc = cli("normalize", command, str(src), "-o", str(out))
    assert_one_line_error(proc, str(src))
    assert not out.exists() and not list(tmp_path.glob(".*.part"))


def test_missing_stream(tmp_path, gen):
    tone = gen("tone.wav", "-f", "lavfi", "-i", "sine=d=4")
    assert_one_line_error(cli("normalize", "video", str(tone), "-o", str(tmp_path / "o.mp4")), "no video stream")
    silent = gen("silent.mp4", "-f", "lavfi", "-i", "testsrc2=size=64x64:d=1", "-c:v", "libx264")
    assert_one_line_error(cli("normalize", "audio", str(silent), "-o", str(tmp_path / "o.wav")), "no audio stream")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_output_folder_missing_or_unwritable(tmp_path, good_mp4):
    proc = cli("normalize", "video", str(good_mp4), "-o", str(tmp_path / "no" / "o.mp4"))
    assert_one_line_error(proc, "output folder does not exist", str(tmp_path / "no"))
    if os.geteuid() == 0:
        locked = Path("/sys")  # root ignores permission bits; sysfs refuses new files even to root
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
    proc = cli("normalize", "video", str(good_mp4), "-o", str(locked / "o.mp4"))
    assert_one_line_error(proc, str(locked))
    assert not (locked / "o.mp4").exists()


def test_unknown_preset_and_typo_preset(tmp_path, good_mp4):
    proc = cli("normalize", "video", str(good_mp4), "-o", str(tmp_path / "o.mp4"), "--preset", "background-4k")
    assert_one_line_error(proc, "unknown preset 'background-4k'", "background-1080p")
    typo = tmp_path / "mine.toml"
    typo.write_text('kind = "video"\nwidht = 1280\nheight = 720\nfps = 30\n')
    proc = cli("normalize", "video", str(good_mp4), "-o", str(tmp_path / "o.mp4"), "--preset", str(typo))
    assert_one_line_error(proc, str(typo), "widht: unknown key")
    assert not (tmp_path / "o.mp4").exists()


def test_usage_error_exits_2(good_mp4, tmp_path):
    proc = cli("normalize", "video", str(good_mp4), "-o", str(tmp_path / "o.mp4"), "--fit", "zoom")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_json_results(tmp_path, good_mp4):
    proc = cli("normalize", "video", str(good_mp4), "-o", str(tmp_path / "o.mp4"), "--preset", "background-720p",
               "--keep-audio", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["path_taken"] == "encode" and result["output"] == str(tmp_path / "o.mp4")
    assert result["facts"]["video"]["width"] == 1280 and result["facts"]["video"]["frames"] == 60
    proc = cli("normalize", "audio", str(good_mp4), "-o", str(tmp_path / "o.mp3"), "--loudness", "-20", "--json")
    result = json.loads(proc.stdout)
    assert result["facts"]["audio"] == {"codec": "mp3", "sample_rate": 44100, "channels": 1}
    assert abs(result["loudness"]["integrated"] + 20) <= 1


def test_presets_commands():
    proc = cli("presets", "list", "--json")
    names = [p["name"] for p in json.loads(proc.stdout)["presets"]]
    assert names == ["audio-mp3", "audio-wav", "background-1080p", "background-720p"]
    proc = cli("presets", "show", "background-720p")
    assert json.loads(proc.stdout)["width"] == 1280


def test_missing_ffmpeg_is_one_line(tmp_path, good_mp4):
    env = {**os.environ, "FFPROBE": str(tmp_path / "no-ffprobe")}
    proc = subprocess.run([*CLI, "normalize", "video", str(good_mp4), "-o", str(tmp_path / "o.mp4")],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert_one_line_error(proc, "FFPROBE=")


def test_console_script_and_version():
    script = shutil.which("assetprep") or str(Path(sys.executable).parent / "assetprep")
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("assetprep 0.")


def test_probe_command_prints_the_facts(gen):
    clip = gen(
        "probe.mp4", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=1", "-c:v", "libx264", "-pix_fmt", "yuv420p"
    )
    proc = cli("probe", str(clip), "--count-frames", "--json")
    assert proc.returncode == 0, proc.stderr
    video = json.loads(proc.stdout)["video_streams"][0]
    assert (video["width"], video["height"], video["frames"]) == (320, 240, 25)


def test_a_script_file_that_is_not_utf8_is_one_line_before_anything_runs(tmp_path):
    bad = tmp_path / "script.txt"
    bad.write_bytes(b"Hi Jos\xe9")  # cp1252, as Windows editors save "ANSI"
    run = subprocess.run([sys.executable, "-m", "assetprep", "publish", "--replica", "r90bbd427f71", "--script-file",
                          str(bad), "-o", str(tmp_path / "o.mp4")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TAVUS_API_BASE_URL": "http://127.0.0.1:9/v2"})  # fmt: skip
    assert run.returncode == 1 and "is not UTF-8 text (line 1: byte 0xe9 at offset 6)" in run.stderr
    assert "Traceback" not in run.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["script.txt"]


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_script_file_that_is_no_regular_file_is_one_line_not_a_wait(tmp_path, kind):
    """A FIFO blocked the open (until a writer came: never), /dev/zero was read until memory ran out."""
    named = {"fifo": tmp_path / "script.txt", "device": Path("/dev/zero"), "folder": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(named)
    env = {**os.environ, "TAVUS_API_BASE_URL": "http://127.0.0.1:9/v2"}
    try:
        run = subprocess.run([*CLI, "publish", "--replica", "r90bbd427f71", "--script-file", str(named), "-o",
                              str(tmp_path / "o.mp4")], capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    finally:
        if kind == "fifo":
            os.close(os.open(named, os.O_RDWR | os.O_NONBLOCK))  # frees a reader blocked on it (the old code)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"cannot read --script-file {named}: not a regular file (a FIFO, a device or a folder)" in run.stderr


def test_a_run_or_batch_id_that_would_leave_its_folder_is_one_line(tmp_path):
    (tmp_path / "m.csv").write_text("script\nHi\n")
    for args, what, bad in (
        (["batch", "m.csv", "--replica", "r90bbd427f71", "--dry-run", "--batch-id", "../../escape"], "batch_id",
         "../../escape"),
        (["publish", "--replica", "r90bbd427f71", "--script", "Hi", "--run-id", "a/b", "-o", "v.mp4"], "run_id", "a/b"),
    ):  # fmt: skip
        proc = cli(*args, cwd=tmp_path)
        assert_one_line_error(proc, f"{what}: letters, digits", f"got {bad!r}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]  # nothing made


def test_ctrl_c_during_record_is_one_line_and_leaves_no_part(tmp_path):
    import signal
    import time

    page = tmp_path / "page.html"
    page.write_text("<html><body style='background:#0a0'><h1>long recording</h1></body></html>")
    out = tmp_path / "r.mp4"
    proc = subprocess.Popen([*CLI, "record", str(page), "-o", str(out), "--duration", "120", "--preset",
                             "background-720p"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    end = time.monotonic() + 60
    while time.monotonic() < end and not list(tmp_path.glob(".*.part*")):
        time.sleep(0.1)  # frames are being written
    assert list(tmp_path.glob(".*.part*")), "the recording never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert err.strip() == "interrupted; no partial output was kept (rerun the same command to continue)", err
    assert not out.exists() and list(tmp_path.glob(".*.part*")) == []


def test_an_interrupt_inside_the_making_of_the_part_file_leaves_no_part(tmp_path, monkeypatch):
    """Ctrl-C is raised wherever the main thread is: once inside Path.touch(), after the part file existed, it left
    an empty part behind (a full test run on a loaded machine: the test above found it)."""
    from assetprep._files import atomic_output

    real_touch = Path.touch

    def touch_then_interrupted(self: Path, *args: object, **kwargs: object) -> None:
        real_touch(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "touch", touch_then_interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "r.mp4", suffixes=(".mp4",)):
        pass
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_the_command_is_still_starting_is_one_line():
    import signal
    import time

    def catches_sigterm(pid: int) -> bool:  # the command's own handlers are installed (Python's own leave SIGTERM)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
        return False

    proc = subprocess.Popen([*CLI, "probe", "nothing.mp4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 30
    while time.monotonic() < end and proc.poll() is None and not catches_sigterm(proc.pid):
        time.sleep(0.002)
    # Its libraries are still importing (pydantic's compiled core is not loaded yet): before the command handled
    # signals from its first line, this window gave a KeyboardInterrupt traceback.
    assert "pydantic_core" not in Path(f"/proc/{proc.pid}/maps").read_text()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in err, err
    assert err.strip() == "interrupted; no partial output was kept (rerun the same command to continue)"


def test_sandbox_serve_prints_lines_a_shell_can_paste(tmp_path):
    """It printed no export lines (s3 serve does) and its key line was wrapped at the terminal's width; the key
    itself stays off the screen (read from its file by the pasted line)."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "sandbox dir"  # a space: the pasted line quotes the path
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAVUS_", "ASSETPREP_"))}
    proc = subprocess.Popen([sys.executable, "-m", "assetprep", "sandbox", "serve", "--port", str(port), "--data-dir",
                             str(data)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
    try:
        lines = [proc.stdout.readline() for _ in range(5)]
        assert lines[-1] == "Ctrl-C to stop.\n", lines
        exports = [line for line in lines if line.startswith("export ")]
        assert [line.split("=")[0] for line in exports] == [
            "export TAVUS_API_BASE_URL", "export TAVUS_API_KEY", "export ASSETPREP_REPLICA_ID"]  # fmt: skip
        key = (data / "api_key").read_text().strip()
        assert key not in "".join(lines) and f"export TAVUS_API_BASE_URL=http://127.0.0.1:{port}\n" in exports
        # Pasted into a shell, the lines reach this sandbox with its key.
        script = "".join(exports) + f'exec "{sys.executable}" -m assetprep replicas list --json'
        listed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert "r90bbd427f71" in [r["replica_id"] for r in json.loads(listed.stdout)["data"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_help_imports_no_media_storage_or_model_code():
    """`assetprep --help` took 0.77 s, most of it importing normalize, presets, probe and pydantic it never uses."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "assetprep", "--help"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and "Usage" in proc.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "assetprep.cli" in imported
    assert not imported & {"assetprep.normalize", "assetprep.presets", "assetprep.probe", "assetprep.upload",
                           "boto3", "pydantic", "ffmpeg", "rich.progress"}  # fmt: skip
