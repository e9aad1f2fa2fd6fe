"""One video end to end: prepare → upload → submit → wait → download → (composite) → output. Resumable.

Each run has a folder under `.assetprep/runs/<run_id>/` with a journal of what every step produced. A rerun skips
finished steps (after checking their files), re-presigns URLs that would expire before the deadline, and reconciles
a submit whose answer was lost by looking the video up by its video_name, which is written to the journal before the
POST. So one run creates at most one video (per `--retry-failed` attempt).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ._files import atomic_output, check_output_path, file_sha256
from ._journal import Journal, RunLock, check_host
from ._units import parse_duration
from ._urls import redact_url, website_or_path
from .callbacks import CallbackReceiver
from .composite import Layout, composite
from .errors import (
    ConfigError,
    MediaError,
    NotAPageError,
    NotFoundError,
    OutcomeUnknownError,
    OutputCheckError,
    VideoFailedError,
)
from .normalize import normalize_audio, normalize_video, tavus_audio_problem
from .probe import MediaInfo, probe
from .progress import Progress, ProgressCallback
from .tavus import SCRIPT_MAX_CHARS, Replica, TavusClient, Video
from .upload import S3Settings, ensure_bucket, make_s3_client, upload_and_presign

log = logging.getLogger("assetprep.publish")


def _folder_name(value: str | None) -> str | None:
    """Run and batch ids name folders (and default video names): no "/", no "..", nothing a shell mangles."""
    if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ValueError(f"letters, digits, '.', '_' and '-' (at most 64, first a letter or digit), got {value!r}")
    return value


FolderName = Annotated[str | None, AfterValidator(_folder_name)]


def _site_or_path(value: str | None) -> str | None:
    """ "acme.com" is the website unless a file or folder of that name is here (as batch reads its manifests)."""
    return None if value is None else website_or_path(value, Path(value).expanduser())


_VIDEO_EXT = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif", ".png", ".jpg", ".jpeg"}
_URL_MARGIN = 3600.0  # presigned URLs must outlive the deadline by this much (Tavus may fetch late in the queue)
# Fault injection for the resume tests: ASSETPREP_CRASH_AT=<point> makes the process SIGKILL itself there, so a
# kill lands exactly between two steps instead of wherever a poll loop happens to catch it.
CRASH_POINTS = ("after-upload", "after-post")


def _crash_point(name: str) -> None:
    if os.environ.get("ASSETPREP_CRASH_AT") == name:
        log.warning("ASSETPREP_CRASH_AT=%s: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)


CONFIG_FILE = "assetprep.toml"


class PublishSettings(BaseSettings):
    """Defaults for publish. Highest first: arguments, ASSETPREP_* env vars, `.env`, the config file
    (`$ASSETPREP_CONFIG`, else ./assetprep.toml when present), built-in defaults.

    Secrets (TAVUS_API_KEY, AWS keys) are not read from the config file: env vars or `.env` only.
    """

    model_config = SettingsConfigDict(env_prefix="ASSETPREP_", env_file=".env", extra="ignore")

    bucket: str | None = None
    prefix: str = "assetprep"
    runs_dir: Path = Path(".assetprep/runs")
    background_preset: str = "background-1080p"
    replica_id: str | None = None  # used when --replica is not given
    deadline: str = "2h"  # --deadline default
    poll_interval: float = Field(default=5.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:  # fmt: skip
        return init_settings, env_settings, dotenv_settings, _ConfigFile(settings_cls)


class _ConfigFile(PydanticBaseSettingsSource):
    """The optional TOML config file; unknown keys are an error (a typo must not silently fall back)."""

    def __call__(self) -> dict[str, Any]:
        named = os.environ.get("ASSETPREP_CONFIG")
        path = Path(named) if named else Path(CONFIG_FILE)
        if not path.is_file():
            if named:
                raise ConfigError(f"config file not found: {path}", hint="fix ASSETPREP_CONFIG or unset it")
            return {}
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        unknown = sorted(set(data) - set(self.settings_cls.model_fields))
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}",
                              hint="known: " + ", ".join(self.settings_cls.model_fields))  # fmt: skip
        return data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole file


class PublishOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replica_id: str = Field(min_length=1)
    script: str | None = None
    audio: Path | None = None
    background: Annotated[str | None, AfterValidator(_site_or_path)] = None  # URL, .html file, folder, clip/image
    background_via: Literal["local", "tavus"] = "local"
    background_seconds: float = Field(default=10.0, gt=0, le=120)  # recorded website length (Tavus loops it)
    background_preset: str | None = None
    scroll: Literal["none", "smooth", "human"] = "human"
    scroll_depth: Literal["middle", "bottom"] | int = "middle"
    scroll_return: Literal["return", "halt"] = "return"
    block_private_networks: bool = False  # record pages through the private-network guard
    page_timeout: float = Field(default=60.0, gt=0, le=600)  # seconds a page may take to load (or a clip URL)
    watermark: str | None = None  # png/jpeg file (uploaded) or URL, sent as watermark_image_url
    video_name: str | None = None
    fast: bool = False
    composite_locally: bool = False
    layout: Layout = "bubble-bottom-right"
    callback_url: str | None = None
    listen: str | None = None  # HOST:PORT of a local callback receiver
    listen_url: str | None = None  # the public URL that reaches it (default http://HOST:PORT)
    deadline: float | None = Field(default=None, gt=0)  # seconds; None: the deadline setting (2h)
    poll_interval: float | None = Field(default=None, gt=0)  # None: the poll_interval setting (5 s)
    bucket: str | None = None
    prefix: str | None = None
    output: Path | None = None
    run_id: FolderName = None
    retry_failed: bool = False


class PublishResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    run_dir: Path
    video_id: str
    video_name: str
    status: str
    hosted_url: str | None
    output: Path
    timings: dict[str, float]
    skipped: list[str]
    info: MediaInfo

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "run_dir": str(self.run_dir), "video_id": self.video_id,
            "video_name": self.video_name, "status": self.status, "hosted_url": self.hosted_url,
            "output": str(self.output), "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "skipped": self.skipped, "facts": self.info.summary(),
        }  # fmt: skip


def is_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in ("http", "https")


class BackgroundSpec(BaseModel):
    """How a background is prepared; equal specs give the same file (batch prepares each distinct spec once)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str
    seconds: float
    scroll: Literal["none", "smooth", "human"] = "human"
    scroll_depth: Literal["middle", "bottom"] | int = "middle"
    scroll_return: Literal["return", "halt"] = "return"
    block_private_networks: bool = False
    # Seconds a page may take to load and get ready. Not part of what is made (batch leaves it out of its key):
    # a lead list's dead or hung sites need not hold a recording slot for a minute each.
    timeout: float = Field(default=60.0, gt=0, le=600)


