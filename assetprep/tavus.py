"""Typed client of the Tavus v2 video API (httpx): strict about what it sends, patient (with deadlines) about waiting.

Facts it follows are in shared/tavus/API.md. The same request rules are enforced by the local sandbox, which imports
`validate_request` from here, so a request that passes here is one the sandbox (and Tavus) will take.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ._files import atomic_output
from ._netguard import is_private
from ._urls import redact_url
from .errors import (
    ApiConnectionError,
    ApiTimeoutError,
    ApiValidationError,
    AssetprepError,
    AuthenticationError,
    ConfigError,
    DownloadError,
    InvalidRequestError,
    NotFoundError,
    OutcomeUnknownError,
    RateLimitError,
    ServerError,
    TavusError,
    VideoFailedError,
    WaitTimeoutError,
)
from .probe import MediaInfo
from .probe import probe as probe_file
from .progress import Progress, ProgressCallback

log = logging.getLogger("assetprep.tavus")

DEFAULT_BASE_URL = "https://tavusapi.com"
STATUSES = ("queued", "generating", "ready", "deleted", "error")
AUDIO_EXTENSIONS = (".wav", ".mp3")
_URL_FIELDS = ("audio_url", "background_url", "background_source_url", "callback_url", "watermark_image_url")
ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"  # replica and video ids
_ID = re.compile(ID_PATTERN)


# --- request and response models -------------------------------------------------------------------------------------


class VideoProperties(BaseModel):
    """`properties` of Generate Video: how Tavus scrolls a background_url."""

    model_config = ConfigDict(extra="forbid")

    background_scroll: bool | None = None
    background_scroll_type: Literal["human", "smooth"] | None = None
    background_scroll_depth: Literal["middle", "bottom"] | None = None
    background_scroll_return: Literal["return", "halt"] | None = None
    start_with_wave: bool | None = None


# The longest script a request may carry: about ten minutes of speech, Tavus's limit for audio_url. The sandbox
# refuses longer ones; the client and batch's checks (a dry run too) use the same number, so nothing is paid for
# and then refused at create.
SCRIPT_MAX_CHARS = 10_000


class GenerateVideoRequest(BaseModel):
    """Body of POST /v2/videos, validated against the API's rules before anything is sent."""

    model_config = ConfigDict(extra="forbid")

    replica_id: str = Field(min_length=1)
    script: str | None = None
    audio_url: str | None = None
    video_name: str | None = None
    background_url: str | None = None
    background_source_url: str | None = None
    callback_url: str | None = None
    fast: bool | None = None
    transparent_background: bool | None = None
    watermark_image_url: str | None = None
    properties: VideoProperties | None = None

    @model_validator(mode="after")
    def _rules(self) -> GenerateVideoRequest:
        if not self.replica_id.strip():
            raise ValueError("replica_id is required")
        has_script = bool(self.script and self.script.strip())
        if has_script == bool(self.audio_url):
            raise ValueError("give exactly one of script or audio_url")
        for name in _URL_FIELDS:
            url = getattr(self, name)
            if url is None:
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{name} must be an http(s) URL, got {redact_url(url)!r}")
        if self.audio_url and not urlsplit(self.audio_url).path.lower().endswith(AUDIO_EXTENSIONS):
            raise ValueError(
                "audio_url must point at a .wav or .mp3 file (its path must end in one), "
                f"got {redact_url(self.audio_url)}"
            )
        if self.background_url and self.background_source_url:
            raise ValueError("give at most one of background_url and background_source_url")
        if self.transparent_background and not self.fast:
            raise ValueError("transparent_background is only allowed with fast=true")
        return self

    def warnings(self) -> list[str]:
        """Things Tavus accepts but that will probably not do what the user wants."""
        out = []
        if self.fast and (self.background_url or self.background_source_url):
            out.append(
                "fast=true renders without a background, so the background is dropped "
                "(assetprep publish --composite-locally keeps fast speed with your background)"
            )
        if self.audio_url and urlsplit(self.audio_url).path.lower().endswith(".mp3"):
            out.append("one Tavus page accepts only .wav audio; if Tavus answers audio_file_type, send a .wav")
        scroll = self.properties.model_dump(exclude_none=True, exclude={"start_with_wave"}) if self.properties else {}
        if scroll and not self.background_url:
            out.append("properties.background_scroll* only apply to background_url; they are ignored here")
        return out

    def payload(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def validate_request(data: GenerateVideoRequest | Mapping[str, Any]) -> GenerateVideoRequest:
    """A GenerateVideoRequest, or InvalidRequestError naming every broken rule."""
    if isinstance(data, GenerateVideoRequest):
        return data
    try:
        return GenerateVideoRequest.model_validate(dict(data))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
        raise InvalidRequestError(
            "invalid video request: " + "; ".join(problems), hint="nothing was sent; fix the request"
        ) from None


def _is_private_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        return is_private(host)
    except ValueError:
        return False  # a DNS name; Tavus resolves it, not us


def check_reachable_by_tavus(request: GenerateVideoRequest) -> None:
    """Refuse URLs that the real Tavus cannot fetch (loopback, private, link-local)."""
    for name in _URL_FIELDS:
        url = getattr(request, name)
        if url and _is_private_host(urlsplit(url).hostname or ""):
            raise InvalidRequestError(
                f"Tavus cannot fetch {redact_url(url)} ({name} points at a local/private address)",
                hint="upload to a public bucket (assetprep upload --bucket …) or use the sandbox (TAVUS_API_BASE_URL)",
            )


class Video(BaseModel):
    """A video record as GET /v2/videos/{id}, list and callbacks return it."""

    # Responses keep unknown fields: Tavus adds fields over time and a client must not break on them.
    model_config = ConfigDict(extra="allow")

    video_id: str
    video_name: str | None = None
    status: str = "queued"
    data: dict[str, Any] | None = None
    download_url: str | None = None
    stream_url: str | None = None
    hosted_url: str | None = None
    status_details: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    generation_progress: str | None = None
    replica_id: str | None = None
    error_details: Any = None
    still_image_thumbnail_url: str | None = None
    gif_thumbnail_url: str | None = None
    background_url: str | None = None
    background_source_url: str | None = None

    @property
    def progress(self) -> float | None:
        """generation_progress "37/100" as 0.37 (None when absent or malformed)."""
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*", self.generation_progress or "")
        if not m or float(m.group(2)) == 0:
            return None
        return min(1.0, float(m.group(1)) / float(m.group(2)))

    def failure(self) -> str:
        """status_details and error_details in one phrase."""
        parts = [p for p in (self.status_details, _text(self.error_details)) if p]
        return "; ".join(parts) or "no details given"


def _text(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


class Replica(BaseModel):
    model_config = ConfigDict(extra="allow")

    replica_id: str
    replica_name: str | None = None
    thumbnail_video_url: str | None = None
    training_progress: str | None = None
    status: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    model_name: str | None = None
    replica_type: str | None = None
    error_message: str | None = None


# --- the client ------------------------------------------------------------------------------------------------------


def resolve_base_url(base_url: str | None = None) -> str:
    """The API host root: argument, TAVUS_API_BASE_URL, TAVUS_PUBLIC_API_BASE_URL (ends in /v2), else Tavus."""
    url = base_url or os.environ.get("TAVUS_API_BASE_URL") or os.environ.get("TAVUS_PUBLIC_API_BASE_URL")
    url = (url or DEFAULT_BASE_URL).rstrip("/")
    url = url.removesuffix("/v2")
    if urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"Tavus base URL must be http(s): {url!r}", hint="fix TAVUS_API_BASE_URL")
    return url


def is_real_tavus(base_url: str) -> bool:
    host = urlsplit(base_url).hostname or ""
    return host == "tavusapi.com" or host.endswith(".tavusapi.com")


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when else None


def _api_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:200] or resp.reason_phrase
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if body.get(key):
                return str(body[key])
    return str(body)[:200]


