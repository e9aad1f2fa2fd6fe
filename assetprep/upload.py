"""S3 upload, presigned GET URLs and a preflight that fetches each URL the way Tavus will.

Keys are content-addressed (PREFIX/<sha256[:16]>/<name>), so a re-upload of the same bytes sends nothing. The S3
client is built in one place (`make_s3_client`) and injectable everywhere. No secret ever reaches a message.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import logging
import mimetypes
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr

from ._files import ShrankError, check_input_file, hash_range
from ._s3http import Answer, BadAnswer, FileSlice, Headers, HttpPool, Listing, SignedS3, StaticCredentials
from ._urls import redact_url, s3_error_reason
from .errors import AssetprepError, CancelledError, ConfigError, MediaError, PreflightError, StorageError, UploadError
from .progress import Progress, ProgressCallback

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from s3transfer.utils import ReadFileChunk

# boto3 and botocore are imported where a request goes through them (~0.25 s of a command's start with the client
# built): an upload of small files to an S3-compatible endpoint with keys in the environment never needs them.

MIN_EXPIRY = 60.0
PREFLIGHT_TIMEOUT = 15.0  # seconds for a preflight GET (connect at most 5 of them)
MAX_EXPIRY = 7 * 24 * 3600.0  # SigV4 presigned URLs cannot live longer
CONTENT_TYPES = {".mp4": "video/mp4", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".webm": "video/webm"}
MiB = 1024 * 1024
LISTED_FILES = 8  # a call of this many files or more lists its prefix once instead of checking each key
SMALL_FILE = 4 * MiB  # read whole into memory (bounded: jobs x 4 MiB); bigger files stream from disk


def default_parts_in_flight() -> int:
    """Parts sent at once: two per core (4 to 16). On 2 cores with the S3 server on the same machine, 8 in flight
    made the server thrash: 256 MiB 2.29 s and 2 GiB 16.1 s against 2.05 s and 13.5 s with 4 (7 and 3 interleaved
    rounds, medians); a bigger machine has the cores for more."""
    return max(4, min(16, 2 * (os.cpu_count() or 2)))


@dataclass(frozen=True)
class Transfer:
    """When a file goes in parts, their size, and how many are sent at once (boto3's TransferConfig fits as well).
    16 MiB parts (boto3 defaults to 8 MiB): half the requests to a remote S3; on local SeaweedFS 8, 16 and 32 MiB
    parts measured alike (scripts/bench_upload.py)."""

    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 16 * MiB
    max_concurrency: int = field(default_factory=default_parts_in_flight)


DEFAULT_TRANSFER = Transfer()

log = logging.getLogger("assetprep.upload")
T = TypeVar("T")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Settings(_Model):
    """Where to upload. Unset fields fall back to boto3's standard chain (env, profile, instance role)."""

    endpoint_url: str | None = None  # S3-compatible store (SeaweedFS, MinIO, R2); also AWS_ENDPOINT_URL_S3
    public_endpoint_url: str | None = None  # host the consumer reaches, when it differs from endpoint_url
    region: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None


class UploadedObject(_Model):
    bucket: str
    key: str
    size: int
    sha256: str
    content_type: str
    skipped: bool  # the same bytes were already stored under the key
    bytes_sent: int

    @property
    def s3_uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class PresignedObject(_Model):
    object: UploadedObject
    url: str
    expires_at: dt.datetime

    def summary(self) -> dict[str, Any]:
        o = self.object
        return {
            "file_uri": o.s3_uri, "url": self.url, "expires_at": self.expires_at.isoformat(), "size": o.size,
            "sha256": o.sha256, "content_type": o.content_type, "skipped": o.skipped, "bytes_sent": o.bytes_sent,
        }  # fmt: skip


def make_s3_client(
    settings: S3Settings | None = None,
    *,
    endpoint_url: str | None = None,
    connect_timeout: float = 5,
    read_timeout: float = 60,
    retries: int = 3,
) -> Any:
    """The one place an S3 client is built: SigV4, path-style for custom endpoints, bounded timeouts and retries."""
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    s = settings or S3Settings()
    endpoint = _endpoint(s, endpoint_url)
    try:
        session = boto3.session.Session(
            profile_name=s.profile,
            region_name=_region(s),
            aws_access_key_id=s.access_key_id,
            aws_secret_access_key=s.secret_access_key.get_secret_value() if s.secret_access_key else None,
            aws_session_token=s.session_token.get_secret_value() if s.session_token else None,
        )
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(
            f"AWS profile '{s.profile}' not found", hint="check ~/.aws/config or drop --profile"
        ) from None
    config = Config(
        signature_version="s3v4",
        # Every body we send carries a SHA-256 checksum the server verifies, so SigV4 need not hash the payload a
        # second time (botocore does over plain http, e.g. a local SeaweedFS: a third hash of every byte).
        s3={"addressing_style": "path" if endpoint else "auto", "payload_signing_enabled": False},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": retries + 1, "mode": "standard"},
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


def _endpoint(s: S3Settings, endpoint_url: str | None = None) -> str | None:
    return endpoint_url or s.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _region(s: S3Settings) -> str:
    return s.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class DeferredClient:
    """make_s3_client(settings) built when first used. Until then, requests that SignedS3 makes (the bucket check,
    HEAD, PUT, presigning) are signed without botocore whenever the client's setup is fully known without it: an
    S3-compatible endpoint, keys in the settings or the environment (no profile, no expiring session), region from
    the settings or environment. An upload of small files then never imports boto3 (scripts/bench_upload.py --cli).
    Anything else (AWS itself, a profile, an error to name, a multipart upload) builds the real client."""

    def __init__(self, settings: S3Settings, endpoint_url: str | None = None) -> None:
        self._settings, self._endpoint_url = settings, endpoint_url
        self._client: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # what is not defined here is the real client's
        return getattr(self.real(), name)

    def real(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = make_s3_client(self._settings, endpoint_url=self._endpoint_url)
            return self._client

    def credentials(self) -> StaticCredentials | None:
        """The keys when they are given outright, as botocore would take them (None: botocore's chain decides)."""
        s, env = self._settings, os.environ
        if s.profile or env.get("AWS_PROFILE") or env.get("AWS_CREDENTIAL_EXPIRATION"):
            return None
        if s.access_key_id and s.secret_access_key:
            token = s.session_token.get_secret_value() if s.session_token else None
            return StaticCredentials(s.access_key_id, s.secret_access_key.get_secret_value(), token)
        if s.access_key_id or s.secret_access_key or s.session_token:
            return None  # half given: botocore's message about it
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
            return StaticCredentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], token)
        return None

    def signer(self, bucket: str, pool: HttpPool) -> SignedS3 | None:
        """The fast path, from the settings alone when they say everything, else from the real client."""
        endpoint = _endpoint(self._settings, self._endpoint_url)
        credentials = self.credentials()
        if self._client is None and endpoint and credentials is not None:
            parts = urlsplit(endpoint)
            if parts.path in ("", "/") and not parts.query:  # make_s3_client addresses a custom endpoint path-style
                try:
                    return SignedS3(credentials, _region(self._settings), f"{parts.scheme}://{parts.netloc}/{bucket}/",
                                    pool)  # fmt: skip
                except ValueError as exc:
                    log.debug("S3 requests go through botocore only: %s", exc)
                    return None
        return SignedS3.for_client(self.real(), bucket, pool)


def _where(client: Any) -> str:
    if isinstance(client, DeferredClient) and (endpoint := _endpoint(client._settings, client._endpoint_url)):
        return endpoint
    return client.meta.endpoint_url


def storage_error(exc: Exception, action: str, client: Any) -> StorageError:
    """Turn a boto3/botocore exception into one clear StorageError (without any secret)."""
    import boto3.exceptions
    import botocore.exceptions

    where = _where(client)
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StorageError(
            f"{action}: no AWS credentials found",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, pass --profile, or use 'assetprep s3 serve'",
        )
    if isinstance(exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError):
        return StorageError(f"{action}: cannot reach S3 at {where}", hint="check --endpoint-url and that it is running",
                            transient=True)  # fmt: skip
    if isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError):
        return StorageError(f"{action}: the connection to {where} broke off", hint="retry; finished parts are kept",
                            transient=True)  # fmt: skip
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken"}:
            return StorageError(
                f"{action}: S3 at {where} rejected the credentials ({code or status})",
                hint="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --profile, and the bucket policy",
            )
        if code in {"NoSuchBucket", "404", "NotFound"}:
            return StorageError(
                f"{action}: not found at {where} ({code})", hint="create the bucket or pass --create-bucket"
            )
        answer = f"HTTP {status}" + (f" {code}" if code and code != str(status) else "")  # a HEAD has no body
        return StorageError(f"{action}: S3 at {where} answered {answer}", transient=(status or 0) >= 500)
    if isinstance(exc, botocore.exceptions.BotoCoreError | boto3.exceptions.S3UploadFailedError):
        # S3UploadFailedError wraps the ClientError text; its message carries no secrets.
        return StorageError(f"{action}: {exc}")
    return StorageError(f"{action}: {type(exc).__name__}: {exc}")


