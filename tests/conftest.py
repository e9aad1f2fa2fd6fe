from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from _media import TEST_BUCKET, ffmpeg, http_server

ROOT = Path(__file__).resolve().parent.parent
MEDIA = Path(os.environ.get("ASSETPREP_MEDIA_DIR", ROOT.parent / "shared" / "media"))


@pytest.fixture(scope="session")
def media_dir() -> Path:
    if not MEDIA.is_dir():
        pytest.skip(f"real media folder {MEDIA} is absent (expected ../shared/media beside the repo)")
    return MEDIA


@pytest.fixture(scope="session")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Make (once per session) a media file from ffmpeg arguments; name is the output file name."""
    folder = tmp_path_factory.mktemp("generated")

    def make(name: str, *args: str) -> Path:
        key = hashlib.sha1("\0".join(args).encode()).hexdigest()[:10]
        out = folder / f"{key}-{name}"
        if not out.exists():
            ffmpeg(*args, str(out))
        return out

    return make


# The longest files first: with --dist loadfile each file goes whole to a worker in this order, and the Ray scenario
# (~3.5 min in one file) taken last left the other worker idle for minutes at the end (suite 14.5 min, not ~12).
_LONG_FIRST = ("test_ray.py", "test_batch.py", "test_batch_faults.py", "test_publish.py", "test_record.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


def pytest_report_header() -> list[str]:
    return [f"ffmpeg: {shutil.which('ffmpeg')}", f"media: {MEDIA} ({'present' if MEDIA.is_dir() else 'absent'})"]


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A real SeaweedFS S3 server on 127.0.0.1 for the whole session, stopped by PID at the end."""
    from assetprep.s3local import LocalS3

    server = LocalS3(tmp_path_factory.mktemp("seaweed")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_client(s3):
    """A boto3 client of the session's SeaweedFS with the bucket TEST_BUCKET created."""
    from assetprep.upload import S3Settings, ensure_bucket, make_s3_client

    client = make_s3_client(S3Settings(endpoint_url=s3.endpoint_url, access_key_id=s3.access_key,
                                       secret_access_key=s3.secret_key))  # fmt: skip
    ensure_bucket(client, TEST_BUCKET, create=True)
    return client


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    """The Tavus sandbox as a real HTTP server on 127.0.0.1 (20x faster lifecycle), stopped by PID at the end."""
    from assetprep.sandbox import LocalSandbox

    server = LocalSandbox(tmp_path_factory.mktemp("sandbox"), speed=20).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tavus(sandbox):
    from assetprep.tavus import TavusClient

    with TavusClient(api_key=sandbox.api_key, base_url=sandbox.base_url, timeout=20) as client:
        yield client


@pytest.fixture(scope="session")
def site():
    """tests/pages on a local HTTP server (127.0.0.1), stopped at the end of the session."""
    import functools
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    pages = Path(__file__).parent / "pages"
    with http_server(functools.partial(Quiet, directory=str(pages))) as server:
        yield f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def own_sandboxes(s3, tmp_path):
    """start(runs_dir, **sandbox options) → (sandbox, env for the CLI with S3, the sandbox, TEST_BUCKET and runs_dir).

    Each sandbox has its own data folder and is stopped by PID after the test.
    """
    from assetprep.sandbox import LocalSandbox

    servers: list = []

    def start(runs_dir: Path, **options):
        sb = LocalSandbox(tmp_path / f"sandbox{len(servers)}", **{"speed": 20, **options}).start()
        servers.append(sb)
        env = {
            **os.environ,
            **s3.env(),
            **sb.env(),
            "ASSETPREP_BUCKET": TEST_BUCKET,
            "ASSETPREP_RUNS_DIR": str(runs_dir),
        }
        return sb, env

    yield start
    for sb in servers:
        sb.stop()


@pytest.fixture
def world(own_sandboxes, s3_client, tmp_path):
    """For the batch tests: start(**sandbox options) → (sandbox, run(manifest, **BatchOptions) -> result, env for the CLI)."""

    from assetprep.batch import BatchOptions, batch_publish
    from assetprep.publish import PublishSettings
    from assetprep.sandbox import DEFAULT_REPLICA
    from assetprep.tavus import TavusClient

    def start(**options):
        sb, env = own_sandboxes(tmp_path / "state" / "runs", **options)
        settings = PublishSettings(runs_dir=tmp_path / "state" / "runs", bucket=TEST_BUCKET)

        def run(manifest, on_event=None, max_retries=5, **fields):
            client = TavusClient(api_key=sb.api_key, base_url=sb.base_url, timeout=20, max_retries=max_retries)
            opts = BatchOptions(**{"poll_interval": 0.2, "deadline": 300, "replica_id": DEFAULT_REPLICA,
                                   "allow_private_networks": True, **fields})  # fmt: skip
            return batch_publish(manifest, opts, client=client, s3_client=s3_client, settings=settings,
                                 on_event=on_event)  # fmt: skip

        return sb, run, env

    return start
