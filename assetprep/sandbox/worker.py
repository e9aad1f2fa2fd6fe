"""The sandbox's video lifecycle: queued → generating (progress) → ready | error, then the callback.

Worker threads take video ids from a queue; every state change is written to SQLite at once, so a restarted sandbox
re-queues what was unfinished and renders it again.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from .._urls import redact_url
from .config import (
    ERROR_SENTENCE,
    GENERATING,
    REPLICAS,
    SUCCESS_SENTENCE,
    SandboxConfig,
    callback_time,
    http_time,
)
from .render import (
    AUDIO_MAX_BYTES,
    RenderFailure,
    RenderJob,
    check_audio_input,
    check_background_input,
    extras,
    fetch,
    speak,
)
from .render import render as render_video
from .store import Store

log = logging.getLogger("assetprep.sandbox")
BACKGROUND_MAX_BYTES = 2 * 1024**3
RECORD_MAX_SECONDS = 30.0


class Stopped(Exception):
    """The sandbox is shutting down, or the video was deleted while rendering."""


class Lifecycle:
    def __init__(self, config: SandboxConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.jobs: queue.Queue[str] = queue.Queue()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.render_cache: dict[bool, Path] = {}  # SandboxConfig.render_once: transparent? → first rendered file

    def start(self) -> None:
        for vid in self.store.unfinished():
            self.store.update(vid, status="queued", generation_progress="0/100", status_details="video_queued")
            self.jobs.put(vid)
        for i in range(self.config.workers):
            t = threading.Thread(target=self._loop, name=f"sandbox-worker-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(timeout=max(0.1, end - time.monotonic()))

    def submit(self, video_id: str) -> None:
        self.jobs.put(video_id)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                vid = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._process(vid)
            except Stopped:
                pass
            except Exception:  # a bug must not kill the worker; the video ends in error
                log.exception("video %s failed in the sandbox", vid)
                self._finish(vid, status="error", status_details=ERROR_SENTENCE, error_details=None)

    def _pause(self, seconds: float, vid: str) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.stopping.wait(min(0.1, max(0.0, end - time.monotonic()))):
                raise Stopped
        self._alive(vid)

    def _alive(self, vid: str) -> dict[str, Any]:
        got = self.store.get(vid)
        if got is None or got[0]["status"] == "deleted" or self.stopping.is_set():
            raise Stopped
        return got[0]

    def _set(self, vid: str, **fields: Any) -> None:
        self._alive(vid)
        self.store.update(vid, updated_at=http_time(), **fields)

    def _process(self, vid: str) -> None:
        got = self.store.get(vid)
        if got is None or got[0]["status"] not in ("queued", "generating"):
            return
        _, req = got
        replica = REPLICAS.get(req["replica_id"], {})
        if replica.get("status") == "started":
            # Tavus keeps a video queued while its replica trains; the sandbox's training replica never finishes.
            self._set(vid, status="queued", status_details="replica_in_training")
            return
        if replica.get("status") == "error":
            self._finish(vid, status="error", status_details="replica_in_error_state",
                         error_details=f"replica {req['replica_id']} is in an error state")  # fmt: skip
            return
        speed = self.config.speed
        self._pause(self.config.queue_seconds / speed, vid)
        started = time.monotonic()
        min_seconds = self.config.generate_seconds / speed
        self._set(vid, status="generating", generation_progress="0/100", status_details=GENERATING)
        work = self.config.data_dir / "work" / vid
        out_dir = self.config.data_dir / "files" / vid
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        last = [0.0]

        def report(fraction: float) -> None:
            # Shown progress never runs ahead of the minimum lifecycle time, so tests see it advance.
            shown = min(fraction, (time.monotonic() - started) / min_seconds if min_seconds else 1.0, 0.99)
            if time.monotonic() - last[0] >= 0.2:
                last[0] = time.monotonic()
                self._set(vid, generation_progress=f"{int(shown * 100)}/100")

        transparent = bool(req.get("transparent_background"))
        out = out_dir / ("video.webm" if transparent else "video.mp4")
        cached = self.render_cache.get(transparent) if self.config.render_once else None
        fast = bool(req.get("fast")) or cached is not None
        try:
            if cached is not None:  # load tests: the first video's file stands in for every later one
                shutil.copyfile(cached, out)
            else:
                job = self._inputs(vid, req, work)
                report(0.1)
                if req.get("_fail_render"):
                    self._pause(min_seconds / 2, vid)
                    raise RenderFailure(ERROR_SENTENCE, "render failed (injected by sandbox --fail-render-rate)")
                render_video(job, out, work, timeout=300 + 10 * job.duration,
                             on_progress=lambda p: report(0.1 + 0.8 * (p.fraction or 0.0)))  # fmt: skip
                if not job.fast:
                    extras(out, out_dir)
                if self.config.render_once:
                    self.render_cache.setdefault(transparent, out)
            while (time.monotonic() - started) < min_seconds:
                report(1.0)
                self._pause(0.1, vid)
        except RenderFailure as failure:
            self._finish(vid, status="error", status_details=failure.status_details,
                         error_details=failure.error_details)  # fmt: skip
            return
        finally:
            shutil.rmtree(work, ignore_errors=True)
        base = self.config.public_url
        fields: dict[str, Any] = {
            "download_url": f"{base}/files/{vid}/{out.name}",
            "generation_progress": "100/100",
            "status_details": "video_success",
        }
        if not fast:
            fields |= {
                "stream_url": f"{base}/files/{vid}/hls/index.m3u8",
                "still_image_thumbnail_url": f"{base}/files/{vid}/thumbnail.jpg",
                "gif_thumbnail_url": f"{base}/files/{vid}/thumbnail.gif",
            }
        self._finish(vid, status="ready", **fields)

    def _inputs(self, vid: str, req: dict[str, Any], work: Path) -> RenderJob:
        if req.get("audio_url"):
            audio = fetch(req["audio_url"], work / "audio_in", what="audio_url",
                          status_details="audio_file_download_link", max_bytes=AUDIO_MAX_BYTES)  # fmt: skip
            duration = check_audio_input(audio, req["audio_url"])
            script = None
        else:
            script = req["script"]
            audio = speak(script, work)
            from ..probe import probe

            duration = probe(audio).duration or 1.0
        self._alive(vid)
        background = None
        fast = bool(req.get("fast"))
        if req.get("background_source_url") and not fast:
            background = fetch(req["background_source_url"], work / "background_in", what="background_source_url",
                               status_details=ERROR_SENTENCE, max_bytes=BACKGROUND_MAX_BYTES)  # fmt: skip
            check_background_input(background)
        elif req.get("background_url") and not fast:
            background = self._record(req, work, min(duration, RECORD_MAX_SECONDS))
        name = REPLICAS.get(req["replica_id"], {}).get("replica_name", req["replica_id"])
        return RenderJob(audio=audio, duration=duration, replica_name=name, background=background, script=script,
                         fast=fast, transparent=bool(req.get("transparent_background")))  # fmt: skip

    def _record(self, req: dict[str, Any], work: Path, seconds: float) -> Path:
        """Tavus records background_url itself; the sandbox does it with assetprep's recorder."""
        from ..errors import AssetprepError

        try:
            from ..record import RecordOptions, record
        except ImportError:
            raise RenderFailure(ERROR_SENTENCE, "the sandbox cannot record background_url (no recorder)") from None
        props = req.get("properties") or {}
        scroll = "none" if props.get("background_scroll") is False else props.get("background_scroll_type", "human")
        options = RecordOptions(
            preset="background-720p", duration=max(1.0, seconds), fps=15, scroll=scroll,
            scroll_depth=props.get("background_scroll_depth", "middle"),
            scroll_return=props.get("background_scroll_return", "return"), timeout=120.0,
        )  # fmt: skip
        try:
            return record(req["background_url"], work / "background.mp4", options).output
        except AssetprepError as exc:
            raise RenderFailure(ERROR_SENTENCE, f"background_url could not be recorded: {exc.message}") from None

    def _finish(self, vid: str, **fields: Any) -> None:
        got = self.store.get(vid)
        if got is None or got[0]["status"] == "deleted":
            return  # deleted while rendering: it stays deleted
        record = self.store.update(vid, updated_at=http_time(), **fields)
        url = got[1].get("callback_url")
        if url:
            threading.Thread(target=self._callback, args=(url, record), daemon=True).start()

    def _callback(self, url: str, record: dict[str, Any]) -> None:
        payload = callback_payload(record, self.config.public_url)
        delay = 1.0 / self.config.speed
        for attempt in range(self.config.callback_attempts):
            status = 0
            with contextlib.suppress(httpx.HTTPError):  # unreachable receiver: counts as a failed attempt
                status = httpx.post(url, json=payload, timeout=10.0).status_code
            self.store.log_call("CALLBACK", redact_url(url), status, record["video_id"])
            if 200 <= status < 300 or attempt == self.config.callback_attempts - 1:
                return
            if self.stopping.wait(delay * (2**attempt) * (1 + 0.1 * random.random())):
                return


