"""Many videos from one manifest: shared preparation, a staged pipeline, exactly once across crashes, one report.

Stages, each with its own bound: prepare + upload (an executor: local threads or Ray; equal inputs are prepared
once and shared by every row), presign (driver), submit (one thread: one global rate limit, and a 429 backs off the
whole stage), wait (one poller: GET for a few videos, the list endpoint's pages for many, or callbacks routed by
video_id), download (a few threads). Every row's state lives in a SQLite journal written before each step's effect
(the video_name before the POST), so a rerun after kill -9 adopts instead of creating again.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import hashlib
import html
import io
import json
import logging
import os
import queue
import re
import secrets
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import _process
from ._executor import Executor, make_executor
from ._files import atomic_output, file_sha256, writable_problem
from ._journal import BatchJournal, RunLock, made_elsewhere, open_checked
from ._prepare import PrepResult, PrepTask, S3Target, find_uploaded, retry_step
from ._s3http import HttpPool
from ._units import parse_duration
from ._urls import looks_like_website
from .callbacks import CallbackReceiver, check_listen
from .composite import composite
from .errors import (
    ApiConnectionError,
    ApiTimeoutError,
    AssetprepError,
    AuthenticationError,
    CancelledError,
    ConfigError,
    JournalError,
    ManifestError,
    NotFoundError,
    OutcomeUnknownError,
    OutputError,
    RateLimitError,
    ServerError,
    StorageError,
    TavusError,
)
from .manifest import (
    OPTION_COLUMNS,
    Manifest,
    Row,
    Sheet,
    identifier_form,
    is_http_url,
    load_manifest,
    option_name,
    output_problem,
    parse_rows,
)
from .normalize import tavus_audio_problem
from .probe import probe
from .progress import Progress
from .publish import (
    BackgroundSpec,
    FolderName,
    PublishOptions,
    PublishSettings,
    background_kind,
    request_fields,
    warn_if_training,
)
from .tavus import TavusClient, Video
from .upload import (
    PREFLIGHT_TIMEOUT,
    S3Settings,
    abort_stale_uploads,
    ensure_bucket,
    make_s3_client,
    preflight,
    presign,
)

log = logging.getLogger("assetprep.batch")

FINAL = ("downloaded", "failed")
_GET_BELOW = 8  # in-flight videos polled one GET each; from here on, the list endpoint's pages
_PAGE = 100
_URL_MARGIN = 3600.0
CRASH_POINTS = ("batch-after-post", "batch-after-download")


def _crash_point(name: str) -> None:
    # For the exactly-once tests: SIGKILL this process at a precise point (see publish.CRASH_POINTS).
    if os.environ.get("ASSETPREP_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class BatchOptions(BaseModel):
    """How `assetprep batch` runs; the manifest says what to make."""

    model_config = ConfigDict(extra="forbid")

    out_dir: Path | None = None  # videos, results.csv, report.html (default: <manifest>-videos/ beside it)
    dry_run: bool = False
    jobs: int | None = Field(default=None, ge=1, le=64)  # recordings at once (default cores // 2)
    submit_rate: float | None = Field(default=None, gt=0)  # creates per second, for the whole batch
    max_in_flight: int = Field(default=100, ge=1)  # videos submitted and not yet final
    retry_failed: bool = False
    rows: set[int] | str | None = None  # only these row numbers, or them as text: "3-10,17"
    max_failures: int | None = Field(default=None, ge=1)
    listen: str | None = None  # HOST:PORT of one callback receiver for the whole batch
    listen_url: str | None = None  # the public URL that reaches it (default http://HOST:PORT)
    allow_private_networks: bool = False  # manifest URLs are third-party input: the guard is on by default
    batch_id: FolderName = None
    deadline: float | None = Field(default=None, gt=0)  # seconds for this run; rendering rows stay for a rerun
    poll_interval: float | None = Field(default=None, gt=0)
    bucket: str | None = None
    prefix: str | None = None
    replica_id: str | None = None  # default for rows without one
    background: str | None = None  # default (a template) for rows without one: "{{ website }}"
    no_background: bool = False  # the videos are meant to have none, though a column holds websites
    background_preset: str | None = None
    page_timeout: float = Field(default=60.0, gt=0, le=600)  # seconds a lead's page may take to load and get ready
    ray_address: str | None = None
    downloads: int = Field(default=4, ge=1, le=32)
    report_title: list[str] | None = None  # columns that title report.html's cards (default: name and company)


@dataclass
class BatchProgress:
    """A snapshot for progress displays: rows per state, done per minute, ETA."""

    total: int
    states: dict[str, int]
    preps_total: int
    preps_done: int
    elapsed: float
    rate: float | None  # finished rows per minute
    eta: float | None  # seconds

    def line(self) -> str:
        order = ("pending", "submitting", "submitted", "ready", "downloaded", "failed")
        counts = ", ".join(f"{k} {self.states[k]}" for k in order if self.states.get(k))
        tail = f", {self.rate:.1f}/min, ETA {self.eta:.0f} s" if self.rate and self.eta is not None else ""
        # Videos, not rows: rows that make the same video share one (the summary then counts rows).
        return (f"batch: {self.states.get('downloaded', 0)}/{self.total} videos done ({counts}); "
                f"prepared {self.preps_done}/{self.preps_total}; {self.elapsed:.0f} s{tail}")  # fmt: skip


class BatchResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_id: str
    batch_dir: Path
    out_dir: Path
    results_csv: Path | None
    report_html: Path | None
    counts: dict[str, int]
    rows: list[dict[str, Any]]
    superseded: list[dict[str, Any]]  # rows of earlier runs whose manifest row was edited or removed
    preparations: int  # distinct preparations this batch needs
    prepared_now: int  # preparations done in this run (the rest were found finished)
    executor: str
    seconds: float
    dry_run: bool = False
    plan: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.dry_run or (self.counts.get("downloaded", 0) == len(self.rows) and not self.counts.get("failed"))

    def summary(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        out["ok"] = self.ok
        return out


@dataclass
class _Prep:
    task: PrepTask
    rows: set[str] = field(default_factory=set)
    state: str = "pending"  # pending | running | waiting (to be tried again at retry_at) | uploaded | failed
    url: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    step: str | None = None  # failed on what may work later ("storage", "website", "cluster"): any rerun tries again
    tries: int = 0  # made again in this run after its site was down
    retry_at: float = 0.0


def batch_dir_for(manifest: Path, settings: PublishSettings, batch_id: str | None) -> tuple[str, Path]:
    """The batch id (from the manifest's path unless given) and its folder beside publish's runs."""
    bid = batch_id or hashlib.sha256(str(manifest.resolve()).encode()).hexdigest()[:12]
    return bid, settings.runs_dir.parent / "batches" / bid


# Bumped when the same input and options make a different file, so a rerun does not reuse what the old code made:
# 2 = a background URL that serves a clip or picture is that clip (1 recorded Chromium's viewer of it).
_URL_RECIPE = 2


def _prep_key(kind: str, source: str, extra: dict[str, Any]) -> str:
    identity = {"kind": kind, "source": source, **extra}
    if is_http_url(source):
        if kind == "background":
            identity["recipe"] = _URL_RECIPE
    else:
        p = Path(source)
        target = p / "index.html" if p.is_dir() else p
        if target.is_file():
            identity["sha256"] = file_sha256(target)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def plan_preparations(
    rows: list[Row], *, settings: PublishSettings, options: BatchOptions, s3: S3Target, keep_dir: Path | None
) -> tuple[dict[str, _Prep], dict[str, dict[str, str]]]:
    """Distinct preparations (by key) and, per row, which one serves each of its inputs."""
    preps: dict[str, _Prep] = {}
    per_row: dict[str, dict[str, str]] = {}
    for row in rows:
        mine: dict[str, str] = {}
        if row.background is not None:
            kind = background_kind(row.background)
            spec = BackgroundSpec(
                preset=row.options.background_preset or options.background_preset or settings.background_preset,
                seconds=row.options.background_seconds, scroll=row.options.scroll,
                scroll_depth=row.options.scroll_depth, scroll_return=row.options.scroll_return,
                block_private_networks=kind == "page" and is_http_url(row.background)
                and not options.allow_private_networks, timeout=options.page_timeout,
            )  # fmt: skip
            mine["background"] = _prep_key("background", row.background,
                                           spec.model_dump(mode="json", exclude={"timeout"}))  # fmt: skip
            task = PrepTask(key=mine["background"], kind="background", source=row.background, background=spec, s3=s3,
                            keep_dir=str(keep_dir) if keep_dir else None)  # fmt: skip
            preps.setdefault(task.key, _Prep(task)).rows.add(row.row_id)
        if row.audio is not None:
            mine["audio"] = _prep_key("audio", str(row.audio), {"preset": "audio-wav"})
            task = PrepTask(key=mine["audio"], kind="audio", source=str(row.audio), s3=s3,
                            keep_dir=str(keep_dir) if keep_dir else None)  # fmt: skip
            preps.setdefault(task.key, _Prep(task)).rows.add(row.row_id)
        if row.watermark is not None and not is_http_url(row.watermark):
            mine["watermark"] = _prep_key("watermark", row.watermark, {})
            task = PrepTask(key=mine["watermark"], kind="watermark", source=row.watermark, s3=s3)
            preps.setdefault(task.key, _Prep(task)).rows.add(row.row_id)
        per_row[row.row_id] = mine
    return preps, per_row


def _same_bytes(copy: Path, src: Path) -> bool:
    """Whether `copy` holds `src`'s bytes: its hard link, or a file of the same size and SHA-256 (a copy made
    across file systems, which a first row downloaded again with other bytes of the same size must replace)."""
    try:
        if os.path.samefile(copy, src):
            return True
        return copy.stat().st_size == src.stat().st_size and file_sha256(copy) == file_sha256(src)
    except OSError:
        return False


def _file_stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def default_video_name(row: Row, attempt: int, batch_id: str) -> str:
    """The row's video_name: the manifest's, else one from the batch and the row's content (unique, stable)."""
    base = row.video_name or f"assetprep-{batch_id}-{row.row_id[:12]}"
    return base if attempt == 0 else f"{base}-retry{attempt}"


