"""What the sandbox does with a request's inputs: fetch them like Tavus would, speak scripts, render with ffmpeg.

The result is a clearly placeholder "replica": a coloured panel with the replica's name and a waveform that moves with
the audio, over the background (looped/cut to the speech length), with the audio and, for scripts, captions.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg
import httpx

from .. import _process
from .._urls import redact_url, s3_error_reason
from ..errors import AssetprepError
from ..normalize import mp4_options
from ..probe import probe
from ..progress import ProgressCallback
from ..tavus import AUDIO_EXTENSIONS
from .config import ERROR_SENTENCE

WIDTH, HEIGHT, FPS = 1280, 720, 30
AUDIO_MIN_S, AUDIO_MAX_S, AUDIO_MAX_BYTES = 3.0, 600.0, 750 * 1024 * 1024
PANEL_COLOR = "0x2B4C9B"
# Where the replica sits: a bubble at the bottom right over a background, centred when it is full screen.
BUBBLE = (880, 330, 360, 360)
CENTRE = (390, 110, 500, 500)
_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)


class RenderFailure(Exception):
    """Ends a video in `error` with these status_details / error_details (the words Tavus uses)."""

    def __init__(self, status_details: str, error_details: str) -> None:
        super().__init__(error_details)
        self.status_details = status_details
        self.error_details = error_details


def fetch(url: str, dest: Path, *, what: str, status_details: str, max_bytes: int, timeout: float = 120.0) -> Path:
    """Download an input over HTTP the way Tavus would: no credentials, redirects followed, size capped."""
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as resp:
            if resp.status_code != 200:
                reason = s3_error_reason(resp.read()[:4096].decode("utf-8", "replace"))
                raise RenderFailure(
                    status_details,
                    f"{what} {redact_url(url)} could not be downloaded: HTTP {resp.status_code}"
                    + (f" ({reason})" if reason else ""),
                )
            size = 0
            with open(dest, "wb") as f:
                for chunk in resp.iter_bytes(1 << 20):
                    size += len(chunk)
                    if size > max_bytes:
                        raise RenderFailure(
                            "audio_file_max_size" if what == "audio_url" else status_details,
                            f"{what} is larger than {max_bytes // (1024 * 1024)} MB",
                        )
                    f.write(chunk)
    except httpx.HTTPError as exc:
        raise RenderFailure(status_details, f"{what} {redact_url(url)} could not be downloaded: {exc}") from None
    return dest


def check_audio_input(path: Path, url: str) -> float:
    """Duration of a downloaded audio_url, after the checks Tavus makes (type, 3 s to 10 min)."""
    if not url.split("?", 1)[0].lower().endswith(AUDIO_EXTENSIONS):
        raise RenderFailure("audio_file_type", "audio_url must be a .wav or .mp3 file")
    try:
        info = probe(path)
    except AssetprepError as exc:
        raise RenderFailure("audio_file_type", f"audio_url is not a readable audio file: {exc.message}") from None
    if info.audio is None or not info.duration:
        raise RenderFailure("audio_file_type", "audio_url has no audio stream")
    if info.duration < AUDIO_MIN_S:
        raise RenderFailure("audio_file_min_duration", f"audio is {info.duration:.2f} s; at least 3 s is required")
    if info.duration > AUDIO_MAX_S:
        raise RenderFailure("audio_file_max_duration", f"audio is {info.duration:.0f} s; at most 10 minutes")
    return info.duration


def check_background_input(path: Path) -> None:
    try:
        info = probe(path)
    except AssetprepError as exc:
        raise RenderFailure(ERROR_SENTENCE, f"background_source_url is not a readable video: {exc.message}") from None
    if info.video is None:
        raise RenderFailure(ERROR_SENTENCE, "background_source_url has no video stream")
    if info.video.codec != "h264":
        raise RenderFailure(ERROR_SENTENCE, f"background_source_url must be H.264, got {info.video.codec}")


def speak(script: str, work: Path, *, timeout: float = 120.0) -> Path:
    """The script as speech: espeak-ng when installed, else a quiet tone bed of reading length."""
    text = work / "script.txt"
    text.write_text(script, encoding="utf-8")
    out = work / "speech.wav"
    if shutil.which("espeak-ng"):
        _process.run([_process.find_tool("espeak-ng"), "-v", "en-us", "-s", "165", "-w", out, "-f", text],
                     timeout=timeout, what="espeak-ng")  # fmt: skip
        return out
    seconds = max(2.0, len(script.split()) / 2.6)
    tone = ffmpeg.input(f"sine=f=220:d={seconds:.2f}:sample_rate=48000", f="lavfi").filter("volume", 0.2)
    _process.run_ffmpeg(ffmpeg.output(tone, str(out)), stage="tts", total=None, timeout=timeout, on_progress=None,
                        what="tone bed")  # fmt: skip
    return out


MAX_CAPTIONS = 300  # one drawtext each; ffmpeg-python compiles the chain recursively (~400 is its limit)


def caption_chunks(script: str, duration: float, *, words_per_chunk: int = 7) -> list[tuple[float, float, str]]:
    """(start, end, text) captions, timed in proportion to their length; long scripts get longer captions."""
    words = script.split()
    words_per_chunk = max(words_per_chunk, -(-len(words) // MAX_CAPTIONS))
    chunks = [" ".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]
    total = sum(len(c) + 1 for c in chunks) or 1
    out, t = [], 0.0
    for chunk in chunks:
        span = duration * (len(chunk) + 1) / total
        out.append((t, t + span, chunk))
        t += span
    return out


def _font() -> dict[str, str]:
    for path in _FONTS:
        if Path(path).exists():
            return {"fontfile": path}
    return {}  # fontconfig default


@dataclass(frozen=True)
class RenderJob:
    audio: Path
    duration: float
    replica_name: str
    background: Path | None = None
    script: str | None = None
    fast: bool = False
    transparent: bool = False


def render(job: RenderJob, out: Path, work: Path, *, on_progress: ProgressCallback | None, timeout: float) -> Path:
    """Render the placeholder video: .mp4 (H.264/AAC), or .webm VP9 with alpha for transparent."""
    _process.run_ffmpeg(
        render_graph(job, out, work), stage="render", total=job.duration, timeout=timeout, on_progress=on_progress,
        what="sandbox render",
    )  # fmt: skip
    return out


def render_graph(job: RenderJob, out: Path, work: Path) -> Any:
    """The ffmpeg graph of `render` (caption text files are written to `work`)."""
    font = _font()
    audio = ffmpeg.input(str(job.audio)).audio
    split = audio.filter_multi_output("asplit", 2)
    sound, visual = split[0], split[1]
    if job.transparent:
        # The format must be inside the lavfi source: a later format filter would add an opaque alpha plane.
        base = ffmpeg.input(f"color=c=black@0.0:s={WIDTH}x{HEIGHT}:r={FPS},format=yuva420p", f="lavfi")
    elif job.background is not None and not job.fast:
        base = (
            ffmpeg.input(str(job.background), stream_loop=-1)
            .video.filter("scale", WIDTH, HEIGHT, force_original_aspect_ratio="increase")
            .filter("crop", WIDTH, HEIGHT)
            .filter("setsar", 1)
            .filter("fps", FPS)
            .filter("format", "yuv420p")
        )
    else:
        base = ffmpeg.input(f"color=c=0x30343C:s={WIDTH}x{HEIGHT}:r={FPS}", f="lavfi").filter("format", "yuv420p")
    x, y, w, h = BUBBLE if (job.background is not None and not job.fast) else CENTRE
    # drawbox needs a YUV(A) input: on RGBA it crashes ffmpeg 5.1.
    layer = base.drawbox(x, y, w, h, color=f"{PANEL_COLOR}@1", t="fill", replace=1)
    layer = layer.drawtext(text="SANDBOX REPLICA", x=x + 20, y=y + 20, fontsize=22, fontcolor="white@0.8", **font)
    name = re.sub(r"[^\w .-]", "", job.replica_name)[:24] or "replica"
    layer = layer.drawtext(text=name, x=x + 20, y=y + 56, fontsize=40, fontcolor="white", **font)
    wave = visual.filter("showwaves", s=f"{w - 40}x{h // 3}", mode="cline", rate=FPS, colors="white")
    layer = ffmpeg.overlay(layer, wave, x=x + 20, y=y + h - h // 3 - 20, format="auto")
    if job.script:
        for i, (start, end, text) in enumerate(caption_chunks(job.script, job.duration)):
            path = work / f"caption{i}.txt"
            path.write_text(text.replace("%", "%%"), encoding="utf-8")
            layer = layer.drawtext(
                textfile=str(path), x="(w-text_w)/2", y=HEIGHT - 80, fontsize=34, fontcolor="white", box=1,
                boxcolor="black@0.6", boxborderw=10, enable=f"between(t,{start:.3f},{end:.3f})", **font,
            )  # fmt: skip
    common: dict[str, Any] = {"t": f"{job.duration:.3f}", "r": FPS}
    if job.transparent:
        layer = layer.filter("format", "yuva420p")
        opts = {"c:v": "libvpx-vp9", "pix_fmt": "yuva420p", "deadline": "realtime", "cpu-used": 8, "b:v": "1M",
                "c:a": "libopus", "b:a": "96k", "f": "webm"}  # fmt: skip
    else:
        # superfast: the cheapest x264 preset that still writes High profile (ultrafast drops to Constrained Baseline);
        # a placeholder render costs the sandbox ~40% less CPU than with veryfast.
        opts = {"c:v": "libx264", "preset": "superfast", "crf": 23, "pix_fmt": "yuv420p", "profile:v": "high",
                "c:a": "aac", "b:a": "128k", "ar": 48000, **mp4_options()}  # fmt: skip
    return ffmpeg.output(layer, sound, str(out), **common, **opts)


def extras(video: Path, folder: Path, *, timeout: float = 120.0) -> None:
    """HLS stream (stream_url) and thumbnails (still + gif), which Tavus gives when not fast."""
    hls = folder / "hls"
    hls.mkdir(exist_ok=True)
    ff = _process.find_tool("ffmpeg")
    for args in (
        ["-i", video, "-c", "copy", "-f", "hls", "-hls_time", "4", "-hls_playlist_type", "vod", hls / "index.m3u8"],
        ["-ss", "0.5", "-i", video, "-frames:v", "1", "-q:v", "3", folder / "thumbnail.jpg"],
        ["-t", "2", "-i", video, "-vf", "fps=8,scale=320:-2:flags=lanczos", folder / "thumbnail.gif"],
    ):
        _process.run([ff, "-hide_banner", "-nostdin", "-y", "-loglevel", "error", *args], timeout=timeout,
                     what="sandbox thumbnails")  # fmt: skip


def ensure_process_tools() -> None:
    """Fail at start-up, not per video, when ffmpeg is missing."""
    _process.find_tool("ffprobe")
    _process.run([_process.find_tool("ffmpeg"), "-version"], timeout=30, what="ffmpeg -version")
