"""Benchmark: assetprep normalize vs the equivalent raw ffmpeg one-liner, and the remux path.

In one run, on the same generated 60 s 1080p clip (25 fps, so it must be re-encoded to the preset's 30 fps):
  (a) assetprep normalize video --preset background-1080p
  (b) the raw ffmpeg one-liner with the same settings (the baseline)
  (c) assetprep on an already-compliant input (the output of a)
Prints a/b (target <= 1.05) and c/b (target <= 0.05). Usage: python scripts/bench_normalize.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from assetprep import load_preset, normalize_video
from assetprep._process import find_tool


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    ffmpeg = find_tool("ffmpeg")
    p = load_preset("background-1080p")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = d / "input.mp4"
        subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size=1920x1080:rate=25:duration={args.seconds}", "-c:v", "libx264",
                        "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(src)], check=True)  # fmt: skip
        vf = (f"fps={p.fps},scale={p.width}:{p.height}:force_original_aspect_ratio=increase:out_range=tv,"
              f"crop={p.width}:{p.height},setsar=1,format=yuv420p")  # fmt: skip
        raw = [ffmpeg, "-v", "error", "-y", "-i", str(src), "-vf", vf, "-an", "-c:v", "libx264",
               "-preset", p.x264_preset, "-crf", str(p.crf), "-profile:v", p.profile, "-g", str(p.fps * 2),
               "-movflags", "+faststart", str(d / "raw.mp4")]  # fmt: skip
        b = timed(lambda: subprocess.run(raw, check=True))
        a = timed(lambda: normalize_video(src, d / "a.mp4", preset=p))
        c_result = []
        c = timed(lambda: c_result.append(normalize_video(d / "a.mp4", d / "c.mp4", preset=p)))
    print(f"input: {args.seconds} s 1920x1080 25 fps -> background-1080p (x264 {p.x264_preset}, crf {p.crf})")
    print(f"(b) raw ffmpeg one-liner   {b:7.2f} s  (baseline)")
    print(f"(a) assetprep normalize    {a:7.2f} s  a/b = {a / b:.3f}  (target <= 1.05)")
    print(f"(c) assetprep, compliant   {c:7.2f} s  c/b = {c / b:.3f}  (target <= 0.05, path: {c_result[0].path_taken})")


if __name__ == "__main__":
    main()