class _TokenBucket:
    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.tokens = 1.0
        self.stamp = time.monotonic()

    def wait(self, stop: threading.Event) -> None:
        if not self.rate:
            return
        while not stop.is_set():
            now = time.monotonic()
            self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            stop.wait((1 - self.tokens) / self.rate)


class _Batch:
    def __init__(self, manifest: Manifest, rows: list[Row], options: BatchOptions, settings: PublishSettings,
                 client: TavusClient, s3_client: Any, executor: Executor, journal: BatchJournal, folder: Path,
                 out_dir: Path, on_event: Any, *, copies: list[Row] | None = None) -> None:  # fmt: skip
        self.manifest = manifest
        self.rows = {r.row_id: r for r in rows}
        self.order = [r.row_id for r in rows]
        self.copies = copies or []  # duplicate rows: the video of their row_id's row, at their own output
        self.copy_errors: dict[int, str] = {}
        self.o = options
        self.settings = settings
        self.client = client
        self.s3 = s3_client
        self.executor = executor
        self.journal = journal
        self.dir = folder
        self.batch_id = folder.name
        self.out_dir = out_dir
        self.on_event = on_event
        self.stop = threading.Event()
        self.lock = threading.RLock()
        self.started = time.monotonic()
        assert options.deadline is not None and options.poll_interval is not None
        self.end = self.started + options.deadline
        self.submit_q: queue.Queue[str] = queue.Queue()
        self.finished: queue.Queue[tuple[str, Future[PrepResult]]] = queue.Queue()
        self.downloads = ThreadPoolExecutor(options.downloads, thread_name_prefix="assetprep-download")
        self.download_futures: dict[str, Future[None]] = {}
        self.receiver: CallbackReceiver | None = None
        self.prepared_now = 0
        self.http = HttpPool(4, timeout=PREFLIGHT_TIMEOUT)  # preflights
        self.failures = 0
        self.results_dirty = True
        self.results_written = 0.0
        self.results_every = 1.0
        self.preps: dict[str, _Prep] = {}
        self.per_row: dict[str, dict[str, str]] = {}
        self.submitter_thread: threading.Thread | None = None
        self.fatal: JournalError | None = None  # a worker thread's journal write failed: the batch stops with it
        # An API (or its file host), or S3, that stops answering mid-batch: rows keep their state and the batch
        # tries again until its deadline, instead of ending with rows failed that were never sent.
        self.down_since: dict[str, float] = {}  # "the API" / "S3" -> since when (monotonic)
        self.warned: dict[str, float] = {}
        self.retry_download_at: dict[str, float] = {}  # row_id -> when its failed download is tried again
        self.download_attempts: Counter[str] = Counter()

    # -- journal helpers --

    def state(self, row_id: str) -> dict[str, Any]:
        return self.journal.row(row_id)

    def guarded(self, work: Any, *args: Any) -> None:
        """A worker thread's body. A journal that can no longer be written (a full disk) stops the batch with that
        error, raised in the main thread, instead of a thread's traceback while the other rows go on unrecorded."""
        try:
            work(*args)
        except JournalError as exc:
            self.fatal = self.fatal or exc

    def trouble(self, what: str, exc: AssetprepError) -> None:
        """`what` ("the API", "S3") did not answer after the client's own retries: said once, then once a minute."""
        now = time.monotonic()
        with self.lock:
            if what not in self.down_since:
                self.down_since[what] = now
            elif now - self.warned[what] < 60:
                return
            self.warned[what] = now
            since = now - self.down_since[what]
        log.warning("%s is not answering%s (%s); rows keep their state and the batch tries again until its "
                    "deadline", what, f" for {since:.0f} s" if since >= 1 else "", exc.message)  # fmt: skip

    def answers(self, what: str) -> None:
        with self.lock:
            since = self.down_since.pop(what, None)
        if since is not None:
            log.warning("%s answers again (%.0f s after it was found not answering)", what, time.monotonic() - since)

    def fail(self, row_id: str, reason: str, *, step: str | None = None) -> None:
        """`step="download"`: the video is made and stays in the journal; the next run downloads it again.
        `step="storage"` (S3 did not take its prepared file), `"website"` (the lead's site was down) or `"cluster"`
        (Ray lost the preparation): nothing was sent; the next run makes the row."""
        with self.lock:
            self.journal.update_row(row_id, state="failed", error=reason, data={"failed_step": step})
            self.failures += 1
            self.results_dirty = True
        log.warning("%s failed: %s", self.rows[row_id].where, reason)

    # -- preparation --

    def start_preps(self, preps: dict[str, _Prep], per_row: dict[str, dict[str, str]]) -> None:
        self.preps = preps
        self.per_row = per_row
        needed = {k for rid in self.order if self.state(rid)["state"] == "pending" for k in per_row[rid].values()}
        for key, prep in preps.items():
            done = self.journal.prep(key)
            if done and done["state"] == "uploaded":
                prep.state, prep.result = "uploaded", done
                continue
            if key not in needed:
                continue
            if done and done["state"] == "failed" and not self.o.retry_failed and not done.get("transient"):
                prep.state, prep.error = "failed", done.get("error")
                continue
            found = find_uploaded(prep.task, self.s3) if self.s3 is not None else None
            if found is not None:  # finished by a run that died before journaling it
                self.journal.put_prep(key, prep.task.kind, "uploaded", **found)
                prep.state, prep.result = "uploaded", found
                continue
            self.run_prep(key, prep)
        for rid in self.order:
            self.maybe_ready(rid)

    def run_prep(self, key: str, prep: _Prep) -> None:
        prep.state = "running"
        future = self.executor.submit(prep.task)
        future.add_done_callback(lambda f, k=key: self.finished.put((k, f)))

    def retry_preps(self) -> None:
        """Make again the preparations whose site was down, once their pause is over."""
        now = time.monotonic()
        for key, prep in self.preps.items():
            if prep.state == "waiting" and now >= prep.retry_at:
                self.run_prep(key, prep)

    def prep_done(self, key: str, future: Future[PrepResult]) -> None:
        prep = self.preps[key]
        try:
            result = future.result()
        except CancelledError:
            return
        except AssetprepError as exc:
            prep.step = retry_step(exc)
            # A lead's site that is down (refused, reset, 502/503): tried again after a pause, in which its slot
            # records other rows. S3 that did not answer was already waited out inside the preparation.
            if prep.step == "website" and prep.tries < len(_SITE_PAUSES):
                pause = _SITE_PAUSES[prep.tries]
                if time.monotonic() + pause < self.end:
                    prep.tries += 1
                    prep.state, prep.retry_at = "waiting", time.monotonic() + pause
                    log.warning("%s: %s; trying again in %g s", prep.task.kind, exc.message, pause)
                    return
            times = f"{prep.tries + 1} times" if prep.tries else "once"
            said = {"website": f" (tried {times}; a rerun tries again)", "cluster": " (a rerun tries again)"}
            prep.state, prep.error = "failed", f"{prep.task.kind}: {exc}{said.get(prep.step or '', '')}"
        except Exception as exc:  # a bug: the rows fail with the reason, the batch goes on
            prep.state, prep.error = "failed", f"{prep.task.kind}: {type(exc).__name__}: {exc}"
        else:
            self.prepared_now += 1
            prep.state = "uploaded"
            prep.result = result.model_dump(exclude={"key"})
            self.journal.put_prep(key, prep.task.kind, "uploaded", **prep.result)
        if prep.state == "failed":
            self.journal.put_prep(key, prep.task.kind, "failed", error=prep.error, transient=prep.step is not None)
        for rid in sorted(prep.rows, key=self.order.index):
            self.maybe_ready(rid)

    def url_for(self, prep: _Prep) -> str:
        """A presigned, preflighted URL for a prepared object that outlives this run's deadline."""
        need = (self.end - time.monotonic()) + _URL_MARGIN
        now = time.time()
        if prep.url is None or prep.result.get("expires_at", 0) < now + need:
            expires = min(7 * 24 * 3600.0, max(need, 6 * 3600.0))
            url, expires_at = presign(self.s3, prep.task.s3.bucket, prep.result["s3_key"], expires_in=expires)
            preflight(url, content_type=prep.result.get("content_type") or None, size=prep.result.get("size"),
                      http=self.http)  # fmt: skip
            self.answers("S3")
            prep.url = url
            prep.result["expires_at"] = expires_at.timestamp()
        return prep.url

    def maybe_ready(self, row_id: str) -> None:
        """Queue a pending row for submission once every preparation it needs is uploaded."""
        if self.state(row_id)["state"] != "pending":
            return
        mine = {kind: self.preps[key] for kind, key in self.per_row[row_id].items()}
        failed = [p for p in mine.values() if p.state == "failed"]
        if failed:
            self.fail(row_id, str(failed[0].error), step=failed[0].step)
            return
        audio = mine.get("audio")
        if audio is not None and audio.state == "uploaded":
            duration = float((audio.result.get("facts") or {}).get("duration") or 0.0)
            if problem := tavus_audio_problem(duration):
                self.fail(row_id, f"{problem}; not submitted")  # known before paying for a video that would fail
                return
        if all(p.state == "uploaded" for p in mine.values()):
            seconds = max((float(p.result.get("seconds") or 0) for p in mine.values()), default=0.0)
            where = {k: {"node": p.result.get("node"), "pid": p.result.get("pid")} for k, p in mine.items()
                     if p.result.get("node")}  # fmt: skip
            self.journal.update_row(row_id, data={"prepare_s": round(seconds, 3), "prepared_on": where})
            self.submit_q.put(row_id)

    # -- submit --

    def in_flight(self) -> int:
        return sum(1 for r in self.journal.states() if r.state in ("submitting", "submitted", "ready")
                   and r.row_id in self.rows)  # fmt: skip

    def submitter(self) -> None:
        bucket = _TokenBucket(self.o.submit_rate)
        while not self.stop.is_set():
            try:
                row_id = self.submit_q.get(timeout=0.2)
            except queue.Empty:
                continue
            while not self.stop.is_set() and self.in_flight() >= self.o.max_in_flight:
                self.stop.wait(0.2)
            if self.stop.is_set():
                return
            if self.o.max_failures is not None and self.failures >= self.o.max_failures:
                continue  # stays pending: reported as not started
            bucket.wait(self.stop)
            if self.stop.is_set():
                return
            try:
                self.submit(row_id)
            except RateLimitError as exc:
                # The client already honoured Retry-After several times: the whole stage pauses, the row waits.
                log.warning("rate limited for longer than the client retries (%s); pausing submits", exc.message)
                self.submit_q.put(row_id)
                self.stop.wait(10.0)
            except Exception as exc:  # never let the submit stage die silently
                self.fail(row_id, f"submit: {exc}")

    def submit(self, row_id: str) -> None:
        row = self.rows[row_id]
        st = self.state(row_id)
        if st["state"] != "pending":
            return
        try:
            urls = {kind: self.url_for(self.preps[key]) for kind, key in self.per_row[row_id].items()}
        except StorageError as exc:
            if not exc.transient:
                raise
            self.submit_q.put(row_id)  # S3 (where the API fetches the files) did not answer the preflight: it waits
            self.trouble("S3", exc)
            self.stop.wait(_OUTAGE_PAUSE_S)
            return
        opts = PublishOptions(
            replica_id=row.options.replica_id, script=row.script, audio=row.audio, background=row.background,
            fast=row.options.fast, composite_locally=row.options.composite_locally, watermark=row.watermark,
            callback_url=row.options.callback_url,
        )  # fmt: skip
        fields = request_fields(opts, urls, None)
        if self.receiver is not None and not row.options.callback_url:
            fields["callback_url"] = self.receiver.url
        name = default_video_name(row, st["attempt"], self.batch_id)
        # Journaled before the POST: a lost answer or a crash is reconciled by this name, never sent twice.
        self.journal.update_row(row_id, state="submitting", video_name=name,
                                data={"submitted_at": time.time()})  # fmt: skip
        t0 = time.monotonic()
        try:
            video = self.client.create_video({**fields, "video_name": name})
        except OutcomeUnknownError:
            log.warning("%s: the answer to the create was lost; it is looked up by name", row.where)
            return
        except TavusError as exc:
            if isinstance(exc, RateLimitError):
                self.journal.update_row(row_id, state="pending")
                raise
            if isinstance(exc, _UNREACHABLE) or (exc.status_code is not None and exc.status_code >= 500):
                # Never arrived (refused, 503) or retried out: the row waits, the submit stage pauses.
                self.journal.update_row(row_id, state="pending")
                self.submit_q.put(row_id)
                self.trouble("the API", exc)
                self.stop.wait(_OUTAGE_PAUSE_S)
                return
            self.fail(row_id, f"create: {exc.message}")
            return
        self.answers("the API")
        _crash_point("batch-after-post")
        took = round(time.monotonic() - t0, 3)
        self.journal.update_row(row_id, state="submitted", video_id=video.video_id,
                                data={"submit_s": took, "hosted_url": video.hosted_url})  # fmt: skip
        self.results_dirty = True

    # -- reconcile, wait, download --

    def reconcile(self) -> None:
        """Rows whose create may have happened (state submitting, or a lost journal): adopt by name, one listing."""
        rows = [r for r in self.journal.rows() if r["row_id"] in self.rows]
        unsure = {r["video_name"]: r for r in rows if r["state"] == "submitting"}
        fresh = {default_video_name(self.rows[r["row_id"]], r["attempt"], self.batch_id): r for r in rows
                 if r["state"] == "pending" and self.rows[r["row_id"]].video_name is None}  # fmt: skip
        if not unsure and not fresh:
            return
        found: dict[str, Video] = {}
        for video in self.client.list_videos(page_size=_PAGE):
            name = video.video_name or ""
            if (name in unsure or name in fresh) and name not in found and video.status != "deleted":
                found[name] = video  # newest first: the first one seen is the newest
        for name, r in {**fresh, **unsure}.items():
            video = found.get(name)
            if video is not None:
                self.journal.update_row(r["row_id"], state="submitted", video_id=video.video_id, video_name=name,
                                        data={"reconciled": True, "hosted_url": video.hosted_url})  # fmt: skip
            elif r["state"] == "submitting":
                self.journal.update_row(r["row_id"], state="pending")  # it never arrived: safe to send

    def resend_lost(self, missing: dict[str, str]) -> None:
        """Rows whose create's outcome was unknown (the connection failed after it was sent) and whose name the
        whole account, just listed, still does not hold a while later: the request never arrived (the server died
        with it). They are sent again under the same name; before, they waited for the batch deadline."""
        now = time.time()
        for name, rid in missing.items():
            sent = float(self.state(rid)["data"].get("submitted_at") or now)
            if now - sent >= _LOST_CREATE_S:
                log.warning("%s: its create never arrived (%s is not in the account %.0f s later); it is sent "
                            "again", self.rows[rid].where, name, now - sent)  # fmt: skip
                self.journal.update_row(rid, state="pending")
                self.submit_q.put(rid)

    def waiting(self) -> dict[str, str]:
        """video_id → row_id of the submitted rows not yet ready."""
        return {r.video_id: r.row_id for r in self.journal.states()
                if r.state == "submitted" and r.row_id in self.rows and r.video_id}  # fmt: skip

    def poll(self) -> None:
        ids = self.waiting()
        unsure = {r.video_name: r.row_id for r in self.journal.states()
                  if r.state == "submitting" and r.row_id in self.rows}  # fmt: skip
        if not ids and not unsure:
            return
        seen: dict[str, Video] = {}
        if len(ids) < _GET_BELOW and not unsure:
            for vid in ids:
                with contextlib.suppress(NotFoundError):
                    seen[vid] = self.client.get_video(vid)
        else:
            for video in self.client.list_videos(page_size=_PAGE):
                if video.video_id in ids:
                    seen[video.video_id] = video
                elif video.video_name in unsure and video.status != "deleted":
                    rid = unsure.pop(video.video_name)
                    self.journal.update_row(rid, state="submitted", video_id=video.video_id,
                                            data={"reconciled": True, "hosted_url": video.hosted_url})  # fmt: skip
                    ids[video.video_id] = rid
                    seen[video.video_id] = video
                if len(seen) == len(ids) and not unsure:
                    break  # newest first: our videos are near the top
            for vid in set(ids) - set(seen):
                with contextlib.suppress(NotFoundError):
                    seen[vid] = self.client.get_video(vid)
            self.resend_lost(unsure)
        for vid, rid in ids.items():
            video = seen.get(vid)
            if video is None:
                self.fail(rid, f"the API at {self.client.base_url} does not know video {vid} (deleted, or another "
                               "host/sandbox): rerun with --retry-failed to make it again")  # fmt: skip
            else:
                self.route(rid, video)

    def route(self, row_id: str, video: Video) -> None:
        if video.status == "ready":
            if self.state(row_id)["state"] == "submitted":
                submitted = self.state(row_id)["data"].get("submitted_at") or time.time()
                self.journal.update_row(row_id, state="ready", data={"wait_s": round(time.time() - submitted, 3),
                                                                      "hosted_url": video.hosted_url})  # fmt: skip
            self.start_download(row_id, video)
        elif video.status in ("error", "deleted"):
            self.fail(row_id, f"video {video.video_id} ended in {video.status}: {video.failure()}")

    def retry_downloads(self) -> None:
        """Start the downloads whose retry time has come (the row is still ready, nothing downloads it)."""
        now = time.monotonic()
        for row_id, at in list(self.retry_download_at.items()):
            if at <= now:
                del self.retry_download_at[row_id]
                if self.state(row_id)["state"] == "ready":
                    self.start_download(row_id, None)

    def start_download(self, row_id: str, video: Video | None) -> None:
        if row_id in self.download_futures and not self.download_futures[row_id].done():
            return
        self.download_futures[row_id] = self.downloads.submit(self.guarded, self.download, row_id, video)

    def download(self, row_id: str, video: Video | None) -> None:
        row = self.rows[row_id]
        t0 = time.monotonic()
        try:
            if video is None or not video.download_url:
                try:
                    video = self.client.get_video(self.state(row_id)["video_id"], verbose=True)
                except NotFoundError as exc:  # the video is gone: only --retry-failed (a new video) can help
                    self.fail(row_id, f"download: {exc}")
                    return
                if video.status in ("error", "deleted"):
                    self.route(row_id, video)  # a failure of the video itself, not of its download
                    return

            def check_stop(_p: Progress) -> None:
                if self.stop.is_set():
                    raise CancelledError("download stopped")

            row.output.parent.mkdir(parents=True, exist_ok=True)
            if row.options.composite_locally:
                layer = self.dir / "tavus" / f"{row_id}.webm"
                layer.parent.mkdir(parents=True, exist_ok=True)
                self.client.download(video, layer, on_progress=check_stop)
                bg = self.preps[self.per_row[row_id]["background"]].result.get("path")
                if not bg or not Path(bg).is_file():
                    raise ConfigError("composite_locally needs the prepared background on this machine",
                                      hint="run without --ray-address for composited rows")  # fmt: skip
                composite(layer, Path(bg), row.output, layout=row.options.layout)
                layer.unlink(missing_ok=True)
                info = probe(row.output)
            else:
                info = self.client.download_probed(video, row.output, on_progress=check_stop)
            sha = file_sha256(row.output)  # streamed: four downloads of big videos at once stay small
            poster = self.poster(row.output, row_id, info.duration)
        except CancelledError:
            return
        except TavusError as exc:  # the API, the file host or the transfer (not a full disk: that is no TavusError)
            self.download_attempts[row_id] += 1
            if self.download_attempts[row_id] < _DOWNLOAD_TRIES and not isinstance(exc, AuthenticationError):
                delay = _DOWNLOAD_RETRY_S * self.download_attempts[row_id]
                log.warning("%s: download failed (%s); trying again in %.0f s", row.where, exc.message, delay)
                self.retry_download_at[row_id] = time.monotonic() + delay  # with a fresh record (and link)
                return
            self.fail(row_id, f"download: {exc}", step="download")
            return
        except AssetprepError as exc:
            self.fail(row_id, f"download: {exc}", step="download")
            return
        except Exception as exc:
            self.fail(row_id, f"download: {type(exc).__name__}: {exc}", step="download")
            return
        self.journal.update_row(row_id, state="downloaded", error=None, data={
            "output": str(row.output), "sha256": sha, "stat": _file_stat(row.output),
            "download_s": round(time.monotonic() - t0, 3),
            "duration": info.duration, "poster": str(poster) if poster else None, "hosted_url": video.hosted_url,
        })  # fmt: skip
        self.results_dirty = True
        _crash_point("batch-after-download")
        self.copy_videos(row_id)

    def copy_videos(self, row_id: str | None = None) -> None:
        """Give each duplicate row (of `row_id`, or of every downloaded row) the video at its own output."""
        for dup in self.copies:
            src = self.rows[dup.row_id].output
            if (row_id is not None and dup.row_id != row_id) or dup.output == src or not src.is_file():
                continue
            if _same_bytes(dup.output, src):
                continue
            try:
                dup.output.parent.mkdir(parents=True, exist_ok=True)
                with atomic_output(dup.output, inputs=(src,)) as tmp:
                    tmp.unlink()
                    try:  # a hard link: a thousand rows that repeat one video do not store it a thousand times
                        os.link(src, tmp)
                    except OSError:  # another file system, or one without links
                        shutil.copyfile(src, tmp)
                self.copy_errors.pop(dup.number, None)
            except (OSError, AssetprepError) as exc:
                self.copy_errors[dup.number] = f"copy of {src.name}: {getattr(exc, 'strerror', None) or exc}"
            self.results_dirty = True

    def poster(self, clip: Path, row_id: str, duration: float | None) -> Path | None:
        """A small JPEG of the finished video for the report."""
        data = poster_jpeg(clip, duration)
        if not data:
            return None
        out = self.dir / "posters" / f"{row_id}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        return out

    def recheck_downloaded(self) -> None:
        """A downloaded row whose file is gone or changed (or whose output moved) is downloaded again. A file with
        the size, mtime and inode it was left with is not hashed again: a rerun after adding rows to a campaign of
        thousands would otherwise read every finished video."""
        for r in self.journal.rows():
            if r["row_id"] not in self.rows or r["state"] != "downloaded":
                continue
            out = self.rows[r["row_id"]].output
            if out.is_file() and str(out) == r["data"].get("output") and (stat := _file_stat(out))[0]:
                if r["data"].get("stat") == stat:
                    continue
                if file_sha256(out) == r["data"].get("sha256"):
                    self.journal.update_row(r["row_id"], data={"stat": stat})  # touched, not changed
                    continue
            self.journal.update_row(r["row_id"], state="ready")

    # -- progress and results --

    def snapshot(self) -> BatchProgress:
        rows = [r for r in self.journal.states() if r.row_id in self.rows]
        states = Counter(r.state for r in rows)
        elapsed = time.monotonic() - self.started
        done_now = sum(1 for r in rows if r.state in FINAL and r.updated >= time.time() - elapsed)
        rate = done_now / elapsed * 60 if elapsed > 1 and done_now else None
        remaining = len(rows) - states["downloaded"] - states["failed"]
        preps = list(self.preps.values())
        return BatchProgress(
            total=len(rows), states=dict(states), preps_total=len(preps),
            preps_done=sum(1 for p in preps if p.state in ("uploaded", "failed")), elapsed=elapsed, rate=rate,
            eta=remaining / rate * 60 if rate else None,
        )  # fmt: skip

    def result_rows(self) -> list[dict[str, Any]]:
        out = []
        states = {r["row_id"]: r for r in self.journal.rows()}
        for rid in self.order:
            row, st = self.rows[rid], states[rid]
            data = st["data"]
            status = st["state"]
            error = st["error"] or ""
            if status == "pending" and self.o.max_failures is not None and self.failures >= self.o.max_failures:
                error = error or f"not started: --max-failures {self.o.max_failures} reached"
            out.append({
                **{input_column(k): v for k, v in row.values.items()},
                "row": row.number, "row_id": rid, "video_name": st["video_name"] or "",
                "video_id": st["video_id"] or "", "status": status, "hosted_url": data.get("hosted_url") or "",
                "output": str(row.output) if status == "downloaded" else "", "error": error,
                "warnings": "; ".join(self._warnings(rid)),
                "prepare_s": data.get("prepare_s", ""), "submit_s": data.get("submit_s", ""),
                "wait_s": data.get("wait_s", ""), "download_s": data.get("download_s", ""),
                "prepared_on": json.dumps(data["prepared_on"]) if data.get("prepared_on") else "",
                "script_sent": row.script or "",
                "_poster": data.get("poster"), "_background": self._background_file(rid),
            })  # fmt: skip
        if not self.copies:
            return out
        by_id = {r["row_id"]: r for r in out}
        for dup in self.copies:
            first = by_id[dup.row_id]
            mine = {input_column(k): v for k, v in dup.values.items()}
            theirs = {input_column(k) for k in self.rows[dup.row_id].values}
            status = first["status"]
            if status == "downloaded" and not dup.output.is_file():
                status = "failed" if dup.number in self.copy_errors else "ready"
            out.append({
                **{k: v for k, v in first.items() if k not in theirs}, **mine, "row": dup.number, "status": status,
                "output": str(dup.output) if status == "downloaded" else "",
                "error": self.copy_errors.get(dup.number, first["error"]),
                "warnings": "; ".join(w for w in (f"the same video as {dup.same_as}", first["warnings"]) if w),
            })  # fmt: skip
        return sorted(out, key=lambda r: r["row"])

    def _warnings(self, row_id: str) -> list[str]:
        """What the row's preparations warned of (a page recorded before it finished loading, silent audio)."""
        out = []
        for kind, key in self.per_row.get(row_id, {}).items():
            out += [f"{kind}: {w}" for w in self.preps[key].result.get("warnings") or []]
        return out

    def _background_file(self, row_id: str) -> str | None:
        key = self.per_row.get(row_id, {}).get("background")
        return self.preps[key].result.get("path") if key else None

    def write_results(self, *, force: bool = False) -> Path:
        path = self.out_dir / "results.csv"
        if not force and (not self.results_dirty or time.monotonic() < self.results_written + self.results_every):
            return path
        self.results_dirty = False
        started = time.monotonic()
        write_results_csv(path, self.manifest.columns, self.result_rows(), self.manifest.sheet)
        self.results_written = time.monotonic()
        # About once a second, but a sheet of thousands of rows takes a while to write: at most 5 % of the time.
        self.results_every = max(1.0, 20 * (self.results_written - started))
        return path


