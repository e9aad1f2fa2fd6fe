"""Benchmark: assetprep normalize vs the equivalent raw ffmpeg one-liner, the remux path, and (audio) ffmpeg-normalize.

In one run, on the same generated 60 s 1080p clip (25 fps, so it must be re-encoded to the preset's 30 fps):
  (a) assetprep normalize video --preset background-1080p
  (b) the raw ffmpeg one-liner with the same settings (the baseline)
  (c) assetprep on an already-compliant input (the output of a)
Prints a/b (target <= 1.05) and c/b (target <= 0.05).

Audio (--audio, or --audio-only): `assetprep normalize audio` vs ffmpeg-normalize 1.43 (installed into a throwaway
venv by this script) on real speech (../shared/media, 11 s) and the same speech looped to 60 s and 10 min, to .wav
and .mp3, target -16 LUFS / -1.5 dBTP mono; both as commands, interleaved, median of --rounds. Prints the ratio
(target <= 1.0) and each output's loudness and true peak measured independently (ffmpeg ebur128=peak=true).
Usage: python scripts/bench_normalize.py [--seconds 60] [--audio | --audio-only] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from assetprep import load_preset, normalize_video
from assetprep._process import find_tool


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


SPEECH = Path(__file__).resolve().parents[2] / "shared" / "media" / "speech-jfk-16k-mono.wav"


def ebur128(path: Path) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of a file, measured by ffmpeg's ebur128 filter."""
    meter = "ebur128=peak=true:framelog=verbose"
    cmd = [find_tool("ffmpeg"), "-hide_banner", "-nostats", "-i", str(path), "-af", meter, "-f", "null", "-"]
    err = subprocess.run(cmd, capture_output=True, text=True).stderr
    summary = err[err.rfind("Summary:") :]
    i = re.search(r"I:\s*(-?[\d.]+)", summary)
    tp = re.search(r"Peak:\s*(-?[\d.]+|-inf)", summary)
    return float(i.group(1)) if i else float("nan"), float(tp.group(1)) if tp else float("nan")


def bench_audio(rounds: int, peers: Path) -> None:
    venv = peers / "venv"
    if not (venv / "bin" / "ffmpeg-normalize").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "ffmpeg-normalize==1.43.*"], check=True)
    ffmpeg = find_tool("ffmpeg")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        inputs = {"11 s": SPEECH}
        for name, loops in (("60 s", 5), ("10 min", 54)):
            inputs[name] = d / f"speech-{loops}.wav"
            subprocess.run([ffmpeg, "-v", "error", "-stream_loop", str(loops), "-i", str(SPEECH), "-c", "copy",
                            str(inputs[name])], check=True)  # fmt: skip
        print("audio: real speech (16 kHz mono) -> -16 LUFS / -1.5 dBTP mono; both as commands; median of", rounds)
        for name, src in inputs.items():
            for ext, rate, codec in (("wav", "48000", []), ("mp3", "44100", ["-c:a", "libmp3lame", "-b:a", "192k"])):
                ours = [sys.executable, "-m", "assetprep", "normalize", "audio", str(src), "-o", str(d / f"a.{ext}")]
                peer = [str(venv / "bin" / "ffmpeg-normalize"), str(src), "-o", str(d / f"p.{ext}"), "-f"]
                peer += ["-nt", "ebu", "-t", "-16", "-tp", "-1.5", "-lrt", "11", "-ar", rate, "-e", "-ac 1", *codec]
                times: dict[str, list[float]] = {"assetprep": [], "ffmpeg-normalize": []}
                for _ in range(rounds):
                    for tool, cmd in (("assetprep", ours), ("ffmpeg-normalize", peer)):
                        times[tool].append(timed(lambda cmd=cmd: subprocess.run(cmd, check=True, capture_output=True)))
                a, p = statistics.median(times["assetprep"]), statistics.median(times["ffmpeg-normalize"])
                (ai, atp), (pi, ptp) = ebur128(d / f"a.{ext}"), ebur128(d / f"p.{ext}")
                print(f"  {name:>6} .{ext}: assetprep {a:6.2f} s ({ai:.1f} LUFS, {atp:.1f} dBTP)   ffmpeg-normalize "
                      f"{p:6.2f} s ({pi:.1f} LUFS, {ptp:.1f} dBTP)   ratio {a / p:.2f} (target <= 1.0)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--audio", action="store_true", help="also compare audio with ffmpeg-normalize")
    parser.add_argument("--audio-only", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers-dir", type=Path, default=Path(tempfile.gettempdir()) / "assetprep-bench-normalize")
    args = parser.parse_args()
    if args.audio or args.audio_only:
        bench_audio(args.rounds, args.peers_dir)
        if args.audio_only:
            return
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
