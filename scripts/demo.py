"""The README's main job, end to end on embedded services: examples/page.html + examples/script.txt → a finished video,
then the campaign examples/leads.csv → one personalized video per lead over its website, results.csv and report.html.

Starts the embedded S3 (SeaweedFS) and the Tavus sandbox as managed subprocesses, runs `assetprep publish` exactly as
a user would (only the env vars point at the local services), prints the video's path, hosted_url and step timings,
and stops both servers. Reruns reuse the recorded background and the finished run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from assetprep import AssetprepError
from assetprep.s3local import LocalS3
from assetprep.sandbox import DEFAULT_REPLICA, LocalSandbox
from assetprep.upload import S3Settings, ensure_bucket, make_s3_client

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".assetprep" / "demo"
BUCKET = "assetprep-demo"


def sandbox_port() -> int:
    """The port the last demo's sandbox had, while it is free: a publish journal remembers its API's address and
    refuses another one, so a rerun must find the sandbox where the finished run left it (runs are kept per port:
    when the old port is taken, the demo starts over instead of being refused)."""
    saved = STATE / "sandbox.port"
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the last run's sockets may sit in TIME_WAIT
        try:
            s.bind(("127.0.0.1", int(saved.read_text())))
        except (OSError, ValueError):
            s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    saved.write_text(str(port))
    return port


def main() -> int:
    started = time.monotonic()
    STATE.mkdir(parents=True, exist_ok=True)
    port = sandbox_port()
    try:
        with LocalS3(STATE / "s3") as s3, LocalSandbox(STATE / "sandbox", speed=4, port=port) as sandbox:
            print(f"[demo] embedded S3 at {s3.endpoint_url}, Tavus sandbox at {sandbox.base_url}", flush=True)
            client = make_s3_client(S3Settings(endpoint_url=s3.endpoint_url, access_key_id=s3.access_key,
                                               secret_access_key=s3.secret_key))  # fmt: skip
            ensure_bucket(client, BUCKET, create=True)
            env = {**os.environ, **s3.env(), **sandbox.env(), "ASSETPREP_BUCKET": BUCKET,
                   "ASSETPREP_RUNS_DIR": str(STATE / f"runs-{port}")}  # fmt: skip
            command = [
                sys.executable, "-m", "assetprep", "publish", "--replica", DEFAULT_REPLICA,
                "--script-file", str(ROOT / "examples" / "script.txt"),
                "--background", str(ROOT / "examples" / "page.html"),
                "--background-seconds", "6", "--background-preset", "background-720p", "--scroll", "smooth",
                "--poll", "1", "--deadline", "10m", "-o", str(STATE / "demo-video.mp4"), "--json",
            ]  # fmt: skip
            print("[demo] assetprep publish --replica … --script-file examples/script.txt "
                  "--background examples/page.html -o .assetprep/demo/demo-video.mp4", flush=True)  # fmt: skip
            done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, timeout=900)
            if done.returncode != 0:
                return done.returncode
            result = json.loads(done.stdout)
            # The campaign: one personalized video per lead, over each lead's own website, exactly once. The batch
            # id carries the port for the same reason as the runs folder (its journal remembers the API's address).
            campaign = [
                sys.executable, "-m", "assetprep", "batch", str(ROOT / "examples" / "leads.csv"),
                "--replica", DEFAULT_REPLICA, "--background-preset", "background-720p", "--poll", "1",
                "--deadline", "10m", "--batch-id", f"demo-{port}", "--out", str(STATE / "campaign"), "--json",
            ]  # fmt: skip
            print("[demo] assetprep batch examples/leads.csv --replica … --out .assetprep/demo/campaign", flush=True)
            ran = subprocess.run(campaign, env=env, stdout=subprocess.PIPE, text=True, timeout=900)
            if ran.returncode != 0:
                return ran.returncode
            batch = json.loads(ran.stdout)
    except AssetprepError as exc:
        print(f"[demo] error: {exc}", file=sys.stderr)
        return 1
    facts = result["facts"]
    v = facts["video"]
    print()
    print(f"Finished video: {result['output']}")
    print(f"  {v['width']}x{v['height']} {v['codec']} @ {v['fps']}, {facts['duration']:.2f} s, {facts['size']} bytes")
    print(f"  video_id {result['video_id']} ({result['status']}); hosted_url {result['hosted_url']}")
    print(
        "  (the sandbox is stopped now; `assetprep sandbox serve --data-dir .assetprep/demo/sandbox` serves it again)"
    )
    for step, seconds in result["timings"].items():
        print(f"  {step:<11} {seconds:6.1f} s")
    if result["skipped"]:
        print(f"  reused from the last run: {', '.join(result['skipped'])}")
    print()
    print(
        f"Campaign: {len(batch['rows'])} leads of examples/leads.csv -> {batch['counts'].get('downloaded', 0)} "
        f"videos over {batch['preparations']} recorded website(s) ({batch['prepared_now']} recorded now)"
    )
    for row in batch["rows"]:
        print(f"  row {row['row']} {row['first_name']} ({row['company']}): {row['status']}  {row['output']}")
    print(f"  results: {batch['results_csv']}")
    print(f"  report:  {batch['report_html']}")
    print(f"Total {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
