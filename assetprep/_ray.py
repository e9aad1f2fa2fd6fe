"""Batch preparation on a Ray cluster (the `ray` extra): each preparation is one Ray task.

Workers record/normalize and upload straight to S3 under the task's key with their own node's credentials, and
return only small facts; no media passes through the object store. The driver's local inputs (audio files, clips,
watermarks, and pages with the folder of assets beside them) reach the nodes through the bucket (content-addressed
under PREFIX/inputs/, sent once), since a node on another machine does not have them; a page in a folder too big to
send must be on every node, which is checked.
The driver keeps the journal, the API key and everything that talks to Tavus. A task whose worker dies (OOM,
kill -9, a lost node) is retried by Ray (`max_retries`); a retried task writes the same key, so there is never a
second copy under another key.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ._prepare import PrepResult, PrepTask, S3Target, retry_step, ship_input, shippable
from .errors import AssetprepError, ConfigError

# CPUs a task asks for. A 720p30 recording of the bench's real page used ~52 ms of CPU a frame, ~1.6 cores while
# it ran (from /proc), though most of it is one chain of steps that run one after the other (Chromium's drawing,
# then its JPEG); audio normalization is one short single-threaded ffmpeg.
CPUS = {"background": 1.0, "audio": 0.25, "watermark": 0.05}
MAX_RETRIES = 3  # for system failures (worker or node died); errors of the input are not retried
CONNECT_TIMEOUT = 5.0


class RayTaskFailed(AssetprepError):
    """A preparation failed on a Ray worker (the message names the node). `step`: why it may work later: "storage"
    or "website" (see _prepare.retry_step), "cluster" (Ray lost the task: its workers died, the cluster went)."""

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message, transient=step is not None)
        self.step = step


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray-address needs Ray", hint="pip install 'assetprep[ray]'") from None
    return ray


def _check_reachable(address: str) -> None:
    """A wrong address must fail in seconds: ray.init itself keeps retrying for a long time."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address must be auto or HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
            hint="start it with 'ray start --head' (see README: Running on a cluster) or fix --ray-address",
        ) from None


def connect(address: str) -> Any:
    """ray, initialised against an existing cluster (never starts a local one)."""
    ray = _import_ray()
    _check_reachable(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        # ray.init puts its own SIGTERM handlers in place of the caller's: a Python one that exits with status 15
        # and a C++ one that prints a stack dump ("*** SIGTERM received ... PC: @ ... clock_nanosleep"). A batch
        # driver stopped with SIGTERM printed that dump and exited 15, where the CLI says one line and exits 143.
        # Putting the caller's handlers back (signal.signal re-installs Python's own C handler) keeps the CLI's.
        main = threading.current_thread() is threading.main_thread()
        saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"cannot connect to the Ray cluster at {address}: {exc}",
                hint="check --ray-address (or RAY_ADDRESS) and that the head node runs",
            ) from None
        finally:
            for signum, handler in saved.items():
                if handler is not None:  # None: set from C, not by Python; left as it is
                    signal.signal(signum, handler)
    return ray


def _node_tools(kind: str) -> list[str]:
    """What this node lacks for a preparation of `kind` (checked before the work, named in the error)."""
    from . import _process
    from .errors import ToolMissingError

    missing = []
    for tool in ("ffmpeg", "ffprobe"):
        try:
            _process.find_tool(tool)
        except ToolMissingError:
            missing.append(f"{tool} (apt-get install -y ffmpeg)")
    if kind == "background":
        from playwright.sync_api import sync_playwright

        from .record import find_chromium

        with sync_playwright() as pw:
            try:
                find_chromium(pw)
            except ToolMissingError:
                missing.append("a headless Chromium (apt-get install -y chromium-headless-shell, or set CHROMIUM)")
    return missing


