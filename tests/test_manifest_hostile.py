"""Hostile manifests: cells that hang or exhaust the machine, text that is not text, limits a dry run must share.

No servers: everything here is found when the manifest is loaded, before anything is started or paid for.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest
from _batchkit import write

from assetprep import manifest as manifest_module
from assetprep.errors import ManifestError
from assetprep.manifest import load_manifest
from assetprep.tavus import SCRIPT_MAX_CHARS

REPLICA = {"replica_id": "r90bbd427f71"}


def problems_of(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, defaults=REPLICA, out_dir=path.parent / "out", **kwargs)
    return caught.value.problems


def test_a_template_that_loops_or_allocates_without_end_is_a_row_problem_within_seconds(tmp_path):
    """Nested ranges ran for over 300 s and `'ab' * 2000000000` took 12 GB: both are now their row's problem, the
    other rows render, and this process's memory does not grow."""
    rows = [
        {"script": "Hi {{ name | upper }}", "name": "ann"},
        {"script": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x", "name": "b"},
        {"script": "{{ 'ab' * 2000000000 }}", "name": "c"},
        {"script": "{% for i in range(99999) %}{{ name * 100 }}{% endfor %}", "name": "d"},
        {"script": "{{ lipsum(n=1000000000) }}", "name": "e"},
    ]
    path = write(tmp_path / "m.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    problems = problems_of(path)
    assert time.monotonic() - started < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: nothing built here
    assert [p.split(":")[0] for p in problems] == ["line 2, column script", "line 3, column script",
                                                   "line 4, column script", "line 5, column script"]  # fmt: skip
    assert "ran for over 2 s" in problems[0] and "is a loop or a repeat too large?" in problems[0]
    assert "needs more than 1024 MB" in problems[1]
    assert "renders to over 1,048,576 characters" in problems[2]
    assert "'lipsum' is undefined" in problems[3]
    # The same hanging template in many rows is waited for in 3 rows, not in each.
    hang = "{% for i in range(100000 - n) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    many = write(tmp_path / "many.jsonl", "".join(json.dumps({"script": hang, "n": i}) + "\n" for i in range(1, 21)))
    started = time.monotonic()
    problems = problems_of(many)
    assert len(problems) == 20 and "in 3 other rows" in problems[-1]
    assert time.monotonic() - started < 10


def test_yaml_aliases_that_expand_past_the_bound_are_refused_at_once(tmp_path):
    laughs = ["a0: &a0 [" + ", ".join(['"lol"'] * 9) + "]"]
    laughs += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = write(tmp_path / "lol.yaml", "\n".join(["defaults:", *("  " + line for line in laughs),
                                                   "rows:", "  - {script: Hi}", ""]))  # fmt: skip
    started = time.monotonic()
    expands = r"aliases \(\*name\) expand to 1,797,873,256 characters \(at most 50,000,000\)"
    with pytest.raises(ManifestError, match=expands):
        load_manifest(path, defaults=REPLICA, out_dir=tmp_path / "out")
    assert time.monotonic() - started < 2
    # Aliases within the bound are YAML as usual.
    fine = write(tmp_path / "ok.yaml", "defaults: &d {script: 'Hi {{ n }}'}\nrows:\n  - {<<: *d, n: a}\n"
                                       "  - {<<: *d, n: b}\n")  # fmt: skip
    assert [r.script for r in load_manifest(fine, defaults=REPLICA, out_dir=tmp_path / "o").rows] == ["Hi a", "Hi b"]


def test_text_that_is_not_text_is_refused_at_load_with_its_row_and_column(tmp_path):
    """A lone surrogate passed validation and broke results.csv after every video was paid for; a NUL reached
    the API in a script; U+202E reversed how a name printed and was used in a file name."""
    lines = [
        '{"script": "Hi", "company": "Acme"}',
        '{"script": "Hi", "company": "Ac\\ud800me"}',
        '{"script": "Hi\\u0000 there"}',
        '{"script": "Hi", "video_name": "invoice\\u202egpj.exe"}',
        '{"script": "Hi", "tags": ["ok", "bad\\u0007"]}',
        '{"script": "Hi\\tthere\\r\\nfriend \\u200f"}',  # tab, newlines and a right-to-left mark are text
    ]
    problems = problems_of(write(tmp_path / "m.jsonl", "\n".join(lines) + "\n"))
    assert problems == [
        "line 2, column company: holds U+D800 (a lone surrogate) at character 3; remove it (it is not text a lead "
        "should see)",
        "line 3, column script: holds U+0000 (a control character) at character 3; remove it (it is not text a "
        "lead should see)",
        "line 4, column video_name: holds U+202E (RIGHT-TO-LEFT OVERRIDE) at character 8; remove it (it is not "
        "text a lead should see)",
        "line 5, column tags: holds U+0007 (a control character) at character 4; remove it (it is not text a lead "
        "should see)",
    ]
    for problem in problems:
        problem.encode("utf-8")  # printable: the CLI must be able to say it


def test_a_dry_run_refuses_a_script_the_api_would_refuse(tmp_path):
    """The manifest allowed 20,000 characters and the API 10,000: a 15,000-character script passed the dry run and
    failed at create. One limit now, the API's."""
    path = write(tmp_path / "m.csv", f"script\n{'a' * SCRIPT_MAX_CHARS}\n{'b' * 15000}\n")
    assert problems_of(path) == ["row 3, column script: 15,000 characters; the API takes at most 10,000 (about ten "
                                 "minutes of speech): split it"]  # fmt: skip


def test_one_clip_shared_by_many_rows_is_hashed_once(tmp_path, monkeypatch):
    """500 rows over one 138 MB clip hashed it 500 times (135 s to validate)."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 1000)
    other = tmp_path / "other.mp4"
    other.write_bytes(b"\1" * 1000)
    hashed: list[Path] = []
    real = manifest_module.file_sha256
    monkeypatch.setattr(manifest_module, "file_sha256", lambda p: hashed.append(p) or real(p))
    rows = "".join(f"Hi {i},{'clip' if i % 10 else 'other'}.mp4\n" for i in range(200))
    loaded = load_manifest(write(tmp_path / "m.csv", "script,background\n" + rows), defaults=REPLICA,
                           out_dir=tmp_path / "out")  # fmt: skip
    assert len(loaded.rows) == 200
    assert sorted(p.name for p in hashed) == ["clip.mp4", "other.mp4"]
    # A file changed in place is a new file (its stat differs): hashed again, and the row's identity moves.
    before = loaded.rows[1].row_id
    clip.write_bytes(b"\2" * 1001)
    again = load_manifest(tmp_path / "m.csv", defaults=REPLICA, out_dir=tmp_path / "out")
    assert again.rows[1].row_id != before


def test_option_columns_match_whatever_their_case_and_spacing(tmp_path):
    """A CRM's `Script`, `Video Name` and `Replica ID` are the options; results.csv keeps the headers as given."""
    path = write(tmp_path / "crm.csv", "First Name,Script,Video Name,Replica ID\n"
                                       "Ann,Hi {{ first_name }},ann-video,r90bbd427f71\n")  # fmt: skip
    row = load_manifest(path, out_dir=tmp_path / "out").rows[0]
    assert (row.script, row.video_name, row.options.replica_id) == ("Hi Ann", "ann-video", "r90bbd427f71")
    assert row.values == {"First Name": "Ann", "Script": "Hi {{ first_name }}", "Video Name": "ann-video",
                          "Replica ID": "r90bbd427f71"}  # fmt: skip
    both = write(tmp_path / "both.csv", "script,Script\nHi,Hello\n")
    assert problems_of(both) == ["columns 'script', 'Script' all set the option script: keep one"]
