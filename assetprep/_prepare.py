"""One preparation task of a batch: make a prepared file (record a page, normalize a clip or audio) and upload it.

The same function runs in a local thread or in a Ray worker on another machine, so everything it needs travels in
the task (non-secret settings only: bucket, prefix, endpoint, recording options); S3 credentials come from the
node's own boto3 chain. It returns only small facts (key, sha256, size): no media goes back to the driver.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import botocore.exceptions
from pydantic import BaseModel, ConfigDict

from . import _process
from ._files import atomic_output, file_sha256, pid_folder, sweep_dead_folders
from .errors import AssetprepError, CancelledError, ConfigError, RecordError, StorageError
from .probe import MediaInfo, probe
from .publish import BackgroundSpec, background_kind, prepare_audio, prepare_background
from .upload import S3Settings, UploadedObject, make_s3_client, storage_error, upload_file

log = logging.getLogger("assetprep.prepare")

PrepKind = Literal["background", "audio", "watermark"]
_NAMES = {"background": "background.mp4", "audio": "audio.wav"}


class S3Target(BaseModel):
    """Where prepared files go; no credentials (each node uses its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str
    prefix: str = "assetprep"
    endpoint_url: str | None = None
    region: str | None = None


class ShippedInput(BaseModel):
    """A driver's local input sent through the bucket, for nodes on other machines (which do not have the file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    sha256: str
    size: int
    page: str | None = None  # an archive of a local page's folder; the page in it ("": the folder's index.html)


class PrepTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str  # hash of what is prepared and how: equal tasks are one task
    kind: PrepKind
    source: str  # http(s) URL or absolute path on the node that runs it
    background: BackgroundSpec | None = None
    s3: S3Target
    keep_dir: str | None = None  # keep the prepared file here (local runs: compositing, posters); None: temp + delete
    shipped: ShippedInput | None = None  # `source` is fetched from the bucket first (Ray: see shippable)

    @property
    def file_name(self) -> str:
        return _NAMES.get(self.kind) or Path(self.source).name

    @property
    def s3_key(self) -> str:
        """Known before the work is done, so a rerun finds a finished upload with one HEAD."""
        prefix = self.s3.prefix.strip("/")
        return f"{prefix + '/' if prefix else ''}prep/{self.key[:20]}/{self.file_name}"


class PrepResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    s3_key: str
    sha256: str
    size: int
    content_type: str
    path: str | None  # the kept local file, if any
    node: str  # where it ran (hostname, or the Ray node id)
    pid: int
    seconds: float
    bytes_sent: int
    facts: dict[str, Any]
    warnings: list[str] = []  # of the recording or normalization: results.csv shows them on each row it serves


# A local page travels with its folder (its assets are files beside it), up to this much; a bigger folder (a page
# saved into ~/Downloads) stays where it is, and every node must see it there, as the batch checks.
PAGE_FOLDER_MAX_BYTES = 256 * 1024 * 1024
PAGE_FOLDER_MAX_FILES = 2000


def shippable(task: PrepTask) -> bool:
    """Whether a Ray node gets this task's input through the bucket: a local audio file, watermark, clip or still,
    and a local page whose folder is small enough to travel (see PAGE_FOLDER_MAX_*)."""
    from .manifest import is_http_url

    if is_http_url(task.source):
        return False
    page = _page_folder(task)
    if page is not None:
        return _folder_files(page[0]) is not None
    return os.path.isfile(task.source)


def _page_folder(task: PrepTask) -> tuple[Path, str] | None:
    """A local page's folder and the page's name in it ("": the folder itself, whose index.html is the page)."""
    if task.kind != "background" or background_kind(task.source) != "page":
        return None
    source = Path(task.source)
    return (source, "") if source.is_dir() else (source.parent, source.name)


def _folder_files(folder: Path) -> list[tuple[str, Path]] | None:
    """(name in the folder, path) of the files the recording serves from it (web assets; no dotfiles, no .git or
    .env: they never leave the machine) in a fixed order; None when there are too many or they are too big (the
    walk stops there). Links to files are followed; linked folders are not (a link to / would be all of it)."""
    from .record import is_served

    found: list[tuple[str, Path]] = []
    total = 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(root, name)
            if not is_served(list(path.relative_to(folder).parts), path.suffix):
                continue
            try:
                if not path.is_file():
                    continue
                total += path.stat().st_size
            except OSError:
                continue
            found.append((path.relative_to(folder).as_posix(), path))
            if len(found) > PAGE_FOLDER_MAX_FILES or total > PAGE_FOLDER_MAX_BYTES:
                return None
    return found


def _pack(files: list[tuple[str, Path]], archive: Path) -> None:
    """A tar of the files that depends only on their names and bytes (no times, owners, modes): the same folder is
    the same object in the bucket, sent once."""
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, path in files:
            with open(path, "rb") as f:
                info = tarfile.TarInfo(name)
                info.size, info.mode = os.fstat(f.fileno()).st_size, 0o644
                tar.addfile(info, f)


def ship_input(task: PrepTask, client: Any) -> PrepTask:
    """Upload the task's local input (content-addressed under PREFIX/inputs/: sent once, whatever reruns) and
    return the task that fetches it. A page goes as a tar of its folder."""
    prefix = "/".join(p for p in (task.s3.prefix.strip("/"), "inputs") if p)
    page = _page_folder(task)
    with tempfile.TemporaryDirectory(prefix="assetprep-ship-") as tmp:
        source, name = Path(task.source), None
        if page is not None:
            files = _folder_files(page[0])
            if files is None:
                raise ConfigError(f"the folder of {task.source} is too big to send to the Ray nodes",
                                  hint="put the page and its files in a folder of their own")  # fmt: skip
            source, name = Path(tmp, f"{page[0].name or 'page'}.tar"), page[1]
            _pack(files, source)
        # Not checked against its name: ffmpeg on the node reads the content, as it would here (a WAV named .mp3).
        obj = upload_file(source, bucket=task.s3.bucket, client=client, prefix=prefix, check_name=False)
    shipped = ShippedInput(key=obj.key, sha256=obj.sha256, size=obj.size, page=name)
    return task.model_copy(update={"shipped": shipped})


def _fetch_shipped(task: PrepTask, shipped: ShippedInput, client: Any, work: Path) -> Path:
    """The driver's input, downloaded into `work` under its own name (its suffix says what it is) and checked."""
    dest = work / f"input-{Path(task.source).name}{'' if shipped.page is None else '.tar'}"
    where = f"s3://{task.s3.bucket}/{shipped.key}"
    try:
        client.download_file(task.s3.bucket, shipped.key, str(dest))
    except Exception as exc:
        raise storage_error(exc, f"fetching the driver's {task.source} from {where}", client) from None
    if dest.stat().st_size != shipped.size or file_sha256(dest) != shipped.sha256:
        raise StorageError(f"{where} does not hold the driver's {task.source} (other bytes)",
                           hint="run the batch again: the driver sends it again")  # fmt: skip
    if shipped.page is None:
        return dest
    folder = work / "page"
    with tarfile.open(dest) as tar:
        for member in tar:  # only what _pack writes: plain files at relative paths inside the folder
            parts = Path(member.name).parts
            if not member.isfile() or not parts or Path(member.name).is_absolute() or ".." in parts:
                raise StorageError(f"{where} holds {member.name!r}, which is not a file of a page's folder",
                                   hint="run the batch again: the driver sends the folder again")  # fmt: skip
            target = folder.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:  # type: ignore[union-attr]
                shutil.copyfileobj(src, out)
    dest.unlink()
    return folder / shipped.page if shipped.page else folder


def retry_step(exc: AssetprepError) -> str | None:
    """What a preparation that may work later waited on: "website" (a lead's site was down: a batch tries again
    within the run) or "storage" (S3 did not answer for the whole wait). None: trying again would fail again."""
    if not exc.transient:
        return None
    return getattr(exc, "step", None) or ("website" if isinstance(exc, RecordError) else "storage")


def find_uploaded(task: PrepTask, client: Any) -> dict[str, Any] | None:
    """The stored object's facts when a finished upload of this task is already in the bucket (one HEAD)."""
    try:
        head = client.head_object(Bucket=task.s3.bucket, Key=task.s3_key)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise storage_error(exc, f"checking s3://{task.s3.bucket}/{task.s3_key}", client) from None
    except Exception as exc:
        raise storage_error(exc, f"checking s3://{task.s3.bucket}/{task.s3_key}", client) from None
    meta = head.get("Metadata", {})
    facts = {"duration": float(meta["duration"])} if meta.get("duration") else {}
    if not meta.get("sha256") or (task.kind == "audio" and not facts):
        return None  # not ours, or without the duration the audio checks need: prepare it again
    return {"s3_key": task.s3_key, "sha256": meta["sha256"], "size": int(head["ContentLength"]),
            "content_type": head.get("ContentType", ""), "facts": facts}  # fmt: skip


_WORK_PREFIX = "assetprep-prep-"


def sweep_stale_work(parent: Path) -> int:
    """Remove the work folders of preparations whose process is gone. A worker killed mid-recording (kill -9, OOM, a
    Ray retry) never reaches its own cleanup; its folder names its PID, so the next task on the node removes it."""
    return len(sweep_dead_folders(parent, _WORK_PREFIX))


STORAGE_WAIT_S = 600.0  # how long a prepared file waits for S3 to answer again before its rows fail
_STORAGE_PAUSES = (5.0, 10.0, 20.0, 30.0)  # then every 30 s


def _upload_waiting_out_outages(path: Path, task: PrepTask, client: Any,
                                meta: dict[str, str] | None) -> UploadedObject:  # fmt: skip
    """upload_file, tried again while S3 does not answer (refused, timed out, a 5xx after botocore's own retries)
    for up to STORAGE_WAIT_S: the recording it carries took minutes, and rows that fail for a storage blip cost a
    rerun. A multipart upload cut midway resumes from its stored parts."""
    give_up = time.monotonic() + STORAGE_WAIT_S
    attempt, said = 0, -60.0
    while True:
        try:
            return upload_file(path, bucket=task.s3.bucket, client=client, prefix=task.s3.prefix, key=task.s3_key,
                               metadata=meta)  # fmt: skip
        except StorageError as exc:
            pause = _STORAGE_PAUSES[min(attempt, len(_STORAGE_PAUSES) - 1)]
            if not exc.transient or time.monotonic() + pause > give_up:
                raise
            if time.monotonic() - said >= 60:  # said once, then once a minute (for each file)
                said = time.monotonic()
                log.warning("S3 is not answering (%s); the prepared %s is kept and sent again until it does "
                            "(up to %.0f min)", exc.message, task.kind, STORAGE_WAIT_S / 60)  # fmt: skip
            if _process.wait_cancelled(pause):  # the batch stops (deadline, Ctrl-C): not a failure to journal
                raise CancelledError(f"the upload of the prepared {task.kind} was cancelled") from None
            attempt += 1


def _made_mark(path: Path) -> Path:
    return path.with_name(f".{path.name}.made.json")


def _made_before(path: Path) -> tuple[list[str], MediaInfo] | None:
    """The warnings and probe of a prepared file an earlier run of this batch kept but did not get into S3 (S3 down
    past the wait, a kill during the upload), so a recording of minutes is not made again; None: make it. The mark
    is written after the file (each atomically): a file without one, or one ffprobe cannot read, is made again."""
    mark = _made_mark(path)
    try:
        warnings = json.loads(mark.read_text())["warnings"]
        info = probe(path)
    except (OSError, ValueError, KeyError, AssetprepError):
        return None
    log.info("%s: made by an earlier run of this batch and kept; not made again", path.name)
    return [str(w) for w in warnings], info


def run_prep(task: PrepTask, *, s3_client: Any = None, node: str | None = None) -> PrepResult:
    """Prepare and upload one task; the prepared file is kept in task.keep_dir or deleted."""
    started = time.monotonic()
    client = s3_client or make_s3_client(S3Settings(endpoint_url=task.s3.endpoint_url, region=task.s3.region))
    if task.keep_dir:
        work = Path(task.keep_dir)
    else:
        sweep_stale_work(Path(tempfile.gettempdir()))
        work = pid_folder(_WORK_PREFIX)
    work.mkdir(parents=True, exist_ok=True)
    try:
        warnings: list[str] = []
        info: MediaInfo | None = None
        source = str(_fetch_shipped(task, task.shipped, client, work)) if task.shipped else task.source
        if task.kind == "watermark":
            path = Path(source)  # uploaded as it is
        else:
            path = work / f"{task.key[:20]}-{task.file_name}"
            kept = _made_before(path) if task.keep_dir else None
            if kept is not None:
                warnings, info = kept
            else:
                if task.kind == "background":
                    assert task.background is not None
                    warnings, info = prepare_background(source, path, task.background)
                else:
                    warnings, info = prepare_audio(Path(source), path)
                if task.keep_dir:
                    with atomic_output(_made_mark(path)) as tmp:
                        tmp.write_text(json.dumps({"warnings": warnings}))
        # The duration travels with the object: a run that finds it by HEAD (lost journal) still checks audio length.
        meta = {"duration": f"{info.duration:.6f}"} if info and info.duration else None
        obj = _upload_waiting_out_outages(path, task, client, meta)
        return PrepResult(
            key=task.key, s3_key=obj.key, sha256=obj.sha256, size=obj.size, content_type=obj.content_type,
            path=str(path) if task.keep_dir else None, node=node or socket.gethostname(), pid=os.getpid(),
            seconds=time.monotonic() - started, bytes_sent=obj.bytes_sent,
            facts=info.summary() if info else {}, warnings=warnings,
        )  # fmt: skip
    finally:
        if not task.keep_dir:
            shutil.rmtree(work, ignore_errors=True)
