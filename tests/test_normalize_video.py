"""normalize_video on generated and real inputs; every assertion is on measured output facts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
from _media import decoded_frame_count, ffmpeg, first_packet_times, frame_rgb, pixel, streams

from assetprep import ConfigError, MediaError, ProcessTimeoutError, is_faststart, normalize_video, probe

W, H = 1280, 720
P720 = "background-720p"


def assert_meets_720p(path: Path) -> dict:
    (v,) = streams(path, "v")
    assert (v["codec_name"], v["profile"], v["pix_fmt"]) == ("h264", "High", "yuv420p")
    assert (v["width"], v["height"]) == (W, H)
    assert v["r_frame_rate"] == v["avg_frame_rate"] == "30/1"
    assert v.get("sample_aspect_ratio", "1:1") == "1:1"
    assert "side_data_list" not in v  # no rotation left for players to apply
    assert is_faststart(path)
    return v


def region_mean(frame: bytes, xs: range, ys: range) -> float:
    values = [sum(pixel(frame, W, x, y)) / 3 for x in xs[::4] for y in ys[::4]]
    return sum(values) / len(values)


def mean_abs_diff(a: bytes, b: bytes) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def test_vfr_becomes_cfr_with_exact_frames(gen, tmp_path):
    # Drop irregular frames and keep the original timestamps: a genuinely variable-rate input.
    src = gen("vfr.mp4", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=3",
              "-vf", "select='not(eq(mod(n,4),1))*not(eq(mod(n,7),3))'", "-fps_mode", "vfr", "-c:v", "libx264")  # fmt: skip
    (s,) = streams(src, "v")
    assert Fraction(s["r_frame_rate"]) != Fraction(s["avg_frame_rate"])  # the input really is VFR
    out = tmp_path / "cfr.mp4"
    result = normalize_video(src, out, preset=P720, duration=2.0)
    v = assert_meets_720p(out)
    assert result.path_taken == "encode"
    assert int(v["nb_read_packets"]) == 60 == decoded_frame_count(out)
    assert abs(float(v["duration"]) - 2.0) < 1 / 30


def test_odd_size_fits(gen, tmp_path):
    src = gen("odd.mp4", "-f", "lavfi", "-i", "testsrc2=size=641x361:rate=25:duration=1", "-c:v", "mpeg4")
    for fit in ("cover", "contain", "stretch"):
        out = tmp_path / f"{fit}.mp4"
        normalize_video(src, out, preset=P720, fit=fit)
        v = assert_meets_720p(out)
        assert int(v["nb_read_packets"]) == 30


def test_contain_pads_and_cover_crops(gen, tmp_path):
    # 4:3 input into 16:9: contain shows black bars at the sides (160 px each), cover fills the frame.
    src = gen("4x3.mp4", "-f", "lavfi", "-i", "color=c=0x30C030:size=640x480:rate=30:duration=1", "-c:v", "libx264")
    normalize_video(src, tmp_path / "contain.mp4", preset=P720, fit="contain")
    normalize_video(src, tmp_path / "cover.mp4", preset=P720, fit="cover")
    contain = frame_rgb(tmp_path / "contain.mp4", 10, W, H)
    cover = frame_rgb(tmp_path / "cover.mp4", 10, W, H)
    assert max(pixel(contain, W, 80, 360)) < 25  # bar
    assert max(pixel(contain, W, 1200, 360)) < 25
    r, g, b = pixel(contain, W, 640, 360)
    assert g > 150 and r < 80 and b < 80  # picture
    for x in (80, 640, 1200):
        r, g, b = pixel(cover, W, x, 360)
        assert g > 150 and r < 80 and b < 80


def test_rotation_metadata_is_applied(gen, tmp_path):
    # Stored frame: red on top, blue below, landscape 320x240, with a display matrix of +90 degrees
    # (counter-clockwise, as ffprobe reports it): displayed portrait 240x320 with red on the left, blue on the right.
    plain = gen("plain.mp4", "-f", "lavfi", "-i",
                "color=c=red:s=320x120:d=1:r=30[a];color=c=blue:s=320x120:d=1:r=30[b];[a][b]vstack", "-c:v", "libx264")  # fmt: skip
    src = tmp_path / "rot.mp4"
    ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(src))  # 5.1 sets the matrix on remux
    info = probe(src)
    assert (info.video.width, info.video.height, info.video.rotation) == (240, 320, 90)
    out = tmp_path / "o.mp4"
    normalize_video(src, out, preset=P720, fit="stretch")
    assert_meets_720p(out)
    frame = frame_rgb(out, 5, W, H)
    r, g, b = pixel(frame, W, 200, 360)
    assert r > 180 and b < 60, (r, g, b)
    r, g, b = pixel(frame, W, 1080, 360)
    assert b > 180 and r < 60, (r, g, b)


def test_yuv444_becomes_yuv420_high(gen, tmp_path):
    src = gen("444.mp4", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30:duration=1", "-c:v", "libx264",
              "-pix_fmt", "yuv444p")  # fmt: skip
    assert streams(src)[0]["profile"] == "High 4:4:4 Predictive"
    result = normalize_video(src, tmp_path / "o.mp4", preset=P720)
    assert result.path_taken == "encode"
    assert_meets_720p(tmp_path / "o.mp4")


def video_md5(path: Path) -> str:
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v", "-c", "copy", "-f", "md5", "-"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip


def test_compliant_input_is_remuxed_not_reencoded(gen, tmp_path):
    # Compliant except faststart and metadata: remux must fix those and keep the video bitstream byte for byte.
    src = gen("compliant.mp4", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30:duration=2", "-c:v", "libx264",
              "-profile:v", "high", "-pix_fmt", "yuv420p", "-metadata", "location=+48.85+002.35/")  # fmt: skip
    assert not is_faststart(src)
    out = tmp_path / "o.mp4"
    result = normalize_video(src, out, preset=P720)
    assert result.path_taken == "remux"
    assert_meets_720p(out)
    assert video_md5(out) == video_md5(src)
    assert "location" not in probe(out).tags
    forced = normalize_video(src, tmp_path / "f.mp4", preset=P720, force_encode=True)
    assert forced.path_taken == "encode"


def test_duration_holds_last_frame_and_loop_repeats(gen, tmp_path):
    src = gen("1s.mp4", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=1", "-c:v", "libx264")
    held = tmp_path / "held.mp4"
    normalize_video(src, held, preset=P720, duration=2.5)
    assert decoded_frame_count(held) == 75
    looped = tmp_path / "looped.mp4"
    normalize_video(src, looped, preset=P720, loop_to=3.2)
    assert decoded_frame_count(looped) == 96
    # testsrc2 draws a moving pattern: the loop repeats frame 0 at frame 30, the hold repeats frame 29.
    f0, f15, f30 = (frame_rgb(looped, i, W, H) for i in (0, 15, 30))
    assert mean_abs_diff(f0, f30) < 3 < mean_abs_diff(f0, f15)
    h29, h60 = frame_rgb(held, 29, W, H), frame_rgb(held, 60, W, H)
    assert mean_abs_diff(h29, h60) < 3


def test_cut_to_shorter_duration(gen, tmp_path):
    src = gen("3s.mp4", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=3", "-c:v", "libx264")
    out = tmp_path / "cut.mp4"
    normalize_video(src, out, preset=P720, duration=1.5)
    assert decoded_frame_count(out) == 45


def test_still_image_and_sequence(gen, tmp_path):
    still = gen("still.png", "-f", "lavfi", "-i", "testsrc2=size=500x300", "-frames:v", "1")
    with pytest.raises(ConfigError, match="still image"):
        normalize_video(still, tmp_path / "s.mp4", preset=P720)
    normalize_video(still, tmp_path / "s.mp4", preset=P720, duration=2)
    assert_meets_720p(tmp_path / "s.mp4")
    assert decoded_frame_count(tmp_path / "s.mp4") == 60

    seq = tmp_path / "seq"
    seq.mkdir()
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-frames:v", "12", str(seq / "img%03d.png"))
    normalize_video(str(seq / "img%03d.png"), tmp_path / "seq.mp4", preset=P720)
    assert decoded_frame_count(tmp_path / "seq.mp4") == 12
    normalize_video(str(seq / "*.png"), tmp_path / "glob.mp4", preset=P720)
    assert decoded_frame_count(tmp_path / "glob.mp4") == 12


def test_keep_audio_is_aligned_and_trimmed(gen, tmp_path):
    # Audio starts 40 ms after the video and runs 0.5 s longer: output audio must start within a frame of the
    # video and end with it.
    src = gen("av.mkv", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=2", "-f", "lavfi",
              "-i", "sine=f=440:r=16000:duration=2.5", "-af", "adelay=40:all=1", "-c:v", "libx264",
              "-c:a", "libopus")  # fmt: skip
    out = tmp_path / "av.mp4"
    normalize_video(src, out, preset=P720, keep_audio=True)
    starts = first_packet_times(out)
    assert abs(starts["audio"] - starts["video"]) <= 1 / 30
    (a,) = streams(out, "a")
    (v,) = streams(out, "v")
    assert (a["codec_name"], int(a["sample_rate"]), a["channels"]) == ("aac", 48000, 2)
    assert abs(float(a["duration"]) - float(v["duration"])) <= 1 / 30 + 0.025  # one frame + one AAC frame


def test_keep_audio_adds_silence_when_input_has_none(gen, tmp_path):
    src = gen("mute.mp4", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=1", "-c:v", "libx264")
    out = tmp_path / "o.mp4"
    normalize_video(src, out, preset=P720, keep_audio=True)
    (a,) = streams(out, "a")
    assert a["codec_name"] == "aac" and abs(float(a["duration"]) - 1.0) < 0.05


def test_progress_reports_reach_the_end(gen, tmp_path):
    src = gen("p.mp4", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=2", "-c:v", "libx264")
    seen = []
    normalize_video(src, tmp_path / "o.mp4", preset=P720, on_progress=seen.append, force_encode=True)
    fractions = [p.fraction for p in seen if p.fraction is not None]
    assert fractions and fractions[-1] == 1.0
    assert fractions == sorted(fractions)


def test_timeout_kills_ffmpeg_and_leaves_no_file(gen, tmp_path):
    src = gen("long.mp4", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30:duration=60", "-c:v", "libx264",
              "-preset", "ultrafast")  # fmt: skip
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ProcessTimeoutError) as info:
        normalize_video(src, out_dir / "o.mp4", preset="background-1080p", timeout=1.0)
    assert "ffmpeg" in info.value.command[0]
    assert list(out_dir.iterdir()) == []


def test_interrupt_kills_child_and_leaves_no_file(gen, tmp_path):
    src = gen("long.mp4", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30:duration=60", "-c:v", "libx264",
              "-preset", "ultrafast")  # fmt: skip
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def interrupt(p):
        if p.done > 0.2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        normalize_video(src, out_dir / "o.mp4", preset="background-1080p", on_progress=interrupt)
    assert list(out_dir.iterdir()) == []
    # No ffmpeg left running under us (session servers such as SeaweedFS may be children too).
    children = [pid for c in Path(f"/proc/{os.getpid()}/task").glob("*/children") for pid in c.read_text().split()]
    names = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in children if Path(f"/proc/{pid}").exists()]
    assert "ffmpeg" not in names


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return found


def _ffmpeg_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "ffmpeg":
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_normalize_takes_its_ffmpeg_along_and_the_next_run_sweeps_its_part(gen, tmp_path, sig):
    # The timeout tests' source: 60 s upscaled to 1080p keeps the encoder busy far longer than the kill takes.
    src = gen("long.mp4", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30:duration=60", "-c:v", "libx264",
              "-preset", "ultrafast")  # fmt: skip
    out = tmp_path / "o.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "assetprep", "normalize", "video", str(src), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    end = time.monotonic() + 60
    encoder: list[int] = []
    while time.monotonic() < end and not encoder:  # until its ffmpeg runs and has written something
        encoder = [c for c in _children_of(proc.pid) if c in _ffmpeg_pids()]
        parts = list(tmp_path.glob(".o.mp4.*.part"))
        if not (parts and parts[0].stat().st_size > 0):
            encoder = []
        time.sleep(0.1)
    assert encoder, "ffmpeg never started: the test would prove nothing"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    end = time.monotonic() + 10
    while set(encoder) & _ffmpeg_pids() and time.monotonic() < end:
        time.sleep(0.1)
    assert not set(encoder) & _ffmpeg_pids()  # the encoder died with its parent
    left = list(tmp_path.glob(".o.mp4.*.part"))
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + sig and left == []  # handled like Ctrl-C: cleaned up at once
    else:
        assert len(left) == 1  # kill -9 leaves no chance to clean up ...
        again = subprocess.run([sys.executable, "-m", "assetprep", "normalize", "video", str(src), "-o",
                                str(tmp_path / "o.mp4"), "--duration", "1"], capture_output=True, timeout=120)  # fmt: skip
        assert again.returncode == 0
        assert list(tmp_path.glob(".o.mp4.*.part")) == []  # ... the next run to the same output sweeps it


def test_no_video_stream(gen, tmp_path):
    wav = gen("tone.wav", "-f", "lavfi", "-i", "sine=d=1")
    with pytest.raises(MediaError, match="no video stream"):
        normalize_video(wav, tmp_path / "o.mp4")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ real clips

REAL_VIDEOS = [
    "android-4k60-yuvj420p-rot90.mp4",
    "bbb-h264-aac-5.1ch.mp4",
    "bear-vp9-161x121-odd-noaudio.webm",
    "bird-mpeg4asp-mp3.avi",
    "chrome-recording-vp9-opus-vfr-noduration.webm",
    "cockatoo-h264-yuv444p-mp3.mp4",
    "grid-brbk7n-mpeg1-mp2-360x288.mpg",
    "iphone12-hevc10-hlg-dovi-rot90.mov",
    "iphone4s-h264-rot90-audiofirst.mov",
    "retalking-face2-844sq-25fps.mp4",
    "retalking-face4-700sq-30fps.mp4",
]


@pytest.mark.parametrize("name", REAL_VIDEOS)
def test_real_clip_meets_preset(media_dir, tmp_path, name):
    src = media_dir / name
    out = tmp_path / "o.mp4"
    result = normalize_video(src, out, preset=P720, keep_audio=True)
    v = assert_meets_720p(out)
    assert v.get("color_range", "tv") == "tv"  # full-range phone video made limited range
    src_info = probe(src)
    expected = src_info.video.duration or src_info.duration
    assert abs(float(v["duration"]) - expected) <= 1.5 / 30 + 0.02
    assert int(v["nb_read_packets"]) == decoded_frame_count(out)
    (a,) = streams(out, "a")
    assert (a["codec_name"], int(a["sample_rate"]), a["channels"]) == ("aac", 48000, 2)  # 5.1 and mono too
    assert not probe(out).tags.get("location")  # GPS and other input tags dropped
    assert result.info.video.frames == int(v["nb_read_packets"])


@pytest.mark.parametrize("name", ["iphone4s-h264-rot90-audiofirst.mov", "android-4k60-yuvj420p-rot90.mp4"])
def test_real_portrait_clips_stay_portrait(media_dir, tmp_path, name):
    # Portrait content inside a landscape frame with contain: bars left and right prove the rotation was applied.
    out = tmp_path / "o.mp4"
    normalize_video(media_dir / name, out, preset=P720, fit="contain")
    frame = frame_rgb(out, 3, W, H)
    assert region_mean(frame, range(0, 120), range(300, 420)) < 20  # bars
    assert region_mean(frame, range(1160, 1280), range(300, 420)) < 20
    assert region_mean(frame, range(560, 720), range(200, 520)) > 50  # picture


def test_real_hdr_clip_becomes_8bit_sdr(media_dir, tmp_path):
    out = tmp_path / "o.mp4"
    normalize_video(media_dir / "iphone12-hevc10-hlg-dovi-rot90.mov", out, preset=P720)
    (v,) = streams(out, "v")
    assert (v["pix_fmt"], v["profile"], v.get("color_transfer")) == ("yuv420p", "High", "bt709")
    # Tone-mapped HLG has real contrast: the frame spans dark and bright values, not a washed-out grey band.
    frame = frame_rgb(out, 4, W, H)
    lum = sorted(frame[i] for i in range(0, len(frame), 3 * 97))
    assert lum[len(lum) // 20] < 60 and lum[-len(lum) // 20] > 150


COLOURS = ((0xB6, 0x19, 0x24), (0x00, 0xF1, 0xC9), (0xFF, 0xC8, 0x00))  # CSS #b61924, #00f1c9, #ffc800


def _bands(path: Path, size: str, then: str | None, *extra: str) -> None:
    """Three solid bands of COLOURS side by side (`then`: filters after)."""
    sources = ";".join(f"color=c=0x{r:02x}{g:02x}{b:02x}:s={size}:d=1[c{i}]" for i, (r, g, b) in enumerate(COLOURS))
    ffmpeg("-filter_complex", f"{sources};[c0][c1][c2]hstack=3" + (f",{then}" if then else ""), *extra, str(path))


def test_colours_play_back_as_they_were_from_rgb_and_from_other_matrices(tmp_path):
    """RGB was converted with BT.601 and tagged BT.709: #b61924 played back as (193, 38, 33). Decoded with the matrix
    each file is tagged with, every source colour now comes back within 2 code values: a still PNG, an SD clip
    tagged BT.601 (smpte170m), and an HD clip without tags (BT.709 by convention)."""
    from _media import frame_rgb_as_tagged

    png = tmp_path / "bands.png"
    _bands(png, "426x720", None, "-frames:v", "1")
    sd = tmp_path / "sd.mp4"
    _bands(sd, "214x480", "scale=out_color_matrix=bt601:out_range=tv,format=yuv420p", "-c:v", "libx264", "-crf", "12",
           "-colorspace", "smpte170m", "-color_primaries", "smpte170m", "-color_trc", "smpte170m")  # fmt: skip
    hd = tmp_path / "hd.mp4"
    _bands(hd, "426x720", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p", "-c:v", "libx264", "-crf", "12")
    for source, extra in ((png, {"duration": 1}), (sd, {}), (hd, {})):
        out = tmp_path / f"{source.stem}-out.mp4"
        normalize_video(source, out, preset="background-720p", fit="cover", force_encode=True, **extra)
        tags = streams(out)[0]
        assert (tags["color_space"], tags["color_range"]) == ("bt709", "tv")
        frame = frame_rgb_as_tagged(out, 0, W, H)
        # A clip's colours are what it shows (its own 8-bit YUV is already a code value or two off the CSS colour).
        width = int(streams(source)[0]["width"]) if source.suffix == ".mp4" else 0
        shown = frame_rgb_as_tagged(source, 0, width, 480 if source is sd else 720) if width else b""
        for i, colour in enumerate(COLOURS):
            if shown:
                colour = pixel(shown, width, width // 6 + width // 3 * i, 240)
            got = pixel(frame, W, 213 + 427 * i, 360)
            assert max(abs(a - b) for a, b in zip(got, colour, strict=True)) <= 2, (source.name, colour, got)
