"""The `assetprep` command: parse options, call the library, print. No work happens here.

No `from __future__ import annotations` here: typer reads every command's annotations when the command line is
parsed, and evaluating them as strings cost each command 20 ms of start-up (scripts/bench_upload.py --cli).
"""

import contextlib
import functools
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import __version__
from ._files import not_text, read_text_file
from ._units import parse_duration, parse_rate
from ._urls import redact_url
from .errors import INTERRUPTED, AssetprepError, ConfigError, ProcessError, UploadError
from .progress import Progress as ProgressReport
from .progress import ProgressCallback

if TYPE_CHECKING:
    from rich.console import Console

    from .normalize import NormalizeResult

# Heavy modules (normalize, presets, probe, pydantic, rich's progress) are imported by the commands that use them:
# `assetprep --help` and `assetprep upload` paid 0.2-0.3 s for modules they never touch.

app = typer.Typer(
    help="Prepare and publish videos for the Tavus Generate Video API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
normalize_app = typer.Typer(help="Normalize local media into what Tavus accepts.", no_args_is_help=True)
presets_app = typer.Typer(help="Built-in and user presets.", no_args_is_help=True)
app.add_typer(normalize_app, name="normalize")
app.add_typer(presets_app, name="presets")
s3_app = typer.Typer(help="The embedded S3 server (SeaweedFS).", no_args_is_help=True)
app.add_typer(s3_app, name="s3")


class _Stderr:
    """rich's console on stderr, made when first used: importing rich is ~15 ms that `upload --json` never needs."""

    @functools.cached_property
    def console(self) -> "Console":
        from rich.console import Console

        return Console(stderr=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


stderr = _Stderr()
_state = {"debug": False}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable result on stdout.")]


def _version(value: bool) -> None:
    if value:
        print(f"assetprep {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and full tool output on errors.")] = False,
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    _state["debug"] = debug


@contextlib.contextmanager
def progress_bar(enabled: bool = True, *, transient: bool = False) -> Iterator[ProgressCallback]:
    """A rich bar on stderr fed by library progress reports (one task per stage)."""
    # A pipe with nothing forcing a terminal needs no bar, nor rich (~18 ms to import): rich's own test otherwise.
    piped = not sys.stderr.isatty() and not {"TTY_COMPATIBLE", "FORCE_COLOR"} & os.environ.keys()
    if not enabled or piped or not stderr.is_terminal:
        yield lambda _p: None
        return
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description:<16}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[speed]}"))  # fmt: skip
    with Progress(*columns, console=stderr, transient=transient) as bar:
        tasks: dict[str, Any] = {}

        def update(p: ProgressReport) -> None:
            if p.stage == "done":
                for task in tasks.values():
                    bar.update(task, completed=bar.tasks[task].total)
                return
            if p.stage not in tasks:
                tasks[p.stage] = bar.add_task(p.stage, total=p.total or 1, speed="")
            speed = f"{p.speed:.1f}x" if p.speed and p.unit == "s" else ""
            if p.unit == "bytes":
                speed = f"{p.done / 1e6:.1f}/{(p.total or 0) / 1e6:.1f} MB"
            bar.update(tasks[p.stage], completed=p.done, total=p.total or None, speed=speed)

        yield update


@contextlib.contextmanager
def step_progress(enabled: bool = True) -> Iterator[ProgressCallback]:
    """Steps of a pipeline (reports with stage "step:NAME"): one line per step on stderr when it ends, with its time,
    and while it runs, bars for its long parts (terminal only; the bars go away, the lines stay)."""
    if not enabled:
        yield lambda _p: None
        return
    current: list[tuple[str, float]] = []

    def finish(outcome: str = "") -> None:
        if current:
            name, started = current.pop()
            stderr.print(f"  {name:<12} {time.monotonic() - started:7.1f} s {outcome}".rstrip(), highlight=False)

    with progress_bar(True, transient=True) as bar:

        def update(p: ProgressReport) -> None:
            if p.stage.startswith("step:"):
                finish()
                current.append((p.stage.removeprefix("step:"), time.monotonic()))
            elif p.stage == "done":
                finish()
            else:
                bar(p)

        try:
            yield update
        except BaseException:
            finish("failed")
            raise


def emit(result: dict[str, Any], as_json: bool, human: str, warnings: list[str] | None = None) -> None:
    """The result on stdout (JSON or words); warnings on stderr, so a pipe gets only the result."""
    for warning in warnings or []:
        stderr.print(f"warning: {warning}", markup=False)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(human)


def _describe(result: "NormalizeResult") -> str:
    facts = result.info.summary()
    parts = [f"{result.output}  ({result.path_taken}, {result.seconds:.1f} s)"]
    if v := facts.get("video"):
        parts.append(
            f"  video: {v['codec']} {v['profile']} {v['pix_fmt']} {v['width']}x{v['height']} @ {v['fps']} "
            f"{'CFR' if v['cfr'] else 'VFR'}, {v['frames']} frames"
        )
    if a := facts.get("audio"):
        parts.append(f"  audio: {a['codec']} {a['sample_rate']} Hz, {a['channels']} ch")
    if result.loudness:
        parts.append(
            f"  loudness: {result.loudness['integrated']:.1f} LUFS, peak {result.loudness['true_peak']:.1f} dBTP"
        )
    parts.append(f"  duration: {facts['duration']:.3f} s, {facts['size']} bytes")
    return "\n".join(parts)


