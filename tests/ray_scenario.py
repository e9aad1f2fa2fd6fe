"""A real two-node Ray cluster on 127.0.0.1, run by tests/test_ray.py inside `unshare -n` (only loopback exists).

Starts SeaweedFS, the sandbox and two `ray start --block` nodes as children, runs the phases below and writes what
it measured to WORK/facts.json; every server is stopped by PID at the end. Phases:
  local   the manifest with the local executor (prefix local/), for comparison
  ray     the same manifest on the cluster (prefix ray/), one Ray worker SIGKILLed while it records
  driver  the driver SIGKILLed with tasks in flight, then the same command again
  term    the driver stopped with SIGTERM while the cluster records for it
  wrong   --ray-address pointing at nothing
  doctor  a third node without ffmpeg, S3 credentials or the pages: doctor names it, a task pinned to it names node
          and tool
  refused a batch on that cluster stops before its first task, naming the node and each of its problems
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import assetprep
from assetprep._ray import LocalRayCluster, code_fingerprint
from assetprep.s3local import LocalS3
from assetprep.sandbox import DEFAULT_REPLICA, LocalSandbox
from assetprep.sandbox.server import free_port
from assetprep.tavus import TavusClient
from assetprep.upload import S3Settings, ensure_bucket, make_s3_client

PAGES = Path(__file__).parent / "pages"
BIN = Path(sys.executable).parent
BUCKET = "ray-tests"


def log(msg: str) -> None:
    print(f"[scenario {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def batch_command(work: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "assetprep",
        "batch",
        str(work / "leads.csv"),
        "--replica",
        DEFAULT_REPLICA,
        "--allow-private-networks",
        "--poll",
        "0.2",
        "--background-preset",
        str(work / "small.toml"),
        "--json",
        *args,
    ]


def batch(env: dict[str, str], work: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(batch_command(work, *args), env=env, capture_output=True, text=True, timeout=timeout)


def result_of(proc: subprocess.CompletedProcess[str]) -> dict | None:
    """The --json result (an indented object at the end of stdout; anything Ray printed comes before it)."""
    if proc.returncode != 0:
        return None
    out = proc.stdout
    start = 0 if out.startswith("{") else out.rfind("\n{") + 1
    try:
        return json.loads(out[start:])
    except ValueError:
        return {"unparsed_stdout": out[-2000:]}


def journal_facts(state: Path, batch_id: str) -> dict:
    path = state / "batches" / batch_id / "journal.sqlite"
    if not path.exists():  # the run failed before its journal: its rc and stderr say why
        return {"prepared_on": [], "preps": {}}
    with sqlite3.connect(path) as db:
        rows = [json.loads(d) for (d,) in db.execute("SELECT data FROM rows")]
        preps = [
            (k, kind, s, json.loads(d)) for k, kind, s, d in db.execute("SELECT key, kind, state, data FROM preps")
        ]
    return {"prepared_on": [r.get("prepared_on") for r in rows],
            "preps": {k: {"state": s, "kind": kind, "sha256": d.get("sha256"), "s3_key": d.get("s3_key"),
                          "node": d.get("node"), "pid": d.get("pid")} for k, kind, s, d in preps}}  # fmt: skip


def centre_rgb(s3c, key: str) -> list[int]:
    """The RGB of the centre pixel of the first frame of a prepared background in the bucket."""
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        s3c.download_file(BUCKET, key, str(clip))
        raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), "-frames:v", "1", "-vf",
                              "crop=2:2:iw/2:ih/2", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                             capture_output=True, check=True, timeout=60).stdout  # fmt: skip
    return list(raw[:3])


def recording_workers() -> list[int]:
    """PIDs of the Ray workers running a recording (their task title) whose ffmpeg has started."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray::_prepare_on_node" not in cmd:
            continue
        children = subprocess.run(["pgrep", "-P", proc.name], capture_output=True, text=True).stdout.split()
        names = []
        for child in children:  # a child may end between pgrep and this read (a short ffprobe)
            with contextlib.suppress(OSError):
                names.append(Path(f"/proc/{child}/comm").read_text().strip())
        if "ffmpeg" in names:
            found.append(int(proc.name))
    return found