# script_sent: the row's script as rendered for Tavus (its input column holds the template), to read what each
# lead hears; last, since it is the longest.
RESULT_COLUMNS = ("row", "video_name", "video_id", "status", "hosted_url", "output", "error", "warnings", "prepare_s",
                  "submit_s", "wait_s", "download_s", "prepared_on", "script_sent")  # fmt: skip


# A lead's own "status" or "error" column is data to keep, not the batch's word: it goes to "status (input)".
# video_name and output are options, and their results are what the row's templates made of them.
_OUTCOME_NAMES = (set(RESULT_COLUMNS) | {"row_id"}) - set(OPTION_COLUMNS)


def input_column(name: str) -> str:
    """The results' name for an input column."""
    return f"{name} (input)" if name in _OUTCOME_NAMES else name


# Leads' cells come from third parties: a company "=HYPERLINK(...)" or "@SUM(...)" is a live formula once the sheet is
# opened in Excel, LibreOffice or Google Sheets (CSV injection). Such a cell gets a leading apostrophe, which they read
# as "this is text"; a plain number ("-5", "+1.5") stays a number. --json keeps every value as it was.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _sheet_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def write_results_csv(path: Path, columns: list[str], rows: list[dict[str, Any]], sheet: Sheet | None = None) -> None:
    """Every input column, then the outcome columns, written as the manifest was (`sheet`: delimiter, BOM, line
    ends); atomically replaced (a reader never sees half a sheet), and left alone when it already says the same."""
    sheet = sheet or Sheet()
    head = [name for name in map(input_column, columns) if name not in RESULT_COLUMNS] + list(RESULT_COLUMNS)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, head, extrasaction="ignore", delimiter=sheet.delimiter,
                            lineterminator="\r\n" if sheet.crlf else "\n")  # fmt: skip
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _sheet_cell(v) for k, v in r.items()})
    _write_unless_same(path, buf.getvalue(), "utf-8-sig" if sheet.bom else "utf-8")


