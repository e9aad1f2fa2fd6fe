"""Benchmark: assetprep record (exact 720p30, exact 1080p30, fast) vs Playwright's own record_video (the baseline).

On a landing page built here like leads' sites are (--page real: a web font, a looping video, a canvas animation,
photos, 3,000 elements) or examples/page.html (--page demo; continuously animated). For each it prints wall time /
video duration and the bad frames found by decoding: missing frames (count below fps x duration) and duplicated
frames (a decoded frame identical to the one before; in fast mode a still is panned, so a frame may legitimately
repeat where the rounded scroll position holds at the turn), and the machine's CPU seconds per second of video with
that over the cores (the floor: run on an otherwise idle machine, it is the recorder's own); for exact mode also
the frames' own rate (first frame to encoded file) apart from the fixed seconds before and after them. Playwright's
recorder needs its own ffmpeg build, which cannot be downloaded here: for this benchmark only, a temp
PLAYWRIGHT_BROWSERS_PATH links ffmpeg-<rev>/ffmpeg-linux to the OS ffmpeg. The frame-exact peer is timecut (npm,
a virtual clock and a screenshot per frame through puppeteer), installed by this script into its temp folder with
npm (skipped, and said, when npm or the registry is missing) and run on the OS headless shell at 720p30; it does not
scroll, which only spares it work. Usage: python scripts/bench_record.py [--page real|demo] [--seconds 5] [--long 30]
[--repeat 3] [--no-timecut]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from assetprep._process import find_tool
from assetprep.doctor import huge_pages
from assetprep.record import RecordOptions, find_chromium, record, serve_local

PAGE = Path(__file__).resolve().parent.parent / "examples" / "page.html"
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # fonts-dejavu-core


def real_page(folder: Path, hero: str = "small") -> Path:
    """A landing page as leads have them, built locally (no network): a hero with a web font, a looping <video>, a
    canvas animation, 12 photos and a heavy DOM (600 cards, ~3,000 elements), about 8 screens tall. `hero`: small
    (640x360 VP9, 4 s), 1080p (H.264, 20 s, a keyframe every 250 frames, as encoders make them by default) or none
    (a photo in the video's place: what the page's video costs)."""
    folder.mkdir(parents=True, exist_ok=True)
    ffmpeg = find_tool("ffmpeg")
    for i in range(12):
        source = f"testsrc2=s=800x500:r=1:d=1,hue=h={i * 30}"
        subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", source, "-frames:v", "1", "-q:v", "4",
                        str(folder / f"photo{i}.jpg")], check=True, timeout=60)  # fmt: skip
    if hero == "1080p":
        encode = ["testsrc2=s=1920x1080:r=30:d=20", "-c:v", "libx264", "-preset", "veryfast", "-g", "250"]
        name = "hero.mp4"
    else:
        encode = ["testsrc2=s=640x360:r=30:d=4", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
                  "-b:v", "800k"]  # fmt: skip
        name = "hero.webm"
    if hero != "none":
        subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", *encode, str(folder / name)], check=True,
                       timeout=120)  # fmt: skip
    video = (f'<video src="{name}" autoplay muted loop width="480" height="270"></video>' if hero != "none"
             else '<img src="photo0.jpg" width="480" height="270">')  # fmt: skip
    if FONT.is_file():
        (folder / "brand.ttf").write_bytes(FONT.read_bytes())
    photos = "".join(f'<img src="photo{i}.jpg" loading="lazy" width="400" height="250">' for i in range(12))
    cards = "".join(f'<div class="card"><h4>Feature {i}</h4><p>Track every parcel <b>live</b>, '
                    f'<i>item {i}</i>, <span>{i * 7 % 100}% faster</span>.</p></div>' for i in range(600))  # fmt: skip
    (folder / "index.html").write_text(f"""<!doctype html><html><head><meta charset="utf-8"><style>
