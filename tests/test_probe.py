"""probe() on the real clips whose quirks break naive code."""

from __future__ import annotations

import pytest
from _media import ffmpeg

from assetprep import MediaError, is_faststart, probe


def test_browser_recording_without_duration(media_dir):
    info = probe(media_dir / "chrome-recording-vp9-opus-vfr-noduration.webm")
    v = info.video
    assert v.codec == "vp9" and (v.width, v.height) == (1280, 720)
    assert info.duration == pytest.approx(4.93, abs=0.05)  # from packets: the header has none
    assert v.frames == 74
    assert info.audio.codec == "opus" and info.audio.sample_rate == 48000
    # Without stream durations the packets are still read when the file has no duration at all...
    assert probe(media_dir / "chrome-recording-vp9-opus-vfr-noduration.webm", stream_duration=False).duration == (
        pytest.approx(4.93, abs=0.05)
    )


def test_a_webm_with_a_file_duration_is_not_read_through_without_stream_durations(tmp_path):
    """...but not when the file has one (the page-video copy needs no more: a second ffprobe, 0.13-0.18 s)."""
    clip = tmp_path / "hero.webm"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=30:d=2", "-c:v", "libvpx-vp9", "-deadline", "realtime", str(clip))
    quick, full = probe(clip, stream_duration=False), probe(clip)
    assert quick.duration == pytest.approx(2.0, abs=0.05) and quick.video.duration is None
    assert full.video.duration == pytest.approx(2.0, abs=0.05) and full.video.frames == 60


def test_audio_first_rotated_phone_clip(media_dir):
    info = probe(media_dir / "iphone4s-h264-rot90-audiofirst.mov")
    assert info.audio.index == 0 and info.video.index == 1  # streams[0] is audio
    v = info.video
    assert (v.coded_width, v.coded_height, v.rotation) == (568, 320, -90)
    assert (v.width, v.height) == (320, 568)
    assert not v.is_cfr and v.r_frame_rate == "30000/1001"
    assert "location" in " ".join(info.tags)  # the GPS tag normalization must drop


def test_hdr_and_data_tracks(media_dir):
    info = probe(media_dir / "iphone12-hevc10-hlg-dovi-rot90.mov")
    v = info.video
    assert (v.codec, v.pix_fmt, v.color_transfer, v.is_hdr) == ("hevc", "yuv420p10le", "arib-std-b67", True)
    assert info.other_streams == 3
    assert (v.width, v.height) == (1080, 1920)


def test_full_range_and_multichannel(media_dir):
    assert probe(media_dir / "android-4k60-yuvj420p-rot90.mp4").video.pix_fmt == "yuvj420p"
    assert probe(media_dir / "bbb-h264-aac-5.1ch.mp4").audio.channels == 6


def test_count_frames(media_dir):
    assert probe(media_dir / "cockatoo-h264-yuv444p-mp3.mp4", count_frames=True).video.frames == 280


def test_faststart_detection(tmp_path):
    plain, fast = tmp_path / "plain.mp4", tmp_path / "fast.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64:d=1", "-c:v", "libx264", str(plain))
    ffmpeg("-i", str(plain), "-c", "copy", "-movflags", "+faststart", str(fast))
    assert not is_faststart(plain) and is_faststart(fast)


def test_not_media(tmp_path):
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(MediaError, match="not a media file"):
        probe(bad)