def _write_unless_same(path: Path, text: str, encoding: str = "utf-8", *, ignore: str | None = None) -> None:
    """Replace `path` atomically with `text`, unless it holds that already (`ignore`: a pattern both may differ in,
    the report's time): a finished batch rerun over a read-only --out has nothing to write, and must not fail."""
    data = text.encode(encoding)
    # Most writes during a run change the sheet: a size that differs says so without reading the file back.
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if ignore is not None or path.stat().st_size == len(data):
            old = path.read_bytes().decode(encoding)
            if old == text or (ignore is not None and re.sub(ignore, "", old) == re.sub(ignore, "", text)):
                return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


_NO_PICTURE = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="320" height="180"><rect width="320" height="180" fill="#ddd"/>'
    b'<text x="160" y="95" font-size="16" text-anchor="middle" fill="#777">no picture</text></svg>'
)


def poster_jpeg(clip: str | os.PathLike[str], duration: float | None = None) -> bytes | None:
    """A 320 px wide JPEG of a clip at 1 s (its middle when shorter), or None when it cannot be read. `duration`:
    the clip's, when a probe already found it."""
    try:
        if duration is None:
            duration = probe(clip).duration
        duration = duration or 0.0
        return _process.run(
            [_process.find_tool("ffmpeg"), "-hide_banner", "-nostdin", "-loglevel", "error",
             "-ss", f"{min(1.0, duration / 2):.3f}", "-i", os.fspath(clip), "-frames:v", "1",
             "-vf", "scale=320:-2", "-q:v", "5", "-f", "mjpeg", "pipe:1"],
            timeout=60, what="ffmpeg (poster)",
        ).stdout or None  # fmt: skip
    except AssetprepError:
        return None


