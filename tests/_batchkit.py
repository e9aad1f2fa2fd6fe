"""Helpers shared by the batch tests (test_batch.py, test_batch_faults.py)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from assetprep.sandbox import LocalSandbox
from assetprep.tavus import TavusClient

PAGES = Path(__file__).parent / "pages"
BROKEN_REPLICA = "re8e740a42"  # the sandbox's replica in an error state: its videos end in error
TRAINING_REPLICA = "rb17cf590e15"  # the sandbox's replica still training: its videos stay queued


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def read_results(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def creates(sb: LocalSandbox) -> list[dict]:
    return [c for c in sb.calls() if c["method"] == "POST" and c["path"] == "/v2/videos" and c["status"] == 200]


def api_calls(sb: LocalSandbox) -> list[dict]:
    return [c for c in sb.calls() if c["path"].startswith("/v2/")]


def account(sb: LocalSandbox) -> list:
    with TavusClient(api_key=sb.api_key, base_url=sb.base_url) as c:
        return list(c.list_videos())


def is_red(p):
    return p[0] > 180 and p[1] < 70 and p[2] < 70


def is_blue(p):
    return p[2] > 180 and p[0] < 70 and p[1] < 90


def cli(env, *args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "assetprep", "batch", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def leads_manifest(folder: Path, count: int, *, site: str | None = None, seconds: float = 3) -> Path:
    """`count` personalized rows over the red and blue pages (local files, or URLs on `site`), each recorded for
    `seconds` (3 s: what the checks need, a third of the default's recording time)."""
    path = folder / "leads.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["first_name", "company", "background", "script", "background_seconds"])
        for i in range(count):
            page = "red.html" if i % 2 == 0 else "blue.html"
            out.writerow([f"Lead{i}", f"Company {i}", f"{site}/{page}" if site else str(PAGES / page),
                          "Hi {{ first_name }}, I looked at {{ company }}.", f"{seconds:g}"])  # fmt: skip
    return path
