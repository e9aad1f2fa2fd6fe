"""Normalization: any video into the preset's H.264 MP4, any audio into the preset's WAV/MP3.

ffmpeg-python builds the commands; `_process.run` runs them. Every output is probed and checked against its preset
before it is renamed into place, and compliant inputs are remuxed instead of re-encoded.
"""

from __future__ import annotations

import glob
import math
import os
import re
import time
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import ffmpeg
from pydantic import BaseModel, ConfigDict

from . import _process
from ._files import MP4_SUFFIXES, atomic_output, check_input_file
from .errors import ConfigError, MediaError, OutputCheckError
from .presets import AudioPreset, LoudnessTarget, VideoPreset, load_audio_preset, load_video_preset
from .probe import _STILL_CODECS, AudioStream, MediaInfo, VideoStream, is_faststart, probe
from .progress import Progress, ProgressCallback

Fit = Literal["cover", "contain", "stretch"]
PathTaken = Literal["encode", "remux"]

# Tavus limits for audio_url (see API.md, errors page).
TAVUS_AUDIO_MIN_SECONDS = 3.0
TAVUS_AUDIO_MAX_SECONDS = 600.0
TAVUS_AUDIO_MAX_BYTES = 750 * 1024 * 1024

_PROFILE_RANK = {"constrained baseline": 0, "baseline": 0, "main": 1, "high": 2}