def _image_uri(path: str | None, clip: str | None, frames: dict[str, str]) -> str:
    """The row's poster, else a frame of its background (a failed video; one ffmpeg per background, kept in
    `frames`), else a grey placeholder."""
    if path and Path(path).is_file():
        return "data:image/jpeg;base64," + base64.b64encode(Path(path).read_bytes()).decode()
    if clip and Path(clip).is_file():
        if clip not in frames:
            data = poster_jpeg(clip)
            frames[clip] = "data:image/jpeg;base64," + base64.b64encode(data).decode() if data else ""
        if frames[clip]:
            return frames[clip]
    return "data:image/svg+xml;base64," + base64.b64encode(_NO_PICTURE).decode()


_WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"


# Columns a lead's card is titled with, by their identifier form (see card_columns): who, then where.
_PERSON = ("name", "full_name", "contact", "contact_name", "lead", "lead_name", "first_name", "last_name")
_COMPANY = ("company", "company_name", "organization", "organisation", "account", "account_name", "business")


def card_columns(columns: list[str], rows: list[dict[str, Any]], named: list[str] | None = None) -> list[str]:
    """The columns that title a card: those named (batch --report-title), else the lead's name and company, else the
    first two columns of plain text (not sites, e-mail addresses or numbers); options are never among them."""
    if named:
        return named
    variables = [c for c in columns if option_name(c) is None]
    forms = {c: identifier_form(c) for c in variables}
    person = sorted((c for c in variables if forms[c] in _PERSON), key=lambda c: _PERSON.index(forms[c]))
    person = person[:1] if person and forms[person[0]] in _PERSON[:6] else person[:2]  # "name", or first + last
    company = sorted((c for c in variables if forms[c] in _COMPANY), key=lambda c: _COMPANY.index(forms[c]))[:1]
    if person or company:
        return person + company

    def plain(column: str) -> bool:
        values = [str(v) for r in rows if (v := r.get(input_column(column)))]
        return bool(values) and not any(looks_like_website(v) or "@" in v or _NUMBER.fullmatch(v) for v in values)

    return [c for c in variables if plain(c)][:2]


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def write_report(path: Path, title: str, rows: list[dict[str, Any]], titled_by: list[str] | None = None) -> Path:
    """One self-contained HTML file (no external assets): totals and a card per row with a poster frame, titled
    with the lead (`titled_by` columns; see card_columns), failures first, with the script each lead heard.

    Each distinct picture is in the file once, as a CSS class: 1,000 rows that failed over 3 backgrounds are 3
    frames (one ffmpeg each), not 1,000 (it took 0.3 s and 8 KB per row: 58 s and 1.6 MB for 200 such rows)."""
    counts = Counter(r["status"] for r in rows)
    frames: dict[str, str] = {}
    pictures: dict[str, str] = {}  # data URI -> its class
    cards = []
    titled_by = titled_by or []
    for r in sorted(rows, key=lambda r: r["status"] != "failed"):  # stable: in row order within each
        picture = pictures.setdefault(_image_uri(r.get("_poster"), r.get("_background"), frames), f"p{len(pictures)}")
        links = []
        if r.get("output"):
            rel = os.path.relpath(r["output"], path.parent)
            links.append(f'<a href="{html.escape(rel)}">file</a>')
        if r.get("hosted_url"):
            links.append(f'<a href="{html.escape(r["hosted_url"])}">hosted</a>')
        error = f'<p class="err">{html.escape(r["error"])}</p>' if r.get("error") else ""
        error += f'<p class="warn">{html.escape(r["warnings"])}</p>' if r.get("warnings") else ""
        names = [str(v) for c in titled_by if (v := r.get(input_column(c)))]
        heading = " · ".join(names) or r.get("video_name") or f"row {r['row']}"
        script = r.get("script_sent") or ""
        said = f'<p class="script" title="{html.escape(script)}">“{html.escape(_shortened(script, 280))}”</p>'
        cards.append(
            f'<div class="card {html.escape(r["status"])}"><div class="poster {picture}" role="img"></div>'
            f"<h3>{html.escape(heading)}</h3>"
            f"<p>row {r['row']} · <b>{html.escape(r['status'])}</b> · {html.escape(r.get('video_name') or '')} "
            f"{html.escape(r.get('video_id') or '')}</p>{error}{said if script else ''}<p>{' · '.join(links)}</p></div>"
        )
    styles = "\n".join(f'.{name}{{background-image:url("{uri}")}}' for uri, name in pictures.items())
    totals = " · ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")  # _WHEN
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:sans-serif;margin:24px;background:#fafafa}}.grid{{display:flex;flex-wrap:wrap;gap:16px}}
.card{{width:320px;background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}}
.poster{{width:320px;aspect-ratio:16/9;background:#ddd center/contain no-repeat}}
.card h3,.card p{{margin:6px 10px;font-size:14px;word-break:break-all}}
.failed{{border-color:#c33}}.err{{color:#c33}}.warn{{color:#a60}}.script{{color:#444;font-style:italic}}
{styles}</style></head><body>
<h1>{html.escape(title)}</h1><p class="totals">{len(rows)} rows · {html.escape(totals)} · {when}</p>
<div class="grid">{"".join(cards)}</div></body></html>"""
    _write_unless_same(path, doc, ignore=_WHEN)
    return path


def _check_replicas(client: TavusClient, rows: list[Row], *, broken_too: bool = True) -> list[str]:
    """Replica ids the API does not know (and, with `broken_too`, those in an error state), as problems. A wrong
    API key raises AuthenticationError here, before anything is prepared."""
    problems = []
    for rid in sorted({r.options.replica_id for r in rows}):
        try:
            replica = client.get_replica(rid)
        except NotFoundError:
            where = ", ".join(r.where for r in rows if r.options.replica_id == rid)[:200]
            problems.append(f"replica_id {rid!r} ({where}): not found at {client.base_url}")
            continue
        if broken_too and replica.status == "error":
            problems.append(f"replica_id {rid!r} is in an error state: {replica.error_message or ''}".rstrip(": "))
        else:
            warn_if_training(replica)
    return problems


def _check_first(path: Path, client: TavusClient, rows: list[Row], s3_client: Any, target: S3Target,
                 executor: Executor, tasks: list[PrepTask], *, broken_too: bool, out_dir: Path) -> None:  # fmt: skip
    """What would fail every row, after every background was recorded, found first with a request or two each: a
    wrong API key, an unknown replica, a missing bucket, a Ray node that cannot prepare (tools, S3, local files);
    before those, output folders that cannot be written (read-only, full, not ours): every video would be made and
    paid for, then fail its download. `broken_too`: a dry run (writes nothing)."""
    folders = dict.fromkeys([out_dir, *(r.output.parent for r in rows)])
    if problems := [p for f in folders if (p := writable_problem(f, create=not broken_too))]:
        raise OutputError(f"{len(problems)} output folder(s) cannot be written; nothing was started:\n  "
                          + "\n  ".join(problems[:10]),
                          hint="free space there, fix its permissions, or choose another --out")  # fmt: skip
    if problems := _check_replicas(client, rows, broken_too=broken_too):
        raise ManifestError(f"{path}: {len(problems)} problem(s); nothing was started", problems=problems,
                            hint="`assetprep replicas list` shows the replicas of this API key")  # fmt: skip
    if not tasks:
        return
    ensure_bucket(s3_client, target.bucket, prefix=target.prefix)
    if problems := executor.check(target, tasks):
        raise ConfigError(
            f"{len(problems)} node(s) of the cluster cannot prepare this batch; nothing was started:\n  "
            + "\n  ".join(problems),
            hint="install what a node lacks or give it S3 credentials for the bucket, or take it out of the "
            "cluster (`assetprep doctor --ray-address ...` checks every node)",
        )


def _refuse_if_made_elsewhere(folder: Path, rows: list[Row], host: str) -> None:
    """A new batch whose rows another batch already sent: the same manifest moved, renamed or copied (its batch id
    comes from its path). Measured: moving a 2-row manifest to another folder made both videos a second time."""
    others = made_elsewhere(folder.parent, {r.row_id for r in rows}, host, besides=folder)
    if not others:
        return
    first = max(others, key=lambda o: o.rows)
    more = f" (and by {len(others) - 1} other batch(es))" if len(others) > 1 else ""
    raise ConfigError(
        f"{first.rows} of the {len(rows)} rows of this manifest were already sent by batch {first.batch_id} "
        f"(manifest {first.manifest}){more}; a moved, renamed or copied manifest starts a new batch, which would "
        "make and pay for those videos again",
        hint=f"to go on with that batch, pass --batch-id {first.batch_id}; to make new videos of these rows on "
        "purpose, pass a new --batch-id NAME",
    )


_OWNER = ".assetprep-batch"  # in an output folder: which batch writes its results.csv, report and videos


def _out_dir_owner(out_dir: Path) -> dict[str, str] | None:
    with contextlib.suppress(OSError, ValueError):
        owner = json.loads((out_dir / _OWNER).read_text(encoding="utf-8"))
        return owner if isinstance(owner, dict) and isinstance(owner.get("batch_id"), str) else None
    return None


def _check_out_dir_owner(out_dir: Path, batch_id: str) -> None:
    """Two batches with one --out replaced each other's results.csv and report, and a video of the same name
    (`{{ first_name | slug }}.mp4`) of the other's: one output folder belongs to one batch."""
    owner = _out_dir_owner(out_dir)
    if owner is not None and owner["batch_id"] != batch_id:
        raise ConfigError(
            f"--out {out_dir} holds the results and videos of batch {owner['batch_id']} (manifest "
            f"{owner.get('manifest', '?')}); this batch ({batch_id}) would replace its results.csv, report and any "
            "video of the same name",
            hint=f"pass another --out for this batch (or delete {out_dir / _OWNER} if that batch is done with)",
        )


def _claim_out_dir(out_dir: Path, batch_id: str, manifest: Path) -> None:
    """Make `out_dir` this batch's, or refuse. The marker is linked into place, which fails when it exists: of two
    batches that passed the early check at the same moment, the second is refused here, before its first video."""
    if _out_dir_owner(out_dir) is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{_OWNER}.{os.getpid()}-{secrets.token_hex(4)}.part"
        try:
            tmp.write_text(json.dumps({"batch_id": batch_id, "manifest": str(manifest)}) + "\n", encoding="utf-8")
            with contextlib.suppress(FileExistsError):  # claimed meanwhile: the check below says by whom
                os.link(tmp, out_dir / _OWNER)
        finally:
            tmp.unlink(missing_ok=True)
    _check_out_dir_owner(out_dir, batch_id)


def _plan(manifest: Manifest, rows: list[Row], preps: dict[str, _Prep], copies: list[Row]) -> dict[str, Any]:
    kinds = Counter(p.task.kind for p in preps.values())
    return {
        "rows": len(rows) + len(copies), "backgrounds": kinds.get("background", 0),
        "audio_files": kinds.get("audio", 0), "duplicates": [{"row": d.number, "same_as": d.same_as} for d in copies],
        "watermarks": kinds.get("watermark", 0), "uploads": len(preps), "videos": len(rows),
        "replicas": sorted({r.options.replica_id for r in rows}),
        "first_scripts": [{"row": r.number, "script": (r.script or f"(audio {r.audio})")[:300]} for r in rows[:3]],
        "outputs": [str(r.output) for r in rows[:3]],
    }  # fmt: skip


def batch_publish(
    manifest: str | os.PathLike[str],
    options: BatchOptions | None = None,
    *,
    client: TavusClient | None = None,
    s3_client: Any = None,
    settings: PublishSettings | None = None,
    executor: Executor | None = None,
    on_event: Any = None,
) -> BatchResult:
    """Make one video per manifest row (resumable: rerun the same command to continue). `on_event` gets a
    BatchProgress about once a second. Rows that fail are reported in the result; they do not raise."""
    options = options or BatchOptions()
    settings = settings or PublishSettings()
    started = time.monotonic()
    path = Path(manifest)
    defaults: dict[str, Any] = {}
    replica = options.replica_id or settings.replica_id
    if replica:
        defaults["replica_id"] = replica
    if options.background is not None and options.no_background:
        raise ConfigError("--background and --no-background contradict each other", hint="give one of them")
    if options.background is not None:
        defaults["background"] = options.background
    loaded = load_manifest(path, defaults=defaults, out_dir=options.out_dir, no_background=options.no_background)
    wanted = options.rows
    if isinstance(wanted, str):
        wanted = parse_rows(wanted, last=max((r.number for r in loaded.rows + loaded.duplicates), default=0))
    rows = [r for r in loaded.rows if wanted is None or r.number in wanted]
    copies = [d for d in loaded.duplicates if wanted is None or d.number in wanted]
    if copies:  # a selected duplicate brings the row whose video it shares
        ids = {r.row_id for r in rows} | {d.row_id for d in copies}
        rows = [r for r in loaded.rows if r.row_id in ids]
    if options.rows is not None and not rows:
        raise ManifestError(f"--rows selects none of the {len(loaded.rows) + len(loaded.duplicates)} rows of {path}")
    if unknown := [c for c in options.report_title or [] if c not in loaded.columns]:
        raise ConfigError(f"--report-title: no column {unknown[0]!r} in {path}",
                          hint=f"name columns of the manifest: {', '.join(loaded.columns)}")  # fmt: skip
    out_dir = (options.out_dir or loaded.path.parent / f"{loaded.path.stem}-videos").resolve()
    if problem := output_problem(out_dir / "results.csv"):
        raise ConfigError(f"--out {out_dir}: {problem}", hint="name a folder for the videos and the results sheet")
    if (out_dir / "results.csv").resolve() == loaded.path:
        raise ConfigError(f"the results sheet would replace the manifest {loaded.path}",
                          hint="pass --out with another folder, or rename the manifest")  # fmt: skip
    options = options.model_copy(update={
        "deadline": options.deadline or parse_duration(settings.deadline, what="deadline setting"),
        "poll_interval": options.poll_interval or settings.poll_interval,
    })  # fmt: skip
    if options.listen:  # a typo in it would stop the run only after every check; --dry-run must find it too
        check_listen(options.listen, options.listen_url)
    bucket = options.bucket or settings.bucket
    needs_upload = any(r.background or r.audio or (r.watermark and not is_http_url(r.watermark)) for r in rows)
    if needs_upload and not bucket:
        raise ConfigError("no bucket for the prepared files", hint="pass --bucket or set ASSETPREP_BUCKET")
    endpoint = s3_client.meta.endpoint_url if s3_client is not None else (
        os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))  # fmt: skip
    target = S3Target(bucket=bucket or "-", prefix=options.prefix or settings.prefix, endpoint_url=endpoint,
                      region=os.environ.get("AWS_REGION") or None)  # fmt: skip
    batch_id, folder = batch_dir_for(loaded.path, settings, options.batch_id)
    keep = None if options.ray_address else folder / "prep"
    preps, per_row = plan_preparations(rows, settings=settings, options=options, s3=target, keep_dir=keep)
    client = client or TavusClient()
    if needs_upload and s3_client is None:
        s3_client = make_s3_client(S3Settings())
    if options.batch_id is None and not (folder / "journal.sqlite").exists():
        _refuse_if_made_elsewhere(folder, rows + copies, client.base_url)
    _check_out_dir_owner(out_dir, batch_id)

    if options.dry_run:  # every check a run makes before its first recording; nothing is started or written
        executor = executor or make_executor(jobs=options.jobs, ray_address=options.ray_address, s3_client=s3_client)
        try:
            _check_first(path, client, rows + copies, s3_client, target, executor, [p.task for p in preps.values()],
                         broken_too=True, out_dir=out_dir)  # fmt: skip
        finally:
            executor.close()
        plan = _plan(loaded, rows, preps, copies)
        return BatchResult(batch_id=batch_id, batch_dir=folder, out_dir=out_dir, results_csv=None, report_html=None,
                           counts={}, rows=[], superseded=[], preparations=len(preps), prepared_now=0,
                           executor="ray" if options.ray_address else "local", seconds=time.monotonic() - started,
                           dry_run=True, plan=plan)  # fmt: skip

    lock = RunLock(folder, what="batch")
    journal: BatchJournal | None = None
    run: _Batch | None = None
    try:
        journal = open_checked(folder / "journal.sqlite", client.base_url,
                               fresh_flag=f"--batch-id NEW (or delete {folder})")  # fmt: skip
        journal.set_meta("manifest", str(loaded.path))
        journal.add_rows([(r.row_id, r.number) for r in rows])
        done = {r.row_id for r in journal.states() if r.state == "downloaded"}
        todo = [r for r in rows if r.row_id not in done]
        executor = executor or make_executor(jobs=options.jobs, ray_address=options.ray_address, s3_client=s3_client)
        tasks = [preps[key].task for key in dict.fromkeys(k for r in todo for k in per_row[r.row_id].values())]
        if todo:  # a finished batch's rerun sends nothing
            try:
                _check_first(path, client, todo + copies, s3_client, target, executor, tasks, broken_too=False,
                             out_dir=out_dir)  # fmt: skip
            except BaseException:
                executor.close()
                raise
        if tasks:
            abort_stale_uploads(s3_client, target.bucket, target.prefix)  # parts of killed runs' uploads
        _claim_out_dir(out_dir, batch_id, loaded.path)
        run = _Batch(loaded, rows, options, settings, client, s3_client, executor, journal, folder, out_dir, on_event,
                     copies=copies)  # fmt: skip
        _run(run, preps, per_row)
        run.copy_videos()  # rows downloaded by an earlier run whose duplicates lack their copy
        _shutdown(run)
        results = run.result_rows()
        superseded = [] if options.rows is not None else [
            {"row_id": r["row_id"], "row": r["row_number"], "video_id": r["video_id"], "state": r["state"],
             "video_name": r["video_name"]} for r in journal.rows() if r["row_id"] not in run.rows
        ]  # fmt: skip
    except BaseException:
        _process.cancel_all()  # Ctrl-C, SIGTERM, a bug: recordings and encodes in worker threads stop now
        raise
    finally:
        if run is not None:
            _shutdown(run)
        if journal is not None:
            journal.close()
        lock.close()
        _process.reset_cancel()
    report = write_report(out_dir / "report.html", f"assetprep batch {loaded.path.name}", results,
                          card_columns(loaded.columns, results, options.report_title))  # fmt: skip
    counts = Counter(r["status"] for r in results)
    public_rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    return BatchResult(
        batch_id=batch_id, batch_dir=folder, out_dir=out_dir, results_csv=out_dir / "results.csv",
        report_html=report, counts=dict(counts), rows=public_rows, superseded=superseded, preparations=len(preps),
        prepared_now=run.prepared_now, executor=run.executor.name, seconds=time.monotonic() - started,
    )  # fmt: skip


def _run(run: _Batch, preps: dict[str, _Prep], per_row: dict[str, dict[str, str]]) -> None:
    o = run.o
    for r in run.journal.rows():
        if r["row_id"] not in run.rows or r["state"] != "failed":
            continue
        if r["data"].get("failed_step") == "download":
            # The video was made; only its download failed (a full disk, a dropped connection): fetch it again
            # on any rerun instead of paying for another one, with or without --retry-failed.
            run.journal.update_row(r["row_id"], state="ready", error=None, data={"failed_step": None})
        elif r["data"].get("failed_step") in ("storage", "website", "cluster"):
            # S3 did not take its preparation (an outage past the wait), its site was down or Ray lost its task:
            # nothing was sent, nothing is wrong with the row; any rerun makes it, with or without --retry-failed.
            run.journal.update_row(r["row_id"], state="pending", error=None, data={"failed_step": None})
        elif o.retry_failed:
            attempt = r["attempt"] + (1 if r["video_id"] or r["video_name"] else 0)
            run.journal.update_row(r["row_id"], state="pending", error=None, video_id=None, attempt=attempt)
    run.recheck_downloaded()
    run.reconcile()
    if o.listen:
        run.receiver = CallbackReceiver(o.listen, o.listen_url)
    run.submitter_thread = threading.Thread(target=run.guarded, args=(run.submitter,), name="assetprep-submit",
                                            daemon=True)  # fmt: skip
    run.start_preps(preps, per_row)
    run.submitter_thread.start()
    for r in run.journal.rows():  # ready but not downloaded (a crash between the two)
        if r["row_id"] in run.rows and r["state"] == "ready":
            run.start_download(r["row_id"], None)
    assert o.poll_interval is not None
    sweep = max(30.0, o.poll_interval * 6) if run.receiver else o.poll_interval
    next_poll = time.monotonic()
    next_event = 0.0
    while True:
        if run.fatal is not None:
            raise run.fatal
        while True:
            try:
                key, future = run.finished.get_nowait()
            except queue.Empty:
                break
            run.prep_done(key, future)
        run.retry_preps()
        now = time.monotonic()
        if run.receiver is not None:
            waiting = run.waiting()
            for event in run.receiver.drain():
                rid = waiting.get(event["video_id"])
                if rid is not None:
                    with contextlib.suppress(NotFoundError, *_UNREACHABLE):  # the polls pick it up then
                        run.route(rid, run.client.get_video(event["video_id"]))
        if now >= next_poll:
            try:
                run.poll()
            except _UNREACHABLE as exc:  # an outage: the rows wait, the next poll comes a little later
                run.trouble("the API", exc)
                next_poll = time.monotonic() + min(30.0, max(sweep, 5.0))
            else:
                run.answers("the API")
                next_poll = time.monotonic() + sweep
        run.retry_downloads()
        run.write_results()
        if run.on_event is not None and now >= next_event:
            run.on_event(run.snapshot())
            next_event = now + 1.0
        if _finished(run):
            break
        if time.monotonic() > run.end:
            log.warning("the batch deadline passed; rows still rendering are picked up by the next run")
            break
        time.sleep(min(0.2, o.poll_interval))
    if run.on_event is not None:
        run.on_event(run.snapshot())


# What an API outage looks like once the client's retries are spent: nothing that says the request itself is wrong.
_UNREACHABLE = (ApiConnectionError, ApiTimeoutError, ServerError)
_DOWNLOAD_TRIES = 3  # per row and run; then the row fails at its download and any rerun fetches it
# A create whose answer was lost and whose video the account does not list this long after: it never arrived. Long
# enough for a slow API to have stored a create it was still working on (a second one would be a second video).
_LOST_CREATE_S = 120.0
_DOWNLOAD_RETRY_S = 15.0  # the wait before the second try; twice that before the third
_OUTAGE_PAUSE_S = 5.0  # the submit stage's pause when the API or S3 does not answer
# Pauses before recording a lead's site again that was down: a restart or deploy takes a minute or two.
_SITE_PAUSES = (20.0, 60.0)


def _finished(run: _Batch) -> bool:
    states = [r.state for r in run.journal.states() if r.row_id in run.rows]
    if any(s in ("submitting", "submitted", "ready") for s in states):
        return False
    if any(not f.done() for f in run.download_futures.values()):
        return False
    pending = [s for s in states if s == "pending"]
    if not pending:
        return True
    blocked = run.o.max_failures is not None and run.failures >= run.o.max_failures
    preparing = any(p.state in ("running", "waiting") for p in run.preps.values()) or not run.finished.empty()
    return blocked and not preparing and run.submit_q.empty()


def _shutdown(run: _Batch) -> None:
    if run.stop.is_set():
        return
    run.stop.set()
    _process.cancel_all()  # preparations still running (deadline, Ctrl-C) stop at their next frame or child
    run.executor.close(cancel=True)
    if run.submitter_thread is not None and run.submitter_thread.ident is not None:  # started
        run.submitter_thread.join(timeout=40)  # one POST at most (its timeout is 30 s), journaled before it was sent
    run.downloads.shutdown(wait=True, cancel_futures=True)
    if run.receiver is not None:
        run.receiver.close()
    run.http.clear()
    with contextlib.suppress(Exception):
        run.write_results(force=True)
