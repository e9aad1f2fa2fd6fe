"""A page's videos re-encoded so that every frame is a keyframe, for exact-mode recordings.

The recording's clock seeks each playing <video> once per frame, and a seek decodes from the last keyframe before
it. Hero videos have one every 2-10 s: a 1080p one (a keyframe every 8 s) made a 720p recording take 5.7x real
time, a 640x360 one 1.7x (scripts/bench_record.py). Re-encoded with only keyframes (at most the viewport's size and
the recording's frame rate, the same length) a seek decodes one frame. VP8, not H.264: x264's intra-only copy was
made twice as fast (20 s of 1080p became 720p in 3 s, VP8 in 6-7 s), but Chromium rendered the same H.264 copy
differently from one run to the next (2 code values, in 5 of 10 pairs of runs), and reruns must give the same bytes.

The original is fetched the way the browser would (its headers, through the private-network guard), re-encoded by
ffmpeg within a time budget, and served from a temporary file with byte ranges in answer to the browser's
requests for it. Anything this cannot do (too big, too long, transparent, not decodable, over budget) is left to
the browser, which loads and seeks the original as before.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ffmpeg

from . import _process
from ._fetch import fetch_media
from ._files import pid_folder, sweep_dead_folders
from ._server import byte_range
from .errors import AssetprepError

log = logging.getLogger("assetprep.record")

# A path ending like a video file; other media (audio, streams by MSE, URLs without such a suffix) are not touched.
VIDEO_URL = re.compile(r"^[^?#]*\.(mp4|m4v|webm|mov|ogv)([?#].*)?$", re.IGNORECASE)
MAX_SOURCE_BYTES = 300 * 1024 * 1024
MAX_SECONDS = 120.0  # of video: the re-encode is linear in it
MAX_OUTPUT_BYTES = 400 * 1024 * 1024
# VP8 intra re-encode throughput measured here (2 cores, source decode and scaling included): 20 s of 1080p H.264
# became 720p in 6-7 s. A copy that would take longer than the recording it speeds up is not made: a 1080p hero
# copied whole at 1080p made such a recording slower (3.30x real time against 3.03x with the original).
ENCODE_PIXELS_PER_SECOND = 80e6
# Bytes per answer to a range request. The body goes to the browser through Playwright's pipe (base64): a copy
# answered whole (30 MB for 20 s of 720p) took 5 s and slowed the capture from 26 to 11 fps.
_CHUNK = 2 * 1024 * 1024
_NOT_SENT = {"range", "host", "connection", "accept-encoding", "content-length", "if-range"}


class IntraVideos:
    """Answers the browser's requests for video files with all-keyframe copies (see the module's text).

    `proxy`: the guard's URL (None: direct); `size`: the largest (width, height) a copy needs (the viewport in device
    pixels); `budget`: seconds the page's videos may take to fetch and re-encode, in all (the browser waits);
    `recording`: seconds of video the recording makes (a copy estimated to take longer to make is not made)."""

    def __init__(self, folder: Path, *, proxy: str | None, size: tuple[int, int], fps: int, budget: float,
                 recording: float) -> None:  # fmt: skip
        self.folder, self.proxy, self.size, self.fps, self.budget = folder, proxy, size, fps, budget
        self.recording = recording
        self.copies: dict[str, Path | None] = {}  # URL -> its copy, or None when the original is used
        self.seconds = 0.0  # spent fetching and re-encoding, in all
        # Videos whose copy ran out of time (a busy machine, a slow server): they play from the original, so whether
        # a page gets its copy depends on timing, and reruns may differ (seen: a second recording beside a busy one).
        self.late: list[str] = []

    def handle(self, route: Any) -> None:
        request = route.request
        if request.resource_type != "media" or request.method != "GET":
            route.fallback()
            return
        url = request.url
        if url not in self.copies:
            started = time.monotonic()
            self.copies[url] = self._copy(url, request)
            self.seconds += time.monotonic() - started
        copy = self.copies[url]
        if copy is None:
            route.fallback()
            return
        size = copy.stat().st_size
        asked = byte_range(request.headers.get("range"), size)
        first, last = asked or (0, size - 1)
        if asked:  # a shorter range than asked, as servers may answer: the browser asks for more when it plays there
            last = min(last, first + _CHUNK - 1)
        if first > last:
            route.fulfill(status=416, headers={"Content-Range": f"bytes */{size}"}, body=b"")
            return
        with open(copy, "rb") as f:
            f.seek(first)
            body = f.read(last - first + 1)
        headers = {"Content-Type": "video/webm", "Accept-Ranges": "bytes", "Cache-Control": "no-store"}
        if asked:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        route.fulfill(status=206 if asked else 200, headers=headers, body=body)

    def _copy(self, url: str, request: Any) -> Path | None:
        deadline = time.monotonic() + self.budget - self.seconds  # the budget is for all of the page's videos
        copy = self._try_copy(url, request, deadline)
        if copy is None and deadline - time.monotonic() < 1:
            self.late.append(url)
        return copy

    def _try_copy(self, url: str, request: Any, deadline: float) -> Path | None:
        if deadline - time.monotonic() < 1:
            return None
        n = len(self.copies)
        source, copy = self.folder / f"source{n}", self.folder / f"intra{n}.webm"
        try:
            headers = {k: v for k, v in request.all_headers().items() if k.lower() not in _NOT_SENT}
            fetch_media(url, source, timeout=min(15.0, deadline - time.monotonic()), proxy=self.proxy,
                        headers=headers, max_bytes=MAX_SOURCE_BYTES, deadline=deadline - time.monotonic())  # fmt: skip
            return copy if self._encode(source, copy, deadline) else None
        except Exception as exc:  # the original is still there for the browser to load
            log.debug("video %s left as it is: %s", url, exc)
            return None
        finally:
            source.unlink(missing_ok=True)

    def _encode(self, source: Path, copy: Path, deadline: float) -> bool:
        from .probe import probe

        # The container's duration is enough here (the copy is made at the recording's rate, not the source's).
        info = probe(source, timeout=max(1.0, min(10.0, deadline - time.monotonic())), stream_duration=False)
        video = info.video
        if video is None or video.alpha or not info.duration or info.duration > MAX_SECONDS:
            return False  # no picture, transparent (the copy would not be), or too long to re-encode in time
        w, h = self.size
        shrink = min(1.0, w / max(1, video.width), h / max(1, video.height))
        work = video.width * video.height * shrink * shrink * self.fps * info.duration / ENCODE_PIXELS_PER_SECOND
        if work > self.recording:
            return False  # longer to make than the recording it would speed up
        stream = ffmpeg.input(str(source)).video.filter("fps", self.fps).filter(
            "scale", w=f"min(iw,{w})", h=f"min(ih,{h})", force_original_aspect_ratio="decrease",
            force_divisible_by=2,
        )  # fmt: skip
        # The source's colour tags, so the browser decodes the copy with the same matrix. An untagged HD source is
        # BT.709 to players; scaled down to SD size untagged, it could be taken as BT.601.
        tags = {"colorspace": video.color_space or ("bt709" if video.height >= 720 else None),
                "color_primaries": video.color_primaries, "color_trc": video.color_transfer}  # fmt: skip
        tags = {k: v for k, v in tags.items() if v and v not in ("unknown", "reserved")}
        # Every frame a keyframe, at VP8's fastest settings and a quality a background keeps. qmin 8, not 4: the bench
        # hero's copy 31% smaller (SSIM to the source 0.996 against 0.998, 48.9 dB), so its byte ranges, which go to
        # the browser through Playwright's pipe, cost less: 10 s at 720p 13.5 -> 12.7 s (3 interleaved pairs).
        out = ffmpeg.output(stream, str(copy), an=None, vcodec="libvpx", g=1, qmin=8, qmax=30, **{"b:v": "20M"},
                            deadline="realtime", **{"cpu-used": 16}, threads=2, f="webm", **tags)  # fmt: skip
        left = deadline - time.monotonic()
        if left < 1:
            return False
        try:
            _process.run_ffmpeg(out, stage="re-encode page video", total=info.duration, timeout=left, on_progress=None,
                                what="ffmpeg (page video)")  # fmt: skip
        except AssetprepError as exc:
            log.debug("page video not re-encoded: %s", exc)
            return False
        return 0 < copy.stat().st_size <= MAX_OUTPUT_BYTES


_PREFIX = "assetprep-videos-"


@contextlib.contextmanager
def intra_videos(*, proxy: str | None, size: tuple[int, int], fps: int, budget: float, recording: float) -> Any:
    # A recording killed with kill -9 left its copies; a minute's grace for a folder just made under a reused PID.
    sweep_dead_folders(Path(tempfile.gettempdir()), _PREFIX, older_than=60.0)
    folder = pid_folder(_PREFIX)
    try:
        yield IntraVideos(folder, proxy=proxy, size=size, fps=fps, budget=budget, recording=recording)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