@normalize_app.command("video")
def normalize_video_cmd(
    input: Annotated[str, typer.Argument(help="Clip, still image, or image sequence (img%03d.png / '*.png').")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .mp4 path.")],
    preset: Annotated[str, typer.Option(help="Preset name or .toml/.json file.")] = "background-1080p",
    fit: Annotated[str | None, typer.Option(help="cover (crop), contain (pad) or stretch.")] = None,
    fps: Annotated[int | None, typer.Option(help="Override the preset's frame rate.")] = None,
    duration: Annotated[float | None, typer.Option(help="Exact output length in seconds (cut or hold).")] = None,
    loop_to: Annotated[float | None, typer.Option("--loop-to", help="Loop the input up to this many seconds.")] = None,
    keep_audio: Annotated[bool, typer.Option("--keep-audio", help="Keep the audio as AAC (default: drop).")] = False,
    force_encode: Annotated[bool, typer.Option("--force-encode", help="Re-encode even compliant input.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Normalize a video into an H.264 MP4 for background_source_url."""
    from . import normalize

    if fit not in (None, "cover", "contain", "stretch"):
        raise typer.BadParameter("must be cover, contain or stretch", param_hint="--fit")
    with progress_bar(not as_json) as on_progress:
        result = normalize.normalize_video(
            input, output, preset=preset, fit=fit, fps=fps, duration=duration, loop_to=loop_to,  # type: ignore[arg-type]
            keep_audio=keep_audio, force_encode=force_encode, on_progress=on_progress,
        )  # fmt: skip
    emit(result.summary(), as_json, _describe(result), result.warnings)


@normalize_app.command("audio")
def normalize_audio_cmd(
    input: Annotated[str, typer.Argument(help="Any audio file, or a video whose audio track is used.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .wav or .mp3 path.")],
    preset: Annotated[str | None, typer.Option(help="Preset name or file (default: by extension).")] = None,
    loudness: Annotated[float | None, typer.Option(help="Integrated loudness target, LUFS (e.g. -16).")] = None,
    no_loudness: Annotated[bool, typer.Option("--no-loudness", help="Skip loudness normalization.")] = False,
    force_encode: Annotated[bool, typer.Option("--force-encode", help="Re-encode even compliant input.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Normalize audio into a .wav or .mp3 for audio_url."""
    from . import normalize

    target: float | bool | None = False if no_loudness else loudness
    with progress_bar(not as_json) as on_progress:
        result = normalize.normalize_audio(
            input, output, preset=preset, loudness=target, force_encode=force_encode, on_progress=on_progress
        )
    emit(result.summary(), as_json, _describe(result), result.warnings)


@app.command("probe")
def probe_cmd(
    file: Annotated[Path, typer.Argument(help="Media file.")],
    count_frames: Annotated[bool, typer.Option("--count-frames", help="Count video packets.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the media facts assetprep sees in a file."""
    from .probe import probe as probe_file

    info = probe_file(file, count_frames=count_frames)
    emit(info.model_dump(), as_json, json.dumps(info.summary(), indent=2))


@presets_app.command("list")
def presets_list(as_json: JsonOpt = False) -> None:
    """List the built-in presets."""
    from . import presets

    items = presets.list_presets()
    emit(
        {"presets": [p.model_dump() for p in items]},
        as_json,
        "\n".join(f"{p.name:<18} {p.kind:<6} {p.description}" for p in items),
    )


@presets_app.command("show")
def presets_show(name: Annotated[str, typer.Argument(help="Preset name or file.")]) -> None:
    """Show every setting of a preset (defaults included)."""
    from . import presets

    print(json.dumps(presets.load_preset(name).model_dump(), indent=2))


@app.command("upload")
def upload_cmd(
    # str, not Path: typer 0.29 builds a pydantic validator per Path value (25 ms for 200 files on every upload).
    files: Annotated[list[str], typer.Argument(help="Files to upload.")],
    bucket: Annotated[str, typer.Option(envvar="ASSETPREP_BUCKET", help="Bucket name.")],
    prefix: Annotated[str, typer.Option(envvar="ASSETPREP_PREFIX", help="Key prefix.")] = "assetprep",
    expires: Annotated[str, typer.Option(help="Presigned URL lifetime: 90s, 30m, 6h, 7d (max).")] = "6h",
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint (or AWS_ENDPOINT_URL_S3).")] = None,
    public_endpoint_url: Annotated[
        str | None, typer.Option(help="Presign against this host (what the consumer reaches).")
    ] = None,
    profile: Annotated[str | None, typer.Option(help="AWS profile.")] = None,
    region: Annotated[str | None, typer.Option(help="AWS region.")] = None,
    create_bucket: Annotated[bool, typer.Option("--create-bucket", help="Create the bucket if missing.")] = False,
    no_check: Annotated[bool, typer.Option("--no-check", help="Skip the preflight GET of each URL.")] = False,
    jobs: Annotated[
        int | None, typer.Option(min=1, max=256, help="Files in flight at once (default: 8 per core, at most 32).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload files to S3 and print one checked, presigned GET URL per file (files in parallel, results in order)."""
    from . import upload

    settings = upload.S3Settings(
        endpoint_url=endpoint_url, public_endpoint_url=public_endpoint_url, profile=profile, region=region
    )
    failed: UploadError | None = None
    with progress_bar(not as_json) as on_progress:
        try:
            results = upload.upload_and_presign(
                list(files), bucket=bucket, settings=settings, prefix=prefix,
                expires_in=parse_duration(expires, what="--expires"), create_bucket=create_bucket,
                check=not no_check, jobs=jobs, on_progress=on_progress,
            )  # fmt: skip
        except UploadError as exc:  # the files that made it are still reported, then the failures, exit 1
            failed, results = exc, [r for r in exc.results if r is not None]
    lines = []
    for r in results:
        state = "already stored, 0 bytes sent" if r.object.skipped else f"{r.object.bytes_sent} bytes sent"
        lines.append(f"{r.object.s3_uri}  ({state}, expires {r.expires_at:%Y-%m-%d %H:%M} UTC)\n  {r.url}")
    data: dict[str, Any] = {"objects": [r.summary() for r in results]}
    if failed is not None:
        data["failed"] = [{"file": path, "error": str(err)} for path, err in failed.failures]
    if results or failed is None:
        emit(data, as_json, "\n".join(lines))
    if failed is not None:
        raise failed


@s3_app.command("serve")
def s3_serve(
    dir: Annotated[Path, typer.Option("--dir", help="Data folder (objects and credentials).")] = Path(".assetprep/s3"),
    port: Annotated[int | None, typer.Option(help="S3 port (default: a free one).")] = None,
    bucket: Annotated[str, typer.Option(help="Bucket to create (printed as ASSETPREP_BUCKET).")] = "assetprep",
) -> None:
    """Run SeaweedFS on 127.0.0.1 in the foreground; prints the endpoint and credentials to use."""
    import signal

    from pydantic import SecretStr

    from .s3local import LocalS3
    from .upload import S3Settings, ensure_bucket, make_s3_client

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM must stop weed too, not leave it orphaned

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    server = LocalS3(dir, port=port).start()
    try:
        # A bucket, so that every line of the README's tour runs as written once these lines are pasted.
        s3 = S3Settings(endpoint_url=server.endpoint_url, region="us-east-1", access_key_id=server.access_key,
                        secret_access_key=SecretStr(server.secret_key))  # fmt: skip
        ensure_bucket(make_s3_client(s3), bucket, create=True)
        print(f"S3 endpoint: {server.endpoint_url}   data: {dir}   log: {server.log_path}")
        for key, value in {**server.env(), "ASSETPREP_BUCKET": bucket}.items():
            print(f"export {key}={value}")
        print("Ctrl-C to stop.", flush=True)
        assert server.proc is not None
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@app.command("record")
def record_cmd(
    source: Annotated[str, typer.Argument(help="http(s) URL, a local .html file or a folder with index.html.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .mp4.")],
    preset: Annotated[str, typer.Option(help="Video preset (size, fps, encoder).")] = "background-1080p",
    duration: Annotated[float, typer.Option(help="Seconds of video.")] = 10.0,
    fps: Annotated[int | None, typer.Option(help="Frame rate (default: the preset's).")] = None,
    viewport: Annotated[str | None, typer.Option(help="CSS viewport WxH (default: preset size / scale).")] = None,
    scale: Annotated[float, typer.Option(help="Device scale factor.")] = 1.0,
    scroll: Annotated[str, typer.Option(help="none | smooth | human.")] = "none",
    scroll_depth: Annotated[str, typer.Option(help="middle | bottom | PIXELS.")] = "middle",
    scroll_return: Annotated[str, typer.Option(help="return | halt.")] = "return",
    wait_for: Annotated[str | None, typer.Option(help="CSS selector or 'networkidle'.")] = None,
    hide: Annotated[list[str] | None, typer.Option(help="Hide elements matching this selector (repeatable).")] = None,
    css: Annotated[str | None, typer.Option(help="CSS file or text to inject.")] = None,
    js: Annotated[str | None, typer.Option(help="JavaScript file or text to run before recording.")] = None,
    header: Annotated[list[str] | None, typer.Option(help="Extra HTTP header 'Name: value' (repeatable).")] = None,
    cookie: Annotated[list[str] | None, typer.Option(help="Cookie 'name=value' for the page (repeatable).")] = None,
    dark: Annotated[bool, typer.Option("--dark", help="Prefer a dark colour scheme.")] = False,
    show_cookie_banners: Annotated[
        bool, typer.Option("--show-cookie-banners", help="Keep the consent banners of common CMPs (hidden otherwise).")
    ] = False,
    mode: Annotated[
        str, typer.Option(help="exact (virtual time) | fast (one full-page shot, no animation).")
    ] = "exact",
    timeout: Annotated[float, typer.Option(help="Seconds allowed for loading and readiness.")] = 60.0,
    allow_http_errors: Annotated[bool, typer.Option("--allow-http-errors", help="Record 4xx/5xx pages.")] = False,
    block_private_networks: Annotated[
        bool, typer.Option("--block-private-networks", help="Refuse requests to loopback/private addresses.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Record a web page into an H.264 .mp4 background (frame-exact, deterministic)."""
    from pydantic import ValidationError

    from . import presets

    # Not `from . import record`: the package re-exports the function under that name.
    from .record import RecordOptions, parse_viewport, record

    headers = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"--header must look like 'Name: value', got {item!r}")
        headers[name.strip()] = value.strip()
    cookies = []
    for item in cookie or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--cookie must look like name=value, got {item!r}")
        cookies.append({"name": name.strip(), "value": value.strip()})
    depth: str | int = int(scroll_depth) if scroll_depth.isdigit() else scroll_depth
    try:
        options = RecordOptions(
            preset=preset, duration=duration, fps=fps, viewport=parse_viewport(viewport) if viewport else None,
            scale=scale, scroll=scroll, scroll_depth=depth, scroll_return=scroll_return, wait_for=wait_for,
            hide=hide or [], css=css, js=js, headers=headers, cookies=cookies, dark=dark, mode=mode,
            show_cookie_banners=show_cookie_banners,
            timeout=timeout, allow_http_errors=allow_http_errors, block_private_networks=block_private_networks,
        )  # fmt: skip
    except ValidationError as exc:
        raise ConfigError(presets.format_validation_error(exc, "record options")) from None
    with progress_bar(not as_json) as on_progress:
        result = record(source, output, options, on_progress=on_progress)
    human = (f"{result.output}  ({result.frames} frames @ {result.fps} fps, {result.mode} mode, "
             f"{result.seconds:.1f} s, capture {result.capture_fps:.1f} fps)")  # fmt: skip
    emit(result.summary(), as_json, human, result.warnings)


# --------------------------------------------------------------------------------------------- Tavus videos

videos_app = typer.Typer(help="Tavus videos: create, get, list, wait, download, rename, delete.", no_args_is_help=True)
replicas_app = typer.Typer(help="Tavus replicas.", no_args_is_help=True)
sandbox_app = typer.Typer(help="The local Tavus-compatible sandbox server.", no_args_is_help=True)
app.add_typer(videos_app, name="videos")
app.add_typer(replicas_app, name="replicas")
app.add_typer(sandbox_app, name="sandbox")

ApiKeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="TAVUS_API_KEY", show_envvar=True,
                                               help="Tavus API key.", show_default=False)]  # fmt: skip
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="API host (or TAVUS_API_BASE_URL).")]
VideoIdArg = Annotated[str, typer.Argument(help="The video_id.")]


def _client(api_key: str | None, base_url: str | None) -> Any:
    from .tavus import TavusClient

    return TavusClient(api_key=api_key, base_url=base_url)


def _read_script(script: str | None, script_file: Path | None) -> str | None:
    if script_file is None:
        return script
    try:
        return read_text_file(script_file, None)  # UTF-8 (a BOM from Notepad is not part of it) or UTF-16
    except OSError as exc:
        raise ConfigError(f"cannot read --script-file {script_file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--script-file {not_text(script_file, exc)}", hint="save it as UTF-8") from None


def _video_line(v: Any) -> str:
    extra = f" {v.generation_progress}" if v.status == "generating" and v.generation_progress else ""
    detail = f" ({v.failure()})" if v.status == "error" else ""
    return f"{v.video_id}  {v.status}{extra}{detail}  {v.video_name or ''}  {v.hosted_url or ''}".rstrip()


SignedOpt = Annotated[
    bool,
    typer.Option("--signed-urls", help="Print signed URLs whole (they grant access until they expire)."),
]


def _record(v: Any, signed: bool = False) -> dict[str, Any]:
    """A video as JSON; the query strings of its URLs (signatures) are cut unless asked for."""
    data = dict(v.model_dump(exclude_none=True))
    if not signed:
        data = {k: redact_url(x) if k.endswith("_url") and isinstance(x, str) else x for k, x in data.items()}
    return data


@videos_app.command("create")
def videos_create(
    replica: Annotated[str, typer.Option("--replica", help="replica_id.")],
    script: Annotated[str | None, typer.Option(help="Text the replica speaks.")] = None,
    script_file: Annotated[Path | None, typer.Option(help="Read the script from a file.")] = None,
    audio_url: Annotated[str | None, typer.Option(help="URL of a .wav/.mp3 the replica lip-syncs to.")] = None,
    background_url: Annotated[str | None, typer.Option(help="Website Tavus records as background.")] = None,
    background_source_url: Annotated[str | None, typer.Option(help="URL of an H.264 .mp4 background.")] = None,
    callback_url: Annotated[str | None, typer.Option(help="POSTed the record on ready and on error.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="video_name.")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="Fast rendering (no background).")] = False,
    transparent: Annotated[bool, typer.Option("--transparent", help="WebM with alpha (needs --fast).")] = False,
    api_key: ApiKeyOpt = None,
    base_url: BaseUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit one video (POST /v2/videos). The request is checked before anything is sent."""
    from .tavus import validate_request

    script = _read_script(script, script_file)
    fields = {"replica_id": replica, "script": script, "audio_url": audio_url, "background_url": background_url,
              "background_source_url": background_source_url, "callback_url": callback_url, "video_name": name,
              "fast": fast or None, "transparent_background": transparent or None}  # fmt: skip
    request = validate_request({k: v for k, v in fields.items() if v is not None})
    for warning in request.warnings():
        stderr.print(f"warning: {warning}", markup=False)
    with _client(api_key, base_url) as client:
        video = client.create_video(request)
    emit(_record(video), as_json, _video_line(video))


@videos_app.command("get")
def videos_get(video_id: VideoIdArg, api_key: ApiKeyOpt = None, base_url: BaseUrlOpt = None,
               as_json: JsonOpt = False, signed_urls: SignedOpt = False) -> None:  # fmt: skip
    """Show one video's record (verbose: with thumbnails)."""
    with _client(api_key, base_url) as client:
        video = client.get_video(video_id, verbose=True)
    record = _record(video, signed_urls)
    lines = [_video_line(video)] + [f"  {k}: {record[k]}" for k in
             ("download_url", "stream_url", "still_image_thumbnail_url") if record.get(k)]  # fmt: skip
    emit(record, as_json, "\n".join(lines))


@videos_app.command("list")
def videos_list(api_key: ApiKeyOpt = None, base_url: BaseUrlOpt = None, as_json: JsonOpt = False,
                signed_urls: SignedOpt = False) -> None:  # fmt: skip
    """Every video of the account (all pages)."""
    with _client(api_key, base_url) as client:
        videos = list(client.list_videos())
    emit({"data": [_record(v, signed_urls) for v in videos], "total_count": len(videos)}, as_json,
         "\n".join(_video_line(v) for v in videos) or "no videos")  # fmt: skip


@videos_app.command("delete")
def videos_delete(
    video_id: VideoIdArg,
    hard: Annotated[bool, typer.Option("--hard", help="Delete irreversibly with all assets.")] = False,
    api_key: ApiKeyOpt = None,
    base_url: BaseUrlOpt = None,
) -> None:
    """Delete a video."""
    with _client(api_key, base_url) as client:
        client.delete_video(video_id, hard=hard)
    print(f"{video_id} deleted{' (hard)' if hard else ''}")


@videos_app.command("rename")
def videos_rename(video_id: VideoIdArg, name: Annotated[str, typer.Argument(help="New video_name.")],
                  api_key: ApiKeyOpt = None, base_url: BaseUrlOpt = None) -> None:  # fmt: skip
    """Rename a video."""
    with _client(api_key, base_url) as client:
        client.rename_video(video_id, name)
    print(f"{video_id} renamed to {name}")


@videos_app.command("wait")
def videos_wait(
    video_id: VideoIdArg,
    deadline: Annotated[str, typer.Option(help="Give up after: 90s, 30m, 2h.")] = "1h",
    poll: Annotated[float, typer.Option(help="First poll interval in seconds (grows to 30).")] = 5.0,
    api_key: ApiKeyOpt = None,
    base_url: BaseUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Wait until a video is ready; fails with status_details on error."""
    with _client(api_key, base_url) as client, progress_bar(not as_json) as on_progress:
        video = client.wait(video_id, parse_duration(deadline, what="--deadline"), poll_interval=poll,
                            on_progress=on_progress)  # fmt: skip
    emit(_record(video), as_json, _video_line(video))


@videos_app.command("download")
def videos_download(
    video_id: VideoIdArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the video.")],
    api_key: ApiKeyOpt = None,
    base_url: BaseUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a ready video (resumes dropped connections; written atomically)."""
    from .probe import probe as probe_file

    with _client(api_key, base_url) as client, progress_bar(not as_json) as on_progress:
        path = client.download(video_id, output, on_progress=on_progress)
    info = probe_file(path)
    emit({"output": str(path), "facts": info.summary()}, as_json, f"{path}  ({info.duration:.2f} s)")


@replicas_app.command("list")
def replicas_list(api_key: ApiKeyOpt = None, base_url: BaseUrlOpt = None, as_json: JsonOpt = False) -> None:
    """Replicas of the account (stock and personal)."""
    with _client(api_key, base_url) as client:
        replicas = client.list_replicas()
    lines = [f"{r.replica_id}  {r.replica_name or ''}  {r.status or ''}  {r.replica_type or ''}" for r in replicas]
    emit({"data": [r.model_dump(exclude_none=True) for r in replicas]}, as_json, "\n".join(lines))


@sandbox_app.command("serve")
def sandbox_serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8700,
    data_dir: Annotated[Path, typer.Option(help="State (SQLite) and rendered files.")] = Path(".assetprep/sandbox"),
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="ASSETPREP_SANDBOX_API_KEY",
            show_default=False,
            help="Key clients must send (default: one generated and kept in the data dir).",
        ),
    ] = None,
    speed: Annotated[float, typer.Option(help="Lifecycle speed-up (10 = ten times shorter waits).")] = 1.0,
    public_url: Annotated[str | None, typer.Option(help="Base URL for hosted/download links.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fault dice.")] = 0,
    rate_limit: Annotated[str | None, typer.Option(help="Answer 429 above this rate: 30/min, 5/s.")] = None,
    fail_create_rate: Annotated[float, typer.Option(help="Share of creates answered 503 (nothing stored).")] = 0.0,
    drop_connection_after_create: Annotated[
        int, typer.Option(help="Store the first N creates, then cut the connection instead of answering (-1: all).")
    ] = 0,
    lose_creates: Annotated[int, typer.Option(help="Cut the first N creates before storing them.")] = 0,
    drop_download_after: Annotated[int, typer.Option(help="Cut each video's first download after N bytes.")] = 0,
    fail_downloads: Annotated[int, typer.Option(help="Answer the first N video downloads 503.")] = 0,
    fail_render_rate: Annotated[float, typer.Option(help="Share of videos that end in error.")] = 0.0,
    latency: Annotated[float, typer.Option(help="Seconds added to every API answer.")] = 0.0,
    config_json: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run the sandbox in the foreground (Ctrl-C or SIGTERM stops it)."""
    from pydantic import ValidationError

    from . import presets, sandbox

    fields: dict[str, Any] = {
        "host": host, "port": port, "speed": speed, "seed": seed, "rate_limit": parse_rate(rate_limit),
        "fail_create_rate": fail_create_rate, "drop_connection_after_create": drop_connection_after_create,
        "lose_creates": lose_creates, "drop_download_after": drop_download_after, "fail_downloads": fail_downloads,
        "fail_render_rate": fail_render_rate, "latency": latency,
    }  # fmt: skip
    if public_url:
        fields["public_url"] = public_url
    if config_json:
        fields |= json.loads(config_json)
    key = api_key or sandbox.data_dir_api_key(data_dir)
    try:
        config = sandbox.SandboxConfig(data_dir=data_dir, api_key=key, **fields)
    except ValidationError as exc:
        raise ConfigError(presets.format_validation_error(exc, "sandbox options")) from None
    # Lines a shell can paste, as `s3 serve` prints (plain print: rich wrapped the key's line at the terminal's width).
    # The generated key is named by its file, so it is not on the screen or in a scrollback.
    given = "the key given with --api-key or ASSETPREP_SANDBOX_API_KEY"
    where = shlex.quote(str((data_dir / "api_key").resolve()))
    print(f"Tavus sandbox on {config.public_url}   data: {data_dir}")
    print(f"export TAVUS_API_BASE_URL={config.public_url}")
    print(f'export TAVUS_API_KEY="$(cat {where})"' if api_key is None else f"# TAVUS_API_KEY: {given}")
    print(f"export ASSETPREP_REPLICA_ID={sandbox.DEFAULT_REPLICA}   # a replica this sandbox has")
    print("Ctrl-C to stop.", flush=True)
    sandbox.serve(config)


@app.command("publish")
def publish_cmd(
    replica: Annotated[str | None, typer.Option("--replica", help="replica_id (default: replica_id setting).")] = None,
    script: Annotated[str | None, typer.Option(help="Text the replica speaks.")] = None,
    script_file: Annotated[Path | None, typer.Option(help="Read the script from a file.")] = None,
    audio: Annotated[Path | None, typer.Option(help="Audio file (any format; normalized to .wav).")] = None,
    background: Annotated[str | None, typer.Option(help="URL, .html file, folder, or a clip/image.")] = None,
    background_via: Annotated[str, typer.Option(help="local (record/normalize here) | tavus (URL only).")] = "local",
    background_seconds: Annotated[float, typer.Option(help="Length of a recorded website background.")] = 10.0,
    background_preset: Annotated[str | None, typer.Option(help="Preset of the prepared background.")] = None,
    scroll: Annotated[str, typer.Option(help="Scroll of a recorded website: none | smooth | human.")] = "human",
    page_timeout: Annotated[
        float, typer.Option(help="Seconds the background page (or clip URL) may take to load.")
    ] = 60.0,
    name: Annotated[str | None, typer.Option("--name", help="video_name (default: unique per run).")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="Fast rendering (Tavus drops the background).")] = False,
    composite_locally: Annotated[
        bool,
        typer.Option("--composite-locally", help="Fast + transparent from Tavus, composited here onto the background."),
    ] = False,
    layout: Annotated[str, typer.Option(help="bubble-bottom-right | left-third | full.")] = "bubble-bottom-right",
    callback_url: Annotated[str | None, typer.Option(help="Your own callback receiver.")] = None,
    listen: Annotated[str | None, typer.Option(help="Receive callbacks here (HOST:PORT) instead of polling.")] = None,
    listen_url: Annotated[str | None, typer.Option(help="Public URL that reaches --listen (proxy, tunnel).")] = None,
    deadline: Annotated[str | None, typer.Option(help="Give up waiting after: 30m, 2h (default 2h).")] = None,
    poll: Annotated[float | None, typer.Option(help="First poll interval in seconds (default 5).")] = None,
    bucket: Annotated[str | None, typer.Option(envvar="ASSETPREP_BUCKET", help="Bucket for prepared files.")] = None,
    prefix: Annotated[str | None, typer.Option(envvar="ASSETPREP_PREFIX", help="Key prefix.")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Final video path.")] = None,
    run_id: Annotated[str | None, typer.Option(help="Name the run (default: derived from the inputs).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Submit again after an error.")] = False,
    watermark: Annotated[str | None, typer.Option(help="A .png/.jpg file or URL, sent as watermark_image_url.")] = None,
    block_private_networks: Annotated[
        bool,
        typer.Option("--block-private-networks", help="Record pages through the guard: no loopback/private hosts."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Prepare, upload, submit, wait and download one Tavus video. Rerun the same command to resume."""
    from pydantic import ValidationError

    from . import presets
    from .publish import CONFIG_FILE, PublishOptions, PublishSettings, publish

    script = _read_script(script, script_file)
    try:
        settings = PublishSettings()
    except ValidationError as exc:
        raise ConfigError(presets.format_validation_error(exc, "settings (ASSETPREP_*, .env, config file)")) from None
    replica = replica or settings.replica_id
    if not replica:
        raise ConfigError(
            "no replica", hint=f"pass --replica, or set replica_id in {CONFIG_FILE} / ASSETPREP_REPLICA_ID"
        )
    try:
        options = PublishOptions(
            replica_id=replica, script=script, audio=audio, background=background, background_via=background_via,
            background_seconds=background_seconds, background_preset=background_preset, scroll=scroll,
            video_name=name, fast=fast, composite_locally=composite_locally, layout=layout,
            callback_url=callback_url, listen=listen, listen_url=listen_url,
            deadline=parse_duration(deadline, what="--deadline") if deadline else None, poll_interval=poll,
            bucket=bucket, prefix=prefix, output=output, run_id=run_id, retry_failed=retry_failed,
            watermark=watermark, block_private_networks=block_private_networks, page_timeout=page_timeout,
        )  # fmt: skip
    except ValidationError as exc:
        raise ConfigError(presets.format_validation_error(exc, "publish options")) from None
    with step_progress(not as_json) as on_progress:
        result = publish(options, settings=settings, on_progress=on_progress)
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    human = (f"{result.output}\n  video {result.video_id} ({result.status})  {result.hosted_url or ''}\n"
             f"  run {result.run_id}: {steps or 'nothing to do'}"
             + (f"; reused {', '.join(result.skipped)}" if result.skipped else ""))  # fmt: skip
    emit(result.summary(), as_json, human)


@app.command("batch")
def batch_cmd(
    manifest: Annotated[Path, typer.Argument(help="CSV, YAML (defaults: + rows:) or JSONL; one video per row.")],
    out: Annotated[Path | None, typer.Option("--out", help="Videos, results.csv, report.html.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check everything, print the plan, create nothing.")
    ] = False,
    jobs: Annotated[int | None, typer.Option(help="Recordings at once (default: cores / 2).")] = None,
    submit_rate: Annotated[str | None, typer.Option(help="Creates per time for the whole batch: 30/min.")] = None,
    max_in_flight: Annotated[int, typer.Option(help="Videos submitted and not yet finished, at most.")] = 100,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Make the failed rows again.")] = False,
    rows: Annotated[str | None, typer.Option(help="Only these rows (as numbered in messages): 3-10,17.")] = None,
    max_failures: Annotated[int | None, typer.Option(help="Stop submitting new rows after N failures.")] = None,
    listen: Annotated[str | None, typer.Option(help="One callback receiver for the batch (HOST:PORT).")] = None,
    listen_url: Annotated[str | None, typer.Option(help="Public URL that reaches --listen (proxy, tunnel).")] = None,
    allow_private_networks: Annotated[
        bool, typer.Option("--allow-private-networks", help="Let recordings reach localhost/private addresses.")
    ] = False,
    batch_id: Annotated[str | None, typer.Option(help="Name the batch (default: from the manifest's path).")] = None,
    replica: Annotated[str | None, typer.Option("--replica", help="replica_id for rows without one.")] = None,
    background: Annotated[
        str | None, typer.Option(help="Background for rows without one, a template: '{{ website }}'.")
    ] = None,
    no_background: Annotated[
        bool, typer.Option("--no-background", help="Make the videos without backgrounds though a column has sites.")
    ] = False,
    background_preset: Annotated[
        str | None, typer.Option(help="Preset of prepared backgrounds (rows may set their own).")
    ] = None,
    page_timeout: Annotated[
        float, typer.Option(help="Seconds a lead's page may take to load; a dead or hung site fails its row then.")
    ] = 60.0,
    deadline: Annotated[str | None, typer.Option(help="Stop waiting after: 30m, 2h (rerun to continue).")] = None,
    poll: Annotated[float | None, typer.Option(help="Poll interval in seconds.")] = None,
    bucket: Annotated[str | None, typer.Option(envvar="ASSETPREP_BUCKET", help="Bucket for prepared files.")] = None,
    prefix: Annotated[str | None, typer.Option(envvar="ASSETPREP_PREFIX", help="Key prefix.")] = None,
    ray_address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="Prepare on a Ray cluster: auto or HOST:PORT.")
    ] = None,
    report_title: Annotated[
        str | None, typer.Option(help="Columns that title report.html's cards: 'First Name,Company'.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make one video per manifest row: shared preparation, exactly once, results.csv and report.html."""
    from pydantic import ValidationError

    from . import presets
    from .batch import BatchOptions, batch_publish
    from .publish import PublishSettings

    if background and "{{" not in background and Path(background).exists():
        background = str(Path(background).resolve())  # a file named on the command line is where the user stands
    try:
        settings = PublishSettings()
        options = BatchOptions(
            out_dir=out, dry_run=dry_run, jobs=jobs, submit_rate=parse_rate(submit_rate), max_in_flight=max_in_flight,
            retry_failed=retry_failed, rows=rows or None, max_failures=max_failures,
            listen=listen, listen_url=listen_url, allow_private_networks=allow_private_networks, batch_id=batch_id,
            deadline=parse_duration(deadline, what="--deadline") if deadline else None, poll_interval=poll,
            bucket=bucket, prefix=prefix, replica_id=replica, ray_address=ray_address, background=background,
            no_background=no_background, background_preset=background_preset, page_timeout=page_timeout,
            report_title=[c.strip() for c in report_title.split(",")] if report_title else None,
        )  # fmt: skip
    except ValidationError as exc:
        raise ConfigError(presets.format_validation_error(exc, "batch options")) from None
    with batch_progress(not as_json) as on_event:
        result = batch_publish(manifest, options, settings=settings, on_event=on_event)
    if result.dry_run:
        plan = result.plan or {}
        human = (f"plan for {manifest}: {plan['rows']} rows → {plan['videos']} videos; {plan['backgrounds']} "
                 f"background(s) and {plan['audio_files']} audio file(s) to prepare, {plan['uploads']} upload(s); "
                 f"replicas {', '.join(plan['replicas'])} exist\n"
                 + "\n".join(f"  row {s['row']}: {s['script']}" for s in plan["first_scripts"]))  # fmt: skip
        dups = plan.get("duplicates") or []
        human += "".join(f"\n  row {d['row']} is the same video as {d['same_as']} (made once, reported on both)"
                         for d in dups[:5])  # fmt: skip
        human += f"\n  … and {len(dups) - 5} more such rows" if len(dups) > 5 else ""
        emit(result.summary(), as_json, human)
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    lines = [f"batch {result.batch_id}: {len(result.rows)} rows ({counts}) in {result.seconds:.1f} s; "
             f"{result.prepared_now} of {result.preparations} preparation(s) done now ({result.executor})",
             f"  results: {result.results_csv}", f"  report:  {result.report_html}"]  # fmt: skip
    failed = [r for r in result.rows if r["status"] == "failed"]
    lines += [f"  row {r['row']} failed: {r['error']}" for r in failed[:20]]
    if warned := [r for r in result.rows if r.get("warnings") and r["status"] != "failed"]:
        lines.append(f"  {len(warned)} row(s) with warnings (column warnings of results.csv), e.g. row "
                     f"{warned[0]['row']}: {warned[0]['warnings']}")  # fmt: skip
    lines += [f"  row {r['row']} {r['status']}{': ' + r['error'] if r['error'] else ''}"
              for r in result.rows if r["status"] not in ("downloaded", "failed")][:20]  # fmt: skip
    if result.superseded:
        lines.append(f"  {len(result.superseded)} row(s) of earlier runs are no longer in the manifest (edited or "
                     "removed); their videos stay on the account: " + ", ".join(
                         str(r["video_id"] or r["row_id"]) for r in result.superseded[:10]))  # fmt: skip
    emit(result.summary(), as_json, "\n".join(lines))
    if not result.ok:
        raise typer.Exit(1)


@contextlib.contextmanager
def batch_progress(enabled: bool) -> Iterator[Any]:
    """A live line with counts per stage on a terminal; a plain line every 10 s otherwise (logs, CI)."""
    if not enabled:
        yield None
        return
    if stderr.is_terminal:
        from rich.live import Live

        with Live(console=stderr, refresh_per_second=4, transient=False) as live:
            yield lambda p: live.update(p.line())
        return
    last = [0.0]

    def plain(p: Any) -> None:
        if time.monotonic() - last[0] >= 10.0:
            last[0] = time.monotonic()
            stderr.print(p.line(), markup=False, highlight=False, soft_wrap=True)

    yield plain


@app.command("doctor")
def doctor_cmd(
    bucket: Annotated[str | None, typer.Option(envvar="ASSETPREP_BUCKET", help="Bucket to check.")] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Also check every node of this Ray cluster (auto or HOST:PORT).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check ffmpeg, Chromium, S3 and the Tavus API key (and each Ray node); say what to fix."""
    from .doctor import ray_checks, run_checks

    checks = run_checks(bucket) + (ray_checks(ray_address, bucket) if ray_address else [])
    lines = [f"{'ok  ' if c.ok else 'FAIL'} {c.name:<10} {c.detail}" for c in checks]
    lines = [
        line + (f"\n     {'tip' if c.ok else 'fix'}: {c.fix}" if c.fix else "")
        for line, c in zip(lines, checks, strict=True)
    ]
    emit({"checks": [c.__dict__ for c in checks], "ok": all(c.ok for c in checks)}, as_json, "\n".join(lines))
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


class _Interrupted(BaseException):
    """Ctrl-C or SIGTERM. Not KeyboardInterrupt: typer turns that into a silent exit 130 before main() sees it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    # Raised in the main thread wherever it is; every layer cleans up on the way out (children killed, temp files
    # removed, journals consistent), as for any exception.
    raise _Interrupted(signum)


def _interrupt_behind(exc: BaseException) -> BaseException | None:
    """The Ctrl-C/SIGTERM an exception was raised while handling, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _Interrupted | KeyboardInterrupt):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _exit_interrupted(exc: BaseException) -> None:
    import signal

    signum = exc.signum if isinstance(exc, _Interrupted) else signal.SIGINT
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message short
    stderr.print(INTERRUPTED, markup=False)
    sys.exit(128 + signum)


def main() -> None:
    """Entry point: AssetprepError → one line on stderr, exit 1; usage errors exit 2 (click); no traceback."""
    import signal

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        app()
    except AssetprepError as exc:
        if _state["debug"]:
            if isinstance(exc, ProcessError):
                stderr.print(exc.details(), markup=False, highlight=False)
            raise
        stderr.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except (_Interrupted, KeyboardInterrupt) as exc:
        _exit_interrupted(exc)
    except Exception as exc:  # a bug: still one line, the traceback behind --debug
        if (cause := _interrupt_behind(exc)) is not None:
            # The interrupt landed inside a library's half-done step (e.g. asyncio making a pipe for the browser)
            # and the cleanup after it tripped over that: it is still the user's Ctrl-C, not a bug to report.
            _exit_interrupted(cause)
        if _state["debug"]:
            raise
        stderr.print(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", markup=False)
        sys.exit(1)
