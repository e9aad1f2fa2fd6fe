"""Benchmark: assetprep record (exact 720p30, exact 1080p30, fast) vs Playwright's own record_video (the baseline).

All on examples/page.html (continuously animated, so every frame should differ from the last). For each it prints
wall time / video duration and the bad frames found by decoding: missing frames (count below fps x duration) and
duplicated frames (a frame identical to the one before). Playwright's recorder needs its own ffmpeg build, which cannot
be downloaded here: for this benchmark only, a temp PLAYWRIGHT_BROWSERS_PATH links ffmpeg-<rev>/ffmpeg-linux to the
OS ffmpeg. Usage: python scripts/bench_record.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
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
    args = parser.parse_args()
    s = args.seconds
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for label, opts in (
            ("assetprep exact 1280x720@30", RecordOptions(preset="background-720p", duration=s, scroll="smooth")),
            ("assetprep exact 1920x1080@30", RecordOptions(preset="background-1080p", duration=s, scroll="smooth")),
            (
                "assetprep fast 1280x720@30",
                RecordOptions(preset="background-720p", duration=s, scroll="smooth", mode="fast"),
            ),
        ):
            out = tmp / f"{len(rows)}.mp4"
            started = time.perf_counter()
            record(PAGE, out, opts)
            elapsed = time.perf_counter() - started
            frames, dups = frame_stats(out)
            missing = max(0, round(s * 30) - frames)
            # fast mode pans a still: only scroll moves, and a held scroll position would repeat frames
            rows.append((label, elapsed, frames, missing, dups))
        elapsed, webm = playwright_baseline(s, tmp)
        frames, dups = frame_stats(webm)
        rows.append(("playwright record_video (baseline)", elapsed, frames, max(0, round(s * 25) - frames), dups))
    print(f"{'recorder':<36} {'wall/duration':>13} {'frames':>7} {'missing':>8} {'duplicated':>11}")
    for label, elapsed, frames, missing, dups in rows:
        print(f"{label:<36} {elapsed / s:>12.2f}x {frames:>7} {missing:>8} {dups:>11}")
    base = rows[-1][1]
    for label, elapsed, *_ in rows[:-1]:
        print(f"{label}: {elapsed / base:.2f}x the baseline's wall time")


if __name__ == "__main__":
    main()