def _prepare_on_node(data: dict[str, Any], driver_code: str | None = None) -> dict[str, Any]:
    """The Ray task: runs on a worker; errors of the input come back as {"error": ...} (not retried).
    `driver_code`: the driver's build, for a node that joined after the check (before the task is even read)."""
    import ray

    from ._prepare import run_prep

    node = ray.get_runtime_context().get_node_id()
    where = f"node {node[:12]} ({socket.gethostname()})"
    if driver_code is not None and driver_code != code_fingerprint():
        return {"error": f"{where} runs assetprep {code_fingerprint()} where the driver runs {driver_code}: install "
                         "the same build on every node"}  # fmt: skip
    task = PrepTask.model_validate(data)
    missing = _node_tools(task.kind)
    if missing:
        return {"error": f"{where} lacks {', '.join(missing)}"}
    try:
        return run_prep(task, node=node).model_dump()
    except AssetprepError as exc:
        return {"error": f"{exc} [on {where}]", "step": retry_step(exc)}


def _settle(out: Future[PrepResult], kind: str, done: Future[Any]) -> None:
    """`out` gets what a finished Ray task says: its result, the error it reported, or how Ray lost it."""
    try:
        data = done.result()
    except Exception as exc:  # the task died MAX_RETRIES + 1 times, or the cluster went away
        # Nothing is wrong with the row and nothing was sent: a rerun tries it again (step "cluster").
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        out.set_exception(RayTaskFailed(f"the Ray task preparing {kind} failed: {type(exc).__name__}: {first[:300]}",
                                        step="cluster"))  # fmt: skip
        return
    if "error" in data:
        out.set_exception(RayTaskFailed(str(data["error"]), step=data.get("step")))
    else:
        out.set_result(PrepResult.model_validate(data))


class RayExecutor:
    """Submits PrepTasks as Ray tasks; results come back as concurrent futures of PrepResult."""

    name = "ray"

    def __init__(self, address: str, *, s3_client: Any = None) -> None:
        self.ray = connect(address)
        self._remote = self.ray.remote(_prepare_on_node)
        self._refs: list[Any] = []
        self._s3 = s3_client  # the driver's, for shipping its local inputs

    def _ship(self, task: PrepTask) -> PrepTask:
        """Each preparation is submitted once; the upload itself skips bytes already in the bucket."""
        if not shippable(task):
            return task
        if self._s3 is None:
            from .upload import S3Settings, make_s3_client

            self._s3 = make_s3_client(S3Settings(endpoint_url=task.s3.endpoint_url, region=task.s3.region))
        return ship_input(task, self._s3)

    def submit(self, task: PrepTask) -> Future[PrepResult]:
        out: Future[PrepResult] = Future()
        try:
            task = self._ship(task)
        except AssetprepError as exc:  # S3 refused the input: its rows fail with that (transient: a rerun retries)
            out.set_exception(exc)
            return out
        ref = self._remote.options(num_cpus=CPUS[task.kind], max_retries=MAX_RETRIES).remote(
            task.model_dump(), code_fingerprint()
        )
        self._refs.append(ref)
        ref.future().add_done_callback(lambda f: _settle(out, task.kind, f))
        return out

    def check(self, target: S3Target, tasks: list[PrepTask]) -> list[str]:
        """Every alive node, before the first task: a node without ffmpeg, Chromium (for recordings), access to
        the bucket or the manifest's local files would fail each row that lands on it, often after a recording."""
        nodes = _check_nodes(self.ray, bucket=target.bucket, endpoint_url=target.endpoint_url, region=target.region,
                             browser=any(t.kind == "background" for t in tasks),
                             files=local_inputs([t for t in tasks if not shippable(t)]))  # fmt: skip
        return [f"node {n['node'][:12]} ({n['host']}): {'; '.join(p)}" for n in nodes if (p := node_problems(n))]

    def close(self, *, cancel: bool = False) -> None:
        if cancel:
            for ref in self._refs:
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:  # already finished, or the cluster is gone
                    continue
        self.ray.shutdown()


def local_inputs(tasks: list[PrepTask]) -> dict[str, int]:
    """Path -> size (-1: a folder) of every input the tasks read from disk rather than from a URL."""
    from .manifest import is_http_url

    files: dict[str, int] = {}
    for task in tasks:
        if not is_http_url(task.source):
            with contextlib.suppress(OSError):  # the manifest check found it; gone since: its task will say so
                files[task.source] = -1 if os.path.isdir(task.source) else os.stat(task.source).st_size
    return files


