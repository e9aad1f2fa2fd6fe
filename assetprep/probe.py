"""Media facts: ffprobe JSON turned into a typed model."""

from __future__ import annotations

import json
import os
import re
import struct
from fractions import Fraction
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from . import _process
from ._files import check_input_file
from .errors import MediaError, ProcessError, ProcessTimeoutError

PROBE_TIMEOUT = 60.0
_STILL_CODECS = {"png", "mjpeg", "webp", "bmp", "tiff", "jpegls", "jpeg2000", "qoi"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VideoStream(_Model):
    index: int
    codec: str
    profile: str | None = None
    pix_fmt: str | None = None
    coded_width: int
    coded_height: int
    width: int  # as displayed, after rotation
    height: int
    rotation: int = 0  # degrees, from the display matrix (or the legacy 'rotate' tag)
    r_frame_rate: str = "0/0"
    avg_frame_rate: str = "0/0"
    sample_aspect_ratio: str | None = None
    color_range: str | None = None
    color_transfer: str | None = None
    color_primaries: str | None = None
    color_space: str | None = None
    start_time: float | None = None
    duration: float | None = None
    frames: int | None = None  # from the header, or counted when asked
    alpha: bool = False  # a transparency channel: in the pixel format, or WebM's side channel (alpha_mode)

    @property
    def fps(self) -> Fraction | None:
        return _fraction(self.avg_frame_rate) or _fraction(self.r_frame_rate)

    @property
    def is_cfr(self) -> bool:
        r, avg = _fraction(self.r_frame_rate), _fraction(self.avg_frame_rate)
        return r is not None and r == avg

    @property
    def is_hdr(self) -> bool:
        return self.color_transfer in {"arib-std-b67", "smpte2084"}

    @property
    def square_pixels(self) -> bool:
        return self.sample_aspect_ratio in (None, "1:1", "0:1")


class AudioStream(_Model):
    index: int
    codec: str
    profile: str | None = None
    sample_rate: int
    channels: int
    channel_layout: str | None = None
    start_time: float | None = None
    duration: float | None = None
    bit_rate: int | None = None


class MediaInfo(_Model):
    path: str
    format_name: str
    duration: float | None  # container duration; None when the header has none (browser recordings)
    size: int
    bit_rate: int | None = None
    video_streams: tuple[VideoStream, ...] = ()
    audio_streams: tuple[AudioStream, ...] = ()
    other_streams: int = 0  # data/subtitle/attachment tracks
    tags: dict[str, str] = {}

    @property
    def video(self) -> VideoStream | None:
        return self.video_streams[0] if self.video_streams else None

    @property
    def audio(self) -> AudioStream | None:
        return self.audio_streams[0] if self.audio_streams else None

    def summary(self) -> dict[str, Any]:
        """A flat dict of the facts people look at first, for --json and the demo."""
        out: dict[str, Any] = {"format": self.format_name, "duration": self.duration, "size": self.size}
        if v := self.video:
            out["video"] = {
                "codec": v.codec, "profile": v.profile, "pix_fmt": v.pix_fmt, "width": v.width, "height": v.height,
                "fps": v.avg_frame_rate, "cfr": v.is_cfr, "frames": v.frames,
            }  # fmt: skip
        if a := self.audio:
            out["audio"] = {"codec": a.codec, "sample_rate": a.sample_rate, "channels": a.channels}
        return out


def _fraction(text: str | None) -> Fraction | None:
    if not text:
        return None
    num, _, den = text.partition("/")
    try:
        value = Fraction(int(num), int(den or 1))
    except (ValueError, ZeroDivisionError):
        return None
    return value or None


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def probe(
    path: str | os.PathLike[str], *, count_frames: bool = False, timeout: float = PROBE_TIMEOUT,
    stream_duration: bool = True,
) -> MediaInfo:  # fmt: skip
    """Probe a media file. With count_frames, the video frame count is counted from packets (no decode). Without
    stream_duration, a video stream whose container gives it no duration (WebM, MKV) keeps none when the file has
    one: finding it reads every packet, a second ffprobe (0.13-0.18 s for a 4 s hero video)."""
    p = check_input_file(path)
    args = [_process.find_tool("ffprobe"), "-v", "error", "-of", "json", "-show_format", "-show_streams"]
    if count_frames:
        args += ["-count_packets"]
    args += ["-i", str(p)]
    try:
        result = _process.run(args, timeout=timeout, what="ffprobe")
    except ProcessTimeoutError:
        raise
    except ProcessError as exc:
        reason = exc.stderr_tail[-1] if exc.stderr_tail else "unknown format"
        raise MediaError(
            f"not a media file ffmpeg can read: {p} ({reason.split(': ')[-1]})",
            hint="check that the file is a complete audio/video file",
        ) from None
    data = json.loads(result.stdout or b"{}")
    info = _parse(p, data)
    video = info.video
    no_duration = video is not None and video.duration is None and video.codec not in _STILL_CODECS  # mkv, webm
    if no_duration and (stream_duration or info.duration is None):
        info = _with_packet_duration(info, timeout)
    return info


def _parse(path: Path, data: dict[str, Any]) -> MediaInfo:
    fmt = data.get("format", {})
    videos: list[VideoStream] = []
    audios: list[AudioStream] = []
    other = 0
    for s in data.get("streams", []):
        kind = s.get("codec_type")
        if kind == "video" and not s.get("disposition", {}).get("attached_pic"):
            videos.append(_video_stream(s))
        elif kind == "audio":
            audios.append(
                AudioStream(
                    index=s["index"],
                    codec=s.get("codec_name", "unknown"),
                    profile=s.get("profile"),
                    sample_rate=_int(s.get("sample_rate")) or 0,
                    channels=_int(s.get("channels")) or 0,
                    channel_layout=s.get("channel_layout"),
                    start_time=_float(s.get("start_time")),
                    duration=_float(s.get("duration")),
                    bit_rate=_int(s.get("bit_rate")),
                )
            )
        else:
            other += 1
    tags = {str(k): str(v) for k, v in (fmt.get("tags") or {}).items()}
    if not videos and not audios:
        raise MediaError(f"no audio or video stream in {path}", hint="check that the file is a media file")
    return MediaInfo(
        path=str(path),
        format_name=fmt.get("format_name", "unknown"),
        duration=_float(fmt.get("duration")),
        size=_int(fmt.get("size")) or path.stat().st_size,
        bit_rate=_int(fmt.get("bit_rate")),
        video_streams=tuple(videos),
        audio_streams=tuple(audios),
        other_streams=other,
        tags=tags,
    )


def _video_stream(s: dict[str, Any]) -> VideoStream:
    rotation = 0
    for side in s.get("side_data_list", []) or []:
        if "rotation" in side:
            rotation = round(float(side["rotation"]))
    if not rotation and "rotate" in (s.get("tags") or {}):
        rotation = -int(s["tags"]["rotate"])  # the legacy tag counts clockwise, the matrix counter-clockwise
    rotation = ((rotation + 180) % 360) - 180
    w, h = _int(s.get("width")) or 0, _int(s.get("height")) or 0
    dw, dh = (h, w) if abs(rotation) == 90 else (w, h)
    frames = _int(s.get("nb_read_packets")) or _int(s.get("nb_frames"))
    return VideoStream(
        index=s["index"],
        codec=s.get("codec_name", "unknown"),
        profile=s.get("profile"),
        pix_fmt=s.get("pix_fmt"),
        coded_width=w,
        coded_height=h,
        width=dw,
        height=dh,
        rotation=rotation,
        r_frame_rate=s.get("r_frame_rate", "0/0"),
        avg_frame_rate=s.get("avg_frame_rate", "0/0"),
        sample_aspect_ratio=s.get("sample_aspect_ratio"),
        color_range=s.get("color_range"),
        color_transfer=s.get("color_transfer"),
        color_primaries=s.get("color_primaries"),
        color_space=s.get("color_space"),
        start_time=_float(s.get("start_time")),
        duration=_float(s.get("duration")),
        frames=frames,
        alpha=bool(re.match(r"(yuva|gbrap|ya\d|rgba|bgra|argb|abgr)", s.get("pix_fmt") or ""))
        or str((s.get("tags") or {}).get("alpha_mode", (s.get("tags") or {}).get("ALPHA_MODE"))) == "1",
    )


def _with_packet_duration(info: MediaInfo, timeout: float) -> MediaInfo:
    """Video streams without a duration (MKV, MediaRecorder WebM): take the end of the last video packet."""
    assert info.video is not None
    args = [
        _process.find_tool("ffprobe"), "-v", "error", "-select_streams", f"{info.video.index}",
        "-show_entries", "packet=pts_time,duration_time", "-of", "csv=p=0", "-i", info.path,
    ]  # fmt: skip
    result = _process.run(args, timeout=timeout, what="ffprobe")
    end = 0.0
    count = 0
    for line in result.stdout.decode().splitlines():
        pts, _, dur = line.partition(",")
        start = _float(pts)
        if start is None:
            continue
        count += 1
        end = max(end, start + (_float(dur) or 0.0))
    video = info.video.model_copy(update={"duration": end or None, "frames": info.video.frames or count or None})
    duration = info.duration if info.duration is not None else (end or None)
    return info.model_copy(update={"duration": duration, "video_streams": (video, *info.video_streams[1:])})


def mp4_box_order(path: str | os.PathLike[str]) -> list[str]:
    """Top-level box types of an MP4/MOV file, in file order (e.g. ['ftyp', 'moov', 'mdat'] for faststart)."""
    order: list[str] = []
    with open(path, "rb") as f:
        size_total = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + 8 <= size_total and len(order) < 64:
            f.seek(pos)
            size, kind = struct.unpack(">I4s", f.read(8))
            if size == 1:
                (size,) = struct.unpack(">Q", f.read(8))
            elif size == 0:
                size = size_total - pos
            order.append(kind.decode("latin-1"))
            if size < 8:
                break
            pos += size
    return order


def is_faststart(path: str | os.PathLike[str]) -> bool:
    """True when the moov box comes before mdat, so a player can start before the download ends."""
    order = mp4_box_order(path)
    return "moov" in order and "mdat" in order and order.index("moov") < order.index("mdat")