def background_spec(options: PublishOptions, settings: PublishSettings) -> BackgroundSpec:
    return BackgroundSpec(
        preset=options.background_preset or settings.background_preset, seconds=options.background_seconds,
        scroll=options.scroll, scroll_depth=options.scroll_depth, scroll_return=options.scroll_return,
        block_private_networks=options.block_private_networks, timeout=options.page_timeout,
    )  # fmt: skip


def background_kind(spec: str) -> Literal["page", "clip", "still"] | None:
    """What a --background is: a page to record, a clip or still to normalize, or None when it is neither."""
    path = Path(spec)
    if is_url(spec) or path.suffix.lower() in (".html", ".htm") or path.is_dir():
        return "page"
    if path.suffix.lower() in _VIDEO_EXT:
        return "still" if path.suffix.lower() in (".png", ".jpg", ".jpeg") else "clip"
    return None


class Prepared(NamedTuple):
    """A prepared file's warnings and the probe its maker checked it with (probing it again cost an ffprobe)."""

    warnings: list[str]
    info: MediaInfo


def prepare_background(spec: str, out: Path, how: BackgroundSpec, *,
                       on_progress: ProgressCallback | None = None) -> Prepared:  # fmt: skip
    """Record a page (URL, .html, folder) or normalize a clip/still into the background .mp4 at `out`; its warnings
    (a page that did not finish loading, blocked requests, a page too short to scroll, HDR kept) and probe."""
    kind = background_kind(spec)
    if kind == "page":
        from .record import RecordOptions, record

        options = RecordOptions(preset=how.preset, duration=how.seconds, scroll=how.scroll,
                                scroll_depth=how.scroll_depth, scroll_return=how.scroll_return,
                                block_private_networks=how.block_private_networks, timeout=how.timeout)  # fmt: skip
        try:
            recorded = record(spec, out, options, on_progress=on_progress)
            return Prepared(recorded.warnings, recorded.info)
        except NotAPageError as exc:
            if exc.media == "audio":
                raise
            return _remote_clip(spec, out, how, exc.media, on_progress)
    if kind is not None and Path(spec).is_file():
        made = normalize_video(Path(spec), out, preset=how.preset, duration=how.seconds if kind == "still" else None,
                               on_progress=on_progress)  # fmt: skip
        return Prepared(made.warnings, made.info)
    raise MediaError(f"background {spec} is not a URL, page, folder or video file",
                     hint="give an http(s) URL, a .html file, a folder or a clip")  # fmt: skip


