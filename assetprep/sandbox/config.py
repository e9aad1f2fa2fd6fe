"""Sandbox settings, stock replicas and the API's two timestamp formats."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# Stock replicas: two that work, one still training (videos stay queued), one broken (videos end in error).
REPLICAS: dict[str, dict[str, str]] = {
    "r90bbd427f71": {"replica_name": "Anna", "status": "completed", "replica_type": "system"},
    "r79e1c033f": {"replica_name": "Marcus", "status": "completed", "replica_type": "system"},
    "rb17cf590e15": {"replica_name": "Kai", "status": "started", "replica_type": "user"},
    "re8e740a42": {"replica_name": "Broken", "status": "error", "replica_type": "user"},
}
DEFAULT_REPLICA = "r90bbd427f71"

# status_details: Tavus's codes where it documents codes (video_queued, replica_in_training, video_success, the error
# types such as audio_file_min_duration); elsewhere the sentences of its callback examples. Never null.
GENERATING = "Your request is being processed."
SUCCESS_SENTENCE = "Your request has processed successfully!"
ERROR_SENTENCE = "An error occurred while generating this request. Please check your inputs or try your request again."

# Sandbox limits (README: Sandbox): request bodies and scripts (tavus.SCRIPT_MAX_CHARS) above these are refused at
# once (413 / 400).
MAX_BODY_BYTES = 1 << 20


class SandboxConfig(BaseModel):
    """How the sandbox runs; every fault knob is off by default and deterministic through `seed`."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path
    api_key: str = Field(min_length=1, repr=False)
    host: str = "127.0.0.1"
    port: int = 8700
    public_url: str = ""  # base of hosted/download URLs; default http://host:port
    speed: float = Field(default=1.0, gt=0)
    queue_seconds: float = Field(default=2.0, ge=0)
    generate_seconds: float = Field(default=10.0, ge=0)
    workers: int = Field(default=2, ge=1, le=16)
    seed: int = 0
    rate_limit: float | None = Field(default=None, gt=0)  # requests per second
    fail_create_rate: float = Field(default=0.0, ge=0, le=1)
    drop_connection_after_create: int = 0  # drop the answer of the first N creates (-1: every create)
    lose_creates: int = Field(default=0, ge=0)  # cut the first N creates before storing them (a request lost)
    drop_download_after: int = Field(default=0, ge=0)  # cut each video's first download after N bytes
    fail_downloads: int = Field(default=0, ge=0)  # answer the first N video downloads 503 (a file host's outage)
    fail_render_rate: float = Field(default=0.0, ge=0, le=1)
    latency: float = Field(default=0.0, ge=0)
    callback_attempts: int = Field(default=4, ge=1)
    # Load tests (scripts/bench_batch.py): render the first video only and copy it for every later one, without
    # fetching their inputs, so the sandbox's own ffmpeg work does not hide the client's speed.
    render_once: bool = False

    def model_post_init(self, _context: object) -> None:
        if not self.public_url:
            self.public_url = f"http://{self.host}:{self.port}"
        self.public_url = self.public_url.rstrip("/")


def http_time(ts: float | None = None) -> str:
    """RFC 1123, as in create responses: `Mon, 14 Jul 2025 09:14:24 GMT`."""
    when = datetime.fromtimestamp(ts, UTC) if ts is not None else datetime.now(UTC)
    return email.utils.format_datetime(when, usegmt=True)


def callback_time(ts: float) -> str:
    """As in callbacks: `2024-08-28 15:27:40.824457`, no timezone (UTC here)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
