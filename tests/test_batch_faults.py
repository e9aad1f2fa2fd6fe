"""assetprep batch when things go wrong: full and read-only disks, kill -9 and SIGTERM, API and S3 outages, lost
creates, refused downloads, 429 storms, two processes on one batch, a wrong key or bucket.

Real SeaweedFS, the sandbox over HTTP, real Chromium on pages served from 127.0.0.1, real ffmpeg.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from _batchkit import (
    account,
    cli,
    creates,
    leads_manifest,
    read_results,
    write,
)
from _media import TEST_BUCKET

from assetprep._journal import RunLock
from assetprep.batch import BatchOptions, batch_dir_for, batch_publish
from assetprep.errors import JournalError
from assetprep.probe import probe
from assetprep.publish import PublishSettings
from assetprep.sandbox import DEFAULT_REPLICA
from assetprep.tavus import TavusClient


def test_an_output_disk_that_is_read_only_or_fills_up_costs_no_video_twice_and_says_so(world, tmp_path):
    """An --out on a read-only mount made (and paid for) every video, then stopped with "internal error: OSError:
    [Errno 30]"; a disk that filled up failed rows with "OSError: [Errno 28]" and, when results.csv no longer fit,
    ended the run with an internal error. Each output disk here is a tmpfs in the command's own mount namespace."""
    sb, _, env = world()
    manifest = write(tmp_path / "leads.csv", "first_name,script\n" + "".join(f"L{i},Hi L{i}.\n" for i in range(8)))
    disk = tmp_path / "disk"
    disk.mkdir()

    def batch_on(mount_options: str, *args: str) -> subprocess.CompletedProcess:
        script = f'mount -t tmpfs -o {mount_options} none "$1" && shift && exec "$@"'
        return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(disk), sys.executable, "-m", "assetprep",
                               "batch", str(manifest), "--out", str(disk / "out"), "--replica", DEFAULT_REPLICA,
                               "--poll", "0.2", *args], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip

    for args in ([], ["--dry-run"]):
        ro = batch_on("size=1m,ro", *args)
        assert ro.returncode == 1 and "output folder(s) cannot be written; nothing was started" in ro.stderr, ro.stderr
        assert (
            "read-only file system" if not args else "is not writable"
        ) in ro.stderr and "Traceback" not in ro.stderr
    assert creates(sb) == []  # refused before any video was made
    full = batch_on("size=128k")  # less than the write check needs
    assert full.returncode == 1 and "cannot write in" in full.stderr and "no space left on its disk" in full.stderr
    assert creates(sb) == []

    # Room for a few of the 8 videos: the others fail their download, saying why; no partial file is left.
    filling = batch_on("size=400k", "--json")
    assert filling.returncode == 1 and "Traceback" not in filling.stderr, filling.stderr
    rows = json.loads(filling.stdout)["rows"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all(r["error"].startswith("download: no space left on the disk of") for r in failed), rows
    assert len(creates(sb)) == 8
    # Freed (a bigger disk): the rerun downloads what is missing and makes no video again.
    again = batch_on("size=20m", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["counts"] == {"downloaded": 8} and len(creates(sb)) == 8

    # A finished batch rerun into its --out made read-only (an archive mount) ended in "internal error: OSError".
    # Nothing is left to make or write: it says so, and exits 0.
    command = shlex.join([sys.executable, "-m", "assetprep", "batch", str(manifest), "--out", str(disk / "out"),
                          "--replica", DEFAULT_REPLICA, "--poll", "0.2"])  # fmt: skip
    script = (f"mount -t tmpfs -o size=20m none {disk} && {command} >/dev/null 2>&1 && "
              f"mount -o remount,ro {disk} && exec {command} --json")  # fmt: skip
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert json.loads(done.stdout)["counts"] == {"downloaded": 8} and len(creates(sb)) == 8


def test_a_journal_disk_that_fills_up_stops_the_batch_with_one_message_and_loses_nothing(world, tmp_path):
    """The journal's disk filling up mid-batch printed a thread's traceback (or "internal error: RuntimeError:
    cannot join thread") and told the user the journal was damaged and to delete it."""
    sb, _, env = world()
    manifest = write(tmp_path / "leads.csv", "first_name,script\n" + "".join(f"M{i},Hi M{i}.\n" for i in range(16)))
    disk = tmp_path / "disk"
    disk.mkdir()
    command = shlex.join([sys.executable, "-m", "assetprep", "batch", str(manifest), "--out", str(tmp_path / "out"),
                          "--replica", DEFAULT_REPLICA, "--poll", "0.2", "--batch-id", "full", "--json"])  # fmt: skip
    script = (f"mount -t tmpfs -o size=300k none {disk} && {command} >{tmp_path}/1.out 2>{tmp_path}/1.err; "
              f"echo $? >{tmp_path}/1.rc; mount -o remount,size=20m {disk} && exec {command}")  # fmt: skip
    again = subprocess.run(["unshare", "-m", "sh", "-c", script], env={**env, "ASSETPREP_RUNS_DIR": str(disk / "runs")},
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    first = (tmp_path / "1.err").read_text()
    assert (tmp_path / "1.rc").read_text().strip() == "1", first
    assert f"no space left on the disk of {disk}/batches/full for the batch journal" in first, first
    assert "Traceback" not in first and "internal error" not in first and "damaged" not in first
    # Space freed: the same journal goes on; every row has its one video, none was made twice.
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["counts"] == {"downloaded": 16}
    names = [v.video_name for v in account(sb)]
    assert len(names) == len(set(names)) == len(creates(sb)) == 16


def test_kill9_at_three_moments_then_rerun_makes_each_video_once(world, tmp_path):
    sb, _, env = world()
    manifest = leads_manifest(tmp_path, 4)
    base = [str(manifest), "--replica", DEFAULT_REPLICA, "--allow-private-networks", "--poll", "0.2",
            "--background-preset", "background-720p", "--max-in-flight", "2"]  # fmt: skip
    state = tmp_path / "state"
    # 1) right after the first POST (its answer never journaled); 2) after the first download; 3) mid-wait.
    for point in ("batch-after-post", "batch-after-download"):
        proc = cli({**env, "ASSETPREP_CRASH_AT": point}, *base)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = subprocess.Popen([sys.executable, "-m", "assetprep", "batch", *base], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    journal = next(state.glob("batches/*/journal.sqlite"))
    end = time.monotonic() + 120
    import sqlite3

    while time.monotonic() < end:  # until one more video is submitted by this run
        with sqlite3.connect(journal) as db:
            submitted = db.execute("SELECT COUNT(*) FROM rows WHERE state = 'submitted'").fetchone()[0]
        if submitted:
            break
        time.sleep(0.1)
    killed.kill()
    killed.wait(timeout=30)
    proc = cli(env, *base)
    assert proc.returncode == 0, proc.stderr
    assert len(creates(sb)) == 4 and len(account(sb)) == 4  # exactly one video per row
    rows = read_results(tmp_path / "leads-videos" / "results.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"downloaded"}
    assert len({r["video_id"] for r in rows}) == 4
    for r in rows:
        assert probe(r["output"]).video is not None
    leftovers = [p for p in (tmp_path / "leads-videos").iterdir() if p.name.endswith(".part")]
    assert leftovers == []


# Each card's picture (a CSS background, one class per distinct picture), decoded by the browser: its width or 0.
def test_a_wrong_key_an_unknown_replica_or_a_missing_bucket_stops_the_batch_before_any_recording(world, tmp_path):
    """Each would fail every row, after every background was recorded; one request each finds it first. A key
    prefix that HTTP would rewrite and a malformed --listen the same, and --dry-run finds them all."""
    sb, _, env = world()
    manifest = leads_manifest(tmp_path, 2)
    args = [str(manifest), "--allow-private-networks", "--poll", "0.2"]
    key = {**env, "TAVUS_API_KEY": "wrong-key-0123456789"}
    cases = [
        (key, [*args, "--replica", DEFAULT_REPLICA], "(HTTP 401)"),
        (env, [*args, "--replica", "r0000000000"], "replica_id 'r0000000000' (row 2, row 3): not found"),
        ({**env, "ASSETPREP_BUCKET": "no-such-bucket-x"}, [*args, "--replica", DEFAULT_REPLICA],
         "bucket 'no-such-bucket-x' does not exist"),
        (env, [*args, "--replica", DEFAULT_REPLICA, "--prefix", "a//b"], "invalid key prefix 'a//b'"),
        (env, [*args, "--replica", DEFAULT_REPLICA, "--listen", "127.0.0.1:abc"], "--listen must look like HOST:PORT"),
    ]  # fmt: skip
    for (case_env, case_args, said), dry in itertools.product(cases, ([], ["--dry-run"])):
        proc = cli(case_env, *case_args, *dry, timeout=120)  # --dry-run: the same checks (it missed the bucket)
        assert proc.returncode == 1 and said in proc.stderr, (dry, proc.stderr)
        assert "Traceback" not in proc.stderr and "wrong-key-0123456789" not in proc.stderr + proc.stdout
    folder = batch_dir_for(manifest, PublishSettings(runs_dir=tmp_path / "state" / "runs"), None)[1]
    assert not list((folder / "prep").glob("*")) and not creates(sb)  # nothing recorded, nothing made


def test_guard_blocks_manifest_urls_to_loopback_by_default(world, site, tmp_path):
    sb, run, _ = world()
    manifest = write(tmp_path / "g.csv", f"background,script,background_seconds\n{site}/red.html,Hi,3\n")
    result = run(manifest, allow_private_networks=False, background_preset="background-720p")
    assert result.rows[0]["status"] == "failed"
    assert "blocked request to a private address" in result.rows[0]["error"]
    assert creates(sb) == []
    allowed = run(manifest, allow_private_networks=True, retry_failed=True, background_preset="background-720p")
    assert allowed.ok and len(creates(sb)) == 1


def test_an_api_outage_mid_batch_is_waited_out_not_the_end_of_the_batch(world, tmp_path, caplog, monkeypatch):
    """The API stopping for longer than the client's retries (~15 s by default; one retry here) ended a campaign
    with "list videos: cannot reach ..." while its videos rendered; rows being sent then failed ("create: cannot
    reach"), though nothing had arrived. Now rows keep their state, the batch says the API is not answering, and
    goes on when it answers."""
    from assetprep import batch

    monkeypatch.setattr(batch, "_DOWNLOAD_RETRY_S", 1.0)  # a download cut by the outage is tried again soon
    monkeypatch.setattr(batch, "_LOST_CREATE_S", 3.0)  # a create killed with the server is sent again soon
    sb, run, _ = world()
    manifest = write(tmp_path / "leads.csv", "first_name,script\n" + "".join(f"O{i},Hi O{i}.\n" for i in range(12)))

    def outage() -> None:
        end = time.monotonic() + 60
        while not creates(sb) and time.monotonic() < end:
            time.sleep(0.05)
        sb.kill()  # the API and its file host are gone for longer than the client retries
        time.sleep(6)
        sb.start()  # same address, same videos

    cut = threading.Thread(target=outage)
    cut.start()
    try:
        with caplog.at_level(logging.WARNING, logger="assetprep"):
            result = run(manifest, max_retries=1, deadline=120)
    finally:
        cut.join(timeout=90)
    assert result.ok and result.counts == {"downloaded": 12}, result.rows
    said = caplog.text
    assert "the API is not answering" in said and "the API answers again" in said
    names = [v.video_name for v in account(sb)]
    assert len(names) == len(set(names)) == 12


def test_an_s3_outage_mid_batch_is_waited_out_without_preparing_anything_again(own_sandboxes, gen, tmp_path, caplog,
                                                                             monkeypatch):  # fmt: skip
    """S3 stopping while a campaign ran failed every row whose prepared file it hit ("cannot reach S3"): the
    recording or conversion was thrown away and the rows needed a rerun. Now the prepared file waits for S3 (its
    upload is tried again) and a row whose file S3 cannot serve for the preflight waits in the submit stage.
    Two real outages of the test's own SeaweedFS: at the first upload, and at the first preflight."""
    from assetprep import _prepare, batch
    from assetprep.s3local import LocalS3
    from assetprep.upload import S3Settings, ensure_bucket, make_s3_client

    monkeypatch.setattr(_prepare, "_STORAGE_PAUSES", (1.0,))
    monkeypatch.setattr(batch, "_OUTAGE_PAUSE_S", 1.0)
    store = LocalS3(tmp_path / "s3").start()
    restarts: list[threading.Thread] = []
    try:
        store.requested_port = store.port  # restarted at the same address, with the same data
        client = make_s3_client(S3Settings(endpoint_url=store.endpoint_url, access_key_id=store.access_key,
                                           secret_access_key=store.secret_key), retries=1)  # fmt: skip
        ensure_bucket(client, TEST_BUCKET, create=True)

        def outage_at_first(module, name):
            real = getattr(module, name)
            calls = []

            def first_call_stops_s3(*args, **kwargs):
                calls.append(1)
                if len(calls) == 1:
                    for earlier in restarts:  # one outage at a time: killing S3 while it restarts raced (fresh clone)
                        earlier.join(timeout=30)
                    store.kill()  # for longer than botocore's retries
                    restarts.append(threading.Thread(target=lambda: (time.sleep(2), store.start())))
                    restarts[-1].start()
                return real(*args, **kwargs)

            monkeypatch.setattr(module, name, first_call_stops_s3)
            return calls

        uploads = outage_at_first(_prepare, "upload_file")
        preflights = outage_at_first(batch, "preflight")
        conversions: list[Path] = []  # none may be done twice
        convert = _prepare.prepare_audio
        monkeypatch.setattr(_prepare, "prepare_audio", lambda src, out: conversions.append(src) or convert(src, out))
        for tone in (300, 400, 500):
            shutil.copy(gen(f"t{tone}.wav", "-f", "lavfi", "-i", f"sine=f={tone}:d=3"), tmp_path / f"t{tone}.wav")
        manifest = write(tmp_path / "m.csv", "first_name,audio\nA,t300.wav\nB,t400.wav\nC,t500.wav\n")
        sb, _ = own_sandboxes(tmp_path / "state" / "runs")
        settings = PublishSettings(runs_dir=tmp_path / "state" / "runs", bucket=TEST_BUCKET)
        opts = BatchOptions(poll_interval=0.2, deadline=120, replica_id=DEFAULT_REPLICA, allow_private_networks=True)
        with (
            caplog.at_level(logging.WARNING, logger="assetprep"),
            TavusClient(api_key=sb.api_key, base_url=sb.base_url, timeout=20) as api,
        ):
            result = batch_publish(manifest, opts, client=api, s3_client=client, settings=settings)
        for t in restarts:
            t.join(timeout=30)
        assert result.ok and result.counts == {"downloaded": 3}, result.rows
        assert len(conversions) == 3 and len(uploads) > 3 and len(preflights) > 3  # converted once, sent again
        said = caplog.text
        assert "S3 is not answering" in said and said.count("the prepared audio is kept and sent again") == 3
        assert "S3 answers again" in said  # the submit stage's preflight waited, then went on
        assert len(creates(sb)) == 3

        # An outage past the wait fails the row at its preparation; any rerun (no --retry-failed) sends it then ...
        monkeypatch.setattr(_prepare, "STORAGE_WAIT_S", 1.5)
        send = _prepare.upload_file
        monkeypatch.setattr(_prepare, "upload_file", lambda *a, **k: (store.kill(), send(*a, **k))[1])
        shutil.copy(gen("t600.wav", "-f", "lavfi", "-i", "sine=f=600:d=3"), tmp_path / "t600.wav")
        later = write(tmp_path / "later.csv", "first_name,audio\nD,t600.wav\n")
        with TavusClient(api_key=sb.api_key, base_url=sb.base_url, timeout=20) as api:
            failed = batch_publish(later, opts, client=api, s3_client=client, settings=settings)
            [row] = failed.rows
            assert row["status"] == "failed" and "cannot reach S3" in row["error"], row
            monkeypatch.setattr(_prepare, "upload_file", send)
            store.start()
            again = batch_publish(later, opts, client=api, s3_client=client, settings=settings)
        assert again.ok and again.counts == {"downloaded": 1} and len(creates(sb)) == 4, again.rows
        # ... from the file the failed run made and kept: it was not converted again.
        assert [c.name for c in conversions].count("t600.wav") == 1, conversions
    finally:
        for t in restarts:
            t.join(timeout=30)
        store.stop()


def test_a_kept_prepared_file_is_used_again_only_when_complete_and_readable(gen, tmp_path):
    """What a rerun takes from the batch folder instead of recording or converting again: the file's mark is written
    after it, so a file without one (a kill in between) or one ffprobe cannot read is made again."""
    from assetprep._prepare import _made_before, _made_mark

    made = tmp_path / "abc-audio.wav"
    shutil.copy(gen("tone.wav", "-f", "lavfi", "-i", "sine=f=440:d=1"), made)
    assert _made_before(made) is None  # no mark
    _made_mark(made).write_text(json.dumps({"warnings": ["the audio is silent"]}))
    warnings, info = _made_before(made)
    assert warnings == ["the audio is silent"] and abs(info.duration - 1.0) < 0.05  # its probe, used for the upload
    made.write_bytes(b"RIFF" + bytes(100))  # damaged since
    assert _made_before(made) is None
    made.unlink()
    assert _made_before(made) is None


def test_a_create_lost_with_the_server_is_sent_again_once_the_account_shows_it_never_arrived(world, tmp_path,
                                                                                          caplog, monkeypatch):  # fmt: skip
    """A create whose connection failed after it was sent (the server died with it) left its row "submitting":
    polls looked for its name and, not finding it, waited for the batch deadline (found by the outage test)."""
    from assetprep import batch

    monkeypatch.setattr(batch, "_LOST_CREATE_S", 1.0)
    sb, run, _ = world(lose_creates=1)
    manifest = write(tmp_path / "m.csv", "first_name,script\nAnn,Hi Ann.\nBob,Hi Bob.\n")
    with caplog.at_level(logging.WARNING, logger="assetprep"):
        result = run(manifest, deadline=120)
    assert result.ok and result.counts == {"downloaded": 2} and result.seconds < 60, result.rows
    assert "its create never arrived" in caplog.text
    names = [v.video_name for v in account(sb)]
    assert len(names) == len(set(names)) == 2  # the lost one sent again under its name, nothing twice


def test_a_download_the_file_host_refuses_is_tried_again_in_the_same_run(world, tmp_path, monkeypatch):
    """A download that failed (the file host answered 503) failed its row at once: the batch ended with exit 1 and
    the video waited for a rerun. It is tried again (twice, with a fresh record and link) before the row fails."""
    from assetprep import batch

    monkeypatch.setattr(batch, "_DOWNLOAD_RETRY_S", 0.3)
    manifest = write(tmp_path / "m.csv", "first_name,script\nAnn,Hi Ann.\nBob,Hi Bob.\n")
    sb, run, _ = world(fail_downloads=2)  # the first two video downloads are refused (fewer than a row's tries)
    result = run(manifest)
    assert result.ok and result.counts == {"downloaded": 2} and len(creates(sb)) == 2, result.rows
    refused = [c for c in sb.calls() if c["path"].startswith("/files/") and c["status"] == 503]
    assert len(refused) == 2
    # More refusals than tries: the row fails at its download (the video is kept for a rerun, never made again).
    sb2, run2, _ = world(fail_downloads=10)
    lost = run2(write(tmp_path / "one.csv", "first_name,script\nCy,Hi Cy.\n"))
    [row] = lost.rows
    assert row["status"] == "failed" and row["error"].startswith("download: ") and "503" in row["error"], row
    assert len([c for c in sb2.calls() if c["path"].startswith("/files/") and c["status"] == 503]) == 3


def test_a_429_storm_backs_off_the_whole_submit_stage(world, tmp_path):
    sb, run, _ = world(rate_limit=3.0)  # 3 requests/s for the whole API
    rows = "\n".join(f"Lead{i},Hi lead {i}" for i in range(8))
    manifest = write(tmp_path / "storm.csv", f"first_name,script\n{rows}\n")
    result = run(manifest, poll_interval=0.05)
    assert result.ok, result.rows
    statuses = Counter(c["status"] for c in sb.calls() if c["path"].startswith("/v2/"))
    assert statuses[429] > 0  # the storm happened
    assert len(creates(sb)) == 8 and len(account(sb)) == 8


def test_one_process_per_batch_and_per_run(world, tmp_path):
    _, run, env = world()
    manifest = leads_manifest(tmp_path, 2)
    settings = PublishSettings(runs_dir=tmp_path / "state" / "runs")
    _, folder = batch_dir_for(manifest, settings, None)
    with RunLock(folder, what="batch"):
        proc = cli(env, str(manifest), "--replica", DEFAULT_REPLICA)
        assert proc.returncode == 1 and f"(PID {os.getpid()})" in proc.stderr and "Traceback" not in proc.stderr
        with pytest.raises(JournalError, match=f"PID {os.getpid()}"):
            run(manifest)
    # A lock left by a dead process (its PID in the file, no flock held) is taken over.
    (folder / "lock").write_text("999999\n")
    assert run(manifest, background_preset="background-720p").ok

    # The journal remembers its API host: another sandbox is refused in one line, with what to do.
    other, run_other, _ = world()
    with pytest.raises(JournalError, match=r"belongs to the API at http://127\.0\.0\.1:") as err:
        run_other(manifest)
    assert "--batch-id" in str(err.value)
    assert creates(other) == []
    # A runs folder that cannot be written (here: below a file) is named, with the setting that moves it.
    (tmp_path / "a-file").write_text("x")
    blocked = cli({**env, "ASSETPREP_RUNS_DIR": str(tmp_path / "a-file" / "runs")}, str(manifest), "--replica",
                  DEFAULT_REPLICA)  # fmt: skip
    assert blocked.returncode == 1 and "Traceback" not in blocked.stderr and "internal error" not in blocked.stderr
    squeezed = "".join(blocked.stderr.split())  # the terminal's line breaks may fall anywhere in a long path
    assert "".join(f"cannot write the batch's folder {tmp_path / 'a-file'}".split()) in squeezed
    assert "ASSETPREP_RUNS_DIR" in blocked.stderr


def test_sigterm_stops_recordings_and_their_children_without_leftovers(world, tmp_path):
    sb, _, env = world()
    manifest = leads_manifest(tmp_path, 2, seconds=60)
    proc = subprocess.Popen([sys.executable, "-m", "assetprep", "batch", str(manifest), "--replica", DEFAULT_REPLICA,
                             "--allow-private-networks", "--poll", "0.2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    prep = tmp_path / "state" / "batches"
    end = time.monotonic() + 60
    while time.monotonic() < end and not list(prep.glob("*/prep/.*.part")):
        time.sleep(0.1)  # a recording is being written
    assert list(prep.glob("*/prep/.*.part")), "no recording started"
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and time.monotonic() - started < 30
    assert "interrupted" in err and "Traceback" not in err
    time.sleep(1.0)
    alive = [c for c in children if Path(f"/proc/{c}").exists()]
    assert alive == [], f"children left running: {alive}"
    assert list(prep.glob("*/prep/.*.part")) == []
    assert creates(sb) == []


def test_sigterm_while_s3_is_waited_for_keeps_the_prepared_file_for_the_rerun(own_sandboxes, gen, tmp_path):
    """The CLI, S3 gone once the audio is being converted: the upload waits for S3; SIGTERM ends that wait at once
    (exit 143, no partial file, no traceback); with S3 back the same command sends the kept file, not made again."""
    from assetprep.s3local import LocalS3
    from assetprep.upload import S3Settings, ensure_bucket, make_s3_client

    store = LocalS3(tmp_path / "s3").start()
    try:
        store.requested_port = store.port  # restarted at the same address
        ensure_bucket(make_s3_client(S3Settings(endpoint_url=store.endpoint_url, access_key_id=store.access_key,
                                                secret_access_key=store.secret_key)), TEST_BUCKET, create=True)  # fmt: skip
        shutil.copy(gen("long.wav", "-f", "lavfi", "-i", "sine=f=330:d=10"), tmp_path / "long.wav")
        manifest = write(tmp_path / "m.csv", "first_name,audio\nAnn,long.wav\n")
        sb, env = own_sandboxes(tmp_path / "state" / "runs")
        env = {**env, **store.env()}
        cmd = [sys.executable, "-m", "assetprep", "batch", str(manifest), "--replica", DEFAULT_REPLICA,
               "--allow-private-networks", "--poll", "0.2"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said: list[str] = []
        reader = threading.Thread(target=lambda: said.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
        reader.start()
        prep = tmp_path / "state" / "batches"
        end = time.monotonic() + 60
        while time.monotonic() < end and not list(prep.glob("*/prep/.*.part")):
            time.sleep(0.005)  # the conversion is being written
        store.kill()
        kept = list(prep.glob("*/prep/.*.made.json"))
        end = time.monotonic() + 30
        while time.monotonic() < end and not kept:
            time.sleep(0.05)
            kept = list(prep.glob("*/prep/.*.made.json"))
        assert kept, "the conversion did not finish"
        end = time.monotonic() + 60
        while time.monotonic() < end and not any("S3 is not answering" in line for line in said):
            time.sleep(0.05)  # the upload met the dead S3 and waits
        assert proc.poll() is None, said
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.wait(timeout=60)
        reader.join(timeout=10)
        err = "".join(said)
        assert proc.returncode == 128 + signal.SIGTERM and time.monotonic() - started < 5, err
        assert "S3 is not answering" in err and "interrupted" in err and "Traceback" not in err
        assert list(prep.glob("*/prep/.*.part")) == [] and creates(sb) == []
        [made] = [f for f in prep.glob("*/prep/*.wav")]
        inode = made.stat().st_ino

        store.start()
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert made.stat().st_ino == inode  # sent as it was: not converted again
        assert len(creates(sb)) == 1
    finally:
        store.stop()


def test_max_failures_stops_submitting_new_rows(world, site, tmp_path):
    sb, run, _ = world()
    lines = ["first_name,background,script,background_seconds"]
    lines += [f"Gone{i},{site}/missing.html,Hi {{{{ first_name }}}}.,3" for i in range(3)]  # a 404: fails when prepared
    # A page no other test uploaded: an already-uploaded background would make these rows ready before the 404.
    good = write(tmp_path / "good.html", f"<html><body style='background:#123456'>{tmp_path.name}</body></html>")
    lines += [f"Good{i},{good},Hi {{{{ first_name }}}}.,3" for i in range(3)]
    manifest = write(tmp_path / "leads.csv", "\n".join(lines) + "\n")
    result = run(manifest, max_failures=1, jobs=1, background_preset="background-720p")  # preparations in row order
    assert not result.ok and result.counts.get("failed") == 3
    rows = read_results(result.results_csv)
    assert [r["status"] for r in rows] == ["failed"] * 3 + ["pending"] * 3
    assert all(r["error"] == "not started: --max-failures 1 reached" for r in rows[3:])
    assert creates(sb) == []  # nothing was submitted after the limit
