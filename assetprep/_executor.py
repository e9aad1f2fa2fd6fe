"""Where a batch's preparation runs: a local thread pool, or a Ray cluster (assetprep._ray, with the `ray` extra)."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from ._prepare import PrepResult, PrepTask, S3Target, run_prep


class Executor(Protocol):
    name: str

    def check(self, target: S3Target, tasks: list[PrepTask]) -> list[str]:
        """Problems that would fail these tasks where they run (one line each); [] when none."""
        ...

    def submit(self, task: PrepTask) -> Future[PrepResult]: ...

    def close(self, *, cancel: bool = False) -> None: ...


def default_jobs() -> int:
    """Recordings at once: one per two cores (Chromium and x264 each keep a core busy while recording)."""
    return max(1, (os.cpu_count() or 2) // 2)


class LocalExecutor:
    """Recordings and clip normalizations on `jobs` threads; audio and watermarks (light) on two more."""

    name = "local"

    def __init__(self, jobs: int | None = None, *, s3_client: Any = None) -> None:
        self.jobs = jobs or default_jobs()
        self._heavy = ThreadPoolExecutor(self.jobs, thread_name_prefix="assetprep-prepare")
        self._light = ThreadPoolExecutor(2, thread_name_prefix="assetprep-prepare-audio")
        self._s3 = s3_client

    def check(self, target: S3Target, tasks: list[PrepTask]) -> list[str]:
        return []  # this machine: the caller has checked the bucket; a missing tool fails its first task in a second

    def submit(self, task: PrepTask) -> Future[PrepResult]:
        pool = self._heavy if task.kind == "background" else self._light
        return pool.submit(run_prep, task, s3_client=self._s3)

    def close(self, *, cancel: bool = False) -> None:
        # Waits for running tasks: with cancel, _process.cancel_all() has already told them to stop.
        for pool in (self._heavy, self._light):
            pool.shutdown(wait=True, cancel_futures=cancel)


def make_executor(*, jobs: int | None, ray_address: str | None, s3_client: Any = None) -> Executor:
    if ray_address:
        from ._ray import RayExecutor

        return RayExecutor(ray_address, s3_client=s3_client)
    return LocalExecutor(jobs, s3_client=s3_client)
