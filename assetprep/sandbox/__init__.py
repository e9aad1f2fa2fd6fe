"""A local Tavus-compatible server: same endpoints, fields, statuses and errors, with real rendering and faults."""

from __future__ import annotations

from .config import DEFAULT_REPLICA, REPLICAS, SandboxConfig
from .server import LocalSandbox, data_dir_api_key, serve

__all__ = ["DEFAULT_REPLICA", "REPLICAS", "LocalSandbox", "SandboxConfig", "data_dir_api_key", "serve"]
