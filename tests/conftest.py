from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from _media import ffmpeg

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
