"""assetprep publish end to end: real SeaweedFS, the sandbox over HTTP, real ffmpeg and Chromium; kills and reruns."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _media import TEST_BUCKET as BUCKET
from _media import frame_rgb, pixel

from assetprep.errors import OutcomeUnknownError, VideoFailedError
from assetprep.probe import probe
from assetprep.publish import PublishOptions, PublishSettings, publish, run_id_for
from assetprep.sandbox import DEFAULT_REPLICA, LocalSandbox
from assetprep.tavus import TavusClient


@pytest.fixture
def world(own_sandboxes, s3_client, tmp_path):
    """start(**sandbox options) → (sandbox, run(options) -> result, env for the CLI); servers stopped by PID."""

    def start(**options):
        sb, env = own_sandboxes(tmp_path / "runs", **options)
        settings = PublishSettings(runs_dir=tmp_path / "runs", bucket=BUCKET)

        def run(**fields):
            client = TavusClient(api_key=sb.api_key, base_url=sb.base_url, timeout=20)
            opts = PublishOptions(**{"replica_id": DEFAULT_REPLICA, "poll_interval": 0.2, "deadline": 120, **fields})
            return publish(opts, client=client, s3_client=s3_client, settings=settings)

        return sb, run, env

    return start


def posts(sb: LocalSandbox) -> list[dict]:
    return [c for c in sb.calls() if c["method"] == "POST" and c["path"] == "/v2/videos"]


def videos(sb: LocalSandbox) -> list:
    with TavusClient(api_key=sb.api_key, base_url=sb.base_url) as c:
        return list(c.list_videos())


@pytest.fixture(scope="module")
def red_clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips") / "red.mov"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=0xE01010:s=960x540:r=25:d=2",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out)], check=True, timeout=60)  # fmt: skip
    return out


def is_red(p):
    return p[0] > 180 and p[1] < 70 and p[2] < 70


def test_clip_background_script_and_rerun_is_free(world, red_clip, tmp_path):
    sb, run, _ = world()
    out = tmp_path / "final.mp4"
    first = run(script="A clip background, normalized and uploaded.", background=str(red_clip),
                background_preset="background-720p", output=out)  # fmt: skip
    info = probe(out)
    assert info.video.codec == "h264" and (info.video.width, info.video.height) == (1280, 720)
    assert is_red(pixel(frame_rgb(out, 75, 1280, 720), 1280, 100, 100))  # 2.5 s: the 2 s clip looped
    again = run(script="A clip background, normalized and uploaded.", background=str(red_clip),
                background_preset="background-720p", output=out)  # fmt: skip
    assert again.video_id == first.video_id and {"background", "upload", "submit", "download"} <= set(again.skipped)
    assert len(posts(sb)) == 1
    # Presigned URLs that would expire before the deadline are issued again before anything uses them.
    journal = tmp_path / "runs" / first.run_id / "journal.json"
    data = json.loads(journal.read_text())
    data["upload"]["expires_at"] = time.time() + 30
    journal.write_text(json.dumps(data))
    third = run(script="A clip background, normalized and uploaded.", background=str(red_clip),
                background_preset="background-720p", output=out)  # fmt: skip
    assert "upload" not in third.skipped
    assert json.loads(journal.read_text())["upload"]["expires_at"] > time.time() + 3600


def test_audio_input_sets_the_length(world, tmp_path):
    _sb, run, _ = world()
    voice = tmp_path / "voice.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=300:d=4.2", "-c:a", "aac", str(voice)],
                   check=True, timeout=60)  # fmt: skip
    result = run(audio=voice, output=tmp_path / "a.mp4")
    assert abs(probe(tmp_path / "a.mp4").duration - 4.2) < 0.15
    assert result.status == "ready"


def test_website_background_local_and_via_tavus(world, site, tmp_path):
    _sb, run, _ = world()
    local = run(script="Recorded here.", background=f"{site}/short.html", background_seconds=1,
                background_preset="background-720p", scroll="none", output=tmp_path / "l.mp4")  # fmt: skip
    via = run(script="Recorded by Tavus.", background=f"{site}/short.html", background_via="tavus",
              output=tmp_path / "t.mp4")  # fmt: skip
    for path in (local.output, via.output):
        r, g, b = pixel(frame_rgb(path, 10, 1280, 720), 1280, 600, 300)
        assert r > 170 and g > 170 and b < 60, (path, r, g, b)
    assert "background" in local.timings and "background" not in via.timings and "upload" not in via.timings


def test_block_private_networks_keeps_an_internal_page_out(world, site, s3_client, tmp_path):
    sb, _, env = world()
    out = tmp_path / "v.mp4"
    run = subprocess.run([sys.executable, "-m", "assetprep", "publish", "--replica", DEFAULT_REPLICA, "--script", "Hi.", "--background",
                          f"{site}/red.html", "--background-seconds", "1", "--block-private-networks", "-o", str(out),
                          "--poll", "0.2", "--prefix", "guarded"], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 1 and "blocked request to a private address" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and not out.exists()
    assert posts(sb) == [] and s3_client.list_objects_v2(Bucket=BUCKET, Prefix="guarded/").get("KeyCount") == 0


def test_a_hung_background_site_fails_at_page_timeout_and_the_run_id_ignores_it(world, s3_client, tmp_path):
    """publish had no --page-timeout: a background site that accepts and never answers held it for the recorder's
    60 s. The timeout is how long to wait, not what is made: the same command with another one is the same run."""
    sb, _, env = world()
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # connections are made and never answered
    out = tmp_path / "v.mp4"
    url = f"http://127.0.0.1:{hung.getsockname()[1]}/"
    t0 = time.monotonic()
    try:
        run = subprocess.run([sys.executable, "-m", "assetprep", "publish", "--replica", DEFAULT_REPLICA, "--script",
                              "Hi.", "--background", url, "--page-timeout", "3", "-o", str(out), "--prefix", "hung"],
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        hung.close()
    assert run.returncode == 1 and "no page came within the timeout" in run.stderr, run.stderr
    assert time.monotonic() - t0 < 40 and "Traceback" not in run.stderr and not out.exists()
    assert posts(sb) == [] and s3_client.list_objects_v2(Bucket=BUCKET, Prefix="hung/").get("KeyCount") == 0
    same = {"replica_id": DEFAULT_REPLICA, "script": "Hi.", "background": url}
    assert run_id_for(PublishOptions(**same, page_timeout=3)) == run_id_for(PublishOptions(**same))


def test_an_option_that_does_not_apply_keeps_the_run_and_ids_of_earlier_runs_stay(tmp_path):
    """--bucket added to a --composite-locally run (nothing uploaded) gave a new run id: the page was recorded
    again and another video made."""
    import hashlib
    import json

    from assetprep.publish import _NOT_IN_RUN_ID

    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    local = {"replica_id": DEFAULT_REPLICA, "script": "Hi.", "background": "https://example.com/",
             "composite_locally": True}  # fmt: skip
    assert run_id_for(PublishOptions(**local, bucket="b", prefix="p")) == run_id_for(PublishOptions(**local))
    assert run_id_for(PublishOptions(**local, layout="full")) != run_id_for(PublishOptions(**local))
    plain = {"replica_id": DEFAULT_REPLICA, "script": "Hi."}
    assert run_id_for(PublishOptions(**plain, scroll="none", layout="full")) == run_id_for(PublishOptions(**plain))
    spoken = {"replica_id": DEFAULT_REPLICA, "audio": audio}  # the audio is uploaded: its bucket is part of the run
    assert run_id_for(PublishOptions(**spoken, bucket="b")) != run_id_for(PublishOptions(**spoken))
    # A run that never gave such an option keeps the id it had before this rule.
    for fields in (local, plain, {**plain, "background": "https://example.com/", "bucket": "b", "scroll": "none"}):
        options = PublishOptions(**fields)
        before = json.dumps(options.model_dump(mode="json", exclude=_NOT_IN_RUN_ID), sort_keys=True).encode()
        assert run_id_for(options) == hashlib.sha256(before).hexdigest()[:12]


def test_what_the_recording_warns_of_is_shown(world, site, tmp_path):
    """publish dropped the recording's warnings: a page with nothing to scroll (or one recorded before it finished
    loading) gave no word."""
    sb, _, env = world()
    run = subprocess.run([sys.executable, "-m", "assetprep", "publish", "--replica", DEFAULT_REPLICA, "--script", "Hi.",
                          "--background", f"{site}/short.html", "--background-seconds", "1", "--scroll", "smooth",
                          "-o", str(tmp_path / "v.mp4"), "--poll", "0.2"], env=env, capture_output=True, text=True,
                         timeout=180)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"background {site}/short.html: the page is not taller than the viewport" in run.stderr, run.stderr
    assert len(posts(sb)) == 1


def test_composite_locally_puts_the_replica_layer_on_the_background(world, red_clip, tmp_path):
    sb, run, _ = world()
    result = run(script="Fast mode, but with my background.", background=str(red_clip), composite_locally=True,
                 background_preset="background-720p", output=tmp_path / "c.mp4")  # fmt: skip
    frame = frame_rgb(result.output, 20, 1280, 720)
    assert is_red(pixel(frame, 1280, 100, 100)) and is_red(pixel(frame, 1280, 700, 380))  # transparent: background
    r, g, b = pixel(frame, 1280, 960, 560)  # the layer's opaque panel, scaled into the bottom-right bubble
    assert b > 120 and r < 90, (r, g, b)
    with TavusClient(api_key=sb.api_key, base_url=sb.base_url) as c:
        record = c.get_video(result.video_id)
    assert record.download_url.endswith(".webm")


def test_callback_mode(world, tmp_path):
    sb, run, _ = world()
    result = run(script="Tell me when it is done.", listen="127.0.0.1:0", poll_interval=30, output=tmp_path / "cb.mp4")
    callbacks = [c for c in sb.calls() if c["method"] == "CALLBACK"]
    assert result.status == "ready" and [c["status"] for c in callbacks] == [200]
    assert result.timings["wait"] < 20  # woken by the callback, not by the 30 s poll


def test_dropped_create_is_reconciled_on_rerun(world, tmp_path):
    sb, run, _ = world(drop_connection_after_create=1)
    with pytest.raises(OutcomeUnknownError):
        run(script="Lost answer.", output=tmp_path / "r.mp4")
    result = run(script="Lost answer.", output=tmp_path / "r.mp4")
    assert len(posts(sb)) == 1 and len(videos(sb)) == 1 and videos(sb)[0].video_id == result.video_id


def test_failed_video_needs_retry_failed(world, tmp_path):
    sb, run, _ = world(fail_render_rate=0.5, seed=9)  # the seed fails the first render, passes the second
    with pytest.raises(VideoFailedError, match="An error occurred while generating this request"):
        run(script="Fails once.", output=tmp_path / "f.mp4")
    with pytest.raises(VideoFailedError, match="--retry-failed"):
        run(script="Fails once.", output=tmp_path / "f.mp4")
    result = run(script="Fails once.", output=tmp_path / "f.mp4", retry_failed=True)
    assert result.video_name.endswith("-retry1") and len(posts(sb)) == 2
    journal = json.loads((result.run_dir / "journal.json").read_text())
    assert journal["submit"]["history"][0]["failure"].startswith("An error occurred while generating")


def test_an_unknown_replica_or_a_missing_bucket_is_found_before_the_background_is_made(world, red_clip, tmp_path):
    sb, _, env = world()
    cases = [
        (env, "r0000000000", "replica 'r0000000000' not found at"),
        ({**env, "ASSETPREP_BUCKET": "no-such-bucket-x"}, DEFAULT_REPLICA, "bucket 'no-such-bucket-x' does not exist"),
    ]  # fmt: skip
    for case_env, replica, said in cases:
        proc = subprocess.run([sys.executable, "-m", "assetprep", "publish", "--replica", replica, "--script", "Hi.",
                               "--background", str(red_clip), "-o", str(tmp_path / "v.mp4")], env=case_env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 1 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    made = list((tmp_path / "runs").rglob("background*.mp4"))
    assert made == [] and posts(sb) == [] and not (tmp_path / "v.mp4").exists()  # no clip normalized, no video


def _cli_publish(env, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "assetprep", "publish", "--replica", DEFAULT_REPLICA, "--script",
                             "Killed and resumed.", "--poll", "0.2", "-o", str(out), "--json", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.parametrize("kill_when", ["after-upload", "after-post", "during-wait", "during-download"])
def test_kill_9_and_rerun_gives_one_video(world, red_clip, tmp_path, kill_when):
    """kill -9 at each point, rerun the same command: one POST, one video, the right file, nothing partial."""
    sb, _, env = world(speed=4, drop_download_after=60_000 if kill_when == "during-download" else 0)
    out = tmp_path / "k.mp4"
    runs = tmp_path / "runs"
    extra = ("--background", str(red_clip), "--background-seconds", "2")
    if kill_when in ("after-upload", "after-post"):  # exact points: the process kills itself there
        proc = _cli_publish({**env, "ASSETPREP_CRASH_AT": kill_when}, out, *extra)
        proc.communicate(timeout=180)
        assert proc.returncode == -signal.SIGKILL
        assert len(posts(sb)) == (0 if kill_when == "after-upload" else 1)
    else:
        proc = _cli_publish(env, out, *extra)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and proc.poll() is None:
                journals = list(runs.glob("*/journal.json"))
                data = json.loads(journals[0].read_text()) if journals else {}
                if kill_when == "during-wait" and data.get("submit", {}).get("video_id"):
                    break
                if kill_when == "during-download" and list(runs.glob("*/.tavus.mp4.*.part")):
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "publish finished before the kill point"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.communicate(timeout=10)
    assert not out.exists()
    again = _cli_publish(env, out, *extra)
    stdout, stderr = again.communicate(timeout=180)
    assert again.returncode == 0, stderr
    result = json.loads(stdout)
    assert len(posts(sb)) == 1 and [v.video_id for v in videos(sb)] == [result["video_id"]]
    assert {"background", "upload"} <= set(result["skipped"])  # prepared and uploaded once
    journal = json.loads((Path(result["run_dir"]) / "journal.json").read_text())
    assert journal["submit"].get("reconciled", False) == (kill_when == "after-post")
    assert probe(out).video is not None and not list(tmp_path.glob(".*.part"))
    assert is_red(pixel(frame_rgb(out, 15, 1280, 720), 1280, 100, 100))  # the clip is the downloaded background


def test_config_file_and_step_lines(world, tmp_path):
    """assetprep.toml supplies replica_id, bucket, runs_dir and poll; env beats the file; a typo is one clear error."""
    sb, _, env = world()
    work = tmp_path / "work"
    work.mkdir()
    (work / "assetprep.toml").write_text(f'replica_id = "{DEFAULT_REPLICA}"\nbucket = "no-such-bucket"\n'
                                         f'poll_interval = 0.2\nruns_dir = "{tmp_path / "cfg-runs"}"\n')  # fmt: skip
    env = {k: v for k, v in env.items() if k not in ("ASSETPREP_RUNS_DIR", "ASSETPREP_BUCKET")}
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=300:d=3.5", "-c:a", "aac",
                    str(work / "voice.m4a")], check=True, timeout=60)  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "assetprep", "publish", "--audio", "voice.m4a", "-o", "out.mp4"],
                         cwd=work, env={**env, "ASSETPREP_BUCKET": BUCKET},  # env beats the file's bucket
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert run.returncode == 0, run.stderr
    steps = [line.split()[0] for line in run.stderr.splitlines() if line.startswith("  ") and line.endswith(" s")]
    assert steps == ["audio", "upload", "submit", "wait", "download", "output"], run.stderr
    assert (tmp_path / "cfg-runs").is_dir() and probe(work / "out.mp4").audio is not None
    assert len(posts(sb)) == 1 and [v.replica_id for v in videos(sb)] == [DEFAULT_REPLICA]
    (work / "assetprep.toml").write_text('replica_id = "r1"\nbuckit = "x"\n')
    bad = subprocess.run([sys.executable, "-m", "assetprep", "publish", "--script", "x"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1 and "unknown key(s) buckit" in bad.stderr and "Traceback" not in bad.stderr


def test_doctor_names_what_to_fix(world, s3):
    _sb, _, env = world()
    ok = subprocess.run([sys.executable, "-m", "assetprep", "doctor", "--json"], env=env, capture_output=True,
                        text=True, timeout=60)  # fmt: skip
    checks = {c["name"]: c for c in json.loads(ok.stdout)["checks"]}
    assert ok.returncode == 0 and checks["s3"]["ok"] and "4 replicas" in checks["tavus"]["detail"]
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")  # advice only: this machine's own setting
    if thp.exists():
        mode = re.search(r"\[(\w+)\]", thp.read_text())[1]
        assert checks["hugepages"]["detail"] == f"transparent huge pages: {mode}" and checks["hugepages"]["ok"]
        assert bool(checks["hugepages"]["fix"]) == (mode != "always")
    bad = subprocess.run([sys.executable, "-m", "assetprep", "doctor"], env={**env, "TAVUS_API_KEY": "wrong-9"},
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1 and "FAIL tavus" in bad.stdout and "Invalid access token" in bad.stdout
    assert "wrong-9" not in bad.stdout + bad.stderr


def test_doctor_advises_huge_pages_only_when_they_are_not_always_on(tmp_path):
    from assetprep.doctor import huge_pages

    setting = tmp_path / "enabled"
    got = {}
    for text in ("always [madvise] never\n", "[always] madvise never\n", "always madvise [never]\n"):
        setting.write_text(text)
        got[text.strip()] = huge_pages(setting)
    assert got["always [madvise] never"].detail == "transparent huge pages: madvise"
    assert f"echo always > {setting}" in got["always [madvise] never"].fix
    assert got["[always] madvise never"].fix == "" and got["always madvise [never]"].fix
    assert all(c.ok for c in got.values()) and "not Linux" in huge_pages(tmp_path / "absent").detail


def test_a_background_written_without_its_scheme_is_the_website(tmp_path, monkeypatch):
    """`--background acme.com` was "not a URL, page, folder or video file"; a file or folder of that name wins."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "site.com").mkdir()
    got = [PublishOptions(replica_id="r", background=b).background
           for b in ("acme.com", "www.acme.co.uk/team?ref=1", "acme.com:8443/x", "site.com", "intro.mp4",
                     "münchen.de/über uns", "https://acme.com/about us")]  # fmt: skip
    assert got == ["https://acme.com", "https://www.acme.co.uk/team?ref=1", "https://acme.com:8443/x", "site.com",
                   "intro.mp4", "https://münchen.de/über%20uns", "https://acme.com/about%20us"]  # fmt: skip
