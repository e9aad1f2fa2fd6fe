"""The one exception tree of assetprep.

Callers catch `AssetprepError`; the CLI turns it into one line on stderr and exit code 1. Every message says what
went wrong, which file/URL it concerns and, through `hint`, what to do about it. Messages never carry secrets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ._urls import redact_url

INTERRUPTED = "interrupted; no partial output was kept (rerun the same command to continue)"


class AssetprepError(Exception):
    """Base class of every error assetprep raises on purpose. `transient`: what failed did not answer (S3 down, a
    lead's site refusing connections), so the same work may succeed later; a batch tries such work again."""

    def __init__(self, message: str, *, hint: str | None = None, transient: bool = False) -> None:
        # Any URL in the words loses its credentials and query string here, whoever wrote the message: a page's
        # ?token=, a presigned signature or user:password@ in a manifest must not reach a terminal, log or report.
        message = _URL.sub(_redact, message)
        super().__init__(message)
        self.message = message
        self.hint = _URL.sub(_redact, hint) if hint else hint
        self.transient = transient

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


_URL = re.compile(r"\b(?:https?|wss?)://[^\s'\"<>]+", re.IGNORECASE)


def _redact(match: re.Match[str]) -> str:
    url = match.group(0)
    core = url.rstrip(").,;:")  # sentence punctuation after a URL is not part of it
    return redact_url(core) + url[len(core) :]


class ToolMissingError(AssetprepError):
    """An external program (ffmpeg, ffprobe, weed, chromium) cannot be found."""


class ProcessError(AssetprepError):
    """An external program failed; carries the command and the last lines of its stderr."""

    def __init__(
        self,
        message: str,
        *,
        command: Sequence[str] = (),
        returncode: int | None = None,
        stderr_tail: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.command = list(command)
        self.returncode = returncode
        self.stderr_tail = list(stderr_tail)

    def details(self) -> str:
        """The command and stderr tail, for --debug output and logs."""
        lines = [f"command: {' '.join(self.command)}", f"exit code: {self.returncode}"]
        lines += [f"  {line}" for line in self.stderr_tail]
        return "\n".join(lines)


class ProcessTimeoutError(ProcessError):
    """An external program ran past its deadline and was killed."""


class CancelledError(AssetprepError):
    """The work was stopped on purpose (Ctrl-C, SIGTERM, a batch shutting down)."""


class MediaError(AssetprepError):
    """An input file is missing, empty, unreadable or lacks the stream that is needed."""


class OutputError(AssetprepError):
    """The output location cannot be written (missing folder, no permission)."""


class OutputCheckError(AssetprepError):
    """A produced file does not meet its preset; it was not kept."""


class RecordError(AssetprepError):
    """A page could not be loaded or recorded (unreachable, HTTP error, never ready, blocked). `transient`: the site
    refused or dropped the connection or answered 429/5xx, as a site that is down or restarting does."""


class FrameLostError(RecordError):
    """Chromium's screencast did not deliver the picture of a frame it drew; the recording is made again without it."""


class PageNavigatedError(RecordError):
    """The page went on to another page (a timed redirect, a meta refresh) or reloaded by itself while it was made
    ready or recorded: the recording is made again of `url`, where it went, `seconds` into the recording (None:
    while it was made ready)."""

    def __init__(self, message: str, *, url: str, seconds: float | None) -> None:
        super().__init__(message)
        self.url, self.seconds = url, seconds


class NotAPageError(RecordError):
    """A URL answers with a video or a picture, not a web page: publish and batch use it as a clip instead."""

    def __init__(self, message: str, *, media: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.media = media  # "video", "image" or "audio"


class PresetError(AssetprepError):
    """A preset name is unknown or a preset file is invalid."""


class ConfigError(AssetprepError):
    """Settings or command-line values are invalid."""


class JournalError(AssetprepError):
    """A run's or batch's journal is damaged, locked by another process, or belongs to another API host."""


class ManifestError(AssetprepError):
    """A batch manifest has problems; `problems` lists each with its row and column."""

    def __init__(self, message: str, *, problems: Sequence[str] = (), hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = [_URL.sub(_redact, p) for p in problems]

    def __str__(self) -> str:
        lines = _grouped(self.problems)
        shown = lines[:_SHOWN] + ([f"... and {len(lines) - _SHOWN} more"] if len(lines) > _SHOWN else [])
        return "\n".join([super().__str__(), *(f"  {line}" for line in shown)])


_SHOWN = 40  # lines of problems a terminal gets (a 50,000-row export with one stray comma per line printed 50,000)
_ROW = re.compile(r"row (\d+)(\W.*)", re.DOTALL)


def _grouped(problems: Sequence[str]) -> list[str]:
    """The same problem on many rows as one line: "rows 2-50001 (50000 rows): 5 cells but only 4 columns"."""
    rows: dict[str, list[int]] = {}
    order: list[str] = []
    for problem in problems:
        m = _ROW.fullmatch(problem)
        key = m.group(2) if m else problem
        if key not in rows:
            rows[key] = []
            order.append(key)
        if m:
            rows[key].append(int(m.group(1)))
    lines = []
    for key in order:
        numbers = rows[key]
        if len(numbers) <= 1:
            lines.append(f"row {numbers[0]}{key}" if numbers else key)
            continue
        spans: list[list[int]] = []
        for n in numbers:
            if spans and n == spans[-1][1] + 1:
                spans[-1][1] = n
            else:
                spans.append([n, n])
        text = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans[:8]) + (", ..." if len(spans) > 8 else "")
        lines.append(f"rows {text} ({len(numbers)} rows){key}")
    return lines


class StorageError(AssetprepError):
    """S3 upload, presign or preflight failed. `transient`: S3 did not answer (refused, timed out, cut off, a 5xx)
    after the client's own retries, so the same request may work later; a batch waits such an outage out."""


class UploadError(StorageError):
    """Some files of a many-file upload failed; the others finished.

    `failures` pairs each failed path with its error (in the order given); `results` holds the finished uploads in
    input order, None where a file failed.
    """

    def __init__(self, failures: Sequence[tuple[str, AssetprepError]], results: Sequence[object], *, total: int):
        shown = "; ".join(err.message for _, err in failures[:3])
        more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
        hint = (
            failures[0][1].hint
            if len(failures) == 1
            else "fix the files named and rerun: what is stored is not sent again"
        )
        super().__init__(f"{len(failures)} of {total} files not uploaded: {shown}{more}", hint=hint,
                         transient=all(err.transient for _, err in failures))  # fmt: skip
        self.failures = list(failures)
        self.results = list(results)


class PreflightError(StorageError):
    """A presigned URL does not download the way its consumer will fetch it."""


class TavusError(AssetprepError):
    """A Tavus API call (or one to the sandbox) failed. `status_code` is the HTTP status when there was one."""

    def __init__(self, message: str, *, hint: str | None = None, status_code: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status_code = status_code


class InvalidRequestError(TavusError):
    """A request broke an API rule; it was refused before anything was sent."""


class AuthenticationError(TavusError):
    """401: the API key is missing or wrong."""


class ApiValidationError(TavusError):
    """400: the API refused the request; the message is the API's own."""


class NotFoundError(TavusError):
    """404, or the API's 400 `Invalid video_id` / `Invalid replica_id`."""


class RateLimitError(TavusError):
    """429 that did not clear within the retries and deadline."""


class ServerError(TavusError):
    """5xx that did not clear within the retries and deadline."""


class ApiTimeoutError(TavusError):
    """The API did not answer in time (connection or read timeout), after retries."""


class ApiConnectionError(TavusError):
    """The API host could not be reached, after retries."""


class OutcomeUnknownError(TavusError):
    """A create request may have reached the server but its answer was lost: the video may or may not exist."""


class VideoFailedError(TavusError):
    """The video ended in `error` or `deleted`; `video` is the final record."""

    def __init__(self, message: str, *, video: object = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.video = video


class WaitTimeoutError(TavusError):
    """wait() reached its deadline before the video was ready (the video keeps rendering)."""


class DownloadError(TavusError):
    """The finished video could not be downloaded completely, or the file is not a video."""
