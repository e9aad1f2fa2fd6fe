"""The sandbox's HTTP side: the Tavus v2 video and replica endpoints, hosted pages and Range-capable files.

Paths, status codes and bodies follow shared/tavus/API.md: 200 for create and delete, 400 `{"error": ...}` for bad
input and unknown ids, 401 `{"message": "Invalid access token"}`. Fault injection lives here too (see SandboxConfig).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
import mimetypes
import random
import re
import secrets
import shutil
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..errors import InvalidRequestError
from ..tavus import SCRIPT_MAX_CHARS, validate_request
from .config import MAX_BODY_BYTES, REPLICAS, SandboxConfig, http_time
from .store import Store
from .worker import Lifecycle, at_base

log = logging.getLogger("assetprep.sandbox")
Handler = Callable[[Request], Awaitable[Response]]
_LIST_FIELDS = ("video_id", "video_name", "status", "data", "download_url", "hosted_url", "stream_url",
                "status_details", "background_url", "background_source_url", "still_image_thumbnail_url",
                "gif_thumbnail_url", "error_details", "created_at", "updated_at", "generation_progress",
                "replica_id")  # fmt: skip
_VERBOSE_ONLY = ("still_image_thumbnail_url", "gif_thumbnail_url")
_ENDPOINT_IDS = re.compile(r"(/(?:videos|replicas|v|files)/)[^/]+")


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Refused(Exception):
    """A request answered with Tavus's error shape, raised from the helpers below."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


