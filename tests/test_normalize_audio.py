"""normalize_audio: format, rate, channels and loudness measured on the output (ebur128, independent of loudnorm)."""

from __future__ import annotations

import subprocess

import pytest
from _media import ffmpeg, integrated_loudness, streams

from assetprep import ConfigError, MediaError, normalize_audio


def audio_fact(path):
    (a,) = streams(path, "a")
    return a["codec_name"], int(a["sample_rate"]), a["channels"]


def audio_md5(path) -> str:
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a", "-c", "copy", "-f", "md5", "-"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip


@pytest.fixture(scope="session")
def quiet_stereo(gen):
    # 16 kHz stereo at roughly -35 LUFS: needs resampling, downmixing and about +19 dB of gain.
    return gen("quiet.wav", "-f", "lavfi", "-i", "sine=f=300:r=16000:d=6", "-f", "lavfi",
               "-i", "sine=f=500:r=16000:d=6", "-filter_complex", "[0][1]amerge,volume=0.02", "-ac", "2")  # fmt: skip


def test_wav_preset_resamples_downmixes_and_hits_loudness(quiet_stereo, tmp_path):
    assert integrated_loudness(quiet_stereo) < -30
    out = tmp_path / "o.wav"
    result = normalize_audio(quiet_stereo, out)
    assert audio_fact(out) == ("pcm_s16le", 48000, 1)
    assert abs(integrated_loudness(out) + 16) <= 1.0
    assert result.path_taken == "encode" and result.loudness is not None
    assert abs(float(streams(out, "a")[0]["duration"]) - 6.0) < 0.02


def test_mp3_preset(quiet_stereo, tmp_path):
    out = tmp_path / "o.mp3"
    normalize_audio(quiet_stereo, out)
    (a,) = streams(out, "a")
    assert (a["codec_name"], int(a["sample_rate"]), a["channels"]) == ("mp3", 44100, 1)
    assert 180_000 <= int(a["bit_rate"]) <= 200_000
    assert abs(integrated_loudness(out) + 16) <= 1.0


def test_custom_loudness_target_and_off(quiet_stereo, gen, tmp_path):
    normalize_audio(quiet_stereo, tmp_path / "a.wav", loudness=-23)
    assert abs(integrated_loudness(tmp_path / "a.wav") + 23) <= 1.0
    mono = gen("mono16k.wav", "-f", "lavfi", "-i", "sine=f=300:r=16000:d=5", "-af", "volume=0.05")
    before = integrated_loudness(mono)
    result = normalize_audio(mono, tmp_path / "b.wav", loudness=False)
    assert result.path_taken == "encode" and result.loudness is None
    assert audio_fact(tmp_path / "b.wav") == ("pcm_s16le", 48000, 1)
    assert abs(integrated_loudness(tmp_path / "b.wav") - before) <= 0.2  # only resampled: no gain


@pytest.mark.parametrize(("ext", "codec_args"), [("m4a", ["-c:a", "aac"]), ("ogg", ["-c:a", "libvorbis"]),
                                                 ("flac", ["-c:a", "flac"]), ("mp4", ["-c:a", "aac"])])  # fmt: skip
def test_real_speech_in_other_containers(media_dir, tmp_path, ext, codec_args):
    src = tmp_path / f"speech.{ext}"
    extra = ["-f", "lavfi", "-i", "color=s=64x64:r=5", "-shortest", "-c:v", "libx264"] if ext == "mp4" else []
    ffmpeg("-i", str(media_dir / "speech-jfk-16k-mono.wav"), *extra, *codec_args, str(src))
    out = tmp_path / "o.wav"
    normalize_audio(src, out)
    assert audio_fact(out) == ("pcm_s16le", 48000, 1)
    assert abs(integrated_loudness(out) + 16) <= 1.0
    assert abs(float(streams(out, "a")[0]["duration"]) - 11.0) < 0.1


@pytest.mark.parametrize("name", ["retalking-audio1-44k-stereo.wav", "speech-jfk-16k-mono.mp3",
                                  "bbb-h264-aac-5.1ch.mp4", "bird-mpeg4asp-mp3.avi"])  # fmt: skip
def test_real_recordings(media_dir, tmp_path, name):
    out = tmp_path / "o.mp3"
    result = normalize_audio(media_dir / name, out)
    assert audio_fact(out) == ("mp3", 44100, 1)
    assert abs(integrated_loudness(out) + 16) <= 1.0
    assert result.warnings == []


def test_compliant_input_is_remuxed(tmp_path, gen):
    src = gen("ok.wav", "-f", "lavfi", "-i", "sine=f=440:r=48000:d=4", "-c:a", "pcm_s16le", "-ac", "1",
              "-metadata", "artist=someone")  # fmt: skip
    out = tmp_path / "o.wav"
    result = normalize_audio(src, out, loudness=False)
    assert result.path_taken == "remux"
    assert audio_md5(out) == audio_md5(src)
    assert "artist" not in result.info.tags


def test_short_audio_warns_about_tavus_minimum(media_dir, tmp_path):
    result = normalize_audio(media_dir / "iphone4s-h264-rot90-audiofirst.mov", tmp_path / "o.wav")
    assert any("shorter than 3 s" in w for w in result.warnings)


def test_silent_audio_is_not_amplified(media_dir, tmp_path):
    result = normalize_audio(media_dir / "chrome-recording-vp9-opus-vfr-noduration.webm", tmp_path / "o.wav")
    assert any("silent" in w for w in result.warnings)
    assert audio_fact(tmp_path / "o.wav") == ("pcm_s16le", 48000, 1)


def test_bad_requests(gen, tmp_path):
    video_only = gen("v.mp4", "-f", "lavfi", "-i", "testsrc2=size=64x64:d=1", "-c:v", "libx264")
    with pytest.raises(MediaError, match="no audio stream"):
        normalize_audio(video_only, tmp_path / "o.wav")
    tone = gen("t.wav", "-f", "lavfi", "-i", "sine=d=4")
    with pytest.raises(ConfigError, match=r"\.wav or \.mp3"):
        normalize_audio(tone, tmp_path / "o.ogg")
    with pytest.raises(ConfigError, match=r"writes \.mp3"):
        normalize_audio(tone, tmp_path / "o.wav", preset="audio-mp3")
    assert list(tmp_path.iterdir()) == []


def test_a_short_loud_tone_is_not_called_silent(gen, tmp_path):
    tone = gen("tone-0.2s.wav", "-f", "lavfi", "-i", "sine=f=440:d=0.2:sample_rate=48000")
    result = normalize_audio(tone, tmp_path / "t.wav", preset="audio-wav")
    assert not any("silent" in w for w in result.warnings), result.warnings
    assert any("too short to measure its loudness" in w for w in result.warnings)
