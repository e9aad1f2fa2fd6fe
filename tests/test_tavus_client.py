"""Client-side rules of the Tavus API: every broken rule is refused before a single byte is sent."""

from __future__ import annotations

import httpx
import pytest

from assetprep.errors import ConfigError, InvalidRequestError
from assetprep.tavus import GenerateVideoRequest, TavusClient, Video, redact_url, resolve_base_url

SENT: list[httpx.Request] = []


def _refuse(request: httpx.Request) -> httpx.Response:
    SENT.append(request)
    return httpx.Response(500)


@pytest.fixture
def offline():
    SENT.clear()
    client = TavusClient(
        api_key="k-secret-123", base_url="https://tavusapi.com", transport=httpx.MockTransport(_refuse)
    )
    yield client
    assert SENT == [], "a request was sent although validation should have refused it"


AUDIO = "https://bucket.example.com/a/speech.wav?X-Amz-Signature=abc"
RULES = {
    "replica_id missing": ({"script": "hi"}, "replica_id"),
    "replica_id blank": ({"replica_id": "  ", "script": "hi"}, "replica_id"),
    "neither script nor audio": ({"replica_id": "r1"}, "exactly one of script or audio_url"),
    "both script and audio": ({"replica_id": "r1", "script": "hi", "audio_url": AUDIO}, "exactly one"),
    "audio not wav/mp3": ({"replica_id": "r1", "audio_url": "https://x.example.com/a.m4a"}, ".wav or .mp3"),
    "audio extension only in query": (
        {"replica_id": "r1", "audio_url": "https://x.example.com/a?f=x.wav"},
        ".wav or .mp3",
    ),
    "two backgrounds": (
        {
            "replica_id": "r1",
            "script": "hi",
            "background_url": "https://a.example.com",
            "background_source_url": "https://b.example.com/bg.mp4",
        },
        "at most one",
    ),
    "transparent without fast": (
        {"replica_id": "r1", "script": "hi", "transparent_background": True},
        "only allowed with fast",
    ),
    "non-http url": (
        {"replica_id": "r1", "script": "hi", "callback_url": "ftp://x.example.com/cb"},
        "callback_url must be an http(s) URL",
    ),
    "unknown field": ({"replica_id": "r1", "script": "hi", "backgroud_url": "https://a.example.com"}, "backgroud_url"),
    "bad scroll type": (
        {"replica_id": "r1", "script": "hi", "properties": {"background_scroll_type": "fast"}},
        "background_scroll_type",
    ),
}


@pytest.mark.parametrize("name", RULES)
def test_rule_refused_before_sending(offline, name):
    fields, needle = RULES[name]
    with pytest.raises(InvalidRequestError) as err:
        offline.create_video(fields)
    assert needle in str(err.value)
    assert "abc" not in str(err.value)  # a presign signature never reaches a message


def test_presigned_wav_and_mp3_pass():
    for url in (AUDIO, "https://x.example.com/v/voice.MP3?X-Amz-Expires=60"):
        GenerateVideoRequest(replica_id="r1", audio_url=url)


def test_real_tavus_refuses_local_urls(offline):
    for url in (
        "http://127.0.0.1:9000/b/a.wav",
        "http://localhost/a.wav",
        "http://10.1.2.3/a.wav",
        "http://[::1]/a.wav",
    ):
        with pytest.raises(InvalidRequestError, match="Tavus cannot fetch") as err:
            offline.create_video(replica_id="r1", audio_url=url + "?X-Amz-Signature=abc")
        assert "abc" not in str(err.value)


def test_sandbox_base_url_accepts_local_urls():
    seen = []
    client = TavusClient(api_key="k", base_url="http://127.0.0.1:1",
                         transport=httpx.MockTransport(lambda r: (seen.append(r), httpx.Response(200, json={"video_id": "v1"}))[1]))  # fmt: skip
    assert client.create_video(replica_id="r1", audio_url="http://127.0.0.1:9/a.wav").video_id == "v1"
    assert len(seen) == 1


