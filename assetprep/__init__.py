"""assetprep: prepare and publish videos for the Tavus Generate Video API.

The public surface is re-exported here; modules starting with an underscore are private.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    AssetprepError,
    ConfigError,
    MediaError,
    OutputCheckError,
    OutputError,
    PreflightError,
    PresetError,
    ProcessError,
    ProcessTimeoutError,
    StorageError,
    ToolMissingError,
)
from .normalize import NormalizeResult, check_audio, check_video, measure_loudness, normalize_audio, normalize_video
from .presets import AudioPreset, LoudnessTarget, VideoPreset, list_presets, load_preset
from .probe import AudioStream, MediaInfo, VideoStream, is_faststart, probe
from .progress import Progress, ProgressCallback

__all__ = [
    "AssetprepError",
    "AudioPreset",
    "AudioStream",
    "ConfigError",
    "LoudnessTarget",
    "MediaError",
    "MediaInfo",
    "NormalizeResult",
    "OutputCheckError",
    "OutputError",
    "PreflightError",
    "PresetError",
    "ProcessError",
    "ProcessTimeoutError",
    "Progress",
    "ProgressCallback",
    "StorageError",
    "ToolMissingError",
    "VideoPreset",
    "VideoStream",
    "__version__",
    "check_audio",
    "check_video",
    "is_faststart",
    "list_presets",
    "load_preset",
    "measure_loudness",
    "normalize_audio",
    "normalize_video",
    "probe",
]
