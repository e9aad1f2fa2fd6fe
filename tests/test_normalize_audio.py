"""normalize_audio: format, rate, channels and loudness measured on the output (ebur128, independent of loudnorm)."""

from __future__ import annotations

import subprocess

import pytest
from _media import ffmpeg, integrated_loudness, loudness_and_peak, streams

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


# -- on target for every speech clip (measured on the encoded file, independently) --


def assert_on_target(result, out, *, integrated=-16.0, ceiling=-1.5):
    got_i, got_tp = loudness_and_peak(out)
    assert abs(got_i - integrated) <= 0.5, (out.name, got_i, got_tp)
    assert got_tp <= ceiling, (out.name, got_i, got_tp)
    # What --json reports is what an independent meter reads on the final file.
    assert abs(result.loudness["integrated"] - got_i) <= 0.1 and abs(result.loudness["true_peak"] - got_tp) <= 0.1
    assert result.warnings == []


@pytest.fixture(scope="session")
def peaky_speech(gen, media_dir):
    # Quiet real speech with full-scale clicks every 0.7 s: peaks ~20 dB above its loudness, so the gain it needs
    # does not fit under the ceiling (the case where loudnorm falls back to its dynamic mode and undershoots).
    return gen("peaky.wav", "-i", str(media_dir / "speech-jfk-16k-mono.wav"), "-f", "lavfi", "-i",
               "aevalsrc='if(lt(mod(t,0.7),0.002),0.98,0)':s=16000:d=11", "-filter_complex",
               "[0]volume=-14dB[s];[s][1]amix=inputs=2:normalize=0", "-ar", "48000", "-ac", "2")  # fmt: skip


@pytest.mark.parametrize("ext", ["wav", "mp3"])
def test_peaky_quiet_speech_reaches_the_target_under_the_ceiling(peaky_speech, tmp_path, ext):
    before_i, before_tp = loudness_and_peak(peaky_speech)
    assert before_tp - before_i >= 15  # the hard case: crest of 15 dB or more
    out = tmp_path / f"o.{ext}"
    assert_on_target(normalize_audio(peaky_speech, out), out)


@pytest.mark.parametrize("ext", ["wav", "mp3"])
def test_real_speech_with_little_headroom(media_dir, tmp_path, ext):
    # 44.1 kHz stereo at about -24 LUFS with true peaks at -5 dBTP: +8 dB of gain, 4 dB of it over the ceiling.
    out = tmp_path / f"o.{ext}"
    assert_on_target(normalize_audio(media_dir / "retalking-audio1-44k-stereo.wav", out), out)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("3s-8k", ["-i", "{jfk}", "-t", "3", "-ar", "8000"]),
        ("96k-stereo-one-silent", ["-i", "{jfk}", "-af", "pan=stereo|c0=c0|c1=0*c0", "-ar", "96000"]),
        ("padded.mp3", ["-i", "{jfk}", "-c:a", "libmp3lame", "-b:a", "64k"]),  # the decoder adds padding
    ],
)
def test_speech_at_any_length_rate_and_layout(media_dir, gen, tmp_path, name, args):
    src = gen(f"{name}.wav" if "." not in name else name,
              *[a.format(jfk=media_dir / "speech-jfk-16k-mono.wav") for a in args])  # fmt: skip
    for ext in ("wav", "mp3"):
        out = tmp_path / f"o.{ext}"
        assert_on_target(normalize_audio(src, out), out)


def test_ten_minutes_of_speech(media_dir, gen, tmp_path):
    src = gen("ten-min-8k.wav", "-stream_loop", "53", "-i", str(media_dir / "speech-jfk-16k-mono.wav"), "-ar", "8000")
    out = tmp_path / "o.mp3"
    assert_on_target(normalize_audio(src, out), out)
    assert abs(float(streams(out, "a")[0]["duration"]) - 594.0) < 0.5


def test_a_compliant_file_on_target_is_copied_not_encoded_again(media_dir, tmp_path):
    first = tmp_path / "first.wav"
    normalize_audio(media_dir / "speech-jfk-16k-mono.wav", first)
    again = normalize_audio(first, tmp_path / "again.wav")
    assert again.path_taken == "remux" and audio_md5(tmp_path / "again.wav") == audio_md5(first)
    assert abs(again.loudness["integrated"] - loudness_and_peak(first)[0]) <= 0.1


def test_an_unreachable_target_is_a_warning_with_the_numbers_and_the_best_file(media_dir, tmp_path):
    # -5 LUFS under a -1.5 dBTP ceiling would need speech with a 3.5 dB crest: the limiter cannot get there.
    out = tmp_path / "o.wav"
    result = normalize_audio(media_dir / "speech-jfk-16k-mono.wav", out, loudness=-5)
    got_i, got_tp = loudness_and_peak(out)
    assert got_tp <= -1.5 and got_i > -16  # the closest pass was kept: much louder, never over the ceiling
    [warning] = [w for w in result.warnings if "target -5.0" in w]
    assert f"{got_i:.1f} LUFS" in warning and "closest pass was kept" in warning


def test_kill_9_during_a_loudness_pass_leaves_nothing_the_next_run_does_not_sweep(media_dir, gen, tmp_path):
    import signal
    import sys
    import time

    src = gen("ten-min-8k.wav", "-stream_loop", "53", "-i", str(media_dir / "speech-jfk-16k-mono.wav"), "-ar", "8000")
    out = tmp_path / "o.mp3"
    proc = subprocess.Popen([sys.executable, "-m", "assetprep", "normalize", "audio", str(src), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    end = time.monotonic() + 60
    while time.monotonic() < end and not any(p.stat().st_size > 0 for p in tmp_path.glob(".o.mp3.*pass*")):
        time.sleep(0.05)  # a loudness pass is writing its file
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    left = list(tmp_path.glob(".o.mp3.*"))
    assert left, "no pass file was being written: the test would prove nothing"
    again = subprocess.run([sys.executable, "-m", "assetprep", "normalize", "audio",
                            str(media_dir / "speech-jfk-16k-mono.wav"), "-o", str(out)], capture_output=True,
                           timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert list(tmp_path.glob(".o.mp3.*")) == []  # the next run to the same output swept what the killed one left


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path):
    """The loudness measurement starts beside the probe; it used to open the input first and wait there (up to
    its 10 min timeout) for a writer that never comes."""
    import os
    import threading

    fifo = tmp_path / "voice.wav"
    os.mkfifo(fifo)
    errors: list[Exception] = []

    def call() -> None:
        try:
            normalize_audio(fifo, tmp_path / "out.wav")
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(20)
    try:
        assert not t.is_alive(), "normalize_audio was still waiting on the FIFO after 20 s"
        assert len(errors) == 1 and isinstance(errors[0], MediaError) and "input is not a file" in str(errors[0])
        assert list(tmp_path.iterdir()) == [fifo]
    finally:
        os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))  # lets an ffmpeg blocked on opening it go on, to EOF
        t.join(10)
