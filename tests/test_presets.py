from __future__ import annotations

import pytest

from assetprep import AudioPreset, PresetError, VideoPreset, list_presets, load_preset


def test_builtins():
    names = {p.name: p for p in list_presets()}
    assert {"background-1080p", "background-720p", "audio-wav", "audio-mp3"} <= set(names)
    bg = names["background-1080p"]
    assert isinstance(bg, VideoPreset)
    assert (bg.width, bg.height, bg.fps, bg.profile, bg.pix_fmt, bg.audio) == (
        1920,
        1080,
        30,
        "high",
        "yuv420p",
        "none",
    )
    wav = names["audio-wav"]
    assert isinstance(wav, AudioPreset) and (wav.codec, wav.sample_rate, wav.channels) == ("pcm_s16le", 48000, 1)
    assert wav.loudness is not None and wav.loudness.integrated == -16
    mp3 = names["audio-mp3"]
    assert (mp3.codec, mp3.sample_rate, mp3.channels, mp3.bitrate) == ("mp3", 44100, 1, "192k")


def test_user_file_toml_and_json(tmp_path):
    toml = tmp_path / "square.toml"
    toml.write_text('kind = "video"\nwidth = 1080\nheight = 1080\nfps = 25\n')
    p = load_preset(toml)
    assert (p.name, p.width, p.fps, p.crf) == ("square", 1080, 25, 20)
    js = tmp_path / "voice.json"
    js.write_text('{"kind": "audio", "format": "wav", "sample_rate": 44100, "loudness": {"integrated": -20}}')
    assert load_preset(js).loudness.integrated == -20


def test_typo_names_the_field_and_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "audio"\nformat = "wav"\nsample_rate = 48000\n[loudness]\nintegratd = -16\n')
    with pytest.raises(PresetError) as info:
        load_preset(bad)
    message = str(info.value)
    assert str(bad) in message and "loudness.integratd: unknown key" in message


def test_invalid_values(tmp_path):
    bad = tmp_path / "odd.toml"
    bad.write_text('kind = "video"\nwidth = 1281\nheight = 720\nfps = 30\n')
    with pytest.raises(PresetError, match="width: must be even"):
        load_preset(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("kind = ")
    with pytest.raises(PresetError, match="not valid TOML"):
        load_preset(broken)
    utf16 = tmp_path / "utf16.toml"
    utf16.write_bytes('kind = "video"'.encode("utf-16"))  # was an internal error (UnicodeDecodeError)
    with pytest.raises(PresetError, match=r"utf16\.toml is not UTF-8 text \(line 1: byte 0xff at offset 0\)"):
        load_preset(utf16)


def test_unknown_name():
    with pytest.raises(PresetError, match=r"unknown preset 'background-4k'.*background-1080p"):
        load_preset("background-4k")