def _remote_clip(url: str, out: Path, how: BackgroundSpec, media: str,
                 on_progress: ProgressCallback | None) -> Prepared:  # fmt: skip
    """A background URL that serves a clip or a picture (a CDN link in a lead's website column): downloaded beside
    `out` and normalized like a local one, instead of recorded as Chromium's media viewer."""
    from ._fetch import fetch_media

    clip = out.with_name(f".{out.name}.source")
    try:
        fetch_media(url, clip, timeout=how.timeout, block_private_networks=how.block_private_networks)
        made = normalize_video(clip, out, preset=how.preset, duration=how.seconds if media == "image" else None,
                               on_progress=on_progress)  # fmt: skip
    finally:
        clip.unlink(missing_ok=True)
    kind = "a picture" if media == "image" else "a clip"
    return Prepared(
        [f"{redact_url(url)} is {kind}, not a web page: used as the background itself", *made.warnings], made.info
    )


def prepare_audio(source: Path, out: Path, *, on_progress: ProgressCallback | None = None) -> Prepared:
    """Normalize any recording into the .wav Tavus gets as audio_url; its warnings (silent, clipped, short) and
    probe."""
    made = normalize_audio(source, out, preset="audio-wav", on_progress=on_progress)
    return Prepared(made.warnings, made.info)


def request_fields(options: PublishOptions, urls: dict[str, str], background_url: str | None) -> dict[str, Any]:
    """The POST /v2/videos body (without video_name) from the options and the presigned URLs of the prepared files."""
    fields: dict[str, Any] = {"replica_id": options.replica_id}
    fields |= {"audio_url": urls["audio"]} if "audio" in urls else {"script": options.script}
    if options.composite_locally:
        fields |= {"fast": True, "transparent_background": True}
    else:
        if options.fast:
            fields["fast"] = True
        if "background" in urls:
            fields["background_source_url"] = urls["background"]
        if background_url:
            fields["background_url"] = background_url
    watermark = urls.get("watermark") or options.watermark
    if watermark and is_url(watermark):
        fields["watermark_image_url"] = watermark
    return fields


# How to wait and where to put the result do not change the video: a rerun with other ones resumes the same run.
_NOT_IN_RUN_ID = {
    "run_id",
    "retry_failed",
    "deadline",
    "poll_interval",
    "output",
    "listen",
    "listen_url",
    "callback_url",
    "page_timeout",  # how long to wait, not what is made
}