def bucket_name_problem(bucket: str) -> str | None:
    """Why `bucket` is not a valid S3 bucket name, in words (None when it is)."""
    if not 3 <= len(bucket) <= 63:
        return "it must be 3 to 63 characters long"
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", bucket):
        return "use only lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
    if ".." in bucket or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", bucket):
        return "no two dots in a row and not an IP address"
    return None


def abort_stale_uploads(client: Any, bucket: str, prefix: str, *, older_than: float = 3600.0,
                        fast: SignedS3 | None = None) -> int:  # fmt: skip
    """Abort multipart uploads under `prefix` begun more than `older_than` seconds ago; how many were aborted.

    A killed upload (kill -9, a lost machine) leaves its parts on the server: invisible, but stored and billed.
    Best effort: a server or policy that does not allow listing them is left alone (a lifecycle rule such as
    AbortIncompleteMultipartUpload does the same job; README: Storage).
    """
    if fast is not None and fast.no_uploads_under(prefix.strip("/")):
        return 0  # the usual answer, without botocore
    limit = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
    aborted = 0
    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix.strip("/")):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < limit:
                    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
    except Exception as exc:  # listing is not allowed, or the server does not implement it
        log.debug("could not list multipart uploads under s3://%s/%s: %s", bucket, prefix, type(exc).__name__)
    return aborted


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot start S3 keys, in words (None when it can)."""
    if any(part in ("", ".", "..") for part in prefix.strip("/").split("/")) and prefix.strip("/"):
        # HTTP clients and servers normalize such paths: the object would land under another key or be refused
        # (SeaweedFS answers a bare 400).
        return "no '.' or '..' segment and no '//'"
    if re.search(r"[\x00-\x1f\x7f]", prefix):
        return "no control characters"
    if len(prefix.encode()) > 512:
        return "at most 512 bytes (a whole key may have 1,024)"
    return None


def ensure_bucket(client: Any, bucket: str, *, create: bool = False, prefix: str | None = None,
                  fast: SignedS3 | None = None) -> None:  # fmt: skip
    """Check the bucket exists (create it when asked) and, given, that `prefix` can start keys. `fast`: asks with a
    HEAD of its own first; any answer but 200 is asked again through botocore, whose errors are named."""
    if problem := bucket_name_problem(bucket):
        raise StorageError(f"invalid bucket name {bucket!r}: {problem}", hint="fix --bucket or ASSETPREP_BUCKET")
    if prefix is not None and (problem := prefix_problem(prefix)):
        raise StorageError(f"invalid key prefix {prefix!r}: {problem}", hint="fix --prefix or ASSETPREP_PREFIX")
    if fast is not None and fast.bucket_exists():
        return
    import botocore.exceptions

    try:
        client.head_bucket(Bucket=bucket)
        return
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in {"404", "NoSuchBucket", "NotFound"}:
            raise storage_error(exc, f"checking bucket '{bucket}'", client) from None
    except Exception as exc:
        raise storage_error(exc, f"checking bucket '{bucket}'", client) from None
    if not create:
        raise StorageError(
            f"bucket '{bucket}' does not exist at {_where(client)}",
            hint="create it (assetprep upload FILE --create-bucket does) or name another: --bucket, ASSETPREP_BUCKET",
        )
    try:
        client.create_bucket(Bucket=bucket)
    except Exception as exc:
        raise storage_error(exc, f"creating bucket '{bucket}'", client) from None


class FileDigest(_Model):
    """One read of a file: its SHA-256 (the key) and the SHA-256 of each upload part (the server checks those)."""

    size: int
    sha256: str
    part_size: int
    parts: list[str]  # base64 SHA-256 per part; one entry (the whole file's) below the multipart threshold


def part_size_for(size: int, config: Transfer | TransferConfig) -> int:
    """The configured part size, grown (in whole MiB) so a file never needs more than S3's 10,000 parts."""
    need = -(-size // 10_000)
    return max(int(config.multipart_chunksize), -(-need // MiB) * MiB)


def digest_file(path: Path, config: Transfer | TransferConfig = DEFAULT_TRANSFER) -> FileDigest:
    """Hash a file in one pass of wall time: the whole-file SHA-256 and, for a multipart upload, each part's SHA-256.

    Parts are contiguous ranges: a helper thread hashes them while this one hashes the whole file (hashlib releases
    the GIL), each reading the file through its own small buffer, so memory stays at two buffers whatever the size.
    """
    return _digest(path, config)[0]


def _digest(path: Path, config: Transfer | TransferConfig) -> tuple[FileDigest, bytes | None]:
    """digest_file, plus the bytes themselves for a small file (sent from memory: read once, and no 100-continue)."""
    size = path.stat().st_size
    if size <= SMALL_FILE:
        data = path.read_bytes()
        digest = hashlib.sha256(data).digest()
        fd = FileDigest(size=len(data), sha256=digest.hex(), part_size=max(len(data), 1), parts=[_b64(digest)])
        return fd, data
    if size < config.multipart_threshold:
        digest = hash_range(path, 0, size).digest()
        return FileDigest(size=size, sha256=digest.hex(), part_size=max(size, 1), parts=[_b64(digest)]), None
    part_size = part_size_for(size, config)
    with ThreadPoolExecutor(1, thread_name_prefix="assetprep-hash") as helper:
        starts = range(0, size, part_size)
        parts = helper.submit(lambda: [hash_range(path, at, min(part_size, size - at)).digest() for at in starts])
        whole = hash_range(path, 0, size).hexdigest()
        return FileDigest(size=size, sha256=whole, part_size=part_size, parts=[_b64(p) for p in parts.result()]), None


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def content_type_for(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


# The first bytes of the media files Tavus takes: a name that promises one of these must start like it.
_SIGNATURES: dict[str, tuple[tuple[int, bytes], ...]] = {
    ".mp4": ((4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide")),
    ".m4a": ((4, b"ftyp"),),
    ".mov": ((4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide")),
    ".webm": ((0, b"\x1a\x45\xdf\xa3"),),
    ".wav": ((0, b"RIFF"), (0, b"RF64")),
    ".mp3": ((0, b"ID3"), (0, b"\xff\xfb"), (0, b"\xff\xf3"), (0, b"\xff\xf2"), (0, b"\xff\xfa"), (0, b"\xff\xe3")),
    ".png": ((0, b"\x89PNG"),),
    ".jpg": ((0, b"\xff\xd8\xff"),),
    ".jpeg": ((0, b"\xff\xd8\xff"),),
}


def media_name_problem(path: Path) -> str | None:
    """Why a file named like media (x.mp4, x.wav, …) is not that media, from its first bytes (None when it is)."""
    expected = _SIGNATURES.get(path.suffix.lower())
    if expected is None:
        return None
    with open(path, "rb") as f:
        head = f.read(16)
    if any(head[at : at + len(magic)] == magic for at, magic in expected):
        return None
    text = all(32 <= b < 127 or b in b"\t\r\n" for b in head)
    kind = "empty" if not head else "text" if text else "something else"
    return f"{path.name} is named {path.suffix.lower()} but its content is {kind}"


def object_key(prefix: str, sha256: str, name: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{sha256[:16]}/{name}" if prefix else f"{sha256[:16]}/{name}"


def _content_disposition(name: str) -> str:
    # A header value cannot hold a line break (a name with one failed the upload with "Invalid header value"):
    # control characters become "_" in the plain name; filename* keeps the real one, percent-encoded.
    ascii_name = re.sub(r'[\x00-\x1f\x7f"]', "_", name.encode("ascii", "replace").decode())
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


def default_jobs() -> int:
    """Files in flight at once: requests mostly wait on the network, so several per core (bounded)."""
    return min(32, 8 * (os.cpu_count() or 2))


class _Upload:
    """One call's shared state: one S3 client, one part pool, progress in bytes and files across every file."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        prefix: str,
        config: Transfer | TransferConfig,
        on_progress: ProgressCallback | None,
        files: int,
        fast: SignedS3 | None = None,
        listing: Listing | None = None,
    ) -> None:
        self.client, self.bucket, self.prefix, self.config = client, bucket, prefix, config
        self.fast = fast  # HEAD, small PUTs and parts without botocore's per-call cost; botocore when it returns None
        self.listing = listing  # the keys under the prefix when the call began: a key it lacks is not checked
        self.on_progress = on_progress
        self.files = files
        self.files_done = 0
        self.bytes_total = 0
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self.last_report = 0.0
        # Set when the caller is interrupted: requests in flight stop at their next write.
        self.cancelled = threading.Event()
        self.parts = ThreadPoolExecutor(max(1, int(config.max_concurrency)), thread_name_prefix="assetprep-part")

    def close(self) -> None:
        self.parts.shutdown(wait=True, cancel_futures=True)

    # -- progress --

    def add_total(self, size: int) -> None:
        with self.lock:
            self.bytes_total += size
        self.report(force=True)

    def sent(self, bytes_transferred: int) -> None:  # s3transfer calls it by this keyword
        if self.cancelled.is_set():
            raise CancelledError("upload stopped")
        self.done(bytes_transferred)

    def done(self, size: int) -> None:
        """Bytes sent, or found stored (a skipped file, reused parts): a re-upload's bar ends full, not at 0."""
        with self.lock:
            self.bytes_sent += size
        self.report()

    def file_done(self) -> None:
        with self.lock:
            self.files_done += 1
        self.report(force=True)

    def report(self, *, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if not force and now - self.last_report < 0.1:  # a callback per 8 KB socket write would cost more than it says
            return
        self.last_report = now
        stage = f"upload {self.files_done}/{self.files} files" if self.files > 1 else "upload"
        self.on_progress(Progress(stage=stage, done=self.bytes_sent, total=self.bytes_total or None, unit="bytes"))

    # -- one file --

    def upload(self, path: str | os.PathLike[str], *, key: str | None = None, metadata: dict[str, str] | None = None,
               stored: Callable[[str, FileDigest, str], bool] | None = None,
               check_name: bool = True) -> UploadedObject:  # fmt: skip
        """`stored(key, digest, content_type)`: another way to learn whether the bytes are there (default: HEAD).
        `check_name=False`: bytes going to a program that reads their content (ffmpeg), not to a consumer."""
        try:
            src = check_input_file(path)
            # A player (and Tavus) would get a misnamed file as media and fail later.
            if check_name and (problem := media_name_problem(src)):
                raise StorageError(f"not uploaded: {problem}", hint="upload the real file, or name it for what it is")
            digest, data = _digest(src, self.config)
        except MediaError as exc:
            raise StorageError(exc.message, hint=exc.hint) from None
        except ShrankError as exc:
            raise StorageError(f"not uploaded: {exc}", hint="upload it once whatever writes it has finished") from None
        except OSError as exc:
            raise StorageError(
                f"cannot read {path}: {exc.strerror or exc}", hint="check the file's permissions"
            ) from None
        key = key or object_key(self.prefix, digest.sha256, src.name)
        ctype = content_type_for(src)
        self.add_total(digest.size)
        obj = UploadedObject(bucket=self.bucket, key=key, size=digest.size, sha256=digest.sha256, content_type=ctype,
                             skipped=True, bytes_sent=0)  # fmt: skip
        if not (stored(key, digest, ctype) if stored else self.stored(key, digest)):
            extra = {"ContentType": ctype, "ContentDisposition": _content_disposition(src.name),
                     "Metadata": {**(metadata or {}), "sha256": digest.sha256}}  # fmt: skip
            try:
                if len(digest.parts) == 1 and digest.size < self.config.multipart_threshold:
                    sent = self.put(src, key, digest, extra, data)
                else:
                    sent = self.multipart(src, key, digest, extra)
            except AssetprepError:
                raise
            except Exception as exc:
                if self.cancelled.is_set():  # our callback stopped the request; botocore may have wrapped that
                    raise CancelledError(f"upload of {src} stopped") from None
                raise storage_error(exc, f"uploading {src} to s3://{self.bucket}/{key}", self.client) from None
            obj = obj.model_copy(update={"skipped": False, "bytes_sent": sent})
        else:
            self.done(digest.size)
        self.file_done()
        return obj

    def listed_absent(self, key: str) -> bool:
        """Whether the call's listing shows no object under `key` (a race with another writer of it only means the
        same bytes are stored twice over)."""
        return self.listing is not None and self.listing.absent(key)

    def stored(self, key: str, digest: FileDigest) -> bool:
        """Whether the same bytes are already under `key` (content addressing: then nothing is sent)."""
        if self.listed_absent(key):
            return False
        if self.fast is not None and (found := self.fast.head(key)) is not None:
            return found == (digest.size, digest.sha256)
        import botocore.exceptions

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise storage_error(exc, f"checking s3://{self.bucket}/{key}", self.client) from None
        except Exception as exc:
            raise storage_error(exc, f"checking s3://{self.bucket}/{key}", self.client) from None
        return bool(
            head.get("ContentLength") == digest.size and head.get("Metadata", {}).get("sha256") == digest.sha256
        )

    def _body(self, src: Path, start: int, length: int) -> ReadFileChunk:
        from s3transfer.utils import ReadFileChunk

        # Streams the range from disk (memory stays bounded) and counts bytes as the socket takes them; a retry
        # seeks back and the count follows.
        return ReadFileChunk.from_filename(str(src), start, length, callbacks=[self.sent])

    def put(self, src: Path, key: str, digest: FileDigest, extra: dict[str, Any], data: bytes | None) -> int:
        if data is not None:  # botocore sends "Expect: 100-continue" (a wait for the server) only for file bodies
            sent = self.fast is not None and self.fast.put(
                key, data, sha256_b64=digest.parts[0], content_type=extra["ContentType"],
                content_disposition=extra["ContentDisposition"], metadata=extra["Metadata"],
            )  # fmt: skip
            if not sent:  # no fast path, or it got an answer only botocore should judge
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumSHA256=digest.parts[0],
                                       **extra)  # fmt: skip
            self.sent(len(data))
            return len(data)
        with self._body(src, 0, digest.size) as body:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ChecksumSHA256=digest.parts[0], **extra)
        return digest.size

    def multipart(self, src: Path, key: str, digest: FileDigest, extra: dict[str, Any]) -> int:
        """Parts in parallel, each with its checksum; a run killed midway leaves its parts, and the next one for the
        same key (same bytes: the key is their hash) sends only the parts that are missing."""
        import botocore.exceptions

        upload_id, done = self.resumable(key, digest)
        if upload_id is None:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256",
                                                            **extra)["UploadId"]  # fmt: skip
        ranges = [(n, (n - 1) * digest.part_size) for n in range(1, len(digest.parts) + 1)]
        sizes = {n: min(digest.part_size, digest.size - start) for n, start in ranges}
        todo = [(n, start) for n, start in ranges if n not in done]
        self.done(sum(sizes[n] for n in done))

        def send(n: int, start: int) -> dict[str, Any]:
            body = FileSlice(str(src), start, sizes[n], self.sent)
            etag = self.fast.put_part(key, upload_id, n, body, sha256_b64=digest.parts[n - 1]) if self.fast else None
            if not etag:  # no fast path, or an answer only botocore should judge (it retries, and names errors)
                with self._body(src, start, sizes[n]) as chunk:
                    etag = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=n,
                                                   Body=chunk, ChecksumSHA256=digest.parts[n - 1])["ETag"]  # fmt: skip
            return {"PartNumber": n, "ETag": etag, "ChecksumSHA256": digest.parts[n - 1]}

        futures = [self.parts.submit(send, n, start) for n, start in todo]
        try:
            try:
                for f in futures:
                    part = f.result()
                    done[part["PartNumber"]] = part
            finally:
                for f in futures:
                    f.cancel()
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                  MultipartUpload={"Parts": [done[n] for n, _ in ranges]})  # fmt: skip
        except botocore.exceptions.ClientError as exc:
            # Another run of the same bytes took up this upload (same key) and completed it first, while we were
            # still sending parts or before our own complete: the object is there with these bytes.
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload" or not self.stored(key, digest):
                raise
            self.done(sum(sizes[n] for n, _ in todo if n not in done))  # stored by the other run: the bar ends full
        return sum(sizes[n] for n, _ in todo if n in done)

    def resumable(self, key: str, digest: FileDigest) -> tuple[str | None, dict[int, dict[str, Any]]]:
        """An unfinished multipart upload of `key` and its parts that match ours (size and, where told, checksum)."""
        try:
            uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key).get("Uploads", [])
            uploads = sorted((u for u in uploads if u["Key"] == key), key=lambda u: u["Initiated"], reverse=True)
            if not uploads:
                return None, {}
            upload_id = uploads[0]["UploadId"]
            found: dict[int, dict[str, Any]] = {}
            for page in self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key,
                                                                          UploadId=upload_id):  # fmt: skip
                for part in page.get("Parts", []):
                    n = part["PartNumber"]
                    if not 1 <= n <= len(digest.parts):
                        continue
                    expected = min(digest.part_size, digest.size - (n - 1) * digest.part_size)
                    checksum = part.get("ChecksumSHA256")
                    if part["Size"] == expected and checksum in (None, digest.parts[n - 1]):
                        found[n] = {"PartNumber": n, "ETag": part["ETag"], "ChecksumSHA256": digest.parts[n - 1]}
            return upload_id, found
        except Exception as exc:  # a server without these listings: start afresh
            log.debug("cannot resume s3://%s/%s: %s", self.bucket, key, type(exc).__name__)
            return None, {}


def upload_file(
    path: str | os.PathLike[str],
    *,
    bucket: str,
    client: Any,
    prefix: str = "assetprep",
    create_bucket: bool = False,
    transfer_config: Transfer | TransferConfig | None = None,
    on_progress: ProgressCallback | None = None,
    key: str | None = None,
    metadata: dict[str, str] | None = None,
    check_name: bool = True,
) -> UploadedObject:
    """Upload a file under its content-addressed key (or `key`); skip it when the same bytes are already there.

    `metadata` is stored with the object next to its sha256 (x-amz-meta-*), for facts a later HEAD must find.
    `check_name=False` skips the check that a file named like media is that media (see _Upload.upload).
    """
    ensure_bucket(client, bucket, create=create_bucket, prefix=prefix if key is None else None)
    up = _Upload(client, bucket, prefix=prefix, config=transfer_config or DEFAULT_TRANSFER, on_progress=on_progress,
                 files=1)  # fmt: skip
    try:
        return up.upload(path, key=key, metadata=metadata, check_name=check_name)
    finally:
        up.close()


@contextlib.contextmanager
def _session(
    client: Any, bucket: str, prefix: str, create_bucket: bool, config: Transfer | TransferConfig | None,
    on_progress: ProgressCallback | None, *, files: int, jobs: int,
) -> Iterator[tuple[_Upload, HttpPool]]:  # fmt: skip
    """What every many-file call does first and last: the bucket checked once (not per file), parts of killed runs'
    uploads aborted, one HTTP pool for the small requests and preflights, shared state closed at the end."""
    http = HttpPool(jobs)
    fast = _signer(client, bucket, http)
    listing = None
    if fast is not None and files >= LISTED_FILES and not (bucket_name_problem(bucket) or prefix_problem(prefix)):
        # One request instead of a check per file; up to 2 keys listed per file to upload, because a listed key
        # costs the server about a third of a check (SeaweedFS: 1,000 keys in ~78 ms, 200 checks in ~50 ms).
        listing = fast.list_keys(prefix.strip("/") + "/" if prefix.strip("/") else "", min(1000, 2 * files))
    if listing is None:  # a listing's 200 is the bucket check too
        ensure_bucket(client, bucket, create=create_bucket, prefix=prefix, fast=fast)
    abort_stale_uploads(client, bucket, prefix, fast=fast)
    up = _Upload(client, bucket, prefix=prefix, config=config or DEFAULT_TRANSFER, on_progress=on_progress, files=files,
                 fast=fast, listing=listing)  # fmt: skip
    try:
        yield up, http
    finally:
        up.close()
        http.clear()


def _signer(client: Any, bucket: str, http: HttpPool) -> SignedS3 | None:
    if isinstance(client, DeferredClient):
        return client.signer(bucket, http)
    return SignedS3.for_client(client, bucket, http)


def _run_all(paths: list[Any], work: Callable[[Any], T], jobs: int, cancel: threading.Event) -> list[T]:
    """`work` over `paths` with `jobs` in flight; results in order. Every file is tried; failures are collected
    and raised together after the others finished (an interrupt cancels what has not started)."""
    results: list[Any] = [None] * len(paths)
    failures: list[tuple[int, AssetprepError]] = []
    with ThreadPoolExecutor(max(1, min(jobs, len(paths))), thread_name_prefix="assetprep-upload") as pool:
        futures = {pool.submit(work, p): i for i, p in enumerate(paths)}
        try:
            for f in as_completed(futures):
                i = futures[f]
                try:
                    results[i] = f.result()
                except AssetprepError as exc:
                    failures.append((i, exc))
        except BaseException:  # Ctrl-C, SIGTERM: nothing new starts, requests in flight stop at their next write
            cancel.set()
            for f in futures:
                f.cancel()
            raise
    if failures:
        if len(paths) == 1:
            raise failures[0][1]
        failures.sort(key=lambda item: item[0])
        raise UploadError([(str(paths[i]), exc) for i, exc in failures], results, total=len(paths))
    return results


def upload_files(
    paths: list[str | os.PathLike[str]],
    *,
    bucket: str,
    client: Any,
    prefix: str = "assetprep",
    create_bucket: bool = False,
    jobs: int | None = None,
    transfer_config: Transfer | TransferConfig | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[UploadedObject]:
    """Upload many files concurrently (`jobs` at once) through one client; results in the order given.

    A file that fails does not stop the others: UploadError lists every failure and carries the finished results.
    """
    if not paths:
        return []
    jobs = jobs or default_jobs()
    with _session(client, bucket, prefix, create_bucket, transfer_config, on_progress, files=len(paths),
                  jobs=jobs) as (up, _):  # fmt: skip
        return _run_all(list(paths), up.upload, jobs, up.cancelled)


def _credential_expiry(client: Any) -> dt.datetime | None:
    if isinstance(client, DeferredClient) and client.credentials() is not None:
        return None  # keys given outright (an AWS_SESSION_TOKEN without AWS_CREDENTIAL_EXPIRATION: botocore's too)
    creds = client._request_signer._credentials  # botocore keeps the refreshable expiry only here
    if creds is None or not getattr(creds, "token", None):
        return None
    expiry = getattr(creds, "_expiry_time", None)
    return expiry if isinstance(expiry, dt.datetime) else None


def check_expiry(expires_in: float) -> None:
    if not MIN_EXPIRY <= expires_in <= MAX_EXPIRY:
        raise ConfigError(
            f"presigned URL expiry must be between 1 minute and 7 days, got {expires_in:g} s",
            hint="use e.g. --expires 6h",
        )


def presign(
    client: Any, bucket: str, key: str, *, expires_in: float, fast: SignedS3 | None = None
) -> tuple[str, dt.datetime]:
    """A SigV4 presigned GET URL valid for `expires_in` seconds (60 s to 7 days). `fast`: the same client's signer
    without botocore's per-call machinery (the same URL, a fifth of the CPU), for many files."""
    check_expiry(expires_in)
    now = dt.datetime.now(dt.UTC)
    expires_at = now + dt.timedelta(seconds=expires_in)
    cred_expiry = _credential_expiry(client)
    if cred_expiry is not None and cred_expiry < expires_at:
        raise StorageError(
            f"the AWS session credentials expire at {cred_expiry.isoformat()}, before the URL would "
            f"({expires_at.isoformat()}); a presigned URL dies with its session",
            hint="use long-lived credentials for presigning or a shorter --expires",
        )
    try:
        if fast is not None:
            return fast.presign_get(key, int(expires_in)), expires_at
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(expires_in)
        )
    except Exception as exc:
        raise storage_error(exc, f"presigning s3://{bucket}/{key}", client) from None
    return url, expires_at


def preflight(
    url: str,
    *,
    content_type: str | None = None,
    size: int | None = None,
    timeout: float = PREFLIGHT_TIMEOUT,
    http: HttpPool | None = None,
) -> None:
    """Fetch the first byte of `url` the way a consumer does (no credentials, redirects followed) and fail loudly if
    it does not work. `http`: a pool to reuse (upload_and_presign passes the one its S3 requests use)."""
    pool = http or HttpPool(1, timeout=timeout)
    try:
        _judge(_first_byte(url, pool, timeout), url, content_type=content_type, size=size)
    finally:
        if http is None:
            pool.clear()


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _first_byte(url: str, pool: HttpPool, timeout: float) -> Answer:
    """GET the first byte (or an error's XML) as a consumer would: no credentials, up to 5 redirects followed."""
    try:
        for _ in range(6):
            # A server that ignores Range sends everything: 64 KiB is read and that connection dropped.
            answer = pool.request("GET", url, headers={"Range": "bytes=0-0"}, limit=64 * 1024, timeout=timeout,
                                  deadline=timeout)  # fmt: skip
            location = answer.headers.get("location")
            if answer.status not in _REDIRECTS or not location:
                return answer
            url = urljoin(url, location)
        return answer
    except (OSError, BadAnswer, ValueError) as exc:
        raise PreflightError(
            f"presigned URL {redact_url(url)} is not reachable: {type(exc).__name__}",
            hint="check that the endpoint is reachable from where the URL will be fetched (--public-endpoint-url)",
            transient=True,
        ) from None


def _served_size(headers: Headers) -> int | None:
    total = (headers.get("content-range") or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _judge(answer: Answer, url: str, *, content_type: str | None, size: int | None) -> None:
    status, headers, text = answer.status, answer.headers, answer.body.decode("utf-8", "replace")
    shown = redact_url(url)
    if status not in (200, 206):
        reason = s3_error_reason(text)
        raise PreflightError(
            f"presigned URL {shown} answered {status}{': ' + reason if reason else ''}",
            hint="re-presign it (an expired or altered URL is refused)" if status < 500 else "retry later",
            transient=status >= 500,
        )
    got = (headers.get("content-type") or "").split(";")[0].strip()
    if content_type and got != content_type:
        raise PreflightError(f"presigned URL {shown} serves Content-Type '{got}', expected '{content_type}'")
    total = _served_size(headers)
    if size is not None and total is not None and total != size:
        raise PreflightError(f"presigned URL {shown} serves {total} bytes, expected {size}")


def _stored_by_url(url: str, digest: FileDigest, content_type: str, http: HttpPool) -> bool | None:
    """For a small file the preflight GET is the existence check too: one request instead of a HEAD before the
    upload and a GET after it. True: stored and the URL serves it as it should; False: not stored, and the URL is
    good (the server accepted its signature, then found no key; after the PUT it serves these bytes: S3 reads after
    writes are consistent); None: the answer does not tell (other bytes under the key, or a 403 where the
    credentials may not list the bucket): ask S3 itself, and preflight after the upload."""
    answer = _first_byte(url, http, PREFLIGHT_TIMEOUT)
    status, headers = answer.status, answer.headers
    if status == 404 and b"<Code>NoSuchKey</Code>" in answer.body:
        return False
    same = headers.get("x-amz-meta-sha256") == digest.sha256 and _served_size(headers) == digest.size
    if status in (200, 206) and same:
        _judge(answer, url, content_type=content_type, size=digest.size)  # a wrong Content-Type still fails here
        return True
    return None


class _Sample:
    """One preflight standing for the URLs of a call's objects that the call stored under keys its listing showed
    absent. Those URLs differ only in the key, which the object's own PUT (same path, same server, same keys) has
    just proved the server takes; the content type and size served are what that PUT set. When the sample fails,
    every such URL is preflighted on its own, so each failure is named."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._passed: bool | None = None

    def vouches(self, check: Callable[[], None]) -> bool:
        """Whether the sample passed; the first caller runs `check` as the sample (the others wait for it: at most
        one preflight's timeout) and its own failure is raised to it."""
        with self._lock:
            if self._passed is None:
                try:
                    check()
                except PreflightError:
                    self._passed = False
                    raise
                self._passed = True
                return True
            return self._passed


def upload_and_presign(
    paths: list[str | os.PathLike[str]],
    *,
    bucket: str,
    settings: S3Settings | None = None,
    client: Any = None,
    prefix: str = "assetprep",
    expires_in: float = 6 * 3600,
    create_bucket: bool = False,
    check: bool = True,
    jobs: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[PresignedObject]:
    """Upload the files concurrently, presign each (against the public endpoint when set) and preflight each URL.

    Results come in the order given. When some files fail, the others still finish; UploadError names every
    failure and carries the finished results (`.results`, None where a file failed).
    """
    settings = settings or S3Settings()
    check_expiry(expires_in)  # before any byte is sent
    if not paths:
        return []
    client = client or DeferredClient(settings)
    signer = DeferredClient(settings, settings.public_endpoint_url) if settings.public_endpoint_url else client
    jobs = jobs or default_jobs()
    with _session(client, bucket, prefix, create_bucket, None, on_progress, files=len(paths), jobs=jobs) as (up, http):
        fast_signer = up.fast if signer is client else _signer(signer, bucket, http)
        sample = _Sample()

        def one(path: str | os.PathLike[str]) -> PresignedObject:
            signed: list[tuple[str, dt.datetime]] = []
            checked: list[bool] = []
            listed_absent: list[bool] = []

            def stored(key: str, digest: FileDigest, content_type: str) -> bool:
                signed.append(presign(signer, bucket, key, expires_in=expires_in, fast=fast_signer))
                if signer is client and up.listed_absent(key):
                    listed_absent.append(True)
                    return False
                # The URL's GET is the existence check only when it reaches the server we upload to: a public
                # endpoint that answers 404 may be another server, where the object would never appear.
                if check and digest.size <= SMALL_FILE and signer is client:
                    found = _stored_by_url(signed[0][0], digest, content_type, http)
                    if found is not None:
                        checked.append(True)
                        return found
                return up.stored(key, digest)

            obj = up.upload(path, stored=stored)
            url, expires_at = signed[0]
            if check and not checked:

                def check_url() -> None:
                    preflight(url, content_type=obj.content_type, size=obj.size, http=http)

                if not (listed_absent and sample.vouches(check_url)):
                    check_url()
            return PresignedObject(object=obj, url=url, expires_at=expires_at)

        return _run_all(list(paths), one, jobs, up.cancelled)
