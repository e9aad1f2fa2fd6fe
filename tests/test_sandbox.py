"""The Tavus client against the sandbox over real HTTP on 127.0.0.1; inputs presigned by a real SeaweedFS."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from _media import frame_rgb, http_server, pixel

from assetprep.errors import (
    AuthenticationError,
    NotFoundError,
    OutcomeUnknownError,
    VideoFailedError,
    WaitTimeoutError,
)
from assetprep.probe import probe
from assetprep.sandbox import DEFAULT_REPLICA, LocalSandbox
from assetprep.sandbox.config import ERROR_SENTENCE
from assetprep.tavus import TavusClient
from assetprep.upload import S3Settings, make_s3_client, upload_and_presign

TRAINING, BROKEN = "rb17cf590e15", "re8e740a42"


@pytest.fixture(scope="module")
def bucket(s3):
    client = make_s3_client(S3Settings(endpoint_url=s3.endpoint_url, access_key_id=s3.access_key,
                                       secret_access_key=s3.secret_key))  # fmt: skip
    client.create_bucket(Bucket="sandbox-inputs")
    return "sandbox-inputs"


def presigned(s3, bucket, path, expires=3600) -> str:
    settings = S3Settings(endpoint_url=s3.endpoint_url, access_key_id=s3.access_key, secret_access_key=s3.secret_key)
    [obj] = upload_and_presign([path], bucket=bucket, settings=settings, expires_in=expires)
    return obj.url


@pytest.fixture
def own_sandbox(tmp_path):
    """A sandbox with its own data dir and fault options; stopped by PID after the test."""
    servers: list[LocalSandbox] = []

    def start(**options) -> tuple[LocalSandbox, TavusClient]:
        sb = LocalSandbox(tmp_path / f"sb{len(servers)}", **{"speed": 20, **options}).start()
        servers.append(sb)
        return sb, TavusClient(api_key=sb.api_key, base_url=sb.base_url, timeout=20, max_retries=8)

    yield start
    for sb in servers:
        sb.stop()


def test_audio_and_background_render(s3, bucket, gen, sandbox, tavus, tmp_path):
    speech = gen("speech.wav", "-f", "lavfi", "-i", "sine=f=440:d=4.5:sample_rate=48000", "-ac", "1")
    red = gen(
        "red.mp4", "-f", "lavfi", "-i", "color=c=0xE01010:s=1280x720:r=30:d=2", "-c:v", "libx264", "-pix_fmt", "yuv420p"
    )
    video = tavus.create_video(replica_id=DEFAULT_REPLICA, audio_url=presigned(s3, bucket, speech),
                               background_source_url=presigned(s3, bucket, red), video_name="bg-test")  # fmt: skip
    assert video.status == "queued" and video.hosted_url.endswith(video.video_id)
    seen: list[float] = []
    ready = tavus.wait(video.video_id, 90, poll_interval=0.2, on_progress=lambda p: seen.append(p.done))
    assert ready.status == "ready" and ready.stream_url.endswith(".m3u8") and ready.still_image_thumbnail_url
    assert seen[-1] == 100 and seen == sorted(seen)
    out = tavus.download(ready, tmp_path / "out.mp4")
    info = probe(out)
    assert abs(info.duration - 4.5) < 0.1  # the speech decides the length; the 2 s background loops
    assert info.video.codec == "h264" and (info.video.width, info.video.height) == (1280, 720)
    frame = frame_rgb(out, 100, 1280, 720)  # 3.3 s: past the end of the background, so it looped
    r, g, b = pixel(frame, 1280, 100, 100)
    assert r > 180 and g < 60 and b < 60, (r, g, b)  # background visible
    r, g, b = pixel(frame, 1280, 1200, 345)
    assert b > 120 and r < 80, (r, g, b)  # the replica panel (0x2B4C9B) at the bottom right
    hosted = httpx.get(ready.hosted_url, timeout=10).text
    assert "<video" in hosted and ready.download_url in hosted


def test_script_becomes_speech_with_captions(tavus, tmp_path):
    script = "Welcome to the sandbox. This sentence is spoken and captioned at the bottom of the frame."
    video = tavus.create_video(replica_id=DEFAULT_REPLICA, script=script)
    ready = tavus.wait(video.video_id, 90, poll_interval=0.2)
    assert ready.data == {"script": script}
    out = tavus.download(ready.video_id, tmp_path / "s.mp4")
    info = probe(out)
    assert info.audio is not None and info.duration > 3
    frame = frame_rgb(out, 30, 1280, 720)
    row = [pixel(frame, 1280, x, 655) for x in range(200, 1080)]
    assert any(sum(p) > 600 for p in row) and any(sum(p) < 90 for p in row)  # white caption text on a dark box


def test_fast_transparent_is_webm_with_alpha(tavus, tmp_path):
    video = tavus.create_video(replica_id=DEFAULT_REPLICA, script="Only the replica layer, please.", fast=True,
                               transparent_background=True)  # fmt: skip
    ready = tavus.wait(video.video_id, 90, poll_interval=0.2)
    assert ready.download_url.endswith(".webm") and ready.stream_url is None and ready.still_image_thumbnail_url is None
    out = tavus.download(ready, tmp_path / "t.webm")
    rgba = subprocess.run(["ffmpeg", "-v", "error", "-c:v", "libvpx-vp9", "-i", str(out), "-frames:v", "1", "-f", "rawvideo",
                           "-pix_fmt", "rgba", "-"], capture_output=True, check=True, timeout=60).stdout  # fmt: skip
    alpha = lambda x, y: rgba[(y * 1280 + x) * 4 + 3]  # noqa: E731
    assert alpha(20, 20) == 0 and alpha(1270, 710) == 0  # transparent outside the replica
    assert alpha(400, 120) == 255 and alpha(880, 600) == 255  # opaque panel


def test_wrong_key_is_401_without_leaking(sandbox):
    with (
        TavusClient(api_key="wrong-key-777", base_url=sandbox.base_url) as client,
        pytest.raises(AuthenticationError) as err,
    ):
        client.get_video("0123456789")
    assert err.value.status_code == 401 and "Invalid access token" in str(err.value)
    assert "wrong-key-777" not in str(err.value)
    body = httpx.get(f"{sandbox.base_url}/v2/videos", timeout=5).json()
    assert body == {"message": "Invalid access token"}


def test_unknown_ids_are_400_with_documented_message(sandbox, tavus):
    r = httpx.get(f"{sandbox.base_url}/v2/videos/ffffffffff", headers={"x-api-key": sandbox.api_key}, timeout=5)
    assert (r.status_code, r.json()) == (400, {"error": "Invalid video_id"})
    r = httpx.post(f"{sandbox.base_url}/v2/videos", headers={"x-api-key": sandbox.api_key}, timeout=5,
                   json={"replica_id": "rnope", "script": "hi"})  # fmt: skip
    assert (r.status_code, r.json()) == (400, {"error": "Invalid replica_id"})
    r = httpx.post(f"{sandbox.base_url}/v2/videos", headers={"x-api-key": sandbox.api_key}, timeout=5,
                   json={"replica_id": DEFAULT_REPLICA, "script": "hi", "transparent_background": True})  # fmt: skip
    assert r.status_code == 400 and "fast" in r.json()["error"]
    with pytest.raises(NotFoundError):
        tavus.get_video("ffffffffff")


def test_expired_audio_url_ends_in_error(s3, bucket, gen, tavus):
    speech = gen("speech.wav", "-f", "lavfi", "-i", "sine=f=440:d=4.5:sample_rate=48000", "-ac", "1")
    presigned(s3, bucket, speech)  # uploaded; now sign a URL that is already expired when the sandbox fetches it
    client = make_s3_client(S3Settings(endpoint_url=s3.endpoint_url, access_key_id=s3.access_key,
                                       secret_access_key=s3.secret_key))  # fmt: skip
    key = next(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"] if o["Key"].endswith("speech.wav"))
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=1)
    time.sleep(2.2)
    video = tavus.create_video(replica_id=DEFAULT_REPLICA, audio_url=url)
    with pytest.raises(VideoFailedError) as err:
        tavus.wait(video.video_id, 60, poll_interval=0.2)
    assert err.value.video.status_details == "audio_file_download_link"
    assert "403" in str(err.value) and "expired" in str(err.value)
    assert "X-Amz-Signature" not in str(err.value)


def test_short_audio_is_refused_like_tavus(s3, bucket, gen, tavus):
    short = gen("short.wav", "-f", "lavfi", "-i", "sine=d=1.5", "-ac", "1")
    video = tavus.create_video(replica_id=DEFAULT_REPLICA, audio_url=presigned(s3, bucket, short))
    with pytest.raises(VideoFailedError, match="audio_file_min_duration"):
        tavus.wait(video.video_id, 60, poll_interval=0.2)


def test_wait_raises_at_its_deadline(tavus):
    video = tavus.create_video(replica_id=TRAINING, script="stays queued while the replica trains")
    start = time.monotonic()
    with pytest.raises(WaitTimeoutError, match="still queued"):
        tavus.wait(video.video_id, 1.5, poll_interval=0.3)
    assert 1.4 < time.monotonic() - start < 4
    assert tavus.get_video(video.video_id).status_details == "replica_in_training"


def test_rate_limit_storm_is_ridden_out(own_sandbox):
    sb, client = own_sandbox(rate_limit=4.0)  # 4 requests/s, 1 s of burst
    start = time.monotonic()
    for _ in range(16):
        assert client.list_replicas()
    calls = sb.calls()
    limited = [c for c in calls if c["status"] == 429]
    assert limited, "the storm never hit the limit: the test would prove nothing"
    assert len([c for c in calls if c["status"] == 200 and c["path"] == "/v2/replicas"]) == 16
    assert time.monotonic() - start < 30


def test_dropped_create_is_outcome_unknown_and_one_video_exists(own_sandbox):
    sb, client = own_sandbox(drop_connection_after_create=1)
    with pytest.raises(OutcomeUnknownError, match="may or may not"):
        client.create_video(replica_id=TRAINING, script="hello", video_name="run-abc-1")
    posts = [c for c in sb.calls() if c["method"] == "POST"]
    assert len(posts) == 1  # never resent
    found = client.find_videos_by_name("run-abc-1")
    assert len(found) == 1 and len(list(client.list_videos())) == 1


def test_503_on_create_is_retried(own_sandbox):
    sb, client = own_sandbox(fail_create_rate=0.6, seed=3)
    videos = [client.create_video(replica_id=TRAINING, script=f"n{i}") for i in range(4)]
    posts = [c["status"] for c in sb.calls() if c["method"] == "POST"]
    assert 503 in posts and posts.count(200) == 4
    assert {v.video_id for v in client.list_videos()} == {v.video_id for v in videos}


def test_download_resumes_after_a_drop(own_sandbox, tmp_path):
    sb, client = own_sandbox(drop_download_after=150_000)
    video = client.create_video(
        replica_id=DEFAULT_REPLICA, script="A video long enough to be cut in the middle of its download."
    )
    ready = client.wait(video.video_id, 90, poll_interval=0.2)
    on_disk = sb.data_dir / "files" / video.video_id / "video.mp4"
    assert on_disk.stat().st_size > 150_000
    out = client.download(ready, tmp_path / "d.mp4")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(on_disk.read_bytes()).digest()
    assert not list(tmp_path.glob(".*.part"))
    r = httpx.get(ready.download_url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert r.status_code == 206 and r.content == on_disk.read_bytes()[10:20]


def test_render_failure_and_callbacks(own_sandbox):
    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200 if len(received) > 1 else 500)  # the first delivery fails: retried
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = http_server(Receiver)
    server = receiver.server
    try:
        sb, client = own_sandbox(fail_render_rate=1.0)
        url = f"http://127.0.0.1:{server.server_port}/hook/secret-token"
        video = client.create_video(replica_id=DEFAULT_REPLICA, script="this render fails", callback_url=url)
        with pytest.raises(VideoFailedError, match="An error occurred while generating this request"):
            client.wait(video.video_id, 60, poll_interval=0.2)
        deadline = time.monotonic() + 15
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        receiver.close()
    assert len(received) == 2 and received[0] == {**received[1], "updated_at": received[0]["updated_at"]}
    record = received[1]
    assert record["video_id"] == video.video_id and record["status"] == "error"
    assert record["status_details"] == ERROR_SENTENCE  # the words of Tavus's callback example
    assert record["error_details"] == "render failed (injected by sandbox --fail-render-rate)"
    assert {"created_at", "data", "download_url", "generation_progress", "hosted_url", "replica_id",
            "stream_url", "updated_at", "video_name"} <= set(record)  # fmt: skip
    assert len(record["created_at"]) == 26  # 2024-08-28 15:27:40.824457
    callbacks = [c for c in sb.calls() if c["method"] == "CALLBACK"]
    assert [c["status"] for c in callbacks] == [500, 200] and "secret-token" in callbacks[0]["path"]


def test_list_pages_restart_rename_delete(own_sandbox):
    sb, client = own_sandbox()
    ids = {client.create_video(replica_id=TRAINING, script=f"video {i}").video_id for i in range(5)}
    assert {v.video_id for v in client.list_videos(page_size=2)} == ids
    page = httpx.get(
        f"{sb.base_url}/v2/videos", params={"limit": 2, "page": 2}, headers={"x-api-key": sb.api_key}
    ).json()
    assert page["total_count"] == 5 and len(page["data"]) == 1
    sb.stop()
    sb.start()
    assert {v.video_id for v in client.list_videos(page_size=3)} == ids
    first, second, *_ = sorted(ids)
    client.rename_video(first, "renamed")
    assert client.get_video(first).video_name == "renamed"
    client.delete_video(first)
    assert client.get_video(first).status == "deleted"
    client.delete_video(second, hard=True)
    with pytest.raises(NotFoundError):
        client.get_video(second)


def test_restart_resumes_rendering(own_sandbox):
    sb, client = own_sandbox(speed=1, generate_seconds=30)
    video = client.create_video(replica_id=DEFAULT_REPLICA, script="interrupted render")
    deadline = time.monotonic() + 20
    while client.get_video(video.video_id).status != "generating" and time.monotonic() < deadline:
        time.sleep(0.2)
    sb.kill()
    restarted = LocalSandbox(sb.data_dir, speed=20).start()
    try:
        with TavusClient(api_key=restarted.api_key, base_url=restarted.base_url) as again:
            ready = again.wait(video.video_id, 60, poll_interval=0.2)
        assert ready.status == "ready" and ready.download_url.startswith(restarted.base_url)
    finally:
        restarted.stop()


def test_a_sandbox_restarted_on_another_port_links_its_old_videos_at_the_new_one(own_sandbox, tmp_path):
    """The demo's sandbox gets a new port when the old one is taken: its finished videos must stay downloadable."""
    sb, client = own_sandbox()
    video = client.wait(client.create_video(replica_id=DEFAULT_REPLICA, script="made before").video_id, 60,
                        poll_interval=0.2)  # fmt: skip
    first = client.download(video, tmp_path / "first.mp4").read_bytes()
    sb.stop()
    moved = LocalSandbox(sb.data_dir, speed=20).start()
    try:
        assert moved.base_url != sb.base_url
        with TavusClient(api_key=moved.api_key, base_url=moved.base_url) as again:
            record = again.get_video(video.video_id, verbose=True)
            listed = next(v for v in again.list_videos() if v.video_id == video.video_id)
            urls = [record.download_url, record.hosted_url, record.stream_url, listed.download_url, listed.hosted_url]
            assert all(u.startswith(moved.base_url + "/") for u in urls), urls
            assert again.download(record, tmp_path / "again.mp4").read_bytes() == first
        page = httpx.get(record.hosted_url, timeout=10).text
        assert f'src="{moved.base_url}/files/' in page
    finally:
        moved.stop()


