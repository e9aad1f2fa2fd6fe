"""Run the sandbox: in this process (uvicorn) or as a managed subprocess on a free port (LocalSandbox)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

import httpx

from .._files import secret_file
from .._server import ManagedServer
from ..errors import ConfigError, TavusError
from .config import SandboxConfig


def data_dir_api_key(data_dir: os.PathLike[str] | str) -> str:
    """The sandbox's API key, generated once per data folder and kept there (0600)."""
    return secret_file(Path(data_dir) / "api_key", lambda: "sbx_" + secrets.token_urlsafe(24)).strip()


def serve(config: SandboxConfig) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn's shutdown runs the app's lifespan, which stops the workers."""
    import uvicorn

    from .app import create_app
    from .render import ensure_process_tools

    if config.host not in ("127.0.0.1", "localhost", "::1"):
        # Allowed (a team may share one sandbox) but said out loud: it has no TLS.
        print(f"warning: the sandbox listens on {config.host} without TLS", file=sys.stderr)
    ensure_process_tools()
    try:
        uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="warning", access_log=False)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalSandbox(ManagedServer):
    """`assetprep sandbox serve` as a child process on 127.0.0.1; `options` are SandboxConfig fields (faults, speed)."""

    error_class = TavusError
    title = "Tavus sandbox"
    log_name = "sandbox.log"

    def __init__(self, data_dir: os.PathLike[str] | str, *, port: int | None = None, **options: Any) -> None:
        super().__init__(data_dir)
        self.requested_port = port
        self.port = 0
        self.api_key = data_dir_api_key(self.data_dir)
        SandboxConfig(data_dir=self.data_dir, api_key=self.api_key, **options)  # fail here, not in the child
        self.options = options

    def __repr__(self) -> str:
        return f"LocalSandbox(base_url={self.base_url!r}, data_dir={str(self.data_dir)!r})"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """TAVUS_* variables that point the client (and assetprep publish) at this sandbox."""
        return {"TAVUS_API_KEY": self.api_key, "TAVUS_API_BASE_URL": self.base_url}

    def command(self) -> list[str]:
        self.port = self.requested_port or self.port or free_port()  # a restart keeps its address
        config = json.dumps({**self.options, "port": self.port})
        return [sys.executable, "-m", "assetprep", "sandbox", "serve", "--data-dir", str(self.data_dir),
                "--config-json", config]  # fmt: skip

    def child_env(self) -> dict[str, str]:
        return {**os.environ, "ASSETPREP_SANDBOX_API_KEY": self.api_key}  # not on the command line (ps shows it)

    def ready(self) -> bool:
        return httpx.get(f"{self.base_url}/_sandbox/health", timeout=1.0).status_code == 200

    def calls(self) -> list[dict[str, Any]]:
        """Every call the sandbox answered (method, path, status, video_id), oldest first, including callbacks."""
        resp = httpx.get(f"{self.base_url}/_sandbox/calls", headers={"x-api-key": self.api_key}, timeout=10.0)
        resp.raise_for_status()
        return list(resp.json()["calls"])

    def call_counts(self) -> dict[str, dict[str, int]]:
        """Per endpoint (`GET /v2/videos/{id}`), how many requests ended in each status."""
        resp = httpx.get(f"{self.base_url}/_sandbox/calls", headers={"x-api-key": self.api_key}, timeout=10.0)
        resp.raise_for_status()
        return dict(resp.json()["counts"])