def kill_one_recording_worker(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Ray worker seen running a recording once its ffmpeg has started."""
    while not stop.is_set() and not killed:
        if found := recording_workers():
            os.kill(found[0], signal.SIGKILL)
            killed.append(found[0])
        time.sleep(0.05)


def main(work: Path) -> None:
    facts: dict = {}
    servers = []
    cluster: LocalRayCluster | None = None
    local: subprocess.Popen[str] | None = None
    sessions_before = set(Path("/tmp/ray").glob("session_2*"))
    try:
        s3 = LocalS3(work / "s3").start()
        servers.append(s3)
        sb = LocalSandbox(work / "sandbox", speed=20).start()
        servers.append(sb)
        ensure_bucket(make_s3_client(S3Settings(endpoint_url=s3.endpoint_url, access_key_id=s3.access_key,
                                                secret_access_key=s3.secret_key)), BUCKET, create=True)  # fmt: skip
        lines = ["first_name,background,script,background_seconds"]
        for i in range(6):  # 6 rows over 3 pages, 3 s recordings (a third of the default's cost, enough to kill one)
            page = ("red.html", "blue.html", "clock.html")[i % 3]
            lines.append(f"Lead{i},{PAGES / page},Hi {{{{ first_name }}}} number {i}.,3")
        (work / "leads.csv").write_text("\n".join(lines) + "\n")
        # 320x180: what the phases check does not depend on the size, and the cluster's 1-CPU nodes record serially.
        (work / "small.toml").write_text(
            'kind = "video"\ndescription = "small"\nwidth = 320\nheight = 180\nfps = 30\nprofile = "high"\ncrf = 20\n'
        )
        state = work / "state"
        base_env = {**os.environ, **s3.env(), "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}:{os.environ['PATH']}"}
        env = {**base_env, **sb.env(), "ASSETPREP_BUCKET": BUCKET, "ASSETPREP_RUNS_DIR": str(state / "runs")}

        # The driver's own files (per-lead audio, a clip): no node sees them, as on other machines.
        inputs = work / "driver-only"
        inputs.mkdir()
        # The local executor's run needs no cluster: it runs while the cluster starts (~15 s less in all).
        t = time.monotonic()
        command = batch_command(work, "--batch-id", "local", "--prefix", "local", "--out", str(work / "out-local"))
        local = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cluster = LocalRayCluster(work / "ray", nodes=2, env=base_env, hide=[inputs]).start()
        address = cluster.address
        facts["cluster_nodes"] = cluster.wait_nodes(2)
        log(f"cluster up: {len(facts['cluster_nodes'])} nodes")

        out, err = local.communicate(timeout=300)
        done = subprocess.CompletedProcess(command, local.returncode, out, err)
        facts["local"] = {"rc": done.returncode, "stderr": err[-2000:], "seconds": time.monotonic() - t,
                          "result": result_of(done),
                          **journal_facts(state, "local")}  # fmt: skip
        log(f"local run: rc {done.returncode}")

        stop, killed = threading.Event(), []
        killer = threading.Thread(target=kill_one_recording_worker, args=(stop, killed), daemon=True)
        killer.start()
        t = time.monotonic()
        ray = batch(env, work, "--batch-id", "ray", "--prefix", "ray", "--out", str(work / "out-ray"),
                    "--ray-address", address)  # fmt: skip
        stop.set()
        facts["ray"] = {"rc": ray.returncode, "stderr": ray.stderr[-2000:], "seconds": time.monotonic() - t,
                        "result": result_of(ray), "killed_workers": killed,
                        **journal_facts(state, "ray")}  # fmt: skip
        s3c = make_s3_client(S3Settings(endpoint_url=s3.endpoint_url, access_key_id=s3.access_key,
                                        secret_access_key=s3.secret_key))  # fmt: skip
        listing = s3c.list_objects_v2(Bucket=BUCKET, Prefix="ray/").get("Contents", [])
        facts["ray"]["objects"] = sorted(o["Key"] for o in listing)
        log(f"ray run: rc {ray.returncode}, killed {killed}")

        # The driver killed with tasks in flight, then the same command again.
        cmd = [sys.executable, "-m", "assetprep", "batch", str(work / "leads.csv"), "--replica", DEFAULT_REPLICA,
               "--allow-private-networks", "--poll", "0.2", "--background-preset", str(work / "small.toml"), "--batch-id",
               "driver", "--prefix", "driver", "--out", str(work / "out-driver"), "--ray-address", address]  # fmt: skip
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 120
        journal = state / "batches" / "driver" / "journal.sqlite"
        while time.monotonic() < end:
            # Read-only, so the poll never creates the file; it can appear before the driver has written its schema:
            # "unable to open" and "no such table" both mean "not yet".
            try:
                with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
                    done = db.execute("SELECT COUNT(*) FROM preps WHERE state = 'uploaded'").fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
            if done >= 1:
                break
            time.sleep(0.1)
        first.kill()
        first.wait(timeout=30)
        t = time.monotonic()
        again = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=300)
        facts["driver"] = {"rc": again.returncode, "stderr": again.stderr[-2000:], "seconds": time.monotonic() - t,
                           "result": result_of(again),
                           **journal_facts(state, "driver")}  # fmt: skip
        log(f"driver rerun: rc {again.returncode}")

        with TavusClient(api_key=sb.api_key, base_url=sb.base_url) as client:
            names = [v.video_name or "" for v in client.list_videos()]
        facts["videos_per_batch"] = {b: sum(n.startswith(f"assetprep-{b}-") for n in names)
                                     for b in ("local", "ray", "driver")}  # fmt: skip
        # Creates the sandbox answered 200. A POST cut off by the kill -9 is counted by the sandbox too (every request
        # is), but it created nothing; its status is kept for the failure message.
        creates = [c for c in sb.calls() if c["method"] == "POST" and c["path"] == "/v2/videos"]
        facts["posts"] = sum(1 for c in creates if c.get("status") == 200)
        facts["post_statuses"] = [c.get("status") for c in creates]

        # The driver stopped with SIGTERM while the cluster records for it: one line and 143, as without Ray (ray.init
        # had put in its own handlers: a C++ stack dump and exit 15), and the recordings on the nodes stop.
        cmd_term = [*cmd[: cmd.index("--batch-id")], "--batch-id", "term", "--prefix", "term", "--out",
                    str(work / "out-term"), "--ray-address", address]  # fmt: skip
        term = subprocess.Popen(cmd_term, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        end, recording = time.monotonic() + 120, []
        while time.monotonic() < end and term.poll() is None and not (recording := recording_workers()):
            time.sleep(0.05)
        facts["term"] = {"recording_at_signal": recording}  # as seen when the signal was sent, not scanned again
        term.send_signal(signal.SIGTERM)
        t = time.monotonic()
        _, term_err = term.communicate(timeout=60)
        facts["term"].update(rc=term.returncode, stderr=term_err[-3000:], exit_seconds=time.monotonic() - t)
        end = time.monotonic() + 15
        while time.monotonic() < end and (recording := recording_workers()):
            time.sleep(0.1)
        facts["term"].update(recording_after=recording, stopped_seconds=time.monotonic() - t)
        log(f"sigterm: rc {term.returncode} in {facts['term']['exit_seconds']:.1f} s")

        # Inputs only the driver has reach the nodes through the bucket: per-lead audio, a local clip, and a local
        # page with its folder (its colour comes from a stylesheet beside it: white if that did not travel).
        for name, args in (
            ("ann.wav", ["-f", "lavfi", "-i", "sine=f=300:d=3.5"]),
            ("bob.m4a", ["-f", "lavfi", "-i", "sine=f=500:d=4", "-c:a", "aac"]),
            ("loop.mp4", ["-f", "lavfi", "-i", "testsrc2=s=320x180:r=25:d=2", "-pix_fmt", "yuv420p"]),
        ):
            subprocess.run(["ffmpeg", "-v", "error", *args, str(inputs / name)], check=True, timeout=60)
        (inputs / "site").mkdir()
        (inputs / "site" / "index.html").write_text('<link rel="stylesheet" href="style.css"><p>Hello</p>')
        (inputs / "site" / "style.css").write_text(
            "html, body { margin: 0; height: 100%; background: rgb(0, 160, 80) }"
        )
        (work / "shipped.csv").write_text(
            f"first_name,audio,script,background,background_seconds\nAnn,{inputs / 'ann.wav'},,,\n"
            f"Bob,{inputs / 'bob.m4a'},,,\nCy,,Hi Cy.,{inputs / 'loop.mp4'},\nDi,,Hi Di.,{inputs / 'site'},2\n"
        )
        shipped = subprocess.run([sys.executable, "-m", "assetprep", "batch", str(work / "shipped.csv"), "--replica",
                                  DEFAULT_REPLICA, "--allow-private-networks", "--poll", "0.2", "--batch-id",
                                  "shipped", "--prefix", "shipped", "--out", str(work / "out-shipped"), "--json",
                                  "--background-preset", str(work / "small.toml"),
                                  "--ray-address", address], env=env, capture_output=True, text=True,
                                 timeout=300)  # fmt: skip
        listing = s3c.list_objects_v2(Bucket=BUCKET, Prefix="shipped/").get("Contents", [])
        facts["shipped"] = {"rc": shipped.returncode, "stderr": shipped.stderr[-2000:], "result": result_of(shipped),
                            "objects": sorted(o["Key"] for o in listing), **journal_facts(state, "shipped"),
                            "inputs": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in inputs.iterdir()
                                       if f.is_file()}}  # fmt: skip
        facts["shipped"]["background_centres"] = sorted(
            centre_rgb(s3c, p["s3_key"]) for p in facts["shipped"]["preps"].values() if p["kind"] == "background"
        )
        seen = subprocess.run([sys.executable, "-c", SEEN % (address, str(inputs))], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        facts["shipped"]["nodes_see"] = (
            json.loads(seen.stdout.strip().splitlines()[-1]) if seen.returncode == 0 else seen.stderr[-2000:]
        )
        log(f"shipped inputs: rc {shipped.returncode}")

        t = time.monotonic()
        wrong = batch(env, work, "--batch-id", "wrong", "--ray-address", f"127.0.0.1:{free_port()}", timeout=60)
        facts["wrong"] = {"rc": wrong.returncode, "stderr": wrong.stderr, "seconds": time.monotonic() - t}

        # A node without ffmpeg (and with a wrong S3 secret) joins: doctor names it, and a task that lands there
        # names node and tool.
        # It also runs another build of assetprep (a copy with one line more, on its PYTHONPATH; this build's
        # folder is hidden there, since Ray puts the driver's sys.path first on every worker), and the manifest's
        # pages are not there, as on another machine.
        here, other = Path(assetprep.__file__).parent, work / "other-build"
        shutil.copytree(here, other / "assetprep", ignore=shutil.ignore_patterns("__pycache__"))
        with (other / "assetprep" / "_prepare.py").open("a") as f:
            f.write("# another build\n")
        bad = cluster.add_node({"FFMPEG": "/nonexistent", "AWS_SECRET_ACCESS_KEY": "not-the-secret",
                                "PYTHONPATH": str(other)}, hide=[PAGES, here])  # fmt: skip
        doctor = subprocess.run([sys.executable, "-m", "assetprep", "doctor", "--ray-address", address, "--json"],
                                env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        facts["doctor"] = {"rc": doctor.returncode, "checks": json.loads(doctor.stdout)["checks"], "bad_node": bad,
                           "code": code_fingerprint()}  # fmt: skip
        pinned = subprocess.run([sys.executable, "-c", PINNED % (address, BUCKET, s3.endpoint_url, bad, code_fingerprint())], env=env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        facts["pinned"] = {"rc": pinned.returncode, "stdout": pinned.stdout, "stderr": pinned.stderr[-2000:]}

        # A batch on that cluster: refused before any task runs, the node named with both problems.
        posts_before = sum(1 for c in sb.calls() if c["method"] == "POST" and c["path"] == "/v2/videos")
        t = time.monotonic()
        refused = batch(env, work, "--batch-id", "refused", "--prefix", "refused", "--out", str(work / "out-refused"),
                        "--ray-address", address, timeout=180)  # fmt: skip
        facts["refused"] = {
            "rc": refused.returncode, "stderr": refused.stderr, "seconds": time.monotonic() - t,
            "posts": sum(1 for c in sb.calls() if c["method"] == "POST" and c["path"] == "/v2/videos") - posts_before,
            "objects": [o["Key"] for o in s3c.list_objects_v2(Bucket=BUCKET, Prefix="refused/").get("Contents", [])],
        }  # fmt: skip
        dry = batch(env, work, "--batch-id", "refused", "--ray-address", address, "--dry-run", timeout=180)
        facts["refused"]["dry_run"] = {"rc": dry.returncode, "stderr": dry.stderr}
        log(f"refused batch: rc {refused.returncode}, dry run rc {dry.returncode}")
    finally:
        if local is not None and local.poll() is None:  # the scenario failed while it ran
            local.kill()
            local.wait(timeout=30)
        if cluster is not None:
            temp_dir = cluster.temp_dir
            cluster.stop()
            # What the cluster leaves behind: its own folder gone, no session of its nodes or drivers in /tmp/ray.
            facts["leftovers"] = {"temp_dir": str(temp_dir), "temp_dir_exists": temp_dir is not None and temp_dir.exists(),
                                  "new_sessions": sorted(map(str, set(Path("/tmp/ray").glob("session_2*")) - sessions_before))}  # fmt: skip
        for server in reversed(servers):
            server.stop()
        (work / "facts.json").write_text(json.dumps(facts, indent=2, default=str))


SEEN = """
import json, os, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=%r, logging_level="ERROR", log_to_driver=False)
folder = %r
look = ray.remote(num_cpus=0)(lambda: sorted(os.listdir(folder)))
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
refs = [look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in nodes]
print(json.dumps(ray.get(refs, timeout=60)))
"""

PINNED = """
import json, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from assetprep._ray import _prepare_on_node
from assetprep._prepare import PrepTask, S3Target
ray.init(address=%r, logging_level="ERROR", log_to_driver=False)
task = PrepTask(key="0" * 64, kind="audio", source="/nonexistent.wav", s3=S3Target(bucket=%r, endpoint_url=%r))
ref = ray.remote(_prepare_on_node).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(%r, soft=False))
for code in (%r, None):  # the driver's build (a node that joined after the check), then none (its tools)
    print(json.dumps(ray.get(ref.remote(task.model_dump(), code), timeout=60)))
"""


if __name__ == "__main__":
    main(Path(sys.argv[1]))