# Options that change nothing unless their part of the run happens: without a background, how it is recorded; with
# nothing to upload (a script, and a background composited here), where uploads go; the layout, unless composited.
_ONLY_WITH = {
    "background": ("background_via", "background_seconds", "background_preset", "scroll", "scroll_depth",
                   "scroll_return", "block_private_networks"),
    "uploads": ("bucket", "prefix"),
    "composite_locally": ("layout",),
}  # fmt: skip


def uploaded_files(o: PublishOptions) -> list[str]:
    """Which prepared files go to S3: audio, a background recorded or normalized here (not one Tavus records, not
    one composited here), a local watermark."""
    names = ["audio"] if o.audio is not None else []
    if o.background is not None and o.background_via != "tavus" and not o.composite_locally:
        names.append("background")
    if o.watermark and not is_url(o.watermark):
        names.append("watermark")
    return names


def run_id_for(options: PublishOptions) -> str:
    """Same inputs and options → same run (so a rerun resumes); any change that makes another video → a new run.
    An option that does not apply is taken at its default, so adding one (--bucket to a run that uploads nothing)
    resumes the same run, and the ids of runs that never gave it stay as they were."""
    parts: dict[str, Any] = options.model_dump(mode="json", exclude=_NOT_IN_RUN_ID)
    applies = {"background": options.background is not None, "uploads": bool(uploaded_files(options)),
               "composite_locally": options.composite_locally}  # fmt: skip
    for part, names in _ONLY_WITH.items():
        if not applies[part]:
            parts.update({name: PublishOptions.model_fields[name].default for name in names})
    for name in ("audio", "background"):
        value = getattr(options, name)
        if value is not None and not is_url(str(value)) and Path(value).is_file():
            parts[f"{name}_sha256"] = file_sha256(Path(value))
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# --- steps -----------------------------------------------------------------------------------------------------------


def warn_if_training(replica: Replica) -> None:
    if replica.status == "started":  # still training: Tavus keeps its videos queued until it is done
        log.warning("replica %s is still training (%s): its videos stay queued until it is done, and this run waits "
                    "for them up to its deadline", replica.replica_id, replica.training_progress or "?")  # fmt: skip


