"""assetprep batch --ray-address on a real two-node Ray cluster on 127.0.0.1 (inside `unshare -n`: only loopback).

The cluster, SeaweedFS and the sandbox are started and stopped by tests/ray_scenario.py; this test asserts on what
it measured: where tasks ran, the fault cases, and equality with the local executor.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCENARIO = Path(__file__).parent / "ray_scenario.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (assetprep[ray])"),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root for unshare -n"),
]


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    work = tmp_path_factory.mktemp("ray")
    script = f"ip link set lo up && exec {sys.executable} {SCENARIO} {work}"
    proc = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=840)
    path = work / "facts.json"
    assert path.exists(), proc.stderr[-3000:]
    data = json.loads(path.read_text())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data


def test_recordings_run_in_ray_workers_and_match_the_local_executor(facts):
    local, ray = facts["local"], facts["ray"]
    assert local["rc"] == 0, local["stderr"]
    assert ray["rc"] == 0, ray["stderr"]
    assert ray["result"]["executor"] == "ray" and ray["result"]["counts"] == {"downloaded": 6}
    cluster = set(facts["cluster_nodes"])
    places = [p for p in ray["prepared_on"] if p]
    assert len(places) == 6
    for place in places:
        assert place["background"]["node"] in cluster  # a Ray node id, not this host's name
    pids = {p["background"]["pid"] for p in places}
    local_pids = {p["background"]["pid"] for p in local["prepared_on"] if p}
    assert pids.isdisjoint(local_pids)  # not the driver's process
    # Deterministic recordings: the same bytes from a Ray worker as from the local executor.
    local_shas = sorted(p["sha256"] for p in local["preps"].values())
    ray_shas = sorted(p["sha256"] for p in ray["preps"].values())
    assert len(ray_shas) == 3 and ray_shas == local_shas


def test_a_killed_worker_is_retried_without_a_second_copy(facts):
    ray = facts["ray"]
    assert len(ray["killed_workers"]) == 1  # one recording worker was SIGKILLed mid-recording
    assert ray["result"]["counts"] == {"downloaded": 6}
    prep_objects = [k for k in ray["objects"] if "/prep/" in k]
    assert len(prep_objects) == 3  # three pages, three objects: the retry wrote the same key
    assert facts["videos_per_batch"]["ray"] == 6


def test_a_killed_driver_reschedules_only_what_is_missing(facts):
    driver = facts["driver"]
    assert driver["rc"] == 0, driver["stderr"]
    assert driver["result"]["counts"] == {"downloaded": 6}
    assert driver["result"]["prepared_now"] < 3  # what the killed run finished was found, not redone
    assert facts["videos_per_batch"] == {"local": 6, "ray": 6, "driver": 6}
    assert facts["posts"] == 18, facts["post_statuses"]  # exactly one video created per row in every batch


def test_a_sigterm_to_the_driver_is_one_line_and_stops_the_recordings_on_the_nodes(facts):
    """ray.init had put its own SIGTERM handlers in place of the CLI's: the driver printed a C++ stack dump
    ("*** SIGTERM received at time=... PC: @ ... clock_nanosleep") and exited 15."""
    term = facts["term"]
    assert term["recording_at_signal"], term  # the signal came while a node recorded for the batch
    assert term["rc"] == 128 + 15 and term["exit_seconds"] < 10, term
    assert "interrupted" in term["stderr"] and "SIGTERM received" not in term["stderr"], term["stderr"]
    assert "Traceback" not in term["stderr"], term["stderr"]
    assert term["recording_after"] == [] and term["stopped_seconds"] < 15, term  # cancelled on the nodes too


def test_the_drivers_own_audio_clips_and_pages_reach_nodes_that_do_not_have_them(facts):
    """Per-lead audio files, a local clip and a local page that only the driver has (the nodes see their folder
    empty, as machines without them would): before, the batch refused ("does not see 3 of the 3 local input(s)");
    now they go through the bucket once, content-addressed (a page as a tar of its folder), and each node fetches
    and checks them."""
    shipped = facts["shipped"]
    assert shipped["rc"] == 0, shipped["stderr"]
    assert shipped["result"]["counts"] == {"downloaded": 4} and shipped["result"]["executor"] == "ray"
    assert shipped["nodes_see"] == [[], []] and len(shipped["inputs"]) == 3
    sent = sorted(k for k in shipped["objects"] if "/inputs/" in k and not k.endswith("/site.tar"))
    assert sent == sorted(f"shipped/inputs/{sha[:16]}/{name}" for name, sha in shipped["inputs"].items())
    assert len([k for k in shipped["objects"] if k.endswith("/site.tar")]) == 1
    assert len([k for k in shipped["objects"] if "/prep/" in k]) == 4
    # The page's colour is its stylesheet's (a file beside it), recorded on a node from the folder sent with it:
    # rgb(0, 160, 80) reads back as about (0, 138, 78) through the encoder's YUV; without the stylesheet, white.
    centres = shipped["background_centres"]
    assert any(r < 30 and g > 110 and b < 110 for r, g, b in centres), centres
    cluster = set(facts["cluster_nodes"])
    assert {p["node"] for p in shipped["preps"].values()} <= cluster


def test_a_wrong_address_fails_in_seconds_and_a_node_without_ffmpeg_is_named(facts):
    wrong = facts["wrong"]
    assert wrong["rc"] == 1 and wrong["seconds"] < 20
    assert "cannot reach the Ray cluster at 127.0.0.1:" in wrong["stderr"] and "Traceback" not in wrong["stderr"]
    doctor = facts["doctor"]
    nodes = [c for c in doctor["checks"] if c["name"].startswith("ray node")]
    assert len(nodes) == 3 and doctor["rc"] == 1
    bad = [c for c in nodes if not c["ok"]]
    assert len(bad) == 1 and bad[0]["name"] == f"ray node {doctor['bad_node'][:12]}" and "ffmpeg" in bad[0]["detail"]
    assert "S3:" in bad[0]["detail"]  # its wrong secret: the bucket as that node sees it
    detail = bad[0]["detail"]
    assert "runs assetprep 0.1.0+" in detail and f"where the driver runs {doctor['code']}" in detail
    assert bad[0]["detail"].count(doctor["code"]) == 1  # its own build differs
    assert all("bucket reachable" in c["detail"] for c in nodes if c["ok"])
    build, tools = (json.loads(x)["error"] for x in facts["pinned"]["stdout"].strip().splitlines()[-2:])
    assert build.startswith(f"node {doctor['bad_node'][:12]}") and f"where the driver runs {doctor['code']}" in build
    assert tools.startswith(f"node {doctor['bad_node'][:12]}") and "lacks ffmpeg" in tools


def test_a_batch_on_a_cluster_with_a_broken_node_stops_before_any_work(facts):
    refused, bad = facts["refused"], facts["doctor"]["bad_node"]
    assert refused["rc"] == 1 and "Traceback" not in refused["stderr"], refused["stderr"]
    assert "1 node(s) of the cluster cannot prepare this batch; nothing was started" in refused["stderr"]
    line = next(x for x in refused["stderr"].splitlines() if bad[:12] in x)
    assert "lacks ffmpeg" in line and "S3:" in line and "not-the-secret" not in refused["stderr"]
    assert "does not see" not in line  # the pages it lacks travel through the bucket
    assert "install the same build on every node" in line
    assert refused["posts"] == 0 and refused["objects"] == []  # nothing recorded, uploaded or created
    assert refused["seconds"] < 60
    dry = refused["dry_run"]  # --dry-run makes the same check
    assert dry["rc"] == 1 and "Traceback" not in dry["stderr"]
    assert any(bad[:12] in x and "lacks ffmpeg" in x for x in dry["stderr"].splitlines()), dry["stderr"]


def test_the_cluster_leaves_no_sessions_behind(facts):
    left = facts["leftovers"]
    assert left["temp_dir"].startswith(tempfile.gettempdir()) and not left["temp_dir_exists"]
    assert left["new_sessions"] == []  # before: one /tmp/ray/session_* (~0.7 MB) per run, never removed
