"""Benchmark: assetprep record (exact 720p30, exact 1080p30, fast) vs Playwright's own record_video (the baseline).

All on examples/page.html (continuously animated, so every frame should differ from the last). For each it prints
wall time / video duration and the bad frames found by decoding: missing frames (count below fps x duration) and
duplicated frames (a decoded frame identical to the one before; in fast mode a still is panned, so a frame may
legitimately repeat where the rounded scroll position holds at the turn). Playwright's recorder needs its own
ffmpeg build, which cannot be downloaded here: for this benchmark only, a temp PLAYWRIGHT_BROWSERS_PATH links
ffmpeg-<rev>/ffmpeg-linux to the OS ffmpeg. Usage: python scripts/bench_record.py [--seconds 5] [--long 30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from assetprep._process import find_tool
from assetprep.record import RecordOptions, find_chromium, record, serve_local

PAGE = Path(__file__).resolve().parent.parent / "examples" / "page.html"


def frame_stats(path: Path) -> tuple[int, int]:
    """(decoded frames, frames identical to their predecessor)."""
    out = subprocess.run([find_tool("ffmpeg"), "-v", "error", "-i", str(path), "-map", "0:v:0", "-f", "framemd5", "-"],
                         capture_output=True, text=True, check=True, timeout=600).stdout  # fmt: skip
    hashes = [line.rsplit(",", 1)[1].strip() for line in out.splitlines() if line and not line.startswith("#")]
    dups = sum(1 for a, b in itertools.pairwise(hashes) if a == b)
    return len(hashes), dups


def playwright_baseline(seconds: float, tmp: Path) -> tuple[float, Path]:
    import playwright

    browsers = json.loads((Path(playwright.__file__).parent / "driver/package/browsers.json").read_text())
    rev = next(b["revision"] for b in browsers["browsers"] if b["name"] == "ffmpeg")
    root = tmp / "pw-browsers"
    (root / f"ffmpeg-{rev}").mkdir(parents=True, exist_ok=True)
    link = root / f"ffmpeg-{rev}" / "ffmpeg-linux"
    if not link.exists():
        link.symlink_to(find_tool("ffmpeg"))
    os.environ["PLAYWRIGHT_BROWSERS_PATH"] = str(root)
    from playwright.sync_api import sync_playwright

    with serve_local(PAGE) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(pw))
        started = time.perf_counter()
        context = browser.new_context(viewport={"width": 1280, "height": 720}, record_video_dir=str(tmp / "pw"),
                                      record_video_size={"width": 1280, "height": 720})  # fmt: skip
        page = context.new_page()
        page.goto(url)
        page.wait_for_timeout(seconds * 1000)
        video = page.video
        context.close()
        elapsed = time.perf_counter() - started
        path = Path(video.path()) if video else None
        browser.close()
    assert path is not None
    return elapsed, path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--long", type=float, default=30.0, help="fast mode again at this length (0: skip)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per recorder; the median wall time is printed")
    args = parser.parse_args()
    s = args.seconds
    rows = []  # (label, wall, video seconds, frames, missing, duplicated, capture)

    def opts(preset: str, **kw: object) -> RecordOptions:
        return RecordOptions(preset=preset, duration=kw.pop("duration", s), scroll="smooth", **kw)  # type: ignore[arg-type]

    runs = [
        ("assetprep exact 1280x720@30", opts("background-720p")),
        ("assetprep exact 1920x1080@30", opts("background-1080p")),
        ("assetprep fast 1280x720@30", opts("background-720p", mode="fast")),
    ]
    if args.long:
        # A fixed ~0.9 s (Playwright driver, browser start, one full-page shot) weighs on a 5 s clip, not on a
        # background of realistic length.
        runs.append((f"assetprep fast 1280x720@30, {args.long:g} s",
                     opts("background-720p", duration=args.long, mode="fast")))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for label, options in runs:
            walls, bad = [], (0, 0, 0)
            for _ in range(args.repeat):
                out = tmp / f"{len(rows)}.mp4"
                started = time.perf_counter()
                result = record(PAGE, out, options)
                walls.append(time.perf_counter() - started)
                frames, dups = frame_stats(out)
                missing = max(0, round(options.duration * 30) - frames)
                bad = max(bad, (missing + dups, missing, dups))  # the worst run's bad frames
            rows.append((label, walls, options.duration, frames, bad[1], bad[2], result.capture))
        walls, bad = [], (0, 0, 0)
        for _ in range(args.repeat):
            elapsed, webm = playwright_baseline(s, tmp)
            walls.append(elapsed)
            frames, dups = frame_stats(webm)
            missing = max(0, round(s * 25) - frames)
            bad = max(bad, (missing + dups, missing, dups))
        rows.append(("playwright record_video (baseline)", walls, s, frames, bad[1], bad[2], "screencast"))
    print(f"median of {args.repeat} runs; frames of the last run, missing/duplicated of the worst")
    print(
        f"{'recorder':<38} {'wall/duration':>13} {'range':>13} {'frames':>7} {'missing':>8} {'duplicated':>11}  capture"
    )
    for label, walls, seconds, frames, missing, dups, capture in rows:
        span = f"{min(walls) / seconds:.2f}-{max(walls) / seconds:.2f}"
        print(f"{label:<38} {statistics.median(walls) / seconds:>12.2f}x {span:>13} {frames:>7} {missing:>8} "
              f"{dups:>11}  {capture}")  # fmt: skip
    base = statistics.median(rows[-1][1]) / s
    for label, walls, seconds, *_ in rows[:-1]:
        print(f"{label}: {statistics.median(walls) / seconds / base:.2f}x the baseline's wall time per second of video")


if __name__ == "__main__":
    main()