class _Run:
    def __init__(self, options: PublishOptions, settings: PublishSettings, client: TavusClient, s3: Any,
                 on_progress: ProgressCallback | None) -> None:  # fmt: skip
        self.o = options
        self.settings = settings
        self.client = client
        self.s3_client = s3
        self.on_progress = on_progress
        self.run_id = options.run_id or run_id_for(options)
        self.dir = settings.runs_dir / self.run_id
        self.lock = RunLock(self.dir)  # one process per run: two at once would create two videos
        try:
            self.journal = Journal(self.dir)
            check_host(self.journal.get("api").get("host"), client.base_url, self.journal.path,
                       fresh_flag=f"another --run-id (or delete {self.dir})")  # fmt: skip
        except BaseException:
            self.lock.close()
            raise
        if not self.journal.get("api"):
            self.journal.put("api", host=client.base_url)
        self.timings: dict[str, float] = {}
        self.skipped: list[str] = []
        assert options.deadline is not None and options.poll_interval is not None  # publish() fills them in
        self.poll_interval = options.poll_interval
        self.end = time.monotonic() + options.deadline

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        if self.on_progress:
            self.on_progress(Progress(stage=f"step:{name}", done=0, total=None))
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - started

    def _done_file(self, step: str) -> Path | None:
        """The step's output when the journal says it finished and the file is still intact."""
        entry = self.journal.get(step)
        path = Path(entry["path"]) if entry.get("path") else None
        if path is not None and path.is_file() and file_sha256(path) == entry.get("sha256"):
            self.skipped.append(step)
            return path
        return None

    def _finish_file(self, step: str, path: Path) -> Path:
        self.journal.put(step, path=str(path), sha256=file_sha256(path))
        return path

    def uploaded(self) -> list[str]:
        return uploaded_files(self.o)

    def bucket(self) -> str:
        if not (bucket := self.o.bucket or self.settings.bucket):
            raise ConfigError("no bucket for the prepared files", hint="pass --bucket or set ASSETPREP_BUCKET")
        return bucket

    def s3(self) -> Any:
        if self.s3_client is None:
            self.s3_client = make_s3_client(S3Settings())
        return self.s3_client

    def check_before_work(self) -> None:
        """A wrong API key, an unknown replica or a missing bucket, found before a background is recorded (each
        would fail the run at its upload or submit, after the recording). Skipped once the video exists."""
        if self.journal.get("submit").get("video_id"):
            return
        try:
            warn_if_training(self.client.get_replica(self.o.replica_id))
        except NotFoundError:
            raise ConfigError(
                f"replica {self.o.replica_id!r} not found at {self.client.base_url}",
                hint="`assetprep replicas list` shows the replicas of this API key",
            ) from None
        if self.uploaded() and not self.journal.get("upload").get("urls"):
            ensure_bucket(self.s3(), self.bucket(), prefix=self.o.prefix or self.settings.prefix)

    def background(self) -> tuple[Path | None, str | None]:
        """(local background file, background_url for Tavus)."""
        spec = self.o.background
        if spec is None:
            return None, None
        if self.o.background_via == "tavus":
            if not is_url(spec):
                raise ConfigError("--background-via tavus needs a public http(s) URL", hint="or record it locally")
            return None, spec
        if done := self._done_file("background"):
            return done, None
        out = self.dir / "background.mp4"
        with self.step("background"):
            for warning in prepare_background(spec, out, background_spec(self.o, self.settings),
                                              on_progress=self.on_progress).warnings:  # fmt: skip
                log.warning("background %s: %s", redact_url(spec) if is_url(spec) else spec, warning)
        return self._finish_file("background", out), None

    def audio(self) -> Path | None:
        if self.o.audio is None:
            return None
        if done := self._done_file("audio"):
            return done
        out = self.dir / "audio.wav"
        with self.step("audio"):
            made = prepare_audio(self.o.audio, out, on_progress=self.on_progress)
            for warning in made.warnings:
                log.warning("audio %s: %s", self.o.audio, warning)
            if problem := tavus_audio_problem(made.info.duration or 0.0):
                out.unlink(missing_ok=True)
                raise MediaError(f"{self.o.audio}: {problem}", hint="nothing was uploaded or submitted")
        return self._finish_file("audio", out)

    def upload(self, files: dict[str, Path]) -> dict[str, str]:
        """Presigned URLs for the files, reused from the journal while they outlive the deadline."""
        if not files:
            return {}
        need = (self.end - time.monotonic()) + _URL_MARGIN
        entry = self.journal.get("upload")
        now = dt.datetime.now(dt.UTC).timestamp()
        if entry.get("urls") and set(entry["urls"]) == set(files) and entry.get("expires_at", 0) > now + need:
            self.skipped.append("upload")
            return dict(entry["urls"])
        bucket = self.bucket()
        with self.step("upload"):
            expires = min(7 * 24 * 3600.0, max(need, 6 * 3600.0))
            presigned = upload_and_presign(
                list(files.values()), bucket=bucket, client=self.s3(),
                prefix=self.o.prefix or self.settings.prefix, expires_in=expires, on_progress=self.on_progress,
            )  # fmt: skip
        urls = {name: p.url for name, p in zip(files, presigned, strict=True)}
        self.journal.put("upload", urls=urls, expires_at=min(p.expires_at.timestamp() for p in presigned))
        _crash_point("after-upload")
        return urls

    def submit(self, fields: dict[str, Any]) -> str:
        """The video_id: adopted from the journal, reconciled by name, or created once."""
        sub = self.journal.get("submit")
        attempt = int(sub.get("attempt", 0))
        if sub.get("state") == "failed":
            if not self.o.retry_failed:
                raise VideoFailedError(
                    f"the last video of this run ({sub.get('video_id')}) ended in error: {sub.get('failure')}",
                    hint="rerun with --retry-failed to submit a new video (the failed one stays in the journal)",
                )
            history = [*sub.get("history", []), {k: sub.get(k) for k in ("video_id", "video_name", "failure")}]
            attempt += 1
            sub = {"attempt": attempt, "history": history}
            self.journal.data["submit"] = sub
        if sub.get("video_id"):
            self.skipped.append("submit")
            return str(sub["video_id"])
        base = self.o.video_name or f"assetprep-{self.run_id}"
        name = base if attempt == 0 else f"{base}-retry{attempt}"
        with self.step("submit"):
            # A lost answer (state "sending"), or a lost journal: the default name is derived from the inputs, so a
            # video with it is this run's own. A name the user chose may be an older video's: only after a send.
            if sub.get("state") == "sending" or self.o.video_name is None:
                found = [v for v in self.client.find_videos_by_name(name) if v.status != "deleted"]
                if found:
                    if len(found) > 1:
                        log.warning("%d videos are named %s; adopting the newest", len(found), name)
                    video_id = found[0].video_id
                    self.journal.put("submit", state="sent", video_id=video_id, reconciled=True)
                    return video_id
            self.journal.put("submit", state="sending", video_name=name, attempt=attempt)
            try:
                video = self.client.create_video({**fields, "video_name": name})
            except OutcomeUnknownError as exc:
                exc.hint = "rerun the same command: it finds the video by its name instead of creating another"
                raise
            _crash_point("after-post")  # the video exists, the journal does not know its id
            self.journal.put("submit", state="sent", video_id=video.video_id)
        return video.video_id

    def wait(self, video_id: str, receiver: CallbackReceiver | None) -> Video:
        with self.step("wait"):
            try:
                if receiver is None:
                    remaining = max(1.0, self.end - time.monotonic())
                    video = self.client.wait(
                        video_id, remaining, poll_interval=self.poll_interval, on_progress=self.on_progress
                    )
                else:
                    video = self._wait_callback(video_id, receiver)
            except VideoFailedError as exc:
                failure = exc.video.failure() if isinstance(exc.video, Video) else str(exc)
                self.journal.put("submit", state="failed", failure=failure)
                exc.hint = "fix the input it names, then rerun with --retry-failed"
                raise
        self.journal.put("submit", status="ready")
        return video

    def _wait_callback(self, video_id: str, receiver: CallbackReceiver) -> Video:
        # Callbacks can be lost (no retry policy is documented): poll now and then as well.
        while True:
            remaining = self.end - time.monotonic()
            if remaining <= 0:
                return self.client.wait(video_id, 1.0, poll_interval=1.0)  # raises WaitTimeoutError if not ready
            try:
                event = receiver.events.get(timeout=min(remaining, max(30.0, self.poll_interval * 6)))
            except queue.Empty:
                event = {"video_id": video_id}
            if event.get("video_id") != video_id:
                continue
            video = self.client.get_video(video_id, verbose=True)
            if video.status in ("ready", "error", "deleted"):
                return self.client.wait(video_id, 5.0, poll_interval=0.5)  # one path for ready/failed

    def download(self, video: Video) -> Path:
        name = "tavus" + (".webm" if (video.download_url or "").split("?")[0].endswith(".webm") else ".mp4")
        out = self.dir / name
        if done := self._done_file("download"):
            return done
        with self.step("download"):
            self.client.download(video, out, on_progress=self.on_progress)
        return self._finish_file("download", out)

    def composite(self, layer: Path, background: Path, out: Path) -> Path:
        with self.step("composite"):
            composite(layer, background, out, layout=self.o.layout, on_progress=self.on_progress)
        return out


