"""The embedded S3 server: SeaweedFS (`weed mini`) bound to 127.0.0.1, run as a managed subprocess.

Used by the demo, the sandbox and the tests when no AWS settings are given. Credentials are generated once per data
folder and kept there (mode 0600), so a restarted server still accepts them and still holds its objects.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path

from . import _process
from ._files import secret_file
from ._server import ManagedServer
from .errors import StorageError


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


GRPC_OFFSET = 10000  # weed opens each service's gRPC port at its port + 10000


def free_port_block(count: int, *, grpc_offset: int = GRPC_OFFSET) -> list[int]:
    """`count` ports P such that P and P+grpc_offset are free (weed opens a gRPC port at P+GRPC_OFFSET)."""
    ports: list[int] = []
    for _ in range(2000):
        p = secrets.randbelow(25000) + 20000
        taken = {q + d for q in ports for d in (0, grpc_offset)}
        if p in taken or p + grpc_offset in taken:
            continue
        if _port_free(p) and _port_free(p + grpc_offset):
            ports.append(p)
            if len(ports) == count:
                return ports
    raise StorageError("could not find free local ports for the embedded S3 server")


class LocalS3(ManagedServer):
    """A SeaweedFS S3 endpoint on 127.0.0.1 with its data in `data_dir`. Use as a context manager or start()/stop()."""

    error_class = StorageError
    title = "embedded S3 server"
    log_name = "weed.log"

    def __init__(
        self, data_dir: str | os.PathLike[str], *, port: int | None = None, volume_size_mb: int | None = None
    ) -> None:
        """`volume_size_mb`: when the server opens a new volume (mini's default 128 MB, so every 128 MB written),
        writes stall while it grows; bigger volumes stall less often under large uploads."""
        super().__init__(data_dir)
        self.requested_port = port
        self.volume_size_mb = volume_size_mb
        self.port = 0
        self.access_key, self.secret_key = self._credentials()
        self._client: object = None
        self._ports: list[int] = []  # of the running (or last) weed

    def _credentials(self) -> tuple[str, str]:
        text = secret_file(
            self.data_dir / "credentials.json",
            lambda: json.dumps(
                {"access_key": "AP" + secrets.token_hex(8).upper(), "secret_key": secrets.token_urlsafe(30)}
            ),
        )
        data = json.loads(text)
        return data["access_key"], data["secret_key"]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """AWS_* variables that point boto3 (or awscli) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def command(self) -> list[str]:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        master, volume, filer, s3, admin = ports = free_port_block(5)
        if self.requested_port:
            s3 = ports[3] = self.requested_port
        self.port = s3
        self._ports = ports
        self._client = None
        return [
            _process.find_tool("weed"), "-logtostderr", "mini", f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={master}", f"-volume.port={volume}",
            f"-filer.port={filer}", f"-s3.port={s3}", f"-admin.port={admin}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
            "-s3.autoCreateBucket=false",
            *([f"-master.volumeSizeLimitMB={self.volume_size_mb}"] if self.volume_size_mb else []),
        ]  # fmt: skip

    def child_env(self) -> dict[str, str]:
        return {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def stop(self) -> None:
        super().stop()
        self._remove_sockets()

    def kill(self) -> None:
        super().kill()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed makes Unix sockets /tmp/seaweedfs-<service>[-grpc]-<port>.sock (/tmp is fixed, TMPDIR is ignored)
        and leaves three behind when it stops, all six when killed: 500 in /tmp here after a day of tests.
        Ours are named by our ports (gRPC ones by port + GRPC_OFFSET)."""
        for port in self._ports:
            for p in (port, port + GRPC_OFFSET):
                for sock in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):
                    if sock.is_socket():
                        sock.unlink(missing_ok=True)

    def ready(self) -> bool:
        from .upload import S3Settings, make_s3_client

        if self._client is None:
            settings = S3Settings(
                endpoint_url=self.endpoint_url, access_key_id=self.access_key, secret_access_key=self.secret_key
            )
            self._client = make_s3_client(settings, connect_timeout=1, retries=0)
        self._client.list_buckets()  # type: ignore[attr-defined]
        return True
