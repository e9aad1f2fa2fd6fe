"""Test helpers: make inputs with lavfi, measure outputs with ffprobe/ffmpeg (real tools, no mocks)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from assetprep._server import ThreadedServer

TEST_BUCKET = "assetprep-tests"  # created in the session's SeaweedFS by the s3_client fixture
FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"


def ffmpeg(*args: str, timeout: float = 120) -> None:
    subprocess.run([FFMPEG, "-v", "error", "-y", *args], check=True, timeout=timeout)


def streams(path: Path | str, kind: str = "v") -> list[dict]:
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-of", "json", "-count_packets", "-show_streams", "-select_streams", kind, str(path)],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    return json.loads(out)["streams"]


def decoded_frame_count(path: Path | str) -> int:
    """Frames as decoded (not the header's claim)."""
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames",
         "-of", "csv=p=0", str(path)], check=True, capture_output=True, timeout=120,
    ).stdout  # fmt: skip
    return int(out.strip())


def frame_rgb(path: Path | str, index: int, width: int, height: int) -> bytes:
    """The RGB24 bytes of one decoded frame, selected by index."""
    return subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-vf", f"select=eq(n\\,{index})", "-frames:v", "1",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True, timeout=60,
    ).stdout[: width * height * 3]  # fmt: skip


_ZSCALE_MATRIX = {"bt709": "709", "smpte170m": "170m", "bt470bg": "470bg", "bt2020nc": "2020_ncl"}


def frame_rgb_as_tagged(path: Path | str, index: int, width: int, height: int) -> bytes:
    """One frame as a player shows it: converted to RGB with the matrix and range the file is tagged with (zscale,
    which rounds exactly); untagged, as players guess: BT.709 from 720 lines up, else BT.601."""
    tags = streams(path)[0]
    matrix = _ZSCALE_MATRIX.get(tags.get("color_space", ""), "709" if int(tags["height"]) >= 720 else "470bg")
    rin = "full" if tags.get("color_range") == "pc" else "limited"
    return subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-vf",
         f"select=eq(n\\,{index}),zscale=min={matrix}:rin={rin},format=gbrp,format=rgb24", "-frames:v", "1",
         "-f", "rawvideo", "-"], check=True, capture_output=True, timeout=60,
    ).stdout[: width * height * 3]  # fmt: skip


def pixel(frame: bytes, width: int, x: int, y: int) -> tuple[int, int, int]:
    i = (y * width + x) * 3
    return frame[i], frame[i + 1], frame[i + 2]


def integrated_loudness(path: Path | str) -> float:
    """EBU R128 integrated loudness measured by ffmpeg's ebur128 filter (independent of loudnorm)."""
    err = subprocess.run(
        [FFMPEG, "-hide_banner", "-nostats", "-i", str(path), "-map", "0:a:0", "-af", "ebur128", "-f", "null", "-"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stderr  # fmt: skip
    summary = err[err.rindex("Summary:") :]
    return float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1))


def loudness_and_peak(path: Path | str) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) measured by ffmpeg's ebur128 filter on the file as written."""
    err = subprocess.run(
        [FFMPEG, "-hide_banner", "-nostats", "-i", str(path), "-map", "0:a:0", "-af", "ebur128=peak=true", "-f", "null",
         "-"], capture_output=True, text=True, timeout=300, check=True,
    ).stderr  # fmt: skip
    summary = err[err.rindex("Summary:") :]
    peak = re.search(r"Peak:\s+(-?[\d.]+|-inf) dBFS", summary).group(1)
    return float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1)), float(peak)


def first_packet_times(path: Path | str) -> dict[str, float]:
    """pts_time of the first packet of each stream kind ('video', 'audio')."""
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-of", "json", "-show_entries", "stream=codec_type,start_time", str(path)],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    return {s["codec_type"]: float(s["start_time"]) for s in json.loads(out)["streams"]}


def http_server(handler: Any) -> ThreadedServer:
    """A threaded HTTP server on 127.0.0.1 (`with http_server(h) as server:`), shut down and joined at the end."""
    import http.server

    return ThreadedServer(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))