class DownloadOptions(TypedDict, total=False):
    timeout: float
    max_resumes: int
    on_progress: ProgressCallback | None


class TavusClient:
    """Tavus v2 video API client. Every argument has an env default; `transport` lets tests swap the network."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        max_retries: int = 5,
        max_retry_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        key = api_key or os.environ.get("TAVUS_API_KEY")
        if not key:
            raise ConfigError("no Tavus API key", hint="set TAVUS_API_KEY or pass --api-key")
        self.base_url = resolve_base_url(base_url)
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep
        self._rng = random.Random()
        timeouts = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._http = httpx.Client(
            base_url=self.base_url, headers={"x-api-key": key}, timeout=timeouts, transport=transport
        )
        # Downloads go to other hosts (CDN/S3): they must never see the API key.
        self._files = httpx.Client(timeout=timeouts, transport=transport, follow_redirects=True)

    def __repr__(self) -> str:
        return f"TavusClient(base_url={self.base_url!r})"

    def close(self) -> None:
        self._http.close()
        self._files.close()

    def __enter__(self) -> TavusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport with retries --

    def _error(self, resp: httpx.Response, what: str) -> TavusError:
        msg = _api_message(resp)
        code = resp.status_code
        if code == 401:
            hint = f"check TAVUS_API_KEY for the API at {self.base_url}"
            return AuthenticationError(f"{what}: {msg} (HTTP 401)", hint=hint, status_code=code)
        if code == 404 or (code == 400 and msg.lower().startswith(("invalid video_id", "invalid replica_id"))):
            listing = "replicas list" if "replica" in msg.lower() else "videos list"
            return NotFoundError(f"{what}: {msg}", hint=f"check the id (assetprep {listing})", status_code=code)
        if code == 429:
            return RateLimitError(f"{what}: rate limited (HTTP 429) {msg}", hint="retry later", status_code=code)
        if code >= 500:
            return ServerError(f"{what}: server error HTTP {code}: {msg}", hint="retry later", status_code=code)
        return ApiValidationError(f"{what}: {msg} (HTTP {code})", status_code=code)

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        deadline: float | None = None,
        create: bool = False,
    ) -> httpx.Response:
        """One API call with retries. `create` marks POST /v2/videos, which is never resent once it may have arrived."""
        attempt = 0
        while True:
            delay: float | None = None
            try:
                resp = self._http.request(method, path, json=json, params=params)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing reached the server: safe to retry even a create.
                err: TavusError = ApiConnectionError(
                    f"{what}: cannot reach {self.base_url} ({type(exc).__name__})",
                    hint="check the network and TAVUS_API_BASE_URL",
                )
            except httpx.TransportError as exc:
                if create:
                    raise OutcomeUnknownError(
                        f"{what}: the connection failed after the request was sent ({type(exc).__name__}); "
                        "the video may or may not have been created",
                        hint="do not resend blindly: look for the video by its video_name (assetprep videos list); "
                        "assetprep publish does this on rerun",
                    ) from None
                kind = ApiTimeoutError if isinstance(exc, httpx.TimeoutException) else ApiConnectionError
                err = kind(f"{what}: {type(exc).__name__} talking to {self.base_url}", hint="retry later")
            else:
                if resp.status_code < 400:
                    return resp
                err = self._error(resp, what)
                code = resp.status_code
                retryable = code == 429 or code == 503 or (code >= 500 and not create)
                if create and code >= 500 and code != 503:
                    raise OutcomeUnknownError(
                        f"{what}: server error HTTP {code} after the request arrived; the video may or may not exist",
                        hint="look for it by video_name before resending (assetprep publish does this on rerun)",
                        status_code=code,
                    )
                if not retryable:
                    raise err
                delay = _retry_after(resp)
            attempt += 1
            if attempt > self.max_retries:
                raise err
            if delay is None:
                delay = 0.5 * 2 ** (attempt - 1)
            delay = min(delay, self.max_retry_wait) * (1 + 0.2 * self._rng.random())  # jitter spreads retry storms
            if deadline is not None and time.monotonic() + delay > deadline:
                raise err
            log.info("%s: %s; retry %d in %.1f s", what, err.message, attempt, delay)
            self._sleep(delay)

    def _check_id(self, kind: str, value: str) -> str:
        if not _ID.match(value or ""):
            raise InvalidRequestError(f"not a valid {kind}: {value!r}", hint="ids are letters, digits, - and _")
        return value

    def _paginate(self, path: str, what: str, page_size: int, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        # The reference says pages count from 0, an older page says 1: iterate until total_count distinct ids are
        # seen, a page is empty, or a page brings nothing new, whichever the server's convention.
        seen: set[str] = set()
        total: int | None = None
        page = 0
        while True:
            body = self._request("GET", path, what=what, params={**params, "limit": page_size, "page": page}).json()
            items = body.get("data") or []
            total = body.get("total_count", total)
            fresh = [item for item in items if (item.get("video_id") or item.get("replica_id")) not in seen]
            for item in fresh:
                seen.add(item.get("video_id") or item.get("replica_id"))
                yield item
            if total is not None and len(seen) >= total:
                return
            if not items and not (page == 0 and total):  # a 1-indexed server answers page 0 with nothing
                return
            if items and not fresh:
                return
            page += 1
            if total is not None and page > total // max(1, page_size) + 2:
                return

    # -- videos --

    def create_video(self, request: GenerateVideoRequest | Mapping[str, Any] | None = None, **fields: Any) -> Video:
        """POST /v2/videos. Validates first; never resends once the request may have arrived (OutcomeUnknownError)."""
        req = validate_request(request if request is not None else fields)
        if is_real_tavus(self.base_url):
            check_reachable_by_tavus(req)
        for warning in req.warnings():
            log.warning("%s", warning)
        resp = self._request("POST", "/v2/videos", what="create video", json=req.payload(), create=True)
        return Video.model_validate(resp.json())

    def get_video(self, video_id: str, *, verbose: bool = False, deadline: float | None = None) -> Video:
        self._check_id("video_id", video_id)
        params = {"verbose": "true"} if verbose else None
        resp = self._request("GET", f"/v2/videos/{video_id}", what=f"get video {video_id}", params=params,
                             deadline=deadline)  # fmt: skip
        return Video.model_validate(resp.json())

    def list_videos(self, *, page_size: int = 50) -> Iterator[Video]:
        """Every video of the account, across all pages."""
        for item in self._paginate("/v2/videos", "list videos", page_size, {}):
            yield Video.model_validate(item)

    def delete_video(self, video_id: str, *, hard: bool = False) -> None:
        self._check_id("video_id", video_id)
        params = {"hard": "true"} if hard else None
        self._request("DELETE", f"/v2/videos/{video_id}", what=f"delete video {video_id}", params=params)

    def rename_video(self, video_id: str, name: str) -> None:
        self._check_id("video_id", video_id)
        if not name.strip():
            raise InvalidRequestError("video_name must not be empty", hint="nothing was sent")
        self._request("PATCH", f"/v2/videos/{video_id}/name", what=f"rename video {video_id}",
                      json={"video_name": name})  # fmt: skip

    def find_videos_by_name(self, video_name: str) -> list[Video]:
        """Videos whose video_name is exactly this (how a lost create is reconciled)."""
        return [v for v in self.list_videos() if v.video_name == video_name]

    # -- replicas --

    def list_replicas(self, *, page_size: int = 50) -> list[Replica]:
        return [Replica.model_validate(r) for r in self._paginate("/v2/replicas", "list replicas", page_size, {})]

    def get_replica(self, replica_id: str) -> Replica:
        self._check_id("replica_id", replica_id)
        resp = self._request("GET", f"/v2/replicas/{replica_id}", what=f"get replica {replica_id}")
        return Replica.model_validate(resp.json())

    # -- waiting and downloading --

    def wait(
        self,
        video_id: str,
        deadline: float,
        *,
        poll_interval: float = 5.0,
        max_poll_interval: float = 30.0,
        on_progress: ProgressCallback | None = None,
    ) -> Video:
        """Poll until `ready` (returns the verbose record); raises on error/deleted and after `deadline` seconds."""
        end = time.monotonic() + deadline
        interval = poll_interval
        while True:
            video = self.get_video(video_id, verbose=True, deadline=end)
            if on_progress is not None:
                frac = 1.0 if video.status == "ready" else (video.progress or 0.0)
                on_progress(Progress(stage="tavus render", done=round(frac * 100, 1), total=100, unit="%"))
            if video.status == "ready":
                return video
            if video.status in ("error", "deleted"):
                raise VideoFailedError(
                    f"video {video_id} ended in {video.status}: {video.failure()}",
                    video=video,
                    hint="fix the input named above and submit again" if video.status == "error" else None,
                )
            remaining = end - time.monotonic()
            if remaining <= 0:
                got = f" at {video.generation_progress}" if video.generation_progress else ""
                raise WaitTimeoutError(
                    f"video {video_id} is still {video.status}{got} after {deadline:g} s",
                    hint=f"it keeps rendering; wait again: assetprep videos wait {video_id} --deadline …",
                )
            self._sleep(min(interval, remaining))
            interval = min(max_poll_interval, interval * 1.5)

    def download(self, video: Video | str, path: str | os.PathLike[str], **options: Unpack[DownloadOptions]) -> Path:
        """Download a ready video to `path` (atomic); resumes with Range after dropped connections; probes the file.
        Options: timeout (900 s), max_resumes (8), on_progress."""
        self.download_probed(video, path, **options)
        return Path(path)

    def download_probed(
        self,
        video: Video | str,
        path: str | os.PathLike[str],
        *,
        timeout: float = 900.0,
        max_resumes: int = 8,
        on_progress: ProgressCallback | None = None,
    ) -> MediaInfo:
        """download(), returning what the probe of the file found (a batch of thousands probed each video again,
        ~0.12 s of CPU each, beside the recordings)."""
        record = self.get_video(video) if isinstance(video, str) else video
        if record.status != "ready" or not record.download_url:
            raise DownloadError(
                f"video {record.video_id} is {record.status}, not ready: nothing to download",
                hint=f"wait for it first: assetprep videos wait {record.video_id}",
            )
        url = record.download_url
        end = time.monotonic() + timeout
        with atomic_output(path) as tmp:
            got, total, resumes = 0, None, 0
            while total is None or got < total:
                if time.monotonic() > end:
                    raise DownloadError(f"download of {redact_url(url)} did not finish within {timeout:g} s")
                try:
                    got, total = self._fetch(url, tmp, got, on_progress)
                    if total is None:
                        break  # no length announced: the server closing cleanly is the end
                    if got < total:
                        raise httpx.RemoteProtocolError("closed early")
                except httpx.TransportError as exc:
                    resumes += 1
                    if resumes > max_resumes:
                        raise DownloadError(
                            f"download of {redact_url(url)} kept failing ({type(exc).__name__}) at byte {got}",
                            hint="run the download again; it starts over in a fresh file",
                        ) from None
                    log.info("download dropped at byte %d (%s); resuming", got, type(exc).__name__)
                    self._sleep(min(8.0, 0.25 * 2**resumes))
            try:
                info = probe_file(tmp)
            except AssetprepError as exc:
                raise DownloadError(
                    f"downloaded file from {redact_url(url)} is not a readable video: {exc.message}"
                ) from None
            if info.video is None:
                raise DownloadError(f"downloaded file from {redact_url(url)} has no video stream")
        return info.model_copy(update={"path": os.fspath(path)})

    def _fetch(self, url: str, tmp: Path, got: int, on_progress: ProgressCallback | None) -> tuple[int, int | None]:
        headers = {"Range": f"bytes={got}-"} if got else {}
        with self._files.stream("GET", url, headers=headers) as resp:
            if resp.status_code == 416 and got:
                return got, got
            if resp.status_code >= 400:
                raise DownloadError(
                    f"download of {redact_url(url)} failed: HTTP {resp.status_code}",
                    hint="the link may have expired; fetch the record again (assetprep videos get ID)",
                    status_code=resp.status_code,
                )
            total: int | None = None
            if resp.status_code == 206:
                m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("content-range", ""))
                if not m or int(m.group(1)) != got:
                    raise DownloadError(f"download of {redact_url(url)}: server answered a different byte range")
                total = int(m.group(2)) if m.group(2) != "*" else None
            else:
                got = 0  # the server ignored Range: start over
                length = resp.headers.get("content-length")
                total = int(length) if length else None
            with open(tmp, "r+b") as f:
                f.seek(got)
                f.truncate()
                for chunk in resp.iter_bytes(1 << 20):
                    f.write(chunk)
                    got += len(chunk)
                    if on_progress is not None:
                        on_progress(Progress(stage="download", done=got, total=total, unit="bytes"))
        return got, total