OWN_URLS = ("download_url", "hosted_url", "stream_url", "still_image_thumbnail_url", "gif_thumbnail_url")


def at_base(record: dict[str, Any], base: str) -> dict[str, Any]:
    """The record with the sandbox's own URLs at its address now. They are stored with the address of the process
    that made them; a sandbox restarted on another port (same data folder) would hand out dead links."""
    out = dict(record)
    for key in OWN_URLS:
        if url := out.get(key):
            parts = urlsplit(url)
            if parts.path.startswith(("/files/", "/v/")):
                out[key] = base + parts.path + (f"?{parts.query}" if parts.query else "")
    return out


def callback_payload(record: dict[str, Any], base: str) -> dict[str, Any]:
    """The record in the callback's shape (API.md: timestamps without timezone, error_details only on error)."""
    keys = ("created_at", "data", "download_url", "generation_progress", "hosted_url", "replica_id", "status",
            "status_details", "stream_url", "updated_at", "video_id", "video_name")  # fmt: skip
    rebased = at_base(record, base)
    out = {k: rebased.get(k) for k in keys}
    out["created_at"] = callback_time(record["_created"])
    out["updated_at"] = callback_time(time.time())
    if out["status_details"] == "video_success":  # the callback example's words for it
        out["status_details"] = SUCCESS_SENTENCE
    if record.get("status") == "error":
        out["error_details"] = record.get("error_details")
    return out