def test_cli_videos_and_errors(sandbox, tavus, tmp_path):
    env = {"TAVUS_API_KEY": sandbox.api_key, "TAVUS_API_BASE_URL": sandbox.base_url, "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "assetprep"]
    out = subprocess.run([*cli, "videos", "create", "--replica", DEFAULT_REPLICA, "--script", "From the command line.",
                          "--name", "cli-video", "--json"], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    vid = json.loads(out.stdout)["video_id"]
    out = subprocess.run([*cli, "videos", "wait", vid, "--deadline", "90s", "--poll", "0.2", "--json"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "ready", out.stderr
    out = subprocess.run([*cli, "videos", "download", vid, "-o", str(tmp_path / "c.mp4")], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and probe(tmp_path / "c.mp4").video is not None
    bad = subprocess.run([*cli, "videos", "list"], env={**env, "TAVUS_API_KEY": "nope-secret-55"}, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1 and "Invalid access token" in bad.stderr
    assert "Traceback" not in bad.stderr and "nope-secret-55" not in bad.stderr
    bad = subprocess.run([*cli, "videos", "create", "--replica", DEFAULT_REPLICA, "--script", "x", "--transparent"],
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1 and "only allowed with fast" in bad.stderr and "Traceback" not in bad.stderr


def test_background_url_is_recorded_by_the_sandbox(tavus, site, tmp_path):
    video = tavus.create_video(replica_id=DEFAULT_REPLICA, script="Recorded background.",
                               background_url=f"{site}/short.html", properties={"background_scroll": False})  # fmt: skip
    ready = tavus.wait(video.video_id, 120, poll_interval=0.3)
    out = tavus.download(ready, tmp_path / "bgurl.mp4")
    r, g, b = pixel(frame_rgb(out, 5, 1280, 720), 1280, 600, 300)
    assert r > 170 and g > 170 and b < 60, (r, g, b)  # the page's yellow behind the replica


def test_cli_hides_signatures_unless_asked_and_names_the_right_listing(s3, bucket, sandbox, gen, tmp_path):
    clip = gen("bg-small.mp4", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=1", "-pix_fmt", "yuv420p")
    url = presigned(s3, bucket, clip)
    assert "X-Amz-Signature=" in url
    env = {"TAVUS_API_KEY": sandbox.api_key, "TAVUS_API_BASE_URL": sandbox.base_url, "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "assetprep", "videos"]
    made = subprocess.run([*cli, "create", "--replica", TRAINING, "--script", "x", "--background-source-url", url,
                           "--json"], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    vid = json.loads(made.stdout)["video_id"]
    for args in (["list", "--json"], ["get", vid, "--json"], ["get", vid]):
        shown = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "X-Amz-Signature" not in shown.stdout + shown.stderr, args
    whole = subprocess.run([*cli, "get", vid, "--json", "--signed-urls"], env=env, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert json.loads(whole.stdout)["background_source_url"] == url
    bad = subprocess.run([*cli, "create", "--replica", "rnope0000", "--script", "x"], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1 and "assetprep replicas list" in bad.stderr and "Traceback" not in bad.stderr