@font-face {{ font-family: Brand; src: url(brand.ttf); }}
body {{ margin: 0; font-family: Brand, sans-serif; background: #f5f7fb; }}
.hero {{ display: flex; gap: 24px; padding: 48px; background: linear-gradient(135deg, #1b2a6b, #3d5afe); color: #fff; }}
.hero h1 {{ font-size: 56px; margin: 0; }} video, canvas {{ border-radius: 12px; }}
.photos {{ display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; padding: 24px; }}
.photos img {{ width: 100%; height: auto; border-radius: 8px; }}
.cards {{ display: grid; grid-template-columns: repeat(6, 1fr); gap: 8px; padding: 24px; }}
.card {{ background: #fff; border-radius: 6px; padding: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.2); font-size: 12px; }}
</style></head><body>
<div class="hero"><div><h1>Acme Logistics</h1><p>Every parcel, live.</p></div>
{video}
<canvas id="c" width="360" height="270"></canvas></div>
<div class="photos">{photos}</div><div class="cards">{cards}</div>
<script>
const c = document.getElementById("c").getContext("2d");
function draw(t) {{
  c.fillStyle = "#0d1440"; c.fillRect(0, 0, 360, 270);
  for (let i = 0; i < 40; i++) {{
    c.fillStyle = `hsl(${{(i * 9 + t / 20) % 360}}, 80%, 60%)`;
    c.fillRect(10 + i * 8.5, 260 - 120 * (1 + Math.sin(t / 300 + i / 3)), 6, 240);
  }}
  requestAnimationFrame(draw);
}}
requestAnimationFrame(draw);
</script></body></html>""")
    return folder


def busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (/proc/stat, Linux): Chromium's zygote forks its renderers
    away from this process, so its own rusage misses them. On an otherwise idle machine the difference over a run is
    the recorder's CPU; divided by the cores, it is the wall time no reordering of the work could go under."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])  # steal: another guest's
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class CpuSplit:
    """CPU seconds by program (Chromium, ffmpeg, this Python, Playwright's driver) over a run: every process's
    utime + stime, read from /proc every 0.1 s while the run goes (a process's last 0.1 s before it exits is
    missed: a few percent at most). Says where a recording's CPU goes, to know which part a change must cut."""

    KINDS = (("chromium", ("chrom", "headless")), ("ffmpeg", ("ffmpeg",)), ("driver", ("node",)))

    def __init__(self) -> None:
        self.seen: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds at its last reading)
        self.other: set[int] = set()  # processes of no kind here, not read again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _kind(self, pid: int, name: str) -> str | None:
        if pid == os.getpid():
            return "python"
        return next((kind for kind, marks in self.KINDS if any(m in name for m in marks)), None)

    def _read(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid in self.other:
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            kind = self.seen[pid][0] if pid in self.seen else self._kind(pid, name)
            if kind is None:
                self.other.add(pid)
            else:
                self.seen[pid] = (kind, (int(rest[11]) + int(rest[12])) / self._tick)  # utime, stime

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            self._read()

    def __enter__(self) -> CpuSplit:
        self._read()
        self.start = {pid: cpu for pid, (_kind, cpu) in self.seen.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    def seconds(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for pid, (kind, cpu) in self.seen.items():
            out[kind] += cpu - self.start.get(pid, 0.0)
        return out


def frame_stats(path: Path) -> tuple[int, int]:
    """(decoded frames, frames identical to their predecessor)."""
    out = subprocess.run([find_tool("ffmpeg"), "-v", "error", "-i", str(path), "-map", "0:v:0", "-f", "framemd5", "-"],
                         capture_output=True, text=True, check=True, timeout=600).stdout  # fmt: skip
    hashes = [line.rsplit(",", 1)[1].strip() for line in out.splitlines() if line and not line.startswith("#")]
    dups = sum(1 for a, b in itertools.pairwise(hashes) if a == b)
    return len(hashes), dups


def playwright_baseline(seconds: float, tmp: Path, page_path: Path) -> tuple[float, Path]:
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

    with serve_local(page_path) as url, sync_playwright() as pw:
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


TIMECUT = "timecut@0.3.3"


def install_timecut(folder: Path) -> Path | None:
    """timecut's command in `folder` (npm install, without puppeteer's own Chromium download), or None."""
    npm = shutil.which("npm")
    if npm is None:
        print("timecut: skipped (no npm)")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1", "PUPPETEER_SKIP_CHROMIUM_DOWNLOAD": "1"}
    done = subprocess.run([npm, "i", "--silent", "--no-audit", "--no-fund", TIMECUT], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    command = folder / "node_modules" / ".bin" / "timecut"
    if done.returncode or not command.exists():
        print(f"timecut: skipped (npm i {TIMECUT} failed: {(done.stderr or done.stdout).strip()[-200:]})")
        return None
    return command


def timecut_peer(command: Path, seconds: float, tmp: Path, page_path: Path) -> tuple[float, Path]:
    shell = Path("/usr/lib/chromium/chromium-headless-shell")  # Debian's binary (/usr/bin's is a wrapper script)
    executable = str(shell) if shell.exists() else shutil.which("chromium-headless-shell") or "chromium"
    out = tmp / "timecut.mp4"
    with serve_local(page_path) as url:
        started = time.perf_counter()
        subprocess.run([str(command), url, "--viewport=1280,720", "--fps=30", f"--duration={seconds:g}",
                        f"--executable-path={executable}", "--launch-arguments=--no-sandbox", f"--output={out}",
                        "--quiet"], check=True, capture_output=True, timeout=600 + seconds * 60)  # fmt: skip
        return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--long", type=float, default=30.0, help="fast mode again at this length (0: skip)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per recorder; the median wall time is printed")
    parser.add_argument("--page", choices=("real", "demo"), default="real",
                        help="real: a built landing page (web font, video, canvas, photos, 3,000 elements); "
                             "demo: examples/page.html")  # fmt: skip
    parser.add_argument(
        "--hero",
        choices=("small", "1080p", "none"),
        default="small",
        help="the real page's video: small (640x360 VP9, 4 s), 1080p (H.264, 20 s, keyframes 8 s apart) or none",
    )
    parser.add_argument("--timecut", action=argparse.BooleanOptionalAction, default=True,
                        help="also run timecut, the frame-exact peer (needs npm and its registry)")  # fmt: skip
    args = parser.parse_args()
    s = args.seconds
    rows = []  # (label, walls, CPU seconds, video seconds, frames, missing, duplicated, capture)

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
        page = real_page(tmp / "site", args.hero) if args.page == "real" else PAGE
        print(f"page: {page}")
        print(huge_pages().detail)  # the machine's setting moves 1080p by 3-9% (assetprep doctor)
        timecut = install_timecut(tmp / "timecut") if args.timecut else None
        peer: tuple[list[float], list[float], tuple[int, int, int], int] = ([], [], (0, 0, 0), 0)
        # Rounds interleave the recorders (each round runs every one once), so a change in the machine's load
        # weighs on all of them alike.
        walls: list[list[float]] = [[] for _ in range(len(runs) + 1)]
        cpus: list[list[float]] = [[] for _ in range(len(runs) + 1)]  # CPU seconds of the machine per run
        loops: list[list[float]] = [[] for _ in runs]  # seconds from the first frame until the file was encoded
        splits: list[list[Counter[str]]] = [[] for _ in runs]  # CPU seconds by program per run
        bad: list[tuple[int, int, int]] = [(0, 0, 0)] * (len(runs) + 1)
        last: list[tuple[int, str]] = [(0, "")] * (len(runs) + 1)
        for _ in range(args.repeat):
            for k, (_label, options) in enumerate(runs):
                out = tmp / f"{k}.mp4"
                started, busy = time.perf_counter(), busy_seconds()
                with CpuSplit() as split:
                    result = record(page, out, options)
                splits[k].append(split.seconds())
                walls[k].append(time.perf_counter() - started)
                cpus[k].append(busy_seconds() - busy)
                loops[k].append(result.frames / result.capture_fps if result.capture_fps else 0.0)
                frames, dups = frame_stats(out)
                missing = max(0, round(options.duration * 30) - frames)
                bad[k] = max(bad[k], (missing + dups, missing, dups))  # the worst run's bad frames
                last[k] = (frames, result.capture)
            busy = busy_seconds()
            elapsed, webm = playwright_baseline(s, tmp, page)
            walls[-1].append(elapsed)
            cpus[-1].append(busy_seconds() - busy)
            frames, dups = frame_stats(webm)
            missing = max(0, round(s * 25) - frames)
            bad[-1] = max(bad[-1], (missing + dups, missing, dups))
            last[-1] = (frames, "screencast")
            if timecut is not None:
                busy = busy_seconds()
                elapsed, mp4 = timecut_peer(timecut, s, tmp, page)
                frames, dups = frame_stats(mp4)
                missing = max(0, round(s * 30) - frames)
                peer = ([*peer[0], elapsed], [*peer[1], busy_seconds() - busy],
                        max(peer[2], (missing + dups, missing, dups)), frames)  # fmt: skip
        for k, (label, options) in enumerate(runs):
            rows.append((label, walls[k], cpus[k], options.duration, last[k][0], bad[k][1], bad[k][2], last[k][1]))
        rows.append(("playwright record_video (baseline)", walls[-1], cpus[-1], s, last[-1][0], bad[-1][1],
                     bad[-1][2], "screencast"))  # fmt: skip
        if peer[0]:
            rows.append(("timecut 1280x720@30 (frame-exact peer)", peer[0], peer[1], s, peer[3], peer[2][1],
                         peer[2][2], "screenshot"))  # fmt: skip
    cores = os.cpu_count() or 1
    print(
        f"median of {args.repeat} runs; frames of the last run, missing/duplicated of the worst; cpu: the machine's "
        f"CPU seconds per second of video; floor: cpu / {cores} cores, the wall time the work cannot go under"
    )
    print(f"{'recorder':<38} {'wall/duration':>13} {'range':>13} {'cpu':>6} {'floor':>6} {'frames':>7} {'missing':>8} "
          f"{'duplicated':>11}  capture")  # fmt: skip
    for label, walls, cpu, seconds, frames, missing, dups, capture in rows:
        span = f"{min(walls) / seconds:.2f}-{max(walls) / seconds:.2f}"
        per = statistics.median(cpu) / seconds
        print(f"{label:<38} {statistics.median(walls) / seconds:>12.2f}x {span:>13} {per:>6.2f} {per / cores:>5.2f}x "
              f"{frames:>7} {missing:>8} {dups:>11}  {capture}")  # fmt: skip
    # The wall time above is the whole command: Playwright's driver, the browser, loading the page (and its video's
    # copy), walking it for lazy content, then the frames. Said apart, so a change to either is seen as such.
    for (label, options), loop, walls in zip(runs, loops, (r[1] for r in rows), strict=False):
        if options.mode == "exact":
            print(f"{label}: frames {statistics.median(loop) / options.duration:.2f}x real time (first frame to "
                  f"encoded file), {statistics.median(w - f for w, f in zip(walls, loop, strict=True)):.1f} s "
                  "before and after them")  # fmt: skip
    # Where our recorders' CPU goes (summed over the runs): the part a change must cut to be seen in the wall time.
    for (label, _options), split in zip(runs, splits, strict=True):
        total = sum(split, Counter[str]())
        whole = total.total() or 1.0
        shares = ", ".join(f"{kind} {cpu / whole:.0%}" for kind, cpu in total.most_common())
        print(f"{label}: CPU by program: {shares}")
    ours = rows[: len(runs)]
    for name, (_label, walls, *_rest) in zip(("the baseline", "timecut"), rows[len(runs) :], strict=False):
        base = statistics.median(walls) / s
        for label, mine, _cpu, seconds, *_ in ours:
            print(f"{label}: {statistics.median(mine) / seconds / base:.2f}x {name}'s wall time per second of video")


if __name__ == "__main__":
    main()
