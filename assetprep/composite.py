"""Local compositing: a transparent replica (.webm with alpha, from fast + transparent_background) over a background."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import ffmpeg

from . import _process
from ._files import atomic_output
from .errors import MediaError
from .normalize import mp4_options
from .probe import probe
from .progress import ProgressCallback

Layout = Literal["bubble-bottom-right", "left-third", "full"]


def composite(layer: Path, background: Path, output: Path, *, layout: Layout = "bubble-bottom-right",
              on_progress: ProgressCallback | None = None) -> Path:  # fmt: skip
    """Overlay a .webm with alpha (the replica) onto a background clip (looped), into an H.264/AAC .mp4."""
    info = probe(background)
    if info.video is None:
        raise MediaError(f"{background} has no video stream to composite onto")
    w, h = info.video.width, info.video.height
    seconds = probe(layer).duration or 0.0
    if seconds <= 0:
        raise MediaError(f"{layer} has no duration")
    fg = ffmpeg.input(str(layer), **{"c:v": "libvpx-vp9"})  # the native vp9 decoder drops the alpha plane
    bg = ffmpeg.input(str(background), stream_loop=-1).video.filter("fps", 30)
    if layout == "full":
        sprite, x, y = fg.video.filter("scale", w, h), 0, 0
    elif layout == "bubble-bottom-right":
        sprite, x, y = fg.video.filter("scale", w // 2, h // 2), w // 2, h // 2
    else:  # left-third: the replica large on the left, the background's right two thirds stay clear
        sprite, x, y = fg.video.filter("scale", w * 2 // 3, h * 2 // 3).filter("crop", w // 3, h * 2 // 3), 0, h // 3
    video = ffmpeg.overlay(bg, sprite, x=x, y=y, eof_action="endall").filter("format", "yuv420p")
    with atomic_output(output, inputs=(layer, background)) as tmp:
        _process.run_ffmpeg(
            ffmpeg.output(video, fg.audio, str(tmp), t=f"{seconds:.3f}", **{"c:v": "libx264", "preset": "veryfast",
                          "crf": 20, "c:a": "aac", "b:a": "160k", "ar": 48000, "color_range": "tv",
                          "colorspace": "bt709", "color_primaries": "bt709", "color_trc": "bt709", **mp4_options()}),
            stage="composite", total=seconds, timeout=300 + 20 * seconds, on_progress=on_progress,
            what="ffmpeg (composite)",
        )  # fmt: skip
    return output
