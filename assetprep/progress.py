"""Progress reports: the library calls a callback, the CLI draws the bar. The library never prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One progress report of a stage (normalize, loudness pass, upload, record...)."""

    stage: str
    done: float
    total: float | None = None
    unit: str = "s"
    speed: float | None = None  # e.g. 2.5 = 2.5x real time for ffmpeg, bytes/s for uploads

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))


ProgressCallback = Callable[[Progress], None]