def unseen_inputs(files: dict[str, int]) -> list[str]:
    """The inputs this machine does not see as the driver does: absent here, or of another size."""
    unseen = []
    for path, size in files.items():
        try:
            seen = os.path.isdir(path) if size < 0 else os.stat(path).st_size == size
        except OSError:
            seen = False
        if not seen:
            unseen.append(path)
    return unseen


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """This process's assetprep: its version and a hash of its source. A node with another build prepares with
    other code (another encode, another object key, fields the driver does not expect) or fails on tasks it cannot
    unpickle; an editable install changes without a version bump, hence the hash."""
    from . import __version__

    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root).as_posix()}\0".encode() + path.read_bytes() + b"\0")
    return f"{__version__}+{digest.hexdigest()[:10]}"


def _check_node(bucket: str | None, endpoint_url: str | None, region: str | None, browser: bool,
                files: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    """Runs on one node: tools, S3 and the driver's local inputs as that node sees them (its PATH, its own
    credentials, its file systems)."""
    import ray

    from .upload import S3Settings, make_s3_client, storage_error

    unseen = unseen_inputs(files)
    out: dict[str, Any] = {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                           "missing": _node_tools("background" if browser else "audio"), "s3": None,
                           "unseen": [len(unseen), len(files), unseen[:3]], "code": code_fingerprint()}  # fmt: skip
    if bucket:
        client = make_s3_client(S3Settings(endpoint_url=endpoint_url, region=region))
        try:
            client.head_bucket(Bucket=bucket)
            out["s3"] = "ok"
        except Exception as exc:
            out["s3"] = storage_error(exc, f"checking bucket '{bucket}'", client).message
    return out


def _check_nodes(ray: Any, *, bucket: str | None, endpoint_url: str | None, region: str | None = None,
                 browser: bool = True, files: dict[str, int] | None = None,
                 timeout: float = 120) -> list[dict[str, Any]]:  # fmt: skip
    """One check task pinned to every alive node; a node that does not answer in `timeout` is reported as such."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    remote = ray.remote(_check_node)
    refs = [remote.options(num_cpus=0, max_retries=0,
                           scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(bucket, endpoint_url, region, browser, files or {}) for n in nodes]  # fmt: skip
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    answers = []
    for node, ref in zip(nodes, refs, strict=True):
        blank = {"node": node["NodeID"], "host": node.get("NodeManagerHostname", "?"), "missing": [], "s3": None}
        if ref not in ready:
            ray.cancel(ref, force=True)
            answers.append({**blank, "error": f"did not answer a check within {timeout:.0f} s"})
            continue
        try:
            answers.append(ray.get(ref))
        except Exception as exc:  # the check's worker died, or the node went away meanwhile
            answers.append({**blank, "error": f"its check failed: {type(exc).__name__}"})
    return answers


def node_problems(node: dict[str, Any]) -> list[str]:
    """What keeps a checked node from preparing: missing tools, no answer, no access to the bucket."""
    problems = [f"lacks {m}" for m in node["missing"]]
    if node.get("error"):
        problems.append(node["error"])
    elif node.get("code") != code_fingerprint():  # an answer without it comes from an older build
        found = f"assetprep {node['code']}" if node.get("code") else "an older assetprep"
        problems.append(f"runs {found} where the driver runs {code_fingerprint()}: install the same build on every "
                        "node")  # fmt: skip
    if node["s3"] not in (None, "ok"):
        problems.append(f"S3: {node['s3']}")
    unseen, total, some = node.get("unseen") or (0, 0, [])
    if unseen:
        problems.append(f"does not see {unseen} of the {total} local input(s) at their path and size (e.g. "
                        f"{', '.join(some)}): put them where all nodes mount one path, or give URLs")  # fmt: skip
    return problems


def check_cluster(address: str, *, bucket: str | None, endpoint_url: str | None, timeout: float = 120) -> list[dict]:
    """One check task pinned to every alive node: what each lacks (tools) and whether it reaches the bucket."""
    ray = connect(address)
    try:
        return _check_nodes(ray, bucket=bucket, endpoint_url=endpoint_url, timeout=timeout)
    finally:
        ray.shutdown()


class LocalRayCluster:
    """A Ray cluster of `nodes` nodes on 127.0.0.1 as managed children (tests, benchmarks), stopped by PID.

    Ray binds the machine's interface as well unless it runs in a network namespace with only loopback
    (`unshare -n`): use it there. `add_node(env)` starts one more node, e.g. with FFMPEG pointing nowhere.
    """

    def __init__(self, folder: Path, *, nodes: int = 2, cpus_per_node: int = 1, env: dict[str, str] | None = None,
                 hide: Sequence[Path] = ()) -> None:  # fmt: skip
        self.folder, self.count, self.cpus = folder, nodes, cpus_per_node
        self.env = env or {}  # for every node: e.g. the S3 credentials its workers use
        self.hide = list(hide)  # folders every node sees empty (see add_node)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.address = ""
        # Each node's sessions (logs, sockets, spilled objects: ~0.7 MB a run) go here, not /tmp/ray where every
        # test run left one for good. Short: Ray's Unix socket paths must fit in 107 bytes.
        self.temp_dir: Path | None = None

    def _start(self, name: str, args: list[str], env: dict[str, str] | None, hide: Sequence[Path] = ()) -> None:
        from . import _process

        common = ["--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}", "--object-store-memory=200000000",
                  f"--temp-dir={self.temp_dir}", "--block", "--disable-usage-stats"]  # fmt: skip
        ray_bin = Path(sys.executable).parent / "ray"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **self.env, **(env or {})}
        log = self.folder / f"ray-{name}.log"
        command: list[str | Path] = [ray_bin, "start", *args, *common]
        if hide:  # own mount namespace, an empty tmpfs over each of `hide`; unshare and sh exec: same PID
            mounts = " && ".join(f"mount -t tmpfs none {shlex.quote(str(folder))}" for folder in hide)
            command = ["unshare", "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh", *command]
        self.procs.append(_process.spawn(command, log_path=log, env=env))

    def start(self, timeout: float = 120) -> LocalRayCluster:
        from .sandbox.server import free_port

        self.folder.mkdir(parents=True, exist_ok=True)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="assetprep-ray-"))
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self._start("head", ["--head", f"--port={port}", "--include-dashboard=false"], None, self.hide)
        for i in range(1, self.count):
            self._start(f"worker{i}", [f"--address={self.address}"], None, self.hide)
        self.wait_nodes(self.count, timeout)
        return self

    def add_node(self, env: dict[str, str], timeout: float = 120, *, hide: Sequence[Path] = ()) -> str:
        """Start one more node with `env`; its node id. `hide`: folders that node sees empty, as a machine without
        the driver's files would (needs root: a mount namespace)."""
        before = set(self.wait_nodes(len(self.procs), timeout))
        self._start(f"worker{len(self.procs)}", [f"--address={self.address}"], env, hide)
        return next(n for n in self.wait_nodes(len(self.procs), timeout) if n not in before)

    def wait_nodes(self, count: int, timeout: float = 120) -> list[str]:
        """The alive node ids once there are `count` of them (asked from a fresh process: no driver state here)."""
        code = (f"import ray,json; ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")  # fmt: skip
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            if out.returncode == 0:
                alive = json.loads(out.stdout.strip().splitlines()[-1])
                if len(alive) >= count:
                    return list(alive)
            time.sleep(1)
        raise ConfigError(f"the local Ray cluster at {self.address} did not reach {count} nodes; see {self.folder}")

    def stop(self) -> None:
        from . import _process

        for proc in reversed(self.procs):  # workers first, the head last; SIGTERM drains a --block node
            _process.stop(proc, timeout=30)
        self.procs.clear()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