def _local_inputs(options: PublishOptions) -> tuple[Path, ...]:
    """Files of the user's that this run reads: an output must never be one of them."""
    paths = [options.audio] if options.audio else []
    for spec in (options.background, options.watermark):
        if spec and not is_url(spec) and Path(spec).exists():
            paths.append(Path(spec))
    return tuple(paths)


def check_publish_options(options: PublishOptions) -> None:
    """What can be known before anything is recorded, uploaded or paid for."""
    if (options.script is None) == (options.audio is None):
        raise ConfigError("give exactly one of a script or an audio file")
    if options.script is not None and not options.script.strip():
        raise ConfigError("the script is empty", hint="give the text the replica speaks")
    if options.script is not None and len(options.script) > SCRIPT_MAX_CHARS:
        raise ConfigError(f"the script is {len(options.script):,} characters; the API takes at most "
                          f"{SCRIPT_MAX_CHARS:,} (about ten minutes of speech)",
                          hint="split it into several videos")  # fmt: skip
    if options.composite_locally and options.background is None:
        raise ConfigError("--composite-locally needs a --background to composite onto")
    if options.composite_locally and options.background_via == "tavus":
        raise ConfigError("--composite-locally records the background locally; drop --background-via tavus")
    if options.audio is not None and not options.audio.is_file():
        raise MediaError(f"audio file not found: {options.audio}")
    if options.watermark and not is_url(options.watermark):
        mark = Path(options.watermark)
        if mark.suffix.lower() not in (".png", ".jpg", ".jpeg") or not mark.is_file():
            raise MediaError(f"watermark must be an existing .png or .jpeg file or an http(s) URL: {mark}")
    if options.output is not None:
        check_output_path(options.output, inputs=_local_inputs(options))


