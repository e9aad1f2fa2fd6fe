"""Benchmark: `assetprep batch` against the naive baseline, on the embedded sandbox and SeaweedFS, in one run.

  baseline  `assetprep publish` once per row, sequentially (timed on --naive rows, scaled to the batch size)
  batch     `assetprep batch` over the same kind of rows: 5 distinct local pages, 3 distinct audio files,
            personalized scripts (1 row in 4 uses audio)
Prints: wall time and the ratio (target >= 5x at 200 rows), recordings done (= distinct backgrounds), API requests
per finished video (target <= 6 at 1,000 rows), the batch process's RSS at row 100 and at the end (target growth
<= 50 MB), and, after three kill -9 and reruns, videos on the sandbox = rows. With --ray-address, the same batch
also runs with preparation on that Ray cluster: rows/minute of both executors and Ray's overhead per task.
The sandbox runs with render_once (it renders the first video and copies it for the rest), so its own ffmpeg work
does not hide the client's speed.

Usage: python scripts/bench_batch.py [--rows 200] [--naive 20] [--seconds 5] [--kills 3] [--ray-address HOST:PORT]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from assetprep.s3local import LocalS3
from assetprep.sandbox import DEFAULT_REPLICA, LocalSandbox
from assetprep.upload import S3Settings, ensure_bucket, make_s3_client

PAGE = """<!doctype html><html><head><style>body{{margin:0;font:48px sans-serif;background:{bg}}}
section{{height:700px;border-bottom:4px solid #333;padding:40px}}</style></head><body>
{sections}<script>let t=0;function tick(){{t++;document.body.style.backgroundPositionY=t+'px';
requestAnimationFrame(tick)}}tick()</script></body></html>"""
COLORS = ("#e01010", "#1020e0", "#10a040", "#d0a000", "#8020c0")


def make_inputs(folder: Path, rows: int) -> Path:
    for i, bg in enumerate(COLORS):
        sections = "".join(f"<section>Page {i} section {j}</section>" for j in range(5))
        (folder / f"page{i}.html").write_text(PAGE.format(bg=bg, sections=sections))
    for i in range(3):
        subprocess.run(["espeak-ng", "-w", str(folder / f"voice{i}.wav"), f"This is narration number {i}. " * 3],
                       check=True, timeout=60)  # fmt: skip
    with open(folder / "leads.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["first_name", "company", "background", "script", "audio", "video_name"])
        for i in range(rows):
            audio = f"voice{i % 3}.wav" if i % 4 == 3 else ""
            script = "" if audio else "Hi {{ first_name }}, I had a look at {{ company }} today."
            name = "Narration for {{ first_name }}" if audio else ""  # audio rows differ by name only
            out.writerow([f"Lead{i}", f"Company {i}", f"page{i % 5}.html", script, audio, name])
    return folder / "leads.csv"


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def downloaded(state: Path) -> int:
    found = list(state.glob("batches/*/journal.sqlite"))
    if not found:
        return 0
    try:
        with sqlite3.connect(f"file:{found[0]}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM rows WHERE state = 'downloaded'").fetchone()[0]
    except sqlite3.Error:
        return 0


def run_batch(cmd: list[str], env: dict[str, str], state: Path, *, kill_after: float | None = None) -> dict:
    """Run the batch CLI; sample its RSS; optionally kill -9 it after `kill_after` seconds."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: dict[str, float] = {"peak": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss = rss_mb(proc.pid)
            samples["peak"] = max(samples["peak"], rss)
            done = downloaded(state)
            if done >= 100 and "at_100" not in samples:
                samples["at_100"] = samples["peak"]
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        if kill_after is not None:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=3600)
    finally:
        stop.set()
        sampler.join()
    return {"rc": proc.returncode, "seconds": time.perf_counter() - started, "stderr": err, **samples}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--naive", type=int, default=20, help="rows the sequential baseline is timed on")
    parser.add_argument("--seconds", type=float, default=5.0, help="background length")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    assetprep = [sys.executable, "-m", "assetprep"]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        manifest = make_inputs(d, args.rows)
        with LocalS3(d / "s3") as s3, LocalSandbox(d / "sandbox", speed=50, workers=4, render_once=True) as sb:
            client = make_s3_client(S3Settings(endpoint_url=s3.endpoint_url, access_key_id=s3.access_key,
                                               secret_access_key=s3.secret_key))  # fmt: skip
            ensure_bucket(client, "bench", create=True)
            env = {**os.environ, **s3.env(), **sb.env(), "ASSETPREP_BUCKET": "bench"}

            # Baseline: publish once per row, one after the other (each row records its own background).
            naive_state = d / "naive"
            (d / "naive-out").mkdir()
            started = time.perf_counter()
            with open(manifest, newline="") as f:
                leads = list(csv.DictReader(f))[: args.naive]
            for i, lead in enumerate(leads):
                media = ["--audio", str(d / lead["audio"])] if lead["audio"] else [
                    "--script", f"Hi {lead['first_name']}, I had a look at {lead['company']} today."]  # fmt: skip
                subprocess.run([*assetprep, "publish", "--replica", DEFAULT_REPLICA, *media, "--background",
                                str(d / lead["background"]), "--background-seconds", str(args.seconds),
                                "--background-preset", "background-720p", "--poll", "0.2", "-o",
                                str(d / "naive-out" / f"{i}.mp4")], check=True, env={**env,
                               "ASSETPREP_RUNS_DIR": str(naive_state / "runs")}, capture_output=True)  # fmt: skip
            naive = (time.perf_counter() - started) / len(leads)

            before = len([c for c in sb.calls() if c["path"].startswith("/v2/")])
            state = d / "state"
            benv = {**env, "ASSETPREP_RUNS_DIR": str(state / "runs")}
            cmd = [*assetprep, "batch", str(manifest), "--replica", DEFAULT_REPLICA, "--allow-private-networks",
                   "--poll", "1", "--background-preset", "background-720p", "--out", str(d / "out")]  # fmt: skip
            write_seconds(manifest, args.seconds)
            kills = []
            rng = random.Random(7)
            total = 0.0
            for _ in range(args.kills):
                got = run_batch(cmd, benv, state, kill_after=rng.uniform(3, 25))
                kills.append(got["rc"])
                total += got["seconds"]
            final = run_batch(cmd, benv, state)
            total += final["seconds"]
            assert final["rc"] == 0, final["stderr"][-2000:]
            calls = [c for c in sb.calls() if c["path"].startswith("/v2/")][before:]
            names = [c for c in calls if c["method"] == "POST"]
            videos = len([1 for c in names if c["status"] == 200])

            # A clean run of the same batch (fresh state), for wall time and requests without the kills.
            clean_state = d / "clean"
            before_clean = len([c for c in sb.calls() if c["path"].startswith("/v2/")])
            # Its own S3 prefix: every background is recorded again (the same prefix would find them by HEAD).
            clean = run_batch([*cmd[:-1], str(d / "out-clean"), "--batch-id", "clean", "--prefix", "bench-clean"],
                              {**env, "ASSETPREP_RUNS_DIR": str(clean_state / "runs")}, clean_state)  # fmt: skip
            assert clean["rc"] == 0, clean["stderr"][-2000:]
            clean_calls = len([c for c in sb.calls() if c["path"].startswith("/v2/")]) - before_clean
            with sqlite3.connect(next(clean_state.glob("batches/*/journal.sqlite"))) as db:
                made = [json.loads(data) for (data,) in db.execute("SELECT data FROM preps WHERE kind = 'background'")]
            recordings = len([m for m in made if m.get("seconds")])  # prepared in this run, not found by HEAD
            bg_sizes = [int(m["size"]) for m in made]

            ray = None
            if args.ray_address:
                ray_state = d / "ray"
                ray = run_batch([*cmd[:-1], str(d / "out-ray"), "--batch-id", "ray", "--prefix", "ray",
                                 "--ray-address", args.ray_address],
                                {**env, "ASSETPREP_RUNS_DIR": str(ray_state / "runs")}, ray_state)  # fmt: skip
                assert ray["rc"] == 0, ray["stderr"][-2000:]

    rows = args.rows
    scaled = naive * rows
    print(f"{rows} rows (5 pages, 3 audio files, personalized scripts), {args.seconds:g} s backgrounds at 720p30")
    print(f"  naive: assetprep publish per row, sequential: {naive:.2f} s/row on {len(leads)} rows "
          f"→ {scaled:.0f} s for {rows} rows")  # fmt: skip
    print(f"  batch (clean run):  {clean['seconds']:.1f} s  →  {scaled / clean['seconds']:.1f}x faster (target >= 5x)")
    print(f"  recordings done: {recordings} (distinct backgrounds: 5); background size {min(bg_sizes) / 1e6:.2f} to "
          f"{max(bg_sizes) / 1e6:.2f} MB")  # fmt: skip
    print(f"  API requests per finished video: {clean_calls / rows:.2f} (target <= 6)")
    growth = clean["peak"] - clean.get("at_100", clean["peak"])
    print(f"  batch RSS: {clean.get('at_100', 0):.0f} MB at row 100, peak {clean['peak']:.0f} MB at row {rows} "
          f"(growth {growth:.0f} MB; target <= 50)")  # fmt: skip
    print(f"  after {args.kills} kill -9 ({kills}) and a rerun: {videos} videos created for {rows} rows "
          f"({'OK' if videos == rows else 'MISMATCH'}), {total:.0f} s in all")  # fmt: skip
    if ray is not None:
        print(f"  Ray executor: {ray['seconds']:.1f} s ({rows / ray['seconds'] * 60:.0f} rows/min) vs local "
              f"{clean['seconds']:.1f} s ({rows / clean['seconds'] * 60:.0f} rows/min)")  # fmt: skip


def write_seconds(manifest: Path, seconds: float) -> None:
    """Add the background length as a column (the same for every row)."""
    with open(manifest, newline="") as f:
        rows = list(csv.reader(f))
    rows[0].append("background_seconds")
    for r in rows[1:]:
        r.append(f"{seconds:g}")
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows(rows)


if __name__ == "__main__":
    main()