class NormalizeResult(BaseModel):
    """What a normalization produced and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str
    output: str
    preset: str
    path_taken: PathTaken
    seconds: float
    info: MediaInfo
    loudness: dict[str, float] | None = None  # measured on the output, LUFS / dBTP
    warnings: list[str] = []

    def summary(self) -> dict[str, Any]:
        out = {
            "input": self.input, "output": self.output, "preset": self.preset, "path_taken": self.path_taken,
            "seconds": round(self.seconds, 3), "facts": self.info.summary(), "warnings": self.warnings,
        }  # fmt: skip
        if self.loudness is not None:
            out["loudness"] = self.loudness
        return out


def _default_timeout(duration: float | None) -> float:
    # Generous: 1080p x264 on 2 slow cores runs near 1x; a hung ffmpeg still ends.
    return 300.0 + 20.0 * (duration or 60.0)


# --------------------------------------------------------------------------------------------------- video


def _is_sequence_pattern(text: str) -> bool:
    return bool(re.search(r"%0?\d*d", text)) or any(c in text for c in "*?[")


InputKind = Literal["clip", "still", "sequence"]


def _probe_video_input(path: str) -> tuple[MediaInfo, dict[str, Any], InputKind]:
    """Probe a clip, a still image or an image sequence (printf pattern like img%03d.png, or a glob)."""
    if _is_sequence_pattern(Path(path).name):
        files = sorted(glob.glob(re.sub(r"%0?\d*d", "*", path)))
        if not files:
            raise MediaError(f"no image matches the sequence pattern {path}", hint="check the folder and pattern")
        opts: dict[str, Any] = {} if "%" in path else {"pattern_type": "glob"}
        return probe(files[0]), opts, "sequence"
    info = probe(path)
    video = info.video
    if video is None:
        raise MediaError(
            f"no video stream in {path}", hint="normalize video needs a clip or image; use 'normalize audio' for sound"
        )
    is_still = video.codec in _STILL_CODECS and (video.frames or 1) <= 1 and info.format_name.endswith("_pipe")
    return info, {}, "still" if is_still else "clip"


def _stream_mismatches(v: VideoStream, preset: VideoPreset) -> list[str]:
    """How a video stream differs from the preset: shared by the remux decision and the output check."""
    problems = []
    if v.codec != preset.codec:
        problems.append(f"codec {v.codec}")
    elif _PROFILE_RANK.get((v.profile or "").lower(), 99) > _PROFILE_RANK[preset.profile]:
        problems.append(f"profile {v.profile}")
    if v.pix_fmt != preset.pix_fmt:
        problems.append(f"pix_fmt {v.pix_fmt}")
    if (v.width, v.height) != (preset.width, preset.height) or v.rotation:
        problems.append(f"size {v.width}x{v.height} (rotation {v.rotation})")
    if not v.is_cfr or v.fps != preset.fps:
        problems.append(f"frame rate r={v.r_frame_rate} avg={v.avg_frame_rate}, want {preset.fps} CFR")
    if not v.square_pixels:
        problems.append(f"sample aspect ratio {v.sample_aspect_ratio}")
    if v.color_range == "pc" or v.is_hdr:
        problems.append(f"color range/transfer {v.color_range}/{v.color_transfer}")
    return problems


def _remux_blockers(info: MediaInfo, preset: VideoPreset) -> list[str]:
    """Why the input cannot simply be remuxed (empty list: it can)."""
    assert info.video is not None
    container = [] if any(n in info.format_name for n in ("mp4", "mov")) else [f"container {info.format_name}"]
    return container + _stream_mismatches(info.video, preset)


# ffprobe's color_space → the scale filter's names for it
_MATRICES = {"bt709": "bt709", "smpte170m": "smpte170m", "bt470bg": "bt470", "bt2020nc": "bt2020",
             "bt2020c": "bt2020", "smpte240m": "smpte240m", "fcc": "fcc"}  # fmt: skip


def color_matrix(v: VideoStream) -> dict[str, str]:
    """scale options that convert to the BT.709 the output is tagged with. Without them swscale converted RGB (stills,
    image sequences, GIFs) with BT.601: CSS #b61924 played back as (193, 38, 33). A YUV input is converted from its
    tagged matrix; untagged, from what its kind uses (JPEG: BT.601; video: BT.709 from 720 lines up, else BT.601)."""
    tagged = _MATRICES.get(v.color_space or "")
    guess = "bt601" if v.codec in ("mjpeg", "jpegls") or v.height < 720 else "bt709"
    return {"in_color_matrix": tagged or guess, "out_color_matrix": "bt709"}  # RGB input: `in` does not apply


def _video_filters(stream: Any, v: VideoStream, preset: VideoPreset, fit: Fit) -> Any:
    w, h = preset.width, preset.height
    matrix = color_matrix(v)
    # Drop frames before the expensive filters (a 60 fps phone clip halves the tone-map and scale work).
    stream = stream.filter("fps", fps=preset.fps)
    if v.is_hdr and preset.tone_map:
        stream = (
            stream.filter("zscale", t="linear", npl=100)
            .filter("format", "gbrpf32le")
            .filter("zscale", p="bt709")
            .filter("tonemap", tonemap="hable", desat=0)
            .filter("zscale", t="bt709", m="bt709", r="tv")
        )
    if not v.square_pixels:
        stream = stream.filter("scale", "trunc(iw*sar/2)*2", "ih").filter("setsar", 1)
    # out_range=tv: full-range (yuvj420p, pc) input becomes limited range, which every player expects.
    if fit == "cover":
        stream = stream.filter("scale", w, h, force_original_aspect_ratio="increase", out_range="tv", **matrix).filter(
            "crop", w, h
        )
    elif fit == "contain":
        stream = stream.filter(
            "scale", w, h, force_original_aspect_ratio="decrease", force_divisible_by=2, out_range="tv", **matrix
        ).filter("pad", w, h, "(ow-iw)/2", "(oh-ih)/2", color=preset.pad_color)
    else:
        stream = stream.filter("scale", w, h, out_range="tv", **matrix)
    return stream.filter("setsar", 1).filter("format", preset.pix_fmt)


def x264_options(preset: VideoPreset) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "c:v": "libx264", "preset": preset.x264_preset, "crf": preset.crf, "profile:v": preset.profile,
        "pix_fmt": preset.pix_fmt, "g": max(1, round(preset.gop_seconds * preset.fps)), "r": preset.fps,
        "color_range": "tv", "colorspace": "bt709", "color_primaries": "bt709", "color_trc": "bt709",
    }  # fmt: skip
    if preset.max_bitrate:
        opts["maxrate"] = preset.max_bitrate
        opts["bufsize"] = preset.max_bitrate
    return opts


def mp4_options() -> dict[str, Any]:
    # -map_metadata -1 drops input tags such as the GPS location phones write.
    return {"f": "mp4", "movflags": "+faststart", "map_metadata": -1, "map_chapters": -1}


def normalize_video(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    preset: str | VideoPreset = "background-1080p",
    fit: Fit | None = None,
    fps: int | None = None,
    duration: float | None = None,
    loop_to: float | None = None,
    keep_audio: bool = False,
    force_encode: bool = False,
    on_progress: ProgressCallback | None = None,
    timeout: float | None = None,
) -> NormalizeResult:
    """Turn any video, image or image sequence into an H.264 MP4 that meets `preset`.

    duration: exact output length (cut, or hold the last frame). loop_to: loop the input up to this length.
    A still image or sequence needs one of them. Compliant inputs are remuxed (stream copy) unless force_encode.
    """
    started = time.monotonic()
    vp = preset if isinstance(preset, VideoPreset) else load_video_preset(preset)
    if fps is not None:
        vp = vp.model_copy(update={"fps": fps})
    if keep_audio:
        vp = vp.model_copy(update={"audio": "aac"})
    fit = fit or vp.fit
    if duration is not None and loop_to is not None:
        raise ConfigError("give either --duration or --loop-to, not both")
    for name, value in (("duration", duration), ("loop-to", loop_to)):
        if value is not None and not (0 < value <= 24 * 3600):
            raise ConfigError(f"--{name} must be between 0 and 86400 seconds, got {value}")

    src = str(input)
    info, in_opts, kind = _probe_video_input(src)
    v = info.video
    assert v is not None
    target = duration if duration is not None else loop_to
    if kind == "still" and target is None:
        raise ConfigError(f"{src} is a still image", hint="give --duration SECONDS")
    warnings: list[str] = []
    if v.is_hdr and not vp.tone_map:
        warnings.append("HDR input kept without tone-mapping: colours will look washed out")

    # Expected frames: exact when a length is asked for, else from the input's duration.
    source_seconds = v.duration or info.duration
    if kind == "sequence":
        source_seconds = len(glob.glob(re.sub(r"%0?\d*d", "*", src))) / vp.fps
    if target is not None:
        frames: int | None = max(1, round(target * vp.fps))
    elif source_seconds:
        frames = None
    else:
        raise MediaError(f"cannot tell the duration of {src}", hint="give --duration SECONDS")
    out_seconds = frames / vp.fps if frames else float(source_seconds or 0)
    want_audio = vp.audio == "aac"

    reasons = _remux_blockers(info, vp)
    remux = not force_encode and not reasons and target is None and kind == "clip"
    if kind == "still":
        in_opts = {**in_opts, "loop": 1, "framerate": vp.fps}
    elif kind == "sequence":  # one image per frame at the target rate
        in_opts = {**in_opts, "framerate": vp.fps}
    if loop_to is not None and kind != "still":
        in_opts["stream_loop"] = -1

    inp = ffmpeg.input(src, **in_opts)
    out_opts: dict[str, Any] = mp4_options()
    if remux:
        vstream = inp[f"{v.index}"]
        out_opts["c:v"] = "copy"
    else:
        vstream = inp[f"{v.index}"]
        if duration is not None and source_seconds and duration > source_seconds and kind != "still":
            # Hold the last frame to reach the requested length.
            vstream = vstream.filter("tpad", stop_mode="clone", stop_duration=duration - source_seconds + 1)
        vstream = _video_filters(vstream, v, vp, fit)
        out_opts.update(x264_options(vp))
    if frames:
        out_opts["frames:v"] = frames
        out_opts["t"] = f"{out_seconds:.6f}"
    streams = [vstream]
    if want_audio:
        streams.append(_aac_stream(inp, info, vp, pad=target is not None))
        out_opts.update({"c:a": "aac", "b:a": vp.audio_bitrate, "ar": vp.audio_sample_rate, "ac": vp.audio_channels})
        if not frames:
            # Audio ends with the video: generated silence is endless, and a longer track would freeze the last frame.
            out_opts["t"] = f"{out_seconds:.6f}"

    with atomic_output(output, inputs=(Path(src),), suffixes=MP4_SUFFIXES) as tmp:
        stream = ffmpeg.output(*streams, str(tmp), **out_opts)
        _process.run_ffmpeg(
            stream,
            stage="remux" if remux else "encode",
            total=out_seconds or None,
            timeout=timeout or _default_timeout(out_seconds),
            on_progress=on_progress,
            what=f"ffmpeg ({src})",
        )
        out_info = probe(tmp, count_frames=True)
        expected_frames = frames if frames else (v.frames if remux else None)
        problems = check_video(out_info, vp, expected_frames=expected_frames, expected_seconds=out_seconds, path=tmp)
        if problems:
            raise OutputCheckError(
                f"output of {src} does not meet preset {vp.name}: " + "; ".join(problems),
                hint="the file was not kept; please report this with the input's ffprobe output",
            )
    if on_progress:
        on_progress(Progress(stage="done", done=out_seconds, total=out_seconds))
    final_info = out_info.model_copy(update={"path": str(output)})
    return NormalizeResult(
        input=src, output=str(output), preset=vp.name, path_taken="remux" if remux else "encode",
        seconds=time.monotonic() - started, info=final_info, warnings=warnings,
    )  # fmt: skip


def _aac_stream(inp: Any, info: MediaInfo, vp: VideoPreset, *, pad: bool) -> Any:
    """The kept audio track, or silence when the input has none (so every output has the same layout)."""
    if info.audio is None:
        layout = "mono" if vp.audio_channels == 1 else "stereo"
        return ffmpeg.input(f"anullsrc=r={vp.audio_sample_rate}:cl={layout}", f="lavfi").audio
    # async=1 stretches/fills timestamps so audio stays within a frame of the video; first_pts=0 aligns the start.
    stream = inp[f"{info.audio.index}"].filter("aresample", vp.audio_sample_rate, **{"async": 1, "first_pts": 0})
    if pad:
        stream = stream.filter("apad")
    return stream


def check_video(
    info: MediaInfo, preset: VideoPreset, *, expected_frames: int | None, expected_seconds: float | None, path: Path
) -> list[str]:
    """Problems of a produced video against its preset (empty list: it meets it)."""
    v = info.video
    if v is None:
        return ["no video stream"]
    problems = _stream_mismatches(v, preset)
    if expected_frames is not None and v.frames != expected_frames:
        problems.append(f"{v.frames} frames, want {expected_frames}")
    elif expected_seconds and v.duration and abs(v.duration - expected_seconds) > 1.5 / preset.fps:
        problems.append(f"duration {v.duration:.3f} s, want {expected_seconds:.3f} s")
    if not is_faststart(path):
        problems.append("moov atom after mdat (not faststart)")
    a = info.audio
    if preset.audio == "none" and a is not None:
        problems.append("has an audio track")
    if preset.audio == "aac":
        if a is None:
            problems.append("no audio track")
        elif (a.codec, a.sample_rate, a.channels) != ("aac", preset.audio_sample_rate, preset.audio_channels):
            problems.append(f"audio {a.codec} {a.sample_rate} Hz {a.channels} ch")
    return problems


# --------------------------------------------------------------------------------------------------- audio


def audio_format_for(output: str | os.PathLike[str]) -> Literal["wav", "mp3"]:
    ext = Path(output).suffix.lower()
    if ext not in (".wav", ".mp3"):
        raise ConfigError(
            f"audio output must end in .wav or .mp3, got {Path(output).name}",
            hint="Tavus accepts audio_url only as .wav or .mp3",
        )
    return "wav" if ext == ".wav" else "mp3"


def _loudness_target(preset: AudioPreset, loudness: float | bool | None) -> LoudnessTarget | None:
    if loudness is None or loudness is True:
        return preset.loudness if loudness is None else (preset.loudness or LoudnessTarget())
    if loudness is False:
        return None
    base = preset.loudness or LoudnessTarget()
    return base.model_copy(update={"integrated": float(loudness)})


def _audio_encoder_options(preset: AudioPreset) -> dict[str, Any]:
    opts: dict[str, Any] = {"ar": preset.sample_rate, "ac": preset.channels, "map_metadata": -1}
    if preset.format == "wav":
        opts.update({"f": "wav", "c:a": "pcm_s16le"})
    else:
        opts.update({"f": "mp3", "c:a": "libmp3lame", "b:a": preset.bitrate or "192k", "write_id3v2": 0})
    return opts


def _layout(channels: int) -> str:
    return "mono" if channels == 1 else "stereo"


def measure_loudness(
    path: str | os.PathLike[str], *, channels: int | None = None, timeout: float = 600.0,
    on_progress: ProgressCallback | None = None, total: float | None = None,
) -> dict[str, float]:  # fmt: skip
    """Integrated loudness (input_i, LUFS), true peak (input_tp, dBTP), range (input_lra) and gate (input_thresh).

    Measured with ffmpeg's `ebur128=peak=true` (EBU R128 / ITU BS.1770, true peak 4x oversampled): the same meter an
    independent check uses, and about 5x faster than `loudnorm`'s measuring pass. `channels` downmixes first (the
    loudness of the mono file we will write, not of the stereo input).
    """
    stream = ffmpeg.input(str(path))["a:0"]
    if channels:
        stream = stream.filter("aformat", channel_layouts=_layout(channels))
    result = _process.run_ffmpeg(
        ffmpeg.output(_meter(stream), "-", f="null"), stage="measure loudness", total=total, timeout=timeout,
        on_progress=on_progress, what=f"loudness measurement ({path})", loglevel="info",
    )  # fmt: skip
    return _ebur128_summary(result.stderr_lines, path)


def _meter(stream: Any) -> Any:
    """ebur128 with true peak; its per-frame lines are logged only at -v verbose, the summary at info."""
    return stream.filter("ebur128", peak="true", framelog="verbose")


def _ebur128_summary(stderr_lines: list[str], path: str | os.PathLike[str]) -> dict[str, float]:
    text = "\n".join(stderr_lines)
    summary = text[text.rfind("Summary:") :]
    values = {}
    for key, label in (("input_i", "I"), ("input_thresh", "Threshold"), ("input_lra", "LRA"), ("input_tp", "Peak")):
        match = re.search(rf"^\s*{label}:\s*(-?(?:[\d.]+|inf))", summary, re.M)
        if match is None:
            raise MediaError(f"could not measure the loudness of {path}", hint="check that the file has audible audio")
        values[key] = float(match.group(1))
    return values


_MAX_PASSES = 3  # encodes at most: the first, then corrections of what the encoded file measured
_AIM = 0.4  # LU: stop correcting within this (the promise is ±0.5 LU, measured on the encoded file)
_TOLERANCE = 0.5


def _loudness_chain(stream: Any, ap: AudioPreset, gain_db: float, limit_db: float | None) -> Any:
    """Gain, then (when the peaks need it) a lookahead limiter at 4x the output rate, so it catches true peaks."""
    if abs(gain_db) >= 0.01:
        stream = stream.filter("volume", f"{gain_db:.2f}dB")
    if limit_db is not None:
        stream = stream.filter("aresample", min(4 * ap.sample_rate, 192000), resampler="soxr")
        stream = stream.filter("alimiter", limit=f"{10 ** (limit_db / 20):.5f}", attack=5, release=50, level=0)
    return stream.filter("aresample", ap.sample_rate, resampler="soxr")


def normalize_audio(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    preset: str | AudioPreset | None = None,
    loudness: float | bool | None = None,
    force_encode: bool = False,
    on_progress: ProgressCallback | None = None,
    timeout: float | None = None,
) -> NormalizeResult:
    """Turn any audio (or a video's audio track) into a .wav or .mp3 that meets the preset.

    loudness: None = the preset's target, False = off, a number = that integrated LUFS target.
    Measure (ebur128), then gain — plus a true-peak limiter when the peaks leave less headroom than the gain needs —
    and measure the encoded file itself; a residual above 0.4 LU or a peak over the ceiling is corrected in up to two
    more passes. A compliant input already on target is copied.
    """
    started = time.monotonic()
    fmt = audio_format_for(output)
    ap = preset if isinstance(preset, AudioPreset) else load_audio_preset(preset or f"audio-{fmt}")
    if ap.format != fmt:
        raise ConfigError(
            f"preset {ap.name} writes .{ap.format} but the output is {Path(output).name}",
            hint=f"name the output .{ap.format} or use preset audio-{fmt}",
        )
    target = _loudness_target(ap, loudness)
    src = str(check_input_file(input))  # before the measuring ffmpeg opens it: a FIFO would block that open
    with ThreadPoolExecutor(1, thread_name_prefix="assetprep-measure") as pool:
        # The loudness of the input is measured while it is probed: two short processes at once, not one after the
        # other (start-up is most of their time on a short clip). A file that is not media fails both; the probe
        # says why.
        measuring = None
        if target is not None:
            measuring = pool.submit(
                measure_loudness, src, channels=ap.channels, timeout=timeout or _default_timeout(None)
            )
        info = probe(src)
        a = info.audio
        if a is None:
            raise MediaError(f"no audio stream in {src}", hint="pass a recording that contains sound")
        measured = measuring.result() if measuring is not None else None
    seconds = a.duration or info.duration or 0.0
    timeout = timeout or _default_timeout(seconds)
    warnings = _tavus_audio_warnings(seconds)

    def stage(offset: float, scale: float) -> ProgressCallback:
        def report(p: Progress) -> None:
            if on_progress:
                done = (offset + p.done * scale) if seconds else p.done
                on_progress(Progress(stage=p.stage, done=done, total=seconds or None, speed=p.speed))

        return report

    fmt_ok = ("wav" in info.format_name) if fmt == "wav" else info.format_name == "mp3"
    compliant = fmt_ok and (a.codec, a.sample_rate, a.channels) == (ap.codec, ap.sample_rate, ap.channels)
    if measured is not None and (measured["input_i"] <= -70 or not math.isfinite(measured["input_i"])):
        # Integrated loudness needs 0.4 s blocks above the gate: a short clip has none even when loud.
        audible = measured["input_tp"] > -60
        warnings.append(
            "the audio is too short to measure its loudness (under 0.4 s); loudness normalization was skipped"
            if audible
            else "the audio is silent; loudness normalization was skipped"
        )
        target = None
    on_target = measured is not None and target is not None and _loudness_ok(measured, target)
    remux = compliant and not force_encode and (target is None or on_target)
    if remux and target is None and measured is not None:
        measured = None  # silent/short: nothing to report
    out_opts = _audio_encoder_options(ap)
    out_info: MediaInfo | None = None
    with atomic_output(output, inputs=(Path(src),)) as tmp:
        if remux or target is None or measured is None:  # a copy, or format only: one ffmpeg run
            stream = ffmpeg.input(src)[f"{a.index}"]
            if remux:
                out_opts["c:a"] = "copy"
                out_opts.pop("b:a", None)
            else:
                stream = stream.filter("aformat", channel_layouts=_layout(ap.channels))
                stream = stream.filter("aresample", ap.sample_rate, resampler="soxr")
            _process.run_ffmpeg(ffmpeg.output(stream, str(tmp), **out_opts), stage="remux" if remux else "encode",
                                total=seconds or None, timeout=timeout, on_progress=stage(0, 1),
                                what=f"ffmpeg ({src})")  # fmt: skip
        else:
            measured, note, out_info = _encode_on_target(src, a.index, tmp, ap, target, measured, out_opts,
                                                         seconds=seconds, timeout=timeout, stage=stage)  # fmt: skip
            if note:
                warnings.append(note)
        out_info = out_info or _wav_info(tmp) or probe(tmp)
        problems = check_audio(out_info, ap, expected_seconds=seconds)
        if problems:
            raise OutputCheckError(
                f"output of {src} does not meet preset {ap.name}: " + "; ".join(problems),
                hint="the file was not kept; please report this with the input's ffprobe output",
            )
    loud = None
    if measured is not None and target is not None:
        loud = {"integrated": measured["input_i"], "true_peak": measured["input_tp"]}
    return NormalizeResult(
        input=src, output=str(output), preset=ap.name, path_taken="remux" if remux else "encode",
        seconds=time.monotonic() - started, info=out_info.model_copy(update={"path": str(output)}),
        loudness=loud, warnings=warnings,
    )  # fmt: skip


def _wav_info(path: Path) -> MediaInfo | None:
    """The facts check_audio needs, from a PCM WAV's header (stdlib `wave`): one ffprobe process less per file.
    None when the header is not plain PCM; the caller then probes."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width, frames = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
    except (wave.Error, EOFError, OSError):
        return None
    codec = {1: "pcm_u8", 2: "pcm_s16le", 3: "pcm_s24le", 4: "pcm_s32le"}.get(width)
    if codec is None or not rate:
        return None
    seconds = frames / rate
    stream = AudioStream(index=0, codec=codec, sample_rate=rate, channels=channels, channel_layout=_layout(channels),
                         duration=seconds, bit_rate=rate * channels * width * 8)  # fmt: skip
    return MediaInfo(path=str(path), format_name="wav", duration=seconds, size=path.stat().st_size,
                     bit_rate=rate * channels * width * 8, audio_streams=(stream,))  # fmt: skip


def _loudness_ok(m: dict[str, float], target: LoudnessTarget, tolerance: float = _TOLERANCE) -> bool:
    return abs(m["input_i"] - target.integrated) <= tolerance and m["input_tp"] <= target.true_peak


def _encode_on_target(
    src: str, index: int, tmp: Path, ap: AudioPreset, target: LoudnessTarget, measured: dict[str, float],
    out_opts: dict[str, Any], *, seconds: float, timeout: float, stage: Callable[[float, float], ProgressCallback],
) -> tuple[dict[str, float], str | None, MediaInfo | None]:  # fmt: skip
    """Encode `src` into `tmp` on the loudness target: the encoded file's measurement, a warning or None, and its
    probed facts when they were read on the way (MP3).

    Each pass is measured after the encoder (an MP3's true peak rises in encoding), and the next pass corrects the
    measured residual. The best pass is kept; a target out of reach is a warning with the numbers.
    """
    ceiling = target.true_peak
    margin = 0.5 if ap.format == "mp3" else 0.3  # headroom for what resampling and the encoder add to the peaks
    gain = target.integrated - measured["input_i"]
    limit: float | None = None if measured["input_tp"] + gain <= ceiling - margin else ceiling - margin
    best: tuple[float, Path, dict[str, float], MediaInfo | None] | None = None
    passes: list[Path] = []
    previous: tuple[float, float] | None = None  # (gain, loudness) of the pass before
    try:
        for n in range(_MAX_PASSES):
            # Named like the temp output itself (.NAME.PID-….part), so a kill -9 leaves nothing the next run
            # to this output does not sweep.
            out = tmp.with_name(f"{tmp.name.removesuffix('.part')}.pass{n}.part")
            passes.append(out)
            stream = ffmpeg.input(src)[f"{index}"].filter("aformat", channel_layouts=_layout(ap.channels))
            stream = _loudness_chain(stream, ap, gain, limit)
            share = 1 / (3 * (n + 1))
            info: MediaInfo | None = None
            if ap.format == "wav":
                # PCM is what the meter sees: measure the samples on their way to the file, in the same process.
                split = stream.filter_multi_output("asplit")
                cmd = ffmpeg.merge_outputs(
                    ffmpeg.output(split[0], str(out), **out_opts), ffmpeg.output(_meter(split[1]), "-", f="null")
                )
                result = _process.run_ffmpeg(cmd, stage="encode", total=seconds or None, timeout=timeout,
                                             loglevel="info", on_progress=stage(seconds / 3, 2 * share),
                                             what=f"ffmpeg ({src})")  # fmt: skip
                got = _ebur128_summary(result.stderr_lines, out)
            else:
                # An MP3's loudness and true peak change in the encoder: measure the encoded file.
                cmd = ffmpeg.output(stream, str(out), **out_opts)
                _process.run_ffmpeg(cmd, stage="encode", total=seconds or None, timeout=timeout,
                                    on_progress=stage(seconds / 3, share), what=f"ffmpeg ({src})")  # fmt: skip
                with ThreadPoolExecutor(1, thread_name_prefix="assetprep-probe") as pool:
                    probing = pool.submit(probe, out)  # the output check's facts, read while the meter runs
                    got = measure_loudness(out, timeout=timeout, on_progress=stage(2 * seconds / 3, share),
                                           total=seconds)  # fmt: skip
                    info = probing.result()
            error, over = got["input_i"] - target.integrated, got["input_tp"] - ceiling
            miss = max(abs(error) - _AIM, 0.0) + max(over, 0.0) * 2  # a peak over the ceiling counts double
            if best is None or miss < best[0]:
                best = (miss, out, got, info)
            if abs(error) <= _AIM and over <= 0:
                break
            # Under a limiter, loudness grows slower than the gain (the peaks are held): step by the slope that the
            # last two passes measured (secant), or assume 0.7 dB/dB after the first.
            slope = 1.0 if limit is None else 0.7
            if previous is not None and abs(gain - previous[0]) > 0.05:
                slope = min(1.0, max(0.2, (got["input_i"] - previous[1]) / (gain - previous[0])))
            previous = (gain, got["input_i"])
            gain -= error / slope
            if over > 0:
                limit = (ceiling - margin) if limit is None else limit - over - 0.1
            elif limit is None and measured["input_tp"] + gain > ceiling - margin:
                limit = ceiling - margin  # the corrected gain would push the peaks over
            if limit is not None and limit < -24.0:  # alimiter's floor: more would be mostly limiter, not speech
                break
        assert best is not None
        os.replace(best[1], tmp)
        got, info = best[2], best[3]
    finally:
        for p in passes:
            p.unlink(missing_ok=True)
    if _loudness_ok(got, target):
        return got, None, info
    return (
        got,
        (
            f"loudness {got['input_i']:.1f} LUFS / {got['input_tp']:.1f} dBTP after {len(passes)} passes, target "
            f"{target.integrated:.1f} ±{_TOLERANCE} LUFS at or below {ceiling:.1f} dBTP (the input measured "
            f"{measured['input_i']:.1f} LUFS / {measured['input_tp']:.1f} dBTP); the closest pass was kept"
        ),
        info,
    )


def tavus_audio_problem(seconds: float) -> str | None:
    """Why Tavus would refuse audio of this length (None when it is within its 3 s to 10 min)."""
    if seconds < TAVUS_AUDIO_MIN_SECONDS:
        return f"audio is {seconds:.2f} s long; Tavus rejects audio shorter than 3 s (audio_file_min_duration)"
    if seconds > TAVUS_AUDIO_MAX_SECONDS:
        return f"audio is {seconds:.0f} s long; Tavus rejects audio longer than 10 min (audio_file_max_duration)"
    return None


def _tavus_audio_warnings(seconds: float) -> list[str]:
    problem = tavus_audio_problem(seconds)
    return [problem] if problem else []


def check_audio(info: MediaInfo, preset: AudioPreset, *, expected_seconds: float | None) -> list[str]:
    """Problems of a produced audio file against its preset (empty list: it meets it)."""
    a = info.audio
    if a is None:
        return ["no audio stream"]
    problems = []
    if info.video is not None:
        problems.append("has a video stream")
    if (a.codec, a.sample_rate, a.channels) != (preset.codec, preset.sample_rate, preset.channels):
        problems.append(
            f"{a.codec} {a.sample_rate} Hz {a.channels} ch, want {preset.codec} {preset.sample_rate} Hz "
            f"{preset.channels} ch"
        )
    got = a.duration or info.duration
    # Catches truncation, not codec framing: MP3 encoder delay and Opus pre-skip shift lengths by up to ~90 ms.
    if expected_seconds and got and abs(got - expected_seconds) > 0.1:
        problems.append(f"duration {got:.3f} s, want {expected_seconds:.3f} s")
    if info.size > TAVUS_AUDIO_MAX_BYTES:
        problems.append(f"{info.size} bytes, above Tavus's 750 MB limit")
    return problems
