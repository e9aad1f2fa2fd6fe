"""Demo: generate a phone-like clip and a recording, normalize both for Tavus, print where they are and their facts."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from assetprep import AssetprepError, normalize_audio, normalize_video
from assetprep._process import find_tool, run

OUT = Path(".assetprep/demo")


def make_inputs() -> tuple[Path, Path]:
    """A 4 s 25 fps 1000x562 clip in yuv444p, and a 16 kHz stereo m4a with speech-like tones."""
    clip, voice = OUT / "input-clip.mov", OUT / "input-voice.m4a"
    ffmpeg = find_tool("ffmpeg")
    if not clip.exists():
        run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1000x562:rate=25:duration=4",
             "-c:v", "libx264", "-pix_fmt", "yuv444p", str(clip)], timeout=120)  # fmt: skip
    if not voice.exists():
        run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", "sine=f=220:r=16000:d=6", "-f", "lavfi",
             "-i", "sine=f=330:r=16000:d=6", "-filter_complex", "[0][1]amerge,volume=0.1", "-ac", "2",
             "-c:a", "aac", str(voice)], timeout=120)  # fmt: skip
    return clip, voice


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        clip, voice = make_inputs()
        video = normalize_video(clip, OUT / "background.mp4", preset="background-720p")
        audio = normalize_audio(voice, OUT / "speech.wav")
    except AssetprepError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    for result in (video, audio):
        print(f"{result.output}: {result.path_taken}, {result.seconds:.1f} s")
        for key, value in result.info.summary().items():
            print(f"    {key}: {value}")
        if result.loudness:
            print(f"    loudness: {result.loudness}")
    print(f"demo finished in {time.monotonic() - started:.1f} s; outputs in {OUT.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
