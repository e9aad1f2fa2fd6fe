"""`assetprep doctor`: is this machine ready to publish? Each check says what is wrong and how to fix it."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import _process
from .errors import AssetprepError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _tool(name: str) -> Check:
    try:
        path = _process.find_tool(name)
        line = _process.run([path, "-version"], timeout=20).stdout.decode(errors="replace").splitlines()[0]
        return Check(name, True, line[:80])
    except AssetprepError as exc:
        return Check(name, False, exc.message, exc.hint or "")


def _chromium() -> Check:
    try:
        from playwright.sync_api import sync_playwright

        from .record import find_chromium

        with sync_playwright() as pw:
            found = find_chromium(pw)
        if found and "headless" not in Path(found).name:
            return Check("chromium", True, f"{found} (full Chromium: exact recording takes slower screenshots)",
                         "apt-get install -y chromium-headless-shell (frame-by-frame capture, faster)")  # fmt: skip
        return Check("chromium", True, found or "Playwright's own Chromium")
    except AssetprepError as exc:
        return Check("chromium", False, exc.message, exc.hint or "")


def _s3(bucket: str | None) -> Check:
    from .upload import S3Settings, ensure_bucket, make_s3_client

    if not bucket:
        return Check("s3", False, "no bucket configured", "pass --bucket or set ASSETPREP_BUCKET")
    try:
        ensure_bucket(make_s3_client(S3Settings(), connect_timeout=3, retries=0), bucket)
        where = os.environ.get("AWS_ENDPOINT_URL_S3") or "AWS"
        return Check("s3", True, f"bucket {bucket} reachable at {where}")
    except AssetprepError as exc:
        return Check("s3", False, exc.message, exc.hint or "check the AWS_* settings")


def _tavus() -> Check:
    from .tavus import TavusClient, is_real_tavus

    try:
        with TavusClient(timeout=10, max_retries=1) as client:
            replicas = client.list_replicas()
            kind = "Tavus" if is_real_tavus(client.base_url) else "a Tavus-compatible server (sandbox?)"
            return Check("tavus", True, f"API key accepted by {kind} at {client.base_url}; {len(replicas)} replicas")
    except AssetprepError as exc:
        return Check("tavus", False, exc.message, exc.hint or "")


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages(setting: Path = THP) -> Check:
    """Advice, never a failure. Chromium takes fresh memory for each frame it records (~34 MB at 1080p: 8,600 page
    faults a frame here), and the kernel's work mapping it was a quarter of a 1080p recording's CPU. With transparent
    huge pages on `always` (a setting of the machine, for its root to make), 6 of 6 interleaved pairs of 10 s 1080p
    recordings were faster: median 1.79x against 1.97x real time, 38% fewer page faults."""
    try:
        text = setting.read_text()
    except OSError:
        return Check("hugepages", True, "no transparent huge page setting here (not Linux?)")
    found = re.search(r"\[(\w+)\]", text)
    mode = found[1] if found else text.strip()
    if mode == "always":
        return Check("hugepages", True, "transparent huge pages: always")
    tip = f"on a machine that records, as root: echo always > {setting} (1080p recordings 3-9% faster)"
    return Check("hugepages", True, f"transparent huge pages: {mode}", tip)


def run_checks(bucket: str | None = None) -> list[Check]:
    checks = [_tool("ffmpeg"), _tool("ffprobe"), _chromium(), huge_pages()]
    espeak = shutil.which("espeak-ng")
    checks.append(Check("espeak-ng", True, espeak or "absent: the sandbox speaks scripts as a tone bed"))
    checks += [_s3(bucket), _tavus()]
    return checks


def ray_checks(address: str, bucket: str | None) -> list[Check]:
    """One check per alive node of a Ray cluster: the tools a preparation needs and the bucket, as that node sees
    them (its own PATH and S3 credentials)."""
    from ._ray import check_cluster, node_problems

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    checks = []
    for node in check_cluster(address, bucket=bucket, endpoint_url=endpoint):
        name = f"ray node {node['node'][:12]}"
        problems = node_problems(node)
        detail = f"{node['host']}: " + ("; ".join(problems) if problems else "ffmpeg, ffprobe, Chromium"
                                         + (", bucket reachable" if node["s3"] == "ok" else ""))  # fmt: skip
        fix = "install what it lacks on that node, or give it AWS credentials for the bucket" if problems else ""
        checks.append(Check(name, not problems, detail, fix))
    return checks