def test_warnings():
    req = GenerateVideoRequest(
        replica_id="r1", script="hi", fast=True, background_source_url="https://b.example.com/bg.mp4"
    )
    assert any("drops" in w or "dropped" in w for w in req.warnings())
    assert GenerateVideoRequest(replica_id="r1", script="hi").warnings() == []


def test_api_key_never_in_repr_and_env_defaults(monkeypatch):
    monkeypatch.setenv("TAVUS_API_KEY", "env-secret-9")
    monkeypatch.delenv("TAVUS_API_BASE_URL", raising=False)
    monkeypatch.setenv("TAVUS_PUBLIC_API_BASE_URL", "https://example.tavusapi.com/v2/")
    client = TavusClient()
    assert client.base_url == "https://example.tavusapi.com"
    assert "env-secret-9" not in repr(client)
    monkeypatch.delenv("TAVUS_API_KEY")
    with pytest.raises(ConfigError, match="TAVUS_API_KEY"):
        TavusClient()


def test_base_url_forms(monkeypatch):
    monkeypatch.delenv("TAVUS_API_BASE_URL", raising=False)
    monkeypatch.delenv("TAVUS_PUBLIC_API_BASE_URL", raising=False)
    assert resolve_base_url() == "https://tavusapi.com"
    assert resolve_base_url("http://127.0.0.1:8700/v2") == "http://127.0.0.1:8700"


def test_progress_and_redaction():
    assert Video(video_id="v", generation_progress="37/100").progress == pytest.approx(0.37)
    assert Video(video_id="v", generation_progress="n/a").progress is None
    assert redact_url("https://user:pw@h.example.com:8443/p/a.wav?sig=1") == "https://h.example.com:8443/p/a.wav?…"
    assert redact_url("http://user:pw@h.example.com:99999/a.wav?sig=1") == "http://h.example.com:99999/a.wav?…"


def test_invalid_video_id_refused(offline):
    with pytest.raises(InvalidRequestError):
        offline.get_video("../replicas")


def test_a_download_returns_the_probe_it_checked_with_and_keeps_nothing_that_is_not_a_video(gen, tmp_path):
    """Batch trusts the download's probe (it no longer probes each video again): the probe must be of the file at
    its final path, and a body that is not a video (a file host's error page with 200, audio only) must fail the
    download and leave nothing at the path, nor a part file beside it."""
    import functools
    import http.server

    from _media import http_server

    from assetprep.errors import DownloadError

    host = tmp_path / "host"
    host.mkdir()
    clip = gen("dl.mp4", "-f", "lavfi", "-i", "testsrc2=s=320x180:r=25:d=2", "-c:v", "libx264", "-pix_fmt", "yuv420p")
    (host / "good.mp4").write_bytes(clip.read_bytes())
    (host / "page.mp4").write_bytes(b"<html><body>Service unavailable</body></html>" * 40)
    audio = gen("dl.m4a", "-f", "lavfi", "-i", "sine=f=440:d=2", "-c:a", "aac")
    (host / "audio.mp4").write_bytes(audio.read_bytes())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    out = tmp_path / "out"
    out.mkdir()
    with (
        http_server(functools.partial(Quiet, directory=str(host))) as server,
        TavusClient(api_key="k", base_url=f"http://127.0.0.1:{server.server_port}", max_retries=0) as client,
    ):
        url = f"http://127.0.0.1:{server.server_port}"
        info = client.download_probed(Video(video_id="v1", status="ready", download_url=f"{url}/good.mp4"),
                                      out / "good.mp4")  # fmt: skip
        assert info.path == str(out / "good.mp4") and info.size == clip.stat().st_size
        assert info.video and (info.video.width, info.video.height) == (320, 180) and abs(info.duration - 2) < 0.1
        assert (out / "good.mp4").read_bytes() == clip.read_bytes()
        for name, said in (("page.mp4", "is not a readable video"), ("audio.mp4", "has no video stream")):
            with pytest.raises(DownloadError, match=said):
                client.download(Video(video_id="v2", status="ready", download_url=f"{url}/{name}"), out / name)
    assert sorted(p.name for p in out.iterdir()) == ["good.mp4"]
