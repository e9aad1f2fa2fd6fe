"""assetprep: prepare and publish videos for the Tavus Generate Video API.

The public surface is re-exported here; modules starting with an underscore are private.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    ApiValidationError,
    AssetprepError,
    AuthenticationError,
    ConfigError,
    DownloadError,
    InvalidRequestError,
    MediaError,
    NotFoundError,
    OutcomeUnknownError,
    OutputCheckError,
    OutputError,
    PreflightError,
    PresetError,
    ProcessError,
    ProcessTimeoutError,
    RateLimitError,
    ServerError,
    StorageError,
    TavusError,
    ToolMissingError,
    VideoFailedError,
    WaitTimeoutError,
)
from .normalize import NormalizeResult, check_audio, check_video, measure_loudness, normalize_audio, normalize_video
from .presets import AudioPreset, LoudnessTarget, VideoPreset, list_presets, load_preset
from .probe import AudioStream, MediaInfo, VideoStream, is_faststart, probe
from .progress import Progress, ProgressCallback
from .publish import PublishOptions, PublishResult, publish
from .record import RecordError, RecordOptions, RecordResult, record
from .tavus import GenerateVideoRequest, Replica, TavusClient, Video

__all__ = [
    "ApiValidationError",
    "AssetprepError",
    "AudioPreset",
    "AudioStream",
    "AuthenticationError",
    "ConfigError",
    "DownloadError",
    "GenerateVideoRequest",
    "InvalidRequestError",
    "LoudnessTarget",
    "MediaError",
    "MediaInfo",
    "NormalizeResult",
    "NotFoundError",
    "OutcomeUnknownError",
    "OutputCheckError",
    "OutputError",
    "PreflightError",
    "PresetError",
    "ProcessError",
    "ProcessTimeoutError",
    "Progress",
    "ProgressCallback",
    "PublishOptions",
    "PublishResult",
    "RateLimitError",
    "RecordError",
    "RecordOptions",
    "RecordResult",
    "Replica",
    "ServerError",
    "StorageError",
    "TavusClient",
    "TavusError",
    "ToolMissingError",
    "Video",
    "VideoFailedError",
    "VideoPreset",
    "VideoStream",
    "WaitTimeoutError",
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
    "publish",
    "record",
]
