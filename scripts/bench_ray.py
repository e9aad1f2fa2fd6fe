"""Benchmark: `assetprep batch` with preparation on a local 2-node Ray cluster vs the local executor, same run.

Runs itself inside `unshare -n` (only loopback: Ray would otherwise bind the machine's interface; needs root).
Starts SeaweedFS, the sandbox (render_once) and a 2-node Ray cluster on 127.0.0.1 (1 CPU each), then, interleaved
for --rounds rounds, the same manifest (--rows rows over --pages distinct pages, so recordings dominate) with the
local executor and with --ray-address, each under its own S3 prefix so every background is recorded again.
Prints rows/minute of both (median; on 2 cores expect parity, not speed-up) and Ray's overhead per task: the
round trip of a no-op task with the same resource request as a recording (scheduling + result), median in ms.

Usage: python scripts/bench_ray.py [--rows 12] [--pages 6] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAGE = """<!doctype html><html><head><style>body{{margin:0;font:48px sans-serif;background:{bg}}}
section{{height:700px;border-bottom:4px solid #333;padding:40px}}</style></head><body>{sections}
<script>let t=0;function tick(){{t++;document.body.style.backgroundPositionY=t+'px';requestAnimationFrame(tick)}}
tick()</script></body></html>"""

NOOP = """
import json, statistics, sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
@ray.remote(num_cpus=1)
def noop(x):
    return {"key": x}
ray.get([noop.remote(i) for i in range(4)])  # warm the workers
times = []
for i in range(50):
    t = time.perf_counter()
    ray.get(noop.remote(i), timeout=60)
    times.append((time.perf_counter() - t) * 1000)
print(json.dumps(statistics.median(times)))
"""


def inside(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from assetprep._ray import LocalRayCluster
    from assetprep.s3local import LocalS3
    from assetprep.sandbox import DEFAULT_REPLICA, LocalSandbox
    from assetprep.upload import S3Settings, ensure_bucket, make_s3_client

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        colors = [f"#{(i * 53) % 256:02x}{(i * 97) % 256:02x}{(i * 151) % 256:02x}" for i in range(args.pages)]
        for i, bg in enumerate(colors):
            sections = "".join(f"<section>Page {i} section {j}</section>" for j in range(5))
            (d / f"page{i}.html").write_text(PAGE.format(bg=bg, sections=sections))
        rows = [
            f"Lead{i},page{i % args.pages}.html,Hi {{{{ first_name }}}}.,{args.seconds:g}" for i in range(args.rows)
        ]
        (d / "leads.csv").write_text("first_name,background,script,background_seconds\n" + "\n".join(rows) + "\n")
        with LocalS3(d / "s3") as s3, LocalSandbox(d / "sandbox", speed=50, workers=2, render_once=True) as sb:
            settings = S3Settings(endpoint_url=s3.endpoint_url, access_key_id=s3.access_key,
                                  secret_access_key=s3.secret_key)  # fmt: skip
            ensure_bucket(make_s3_client(settings), "bench", create=True)
            bin_dir = Path(sys.executable).parent
            node_env = {**s3.env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
            env = {**os.environ, **node_env, **sb.env(), "ASSETPREP_BUCKET": "bench"}
            with LocalRayCluster(d / "ray", nodes=2, env=node_env) as cluster:
                noop = subprocess.run([sys.executable, "-c", NOOP, cluster.address], capture_output=True, text=True,
                                      timeout=300, env=env)  # fmt: skip
                overhead = float(noop.stdout.strip().splitlines()[-1])
                seconds: dict[str, list[float]] = {"local": [], "ray": []}
                for r in range(args.rounds):
                    for kind in ("local", "ray") if r % 2 == 0 else ("ray", "local"):
                        tag = f"{kind}{r}"
                        extra = ["--ray-address", cluster.address] if kind == "ray" else []
                        cmd = [sys.executable, "-m", "assetprep", "batch", str(d / "leads.csv"), "--replica",
                               DEFAULT_REPLICA, "--allow-private-networks", "--poll", "0.5", "--background-preset",
                               "background-720p", "--batch-id", tag, "--prefix", tag, "--out", str(d / tag),
                               *extra]  # fmt: skip
                        started = time.perf_counter()
                        run = subprocess.run(cmd, env={**env, "ASSETPREP_RUNS_DIR": str(d / "state" / "runs")},
                                             capture_output=True, text=True, timeout=1800)  # fmt: skip
                        assert run.returncode == 0, run.stderr[-2000:]
                        seconds[kind].append(time.perf_counter() - started)
    local, ray = statistics.median(seconds["local"]), statistics.median(seconds["ray"])
    print(f"{args.rows} rows over {args.pages} pages ({args.pages} recordings of {args.seconds:g} s at 720p30), "
          f"2-node Ray cluster on 127.0.0.1 (1 CPU each), median of {args.rounds} interleaved rounds")  # fmt: skip
    print(f"  local executor: {local:.1f} s ({args.rows / local * 60:.0f} rows/min)  {seconds['local']}")
    print(f"  Ray executor:   {ray:.1f} s ({args.rows / ray * 60:.0f} rows/min)  {seconds['ray']}")
    print(f"  Ray / local wall time: {ray / local:.2f}")
    print(f"  Ray overhead per task (no-op round trip, 1 CPU request): {overhead:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--pages", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    if os.geteuid() != 0 or not shutil.which("unshare"):
        sys.exit("bench_ray.py runs the cluster inside `unshare -n` (loopback only): run it as root")
    flags = f"--rows {args.rows} --pages {args.pages} --seconds {args.seconds} --rounds {args.rounds}"
    script = f"ip link set lo up && exec {sys.executable} {Path(__file__).resolve()} --inside {flags}"
    sys.exit(subprocess.run(["unshare", "-n", "bash", "-c", script], timeout=7200).returncode)


if __name__ == "__main__":
    main()