async def _json_body(request: Request, default: Any) -> Any:
    """The parsed body: at most MAX_BODY_BYTES (413), valid JSON (400), and text that can be stored and answered.

    A lone surrogate (`"\\ud800"`) is valid JSON but not Unicode: stored, it would break every later answer that
    contains it, so it is refused before anything is stored.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Refused(f"Request body too large (the sandbox accepts at most {MAX_BODY_BYTES} bytes)", 413)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _Refused(f"Request body too large (the sandbox accepts at most {MAX_BODY_BYTES} bytes)", 413)
    if not raw.strip():
        return default
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise _Refused("Invalid JSON body") from None
    stack = [body]
    while stack:  # iterative: the depth was bounded by the parser, the width is not
        item = stack.pop()
        texts = [item] if isinstance(item, str) else list(item) if isinstance(item, dict) else []
        stack.extend(item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise _Refused("Invalid JSON body: a string contains a lone surrogate (not valid Unicode)") from None
    return body


def _paging(request: Request) -> tuple[int, int]:
    """(limit, page) of a list request; 0-indexed pages, limit capped at 100."""
    try:
        limit = int(request.query_params.get("limit", 10))
        page = int(request.query_params.get("page", 0))
    except ValueError:
        raise _Refused("limit and page must be integers") from None
    if limit < 1 or page < 0:
        raise _Refused("limit must be >= 1 and page >= 0")
    return min(limit, 100), page


def _by_method(**handlers: Handler) -> Handler:
    """One route per path, so a 405 names every method the path has (RFC 9110's Allow)."""

    async def dispatch(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return dispatch


def public(record: dict[str, Any], base: str, *, verbose: bool = True) -> dict[str, Any]:
    record = at_base(record, base)
    out = {k: record.get(k) for k in _LIST_FIELDS}
    if not verbose:
        for k in _VERBOSE_ONLY:
            out.pop(k)
    return out


class _DroppedAnswer(Response):
    """Sends the response head, then fails: the server closes the connection before the body (a lost answer)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"200")]})  # fmt: skip
        raise ConnectionAbortedError("sandbox fault: connection dropped after create")


class TokenBucket:
    """`rate` requests per second with one second of burst; answers how long to wait when empty."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


class Sandbox:
    """State shared by the handlers: config, store, lifecycle, fault dice."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.store = Store(config.data_dir / "sandbox.db")
        self.lifecycle = Lifecycle(config, self.store)
        self.rng = random.Random(config.seed)
        self.bucket = TokenBucket(config.rate_limit) if config.rate_limit else None
        self.creates = 0
        self.downloaded: set[str] = set()
        self.failed_downloads = 0
        self.lost_creates = 0

    def api(self, handler: Handler, *, limited: bool = True) -> Handler:
        """Latency, API key, rate limit and the call log around a /v2 handler."""

        async def wrapped(request: Request) -> Response:
            if self.config.latency:
                await asyncio.sleep(self.config.latency)
            key = request.headers.get("x-api-key", "")
            if not hmac.compare_digest(key.encode(), self.config.api_key.encode()):
                response: Response = JSONResponse({"message": "Invalid access token"}, status_code=401)
            elif limited and self.bucket is not None and (wait := self.bucket.take()) > 0:
                response = JSONResponse({"error": "Too many requests"}, status_code=429,
                                        headers={"Retry-After": str(max(1, round(wait + 0.5)))})  # fmt: skip
            else:
                response = await self.answer(handler, request)
            return response

        return wrapped

    async def answer(self, handler: Handler, request: Request) -> Response:
        """The handler's response; refusals in Tavus's shape and a JSON 500 for a bug (the connection stays usable)."""
        try:
            return await handler(request)
        except _Refused as exc:
            return _error(exc.message, exc.status)
        except Exception:
            log.exception("sandbox bug answering %s %s", request.method, request.url.path)
            return _error("Internal sandbox error", 500)

    def public_route(self, handler: Handler) -> Handler:
        """Hosted pages and files: no API key or rate limit, but guarded like the API."""

        async def wrapped(request: Request) -> Response:
            return await self.answer(handler, request)

        return wrapped

    def log_call(self, scope: Scope, status: int) -> None:
        video_id = scope.get("video_id") or scope.get("path_params", {}).get("video_id")
        if video_id is not None and not re.fullmatch(r"[0-9a-f]{10}", video_id):
            video_id = None  # never store what a client typed into a path
        path = scope["path"].encode("utf-8", "replace").decode()
        self.store.log_call(scope["method"], path, status, video_id)

    # -- videos --

    async def create(self, request: Request) -> Response:
        body = await _json_body(request, None)
        if not isinstance(body, dict):
            return _error("Request body must be a JSON object")
        try:
            req = validate_request(body)
        except InvalidRequestError as exc:
            return _error(exc.message.removeprefix("invalid video request: "))
        if req.replica_id not in REPLICAS:
            return _error("Invalid replica_id")
        if req.script is not None and len(req.script) > SCRIPT_MAX_CHARS:
            return _error(
                f"script is too long: {len(req.script)} characters (the sandbox accepts at most "
                f"{SCRIPT_MAX_CHARS}, about ten minutes of speech); split it into several videos"
            )
        if self.rng.random() < self.config.fail_create_rate:
            return JSONResponse({"error": "Service temporarily unavailable"}, status_code=503,
                                headers={"Retry-After": "1"})  # fmt: skip
        if self.lost_creates < self.config.lose_creates:  # the server died with the request: nothing stored
            self.lost_creates += 1
            return _DroppedAnswer()
        vid = secrets.token_hex(5)
        now = time.time()
        record: dict[str, Any] = {
            "video_id": vid, "video_name": req.video_name or f"video-{vid}", "status": "queued",
            "data": {"script": req.script}, "download_url": None, "stream_url": None,
            "hosted_url": f"{self.config.public_url}/v/{vid}", "status_details": "video_queued",
            "created_at": http_time(now), "updated_at": http_time(now), "generation_progress": "0/100",
            "replica_id": req.replica_id, "error_details": None, "background_url": req.background_url,
            "background_source_url": req.background_source_url, "still_image_thumbnail_url": None,
            "gif_thumbnail_url": None, "_created": now,
        }  # fmt: skip
        stored = req.payload() | {"_fail_render": self.rng.random() < self.config.fail_render_rate}
        self.store.add_video(record, stored)
        self.lifecycle.submit(vid)
        self.creates += 1
        drop = self.config.drop_connection_after_create
        if drop < 0 or self.creates <= drop:
            response: Response = _DroppedAnswer()
        else:
            keys = ("video_id", "video_name", "status", "hosted_url", "created_at")
            response = JSONResponse({k: record[k] for k in keys})
        request.scope["video_id"] = vid  # for the call log
        return response

    def _video(self, request: Request) -> dict[str, Any] | None:
        if not re.fullmatch(r"[0-9a-f]{10}", request.path_params["video_id"]):
            return None
        got = self.store.get(request.path_params["video_id"])
        return got[0] if got else None

    async def get_video(self, request: Request) -> Response:
        record = self._video(request)
        if record is None:
            return _error("Invalid video_id")
        verbose = request.query_params.get("verbose") == "true"
        return JSONResponse(public(record, self.config.public_url, verbose=verbose))

    async def list_videos(self, request: Request) -> Response:
        limit, page = _paging(request)
        records, total = self.store.page(limit, page)
        return JSONResponse({"data": [public(r, self.config.public_url) for r in records], "total_count": total})

    async def delete_video(self, request: Request) -> Response:
        vid = request.path_params["video_id"]
        if self._video(request) is None:
            return _error("Invalid video_id")
        if request.query_params.get("hard") == "true":
            self.store.remove(vid)
            shutil.rmtree(self.config.data_dir / "files" / vid, ignore_errors=True)
        else:
            self.store.update(vid, status="deleted", updated_at=http_time())
        return Response(status_code=200)

    async def rename_video(self, request: Request) -> Response:
        if self._video(request) is None:
            return _error("Invalid video_id")
        body = await _json_body(request, {})
        name = body.get("video_name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            return _error("video_name is required")
        self.store.update(request.path_params["video_id"], video_name=name, updated_at=http_time())
        return JSONResponse({"video_id": request.path_params["video_id"], "video_name": name})

    # -- replicas --

    @staticmethod
    def _replica(rid: str, *, detail: bool = False) -> dict[str, Any]:
        r = REPLICAS[rid]
        out = {"replica_id": rid, "replica_name": r["replica_name"], "thumbnail_video_url": None,
               "training_progress": "100/100" if r["status"] == "completed" else "40/100", "status": r["status"],
               "created_at": "Mon, 07 Jul 2025 10:00:00 GMT", "model_name": "sandbox",
               "replica_type": r["replica_type"]}  # fmt: skip
        if detail:
            failed = "training failed" if r["status"] == "error" else None
            out |= {"updated_at": out["created_at"], "error_message": failed}
        return out

    async def list_replicas(self, request: Request) -> Response:
        limit, page = _paging(request)
        query = request.query_params
        kind = query.get("replica_type")
        if kind is not None and kind not in ("user", "system"):
            return _error("replica_type must be user or system")
        wanted = {r.strip() for r in query["replica_ids"].split(",") if r.strip()} if "replica_ids" in query else None
        replicas = [self._replica(r) for r in sorted(REPLICAS)]
        replicas = [r for r in replicas if (kind is None or r["replica_type"] == kind)
                    and (wanted is None or r["replica_id"] in wanted)
                    and query.get("model_name") in (None, r["model_name"])]  # fmt: skip
        return JSONResponse({"data": replicas[page * limit : (page + 1) * limit], "total_count": len(replicas)})

    async def get_replica(self, request: Request) -> Response:
        rid = request.path_params["replica_id"]
        if rid not in REPLICAS:
            return _error("Invalid replica_id")
        return JSONResponse(self._replica(rid, detail=True))

    # -- public pages and files (no API key, like Tavus's hosted pages and CDN links) --

    async def hosted(self, request: Request) -> Response:
        record = self._video(request)
        if record is None:
            return HTMLResponse("<h1>Video not found</h1>", status_code=404)
        title = html.escape(record.get("video_name") or record["video_id"])
        if record["status"] != "ready":
            body = f"<p>{html.escape(record['status'])} {html.escape(record.get('generation_progress') or '')}</p>"
        else:
            url = at_base(record, self.config.public_url)["download_url"]
            body = f'<video controls width="960" src="{html.escape(url)}"></video>'
        return HTMLResponse(f"<!doctype html><title>{title}</title><h1>{title}</h1>{body}")

    async def files(self, request: Request) -> Response:
        vid, name = request.path_params["video_id"], request.path_params["name"]
        folder = (self.config.data_dir / "files" / vid).resolve()
        path = (folder / name).resolve()
        if not re.fullmatch(r"[0-9a-f]{10}", vid) or folder not in path.parents or not path.is_file():
            return Response("Not Found", status_code=404)
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        header = request.headers.get("range")
        if header:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
            if not m or m.group(1) == m.group(2) == "":
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start, end = int(m.group(1)), min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            else:
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
        headers = {"Content-Length": str(end - start + 1), "Accept-Ranges": "bytes"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if name.startswith("video.") and self.failed_downloads < self.config.fail_downloads:
            self.failed_downloads += 1
            return Response("Service Unavailable", status_code=503)
        drop_at = None
        if self.config.drop_download_after and name.startswith("video.") and vid not in self.downloaded:
            self.downloaded.add(vid)
            drop_at = self.config.drop_download_after
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return StreamingResponse(_read(path, start, end, drop_at), status_code=status, headers=headers,
                                 media_type=media_type)  # fmt: skip

    async def calls(self, request: Request) -> Response:
        """Every request, oldest first, and per endpoint (ids replaced by placeholders) the count of each status."""
        calls = self.store.calls()
        counts: dict[str, dict[str, int]] = {}
        for c in calls:
            endpoint = f"{c['method']} {_ENDPOINT_IDS.sub(lambda m: m.group(1) + '{id}', c['path'])}"
            per_status = counts.setdefault(endpoint, {})
            per_status[str(c["status"])] = per_status.get(str(c["status"]), 0) + 1
        return JSONResponse({"calls": calls, "counts": counts})


class _CallLog:
    """ASGI middleware: every request is in /_sandbox/calls whatever its outcome (404, 405, 413, 500 included).

    Logged when the response starts, so a client that reads the log right after its answer finds its call.
    """

    def __init__(self, app: Any, sandbox: Sandbox) -> None:
        self.app, self.sandbox = app, sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def logged_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                self.sandbox.log_call(scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        except BaseException:
            if not started:
                self.sandbox.log_call(scope, 500)
            raise


async def _read(path: Any, start: int, end: int, drop_at: int | None) -> AsyncIterator[bytes]:
    sent = 0
    with open(path, "rb") as f:
        f.seek(start)
        remaining = end - start + 1
        while remaining > 0:
            chunk = f.read(min(256 * 1024, remaining))
            if not chunk:
                break
            if drop_at is not None and sent + len(chunk) > drop_at:
                yield chunk[: drop_at - sent]
                await asyncio.sleep(0.05)  # let the partial body leave before the connection is cut
                raise ConnectionAbortedError("sandbox fault: download connection dropped")
            sent += len(chunk)
            remaining -= len(chunk)
            yield chunk


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True, "service": "assetprep-sandbox"})


def create_app(config: SandboxConfig) -> Starlette:
    """The ASGI app; its lifespan starts and stops the render workers."""
    sb = Sandbox(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        sb.lifecycle.start()
        try:
            yield
        finally:
            sb.lifecycle.stop()
            sb.store.close()

    routes = [
        Route("/v2/videos", sb.api(_by_method(POST=sb.create, GET=sb.list_videos)), methods=["GET", "POST"]),
        Route(
            "/v2/videos/{video_id}",
            sb.api(_by_method(GET=sb.get_video, DELETE=sb.delete_video)),
            methods=["GET", "DELETE"],
        ),
        Route("/v2/videos/{video_id}/name", sb.api(sb.rename_video), methods=["PATCH"]),
        Route("/v2/replicas", sb.api(sb.list_replicas), methods=["GET"]),
        Route("/v2/replicas/{replica_id}", sb.api(sb.get_replica), methods=["GET"]),
        Route("/v/{video_id}", sb.public_route(sb.hosted), methods=["GET"]),
        Route("/files/{video_id}/{name:path}", sb.public_route(sb.files), methods=["GET"]),
        Route("/_sandbox/calls", sb.api(sb.calls, limited=False), methods=["GET"]),
        Route("/_sandbox/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(_CallLog, sandbox=sb)])
    app.state.sandbox = sb
    return app
