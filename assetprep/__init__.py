"""assetprep: prepare and publish videos for the Tavus Generate Video API.

The public surface is re-exported here; modules starting with an underscore are private.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

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

# Everything but the errors is imported on first use (PEP 562): `assetprep normalize audio` should not pay for
# boto3, httpx and Playwright at start-up (that was 0.85 s of a 2 s command).
_LAZY = {
    "normalize": ("NormalizeResult", "check_audio", "check_video", "measure_loudness", "normalize_audio",
                  "normalize_video"),
    "presets": ("AudioPreset", "LoudnessTarget", "VideoPreset", "list_presets", "load_preset"),
    "probe": ("AudioStream", "MediaInfo", "VideoStream", "is_faststart", "probe"),
    "progress": ("Progress", "ProgressCallback"),
    "publish": ("PublishOptions", "PublishResult", "publish"),
    "record": ("RecordError", "RecordOptions", "RecordResult", "record"),
    "tavus": ("GenerateVideoRequest", "Replica", "TavusClient", "Video"),
}  # fmt: skip
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

if TYPE_CHECKING:
    from .normalize import NormalizeResult, check_audio, check_video, measure_loudness, normalize_audio, normalize_video
    from .presets import AudioPreset, LoudnessTarget, VideoPreset, list_presets, load_preset
    from .probe import AudioStream, MediaInfo, VideoStream, is_faststart, probe
    from .progress import Progress, ProgressCallback
    from .publish import PublishOptions, PublishResult, publish
    from .record import RecordError, RecordOptions, RecordResult, record
    from .tavus import GenerateVideoRequest, Replica, TavusClient, Video


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'assetprep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Importing a submodule sets it as an attribute of the package; where a re-exported function has the module's
    name (probe, record, publish), the function keeps the name, as it did when these were imported eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _WHERE:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