def publish(
    options: PublishOptions,
    *,
    client: TavusClient | None = None,
    s3_client: Any = None,
    settings: PublishSettings | None = None,
    on_progress: ProgressCallback | None = None,
) -> PublishResult:
    """Publish one video end to end (resumable: rerun the same options to continue)."""
    settings = settings or PublishSettings()
    check_publish_options(options)
    options = options.model_copy(update={
        "deadline": options.deadline or parse_duration(settings.deadline, what="deadline setting"),
        "poll_interval": options.poll_interval or settings.poll_interval,
    })  # fmt: skip
    client = client or TavusClient()
    run = _Run(options, settings, client, s3_client, on_progress)
    try:
        return _publish(run, options, client, on_progress)
    finally:
        run.lock.close()


def _publish(run: _Run, options: PublishOptions, client: TavusClient,
             on_progress: ProgressCallback | None) -> PublishResult:  # fmt: skip
    run.check_before_work()
    background, background_url = run.background()
    audio = run.audio()
    watermark = Path(options.watermark) if options.watermark else None
    prepared = {"audio": audio, "background": background, "watermark": watermark}
    urls = run.upload({name: path for name in run.uploaded() if (path := prepared[name]) is not None})

    fields = request_fields(options, urls, background_url)
    receiver = CallbackReceiver(options.listen, options.listen_url) if options.listen else None
    try:
        if receiver is not None:
            fields["callback_url"] = receiver.url
        elif options.callback_url:
            fields["callback_url"] = options.callback_url
        video_id = run.submit(fields)
        video = run.wait(video_id, receiver)
    finally:
        if receiver is not None:
            receiver.close()
    downloaded = run.download(video)
    final = options.output or run.dir / "final.mp4"
    if options.composite_locally:
        assert background is not None
        run.composite(downloaded, background, final)
    elif final.resolve() != downloaded.resolve():
        with run.step("output"), atomic_output(final, inputs=_local_inputs(options)) as tmp:
            shutil.copyfile(downloaded, tmp)
    info = probe(final, count_frames=True)
    if info.video is None or not info.duration:
        raise OutputCheckError(f"{final} is not a playable video")
    run.journal.put("output", path=str(final), video_id=video.video_id)
    if on_progress:
        on_progress(Progress(stage="done", done=1, total=1))
    log.info("published %s → %s (%s)", video.video_id, final, redact_url(video.hosted_url or ""))
    return PublishResult(
        run_id=run.run_id, run_dir=run.dir, video_id=video.video_id, video_name=video.video_name or "",
        status=video.status, hosted_url=video.hosted_url, output=final, timings=run.timings, skipped=run.skipped,
        info=info,
    )  # fmt: skip
