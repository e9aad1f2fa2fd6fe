"""Presets: strict models of what an output must be, shipped as data files and loadable from the user's own files."""

from __future__ import annotations

import json
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from ._files import not_text, read_text_file
from .errors import PresetError

X264Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]
_BITRATE = re.compile(r"^\d+(\.\d+)?[kKmM]?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoudnessTarget(_Strict):
    """EBU R128 target for two-pass loudness normalization."""

    integrated: float = Field(-16.0, ge=-70, le=-5, description="integrated loudness, LUFS")
    true_peak: float = Field(-1.5, ge=-9, le=0, description="maximum true peak, dBTP")
    lra: float = Field(11.0, ge=1, le=50, description="loudness range target, LU")


class VideoPreset(_Strict):
    """An H.264 MP4 that Tavus accepts as background_source_url."""

    kind: Literal["video"]
    name: str = ""
    description: str = ""
    width: int = Field(ge=16, le=7680)
    height: int = Field(ge=16, le=4320)
    fps: int = Field(ge=1, le=120)
    codec: Literal["h264"] = "h264"
    profile: Literal["baseline", "main", "high"] = "high"
    pix_fmt: Literal["yuv420p"] = "yuv420p"
    crf: int = Field(20, ge=0, le=51)
    x264_preset: X264Preset = "fast"
    gop_seconds: float = Field(2.0, gt=0, le=20)
    max_bitrate: str | None = None
    fit: Literal["cover", "contain", "stretch"] = "cover"
    pad_color: str = "black"
    tone_map: bool = True
    audio: Literal["none", "aac"] = "none"
    audio_bitrate: str = "192k"
    audio_sample_rate: int = Field(48000, ge=8000, le=96000)
    audio_channels: int = Field(2, ge=1, le=2)

    @field_validator("width", "height")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (yuv420p needs even dimensions)")
        return value

    @field_validator("max_bitrate", "audio_bitrate")
    @classmethod
    def _bitrate(cls, value: str | None) -> str | None:
        if value is not None and not _BITRATE.match(value):
            raise ValueError("must look like 192k or 8M")
        return value


class AudioPreset(_Strict):
    """A .wav or .mp3 that Tavus accepts as audio_url."""

    kind: Literal["audio"]
    name: str = ""
    description: str = ""
    format: Literal["wav", "mp3"]
    sample_rate: int = Field(ge=8000, le=96000)
    channels: int = Field(1, ge=1, le=2)
    bitrate: str | None = None
    loudness: LoudnessTarget | None = None

    @field_validator("bitrate")
    @classmethod
    def _bitrate(cls, value: str | None) -> str | None:
        if value is not None and not _BITRATE.match(value):
            raise ValueError("must look like 192k")
        return value

    @property
    def codec(self) -> str:
        return "pcm_s16le" if self.format == "wav" else "mp3"


Preset = Annotated[VideoPreset | AudioPreset, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[VideoPreset | AudioPreset] = TypeAdapter(Preset)


def builtin_dir() -> Path:
    """Where the built-in presets live: inside the wheel, or the repo's presets/ in a source checkout."""
    packaged = Path(str(resources.files("assetprep"))) / "_presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "presets"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.toml"))


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the field path, e.g. `loudness.integrated: ...`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"] if x not in ("video", "audio")) or "(top level)"
        msg = "unknown key (check its spelling)" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "value_error":  # our own validators' words, without pydantic's "Value error, "
            msg = str(err["ctx"]["error"])
        parts.append(f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = read_text_file(path)
    except OSError as exc:
        raise PresetError(f"cannot read preset file {path}: {exc.strerror}", hint="check the path") from None
    except UnicodeDecodeError as exc:
        raise PresetError(f"preset file {not_text(path, exc)}", hint="save it as UTF-8") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise PresetError(f"preset file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise PresetError(f"preset file {path} must hold a table of settings")
    return data


def parse_preset(data: dict[str, Any], *, name: str, source: str) -> VideoPreset | AudioPreset:
    """Validate a preset dict; errors name the source and the field path."""
    try:
        preset = _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise PresetError(
            format_validation_error(exc, f"invalid preset {source}"),
            hint="see 'assetprep presets show background-1080p' for a valid example",
        ) from None
    return preset if preset.name else preset.model_copy(update={"name": name})


def load_preset(name_or_path: str | Path) -> VideoPreset | AudioPreset:
    """A built-in preset by name, or a user preset file (.toml or .json) by path."""
    text = str(name_or_path)
    builtin = builtin_dir() / f"{text}.toml"
    if "/" not in text and "." not in text and builtin.is_file():
        path = builtin
    else:
        path = Path(text)
        if not path.is_file():
            raise PresetError(
                f"unknown preset '{text}'",
                hint=f"use one of {', '.join(builtin_names())} or the path of a .toml/.json preset file",
            )
    return parse_preset(_read_file(path), name=path.stem, source=str(path))


def load_video_preset(name_or_path: str | Path) -> VideoPreset:
    preset = load_preset(name_or_path)
    if not isinstance(preset, VideoPreset):
        raise PresetError(f"preset '{name_or_path}' is an audio preset", hint="use a video preset: background-1080p")
    return preset


def load_audio_preset(name_or_path: str | Path) -> AudioPreset:
    preset = load_preset(name_or_path)
    if not isinstance(preset, AudioPreset):
        raise PresetError(f"preset '{name_or_path}' is a video preset", hint="use audio-wav or audio-mp3")
    return preset


def list_presets() -> list[VideoPreset | AudioPreset]:
    return [load_preset(name) for name in builtin_names()]
