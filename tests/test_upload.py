"""Upload, presign and preflight against a real SeaweedFS (weed mini), over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from boto3.s3.transfer import TransferConfig

from assetprep import ConfigError, PreflightError, StorageError
from assetprep._files import ShrankError, file_sha256, hash_range
from assetprep.errors import UploadError
from assetprep.s3local import LocalS3, free_port_block
from assetprep.upload import (
    S3Settings,
    digest_file,
    make_s3_client,
    part_size_for,
    preflight,
    presign,
    upload_and_presign,
    upload_file,
    upload_files,
)

MiB = 1024 * 1024

MP4_HEAD = b"\x00\x00\x00\x10ftypisom\x00\x00\x02\x00"  # what an MP4 starts with (16 bytes)


def settings_for(server: LocalS3, **overrides) -> S3Settings:
    values = {"endpoint_url": server.endpoint_url, "access_key_id": server.access_key,
              "secret_access_key": server.secret_key, **overrides}  # fmt: skip
    return S3Settings(**values)


@pytest.fixture
def client(s3):
    return make_s3_client(settings_for(s3))


@pytest.fixture
def bucket(client, request):
    name = "t-" + hashlib.sha1(request.node.name.encode()).hexdigest()[:12]
    client.create_bucket(Bucket=name)
    return name


def count_calls(client) -> list[str]:
    calls: list[str] = []
    client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    return calls


def count_requests(monkeypatch) -> Counter[str]:
    """The requests the upload's own HTTP pool sends, by kind: "PUT", "HEAD", "GET url" (a presigned URL: check or
    preflight), "GET list" (the objects under the prefix), "GET uploads" (unfinished multipart uploads),
    "HEAD bucket"."""
    from assetprep._s3http import HttpPool

    seen: Counter[str] = Counter()
    send = HttpPool.request

    def counted(self, method, url, **kw):
        parts = urlsplit(url)
        kind = (
            "list"
            if "list-type=" in parts.query
            else "uploads"
            if parts.query.startswith("uploads")
            else "url"
            if "X-Amz-Signature=" in parts.query
            else "bucket"
            if parts.path.count("/") == 1
            else ""
        )
        seen[f"{method} {kind}".strip()] += 1
        return send(self, method, url, **kw)

    monkeypatch.setattr(HttpPool, "request", counted)
    return seen


def test_upload_presign_and_range(s3, client, bucket, tmp_path):
    f = tmp_path / "clip.mp4"
    f.write_bytes(MP4_HEAD + os.urandom(300_000 - len(MP4_HEAD)))
    [r] = upload_and_presign([f], bucket=bucket, settings=settings_for(s3))
    stored = client.get_object(Bucket=bucket, Key=r.object.key)
    assert stored["Body"].read() == f.read_bytes()
    assert stored["ContentType"] == "video/mp4" and 'filename="clip.mp4"' in stored["ContentDisposition"]
    assert r.object.key.startswith("assetprep/") and r.object.key.endswith("/clip.mp4")
    assert urlsplit(r.url).path.endswith(".mp4")  # Tavus looks at the extension
    assert httpx.get(r.url).content == f.read_bytes()
    part = httpx.get(r.url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == f.read_bytes()[10:20]
    assert part.headers["content-range"] == "bytes 10-19/300000"


def test_any_file_name_is_uploaded_and_served_under_its_own_name(s3, client, bucket, tmp_path):
    """Line breaks, quotes, %, +, #, ? and non-ASCII in a name: the key keeps it, the URL serves the bytes, and the
    Content-Disposition header stays one line (a name with a line break failed with "Invalid header value")."""
    from urllib.parse import unquote

    names = ["a\nb.mp4", "a\rX-Evil: 1.mp4", 'q"uote.mp4', "Café 日本.mp4", "pct%20+x.mp4", "hash#q?x.mp4"]
    files = []
    for i, name in enumerate(names):
        (tmp_path / str(i)).mkdir()
        files.append(tmp_path / str(i) / name)
        files[-1].write_bytes(MP4_HEAD + os.urandom(1000))
    results = upload_and_presign(files, bucket=bucket, settings=settings_for(s3))
    for f, r in zip(files, results, strict=True):
        assert r.object.key.endswith("/" + f.name)
        assert httpx.get(r.url).content == f.read_bytes()
        disposition = client.head_object(Bucket=bucket, Key=r.object.key)["ContentDisposition"]
        headers = client.head_object(Bucket=bucket, Key=r.object.key)["ResponseMetadata"]["HTTPHeaders"]
        assert not any(ord(c) < 32 for c in disposition) and "x-evil" not in headers  # botocore lower-cases them
        assert unquote(disposition.split("filename*=UTF-8''")[1]) == f.name


def test_reupload_sends_zero_bytes(s3, client, bucket, tmp_path):
    f = tmp_path / "speech.wav"
    f.write_bytes(b"RIFF" + os.urandom(50_000 - 4))
    first = upload_file(f, bucket=bucket, client=client)
    assert not first.skipped and first.bytes_sent == 50_000
    calls = count_calls(client)
    again = upload_file(f, bucket=bucket, client=client)
    assert again.skipped and again.bytes_sent == 0 and again.key == first.key
    assert not {"PutObject", "UploadPart", "CreateMultipartUpload"} & set(calls)
    assert client.head_object(Bucket=bucket, Key=first.key)["ContentType"] == "audio/wav"


def test_multipart_large_file(s3, client, bucket, tmp_path):
    f = tmp_path / "big.mp4"
    with open(f, "wb") as out:
        for _ in range(70):
            out.write(os.urandom(MiB))
        out.seek(0)
        out.write(MP4_HEAD)  # starts like an MP4, as upload checks
    calls = count_calls(client)
    [r] = upload_and_presign([f], bucket=bucket, settings=settings_for(s3), client=client)
    # The parts went through the fast path (sendfile, signed like botocore signs), the rest through botocore.
    assert "UploadPart" not in calls and {"CreateMultipartUpload", "CompleteMultipartUpload"} <= set(calls)
    head = client.head_object(Bucket=bucket, Key=r.object.key)
    assert head["ContentLength"] == 70 * MiB and head["ETag"].endswith('-5"')  # multipart ETag: 5 parts of 16 MiB
    digest = hashlib.sha256()
    with httpx.stream("GET", r.url) as resp:
        for chunk in resp.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == r.object.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()


def test_expired_url_fails_preflight(client, bucket, tmp_path):
    f = tmp_path / "a.mp3"
    f.write_bytes(b"ID3" + os.urandom(1000))
    obj = upload_file(f, bucket=bucket, client=client)
    # X-Amz-Date is whole seconds (truncated), so a URL lives between ExpiresIn-1 and ExpiresIn seconds: 1 s was
    # flaky under load (valid for as little as a few ms).
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": obj.key}, ExpiresIn=3)
    preflight(url, content_type="audio/mpeg", size=obj.size)  # still valid
    time.sleep(4.2)
    with pytest.raises(PreflightError, match=r"403.*expired") as info:
        preflight(url, content_type="audio/mpeg")
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    assert signature not in str(info.value) and "X-Amz-Credential" not in str(info.value)


def test_tampered_url_and_wrong_type_fail_preflight(client, bucket, tmp_path):
    f = tmp_path / "a.wav"
    f.write_bytes(b"RIFF" + os.urandom(1000))
    obj = upload_file(f, bucket=bucket, client=client)
    url, _ = presign(client, bucket, obj.key, expires_in=600)
    tampered = url.replace("X-Amz-Expires=600", "X-Amz-Expires=6000")
    with pytest.raises(PreflightError, match="403") as info:
        preflight(tampered)
    assert "Signature" not in str(info.value)
    with pytest.raises(PreflightError, match="Content-Type 'audio/wav', expected 'video/mp4'"):
        preflight(url, content_type="video/mp4")


def test_wrong_credentials_do_not_leak(s3, bucket, tmp_path):
    f = tmp_path / "a.mp4"
    f.write_bytes(MP4_HEAD + b"x" * 84)
    bad_secret = "WRONG-secret-" + "z" * 20
    bad = make_s3_client(settings_for(s3, secret_access_key=bad_secret), retries=0)
    with pytest.raises(StorageError, match="rejected the credentials") as info:
        upload_file(f, bucket=bucket, client=bad)
    assert bad_secret not in str(info.value) and s3.secret_key not in str(info.value)


def test_missing_bucket_and_create(client, tmp_path):
    f = tmp_path / "a.mp4"
    f.write_bytes(MP4_HEAD + b"x" * 84)
    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket-x' does not exist.*--create-bucket"):
        upload_file(f, bucket="no-such-bucket-x", client=client)
    obj = upload_file(f, bucket="created-on-demand", client=client, create_bucket=True)
    assert client.head_object(Bucket="created-on-demand", Key=obj.key)["ContentLength"] == 100


def test_a_prefix_that_http_would_rewrite_is_refused_before_any_request(s3, client, bucket, tmp_path):
    """'../x' was sent as is: SeaweedFS answered a bare 400 ("answered 400 400"); a server that normalizes the path
    would store the object under another key or bucket than the one the URL is presigned for."""
    f = tmp_path / "a.mp4"
    f.write_bytes(MP4_HEAD + b"x" * 84)
    for prefix in ("../x", "a//b", "a/./b", "runs/..", "a\nb", "p" * 513):
        with pytest.raises(StorageError, match=r"invalid key prefix .*(segment|control|512 bytes)"):
            upload_files([f], bucket=bucket, client=client, prefix=prefix)
        with pytest.raises(StorageError, match="invalid key prefix"):
            upload_file(f, bucket=bucket, client=client, prefix=prefix)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    for prefix in ("", "/", "campaign/2026-12/", "/a/b", "a.b/..c"):  # what keys may start with
        assert upload_files([f], bucket=bucket, client=client, prefix=prefix)[0].key.endswith("/a.mp4")
    proc = subprocess.run([sys.executable, "-m", "assetprep", "upload", str(f), "--bucket", bucket, "--prefix", "../x"],
                          capture_output=True, text=True, env={**os.environ, **s3.env()}, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: invalid key prefix '../x': no '.' or '..' segment and no '//' (fix --prefix or ASSETPREP_PREFIX)"
    ], proc.stderr


def test_unreachable_endpoint_fails_fast(tmp_path):
    f = tmp_path / "a.mp4"
    f.write_bytes(MP4_HEAD)
    (port,) = free_port_block(1)
    c = make_s3_client(S3Settings(endpoint_url=f"http://127.0.0.1:{port}", access_key_id="K", secret_access_key="S"),
                       connect_timeout=1, retries=0)  # fmt: skip
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot reach S3 at http://127.0.0.1:{port}"):
        upload_file(f, bucket="whatever", client=c)
    assert time.monotonic() - started < 10


def test_bad_files_and_expiry(s3, client, bucket, tmp_path):
    with pytest.raises(StorageError, match="input file not found"):
        upload_file(tmp_path / "nope.mp4", bucket=bucket, client=client)
    f = tmp_path / "a.mp4"
    f.write_bytes(MP4_HEAD)
    for bad in (8 * 86400, 30):
        with pytest.raises(ConfigError, match="between 1 minute and 7 days"):
            upload_and_presign([f], bucket=bucket, settings=settings_for(s3), expires_in=bad)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # refused before any upload


def test_server_killed_during_multipart_upload(tmp_path):
    f = tmp_path / "big.mp4"
    with open(f, "wb") as out:
        for _ in range(24):
            out.write(os.urandom(MiB))
        out.seek(0)
        out.write(MP4_HEAD)  # starts like an MP4, as upload checks
    server = LocalS3(tmp_path / "s3").start()
    try:
        c = make_s3_client(settings_for(server), retries=0, connect_timeout=1)
        c.create_bucket(Bucket="faults")
        small_parts = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2)

        def kill_midway(p):
            if p.done > 6 * MiB and server.proc is not None:
                server.kill()

        with pytest.raises(StorageError, match="uploading"):
            upload_file(f, bucket="faults", client=c, transfer_config=small_parts, on_progress=kill_midway)
        server.start()  # same data folder and credentials, new ports
        c = make_s3_client(settings_for(server))
        assert c.list_objects_v2(Bucket="faults").get("KeyCount", 0) == 0  # no half object under any key
        obj = upload_file(f, bucket="faults", client=c, transfer_config=small_parts)
        body = c.get_object(Bucket="faults", Key=obj.key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == obj.sha256
    finally:
        server.stop()
    assert server.proc is None


def test_embedded_server_volume_size_is_settable(tmp_path):
    """The benchmark runs SeaweedFS with big volumes (fewer stalls while it opens new ones): the limit reaches it."""
    server = LocalS3(tmp_path / "s3", volume_size_mb=1).start()
    try:
        c = make_s3_client(settings_for(server))
        c.create_bucket(Bucket="volumes")
        for i in range(12):
            c.put_object(Bucket="volumes", Key=f"k{i}", Body=os.urandom(700_000))
        sizes = [p.stat().st_size for p in (tmp_path / "s3").rglob("*.dat")]
        # mini's default (128 MB) keeps all 8.4 MB in one volume; a 1 MB limit spreads them (measured: 6 x 1.4 MB)
        assert len(sizes) >= 4 and max(sizes) < 3_000_000, sizes
    finally:
        server.stop()


def test_server_killed_during_many_small_uploads(tmp_path):
    """The fast path meets a dead server: every file still ends as uploaded or as one clear error (botocore asked
    again and named it), within bounded time; what was uploaded survives and is whole."""
    paths = []
    for i in range(120):
        f = tmp_path / "in" / f"v{i}.wav"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"RIFF" + os.urandom(20_000))
        paths.append(f)
    server = LocalS3(tmp_path / "s3").start()
    try:
        c = make_s3_client(settings_for(server), retries=0, connect_timeout=1)
        c.create_bucket(Bucket="faults")

        def kill_midway(p):
            if p.stage.startswith("upload 20/") and server.proc is not None:
                server.kill()

        started = time.monotonic()
        with pytest.raises(UploadError) as err:
            upload_and_presign(paths, bucket="faults", client=c, settings=settings_for(server), jobs=4,
                               on_progress=kill_midway)  # fmt: skip
        assert time.monotonic() - started < 60
        failures = err.value.failures
        assert failures and all(
            "cannot reach S3" in str(e) or "broke off" in str(e) or "not reachable" in str(e) for _, e in failures
        ), [str(e) for _, e in failures[:3]]
        done = [r for r in err.value.results if r is not None]
        assert len(done) >= 20 and len(done) + len(failures) == len(paths)
        server.start()  # same data folder, new ports: what was reported uploaded is there, whole
        c = make_s3_client(settings_for(server))
        for r in done:
            body = c.get_object(Bucket="faults", Key=r.object.key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == r.object.sha256
    finally:
        server.stop()


_UPLOAD_AND_LIST_MODULES = """
import json, sys
from assetprep.upload import upload_and_presign
urls = [r.url for r in upload_and_presign(sys.argv[2:], bucket=sys.argv[1])]
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"boto3", "botocore", "s3transfer"})
print(json.dumps({"urls": urls, "loaded": loaded}))
"""


def test_keys_and_endpoint_in_the_environment_upload_without_boto3(s3, bucket, tmp_path):
    """What `assetprep upload` pays before its work (scripts/bench_upload.py --cli): importing boto3 and building a
    client cost a command ~0.25 s; small files to an S3-compatible endpoint with its keys given need neither."""
    files = []
    for i in range(3):
        files.append(tmp_path / f"clip{i}.mp4")
        files[-1].write_bytes(MP4_HEAD + os.urandom(5000 + i))
    env = {**os.environ, **s3.env()}  # the lines `assetprep s3 serve` prints
    for name in ("AWS_PROFILE", "AWS_CREDENTIAL_EXPIRATION", "AWS_SESSION_TOKEN"):
        env.pop(name, None)

    def run() -> dict:
        proc = subprocess.run([sys.executable, "-c", _UPLOAD_AND_LIST_MODULES, bucket, *map(str, files)], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert [httpx.get(url).content for url in out["urls"]] == [f.read_bytes() for f in files]
        return out

    assert run()["loaded"] == []
    # Expiring keys are botocore's to refresh: the same upload then goes through the real client.
    env["AWS_CREDENTIAL_EXPIRATION"] = "2099-01-01T00:00:00Z"
    assert run()["loaded"] == ["boto3", "botocore", "s3transfer"]


_CLI_AND_LIST_MODULES = """
import atexit, runpy, sys
heavy = {"boto3", "botocore", "s3transfer", "rich", "ssl", "http", "urllib.request", "html"}
atexit.register(lambda: print("loaded:", sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy),
                              file=sys.stderr))
sys.argv = ["assetprep", *sys.argv[1:]]
runpy.run_module("assetprep", run_name="__main__")
"""


def test_the_upload_command_imports_only_what_its_work_needs(s3, bucket, tmp_path):
    """The whole command to an http endpoint with its keys given, output to a pipe: no boto3, no rich (no bar to
    draw), no TLS or http.client (the pool speaks HTTP itself), no urllib.request (no proxy variables)."""
    files = []
    for i in range(8):  # enough for the listing
        files.append(tmp_path / f"clip{i}.mp4")
        files[-1].write_bytes(MP4_HEAD + os.urandom(3000 + i))
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")} | s3.env()
    for name in ("AWS_PROFILE", "AWS_CREDENTIAL_EXPIRATION", "AWS_SESSION_TOKEN", "FORCE_COLOR", "TTY_COMPATIBLE"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", _CLI_AND_LIST_MODULES, "upload", *map(str, files), "--bucket",
                           bucket], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "loaded: []", proc.stderr
    urls = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  http")]
    assert [httpx.get(u).content for u in urls] == [f.read_bytes() for f in files]


def test_cli_upload_json_and_no_secret_in_output(s3, tmp_path):
    f = tmp_path / "speech.mp3"
    f.write_bytes(b"ID3" + os.urandom(2000))
    env = {**os.environ, **s3.env()}
    cmd = [sys.executable, "-m", "assetprep", "upload", str(f), "--bucket", "cli-bucket", "--create-bucket",
           "--expires", "2h", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [obj] = json.loads(proc.stdout)["objects"]
    assert obj["content_type"] == "audio/mpeg" and obj["file_uri"].startswith("s3://cli-bucket/assetprep/")
    assert httpx.get(obj["url"]).content == f.read_bytes()
    assert s3.secret_key not in proc.stdout + proc.stderr
    env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret-" + "q" * 24
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "rejected the credentials" in lines[0] and env["AWS_SECRET_ACCESS_KEY"] not in proc.stderr
    proc = subprocess.run([*cmd[:-3], "--expires", "8d"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "between 1 minute and 7 days" in proc.stderr


def test_s3_serve_command_stops_weed_on_sigterm(tmp_path):
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "assetprep", "s3", "serve", "--dir", str(tmp_path / "s3")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        lines = [proc.stdout.readline() for _ in range(7)]
        assert lines[-1] == "Ctrl-C to stop.\n"
        env = dict(line.removeprefix("export ").strip().split("=", 1) for line in lines if line.startswith("export "))
        c = make_s3_client(S3Settings(endpoint_url=env["AWS_ENDPOINT_URL_S3"], access_key_id=env["AWS_ACCESS_KEY_ID"],
                                      secret_access_key=env["AWS_SECRET_ACCESS_KEY"]))  # fmt: skip
        # The bucket it names is there (the README's tour uploads to it as written).
        assert env["ASSETPREP_BUCKET"] == "assetprep"
        c.create_bucket(Bucket="served")
        assert [b["Name"] for b in c.list_buckets()["Buckets"]] == ["assetprep", "served"]
        weed_pids = [p for p in os.listdir("/proc") if p.isdigit() and _is_weed_under(tmp_path, p)]
        assert weed_pids
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert not [p for p in weed_pids if os.path.exists(f"/proc/{p}") and _is_weed_under(tmp_path, p)]


def _is_weed_under(folder, pid: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part == b"mini" for part in cmdline) and any(str(folder).encode() in part for part in cmdline)


def test_a_file_named_like_media_must_be_that_media(client, bucket, tmp_path):
    cases = (("notes.mp4", b"just some text\n", "text"), ("x.wav", b"\x00\x01\x02" * 30, "something else"),
             ("y.png", b"GIF89a" + bytes(40), "something else"))  # fmt: skip
    for name, content, kind in cases:
        f = tmp_path / name
        f.write_bytes(content)
        suffix = name.split(".")[1]
        with pytest.raises(StorageError, match=f"not uploaded: {name} is named .{suffix} but its content is {kind}"):
            upload_file(f, bucket=bucket, client=client, prefix="named")
    assert client.list_objects_v2(Bucket=bucket, Prefix="named/").get("KeyCount", 0) == 0


def test_stale_multipart_uploads_under_the_prefix_are_aborted(client, bucket):
    """What a killed upload leaves: parts of an unfinished multipart upload. Only the prefix's, only old ones."""
    from assetprep.upload import abort_stale_uploads

    mine = client.create_multipart_upload(Bucket=bucket, Key="stale/abc/killed.mp4")["UploadId"]
    client.upload_part(Bucket=bucket, Key="stale/abc/killed.mp4", UploadId=mine, PartNumber=1, Body=b"x" * 1024)
    other = client.create_multipart_upload(Bucket=bucket, Key="elsewhere/other.mp4")["UploadId"]

    def open_uploads(prefix: str) -> list[str]:
        return [u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])]

    assert open_uploads("stale/") == [mine]
    assert abort_stale_uploads(client, bucket, "stale") == 0  # younger than an hour: maybe a live upload
    assert abort_stale_uploads(client, bucket, "stale", older_than=0) == 1
    assert open_uploads("stale/") == [] and open_uploads("elsewhere/") == [other]
    client.abort_multipart_upload(Bucket=bucket, Key="elsewhere/other.mp4", UploadId=other)


def test_many_files_concurrently_keep_order_bytes_and_shared_keys(s3, client, bucket, tmp_path, monkeypatch):

    # 300 files: the same names in three folders, 20 of them with the same bytes in two folders, one empty and one
    # that cannot be read (as root a permission bit does not stop reading: a FIFO stands in, it would block open()).
    paths = []
    for i in range(300):
        f = tmp_path / f"d{i // 100}" / f"clip{i % 100}.mp3"
        f.parent.mkdir(exist_ok=True)
        same = i // 100 == 2 and i % 100 < 20
        f.write_bytes(paths[i % 100].read_bytes() if same else b"ID3" + os.urandom(1000 + 37 * i))
        paths.append(f)
    empty, unreadable = paths[150], paths[230]
    empty.write_bytes(b"")
    unreadable.unlink()
    if os.geteuid() == 0:
        os.mkfifo(unreadable)
    else:
        unreadable.write_bytes(b"ID3")
        unreadable.chmod(0)
    calls = count_calls(client)
    requests = count_requests(monkeypatch)
    reports = []
    with pytest.raises(UploadError) as err:
        upload_and_presign(paths, bucket=bucket, client=client, settings=settings_for(s3), jobs=16,
                           on_progress=reports.append)  # fmt: skip
    assert [path for path, _ in err.value.failures] == [str(empty), str(unreadable)]
    assert "2 of 300 files not uploaded" in str(err.value) and str(empty) in str(err.value)
    assert str(unreadable) in str(err.value)
    results = err.value.results
    assert [i for i, r in enumerate(results) if r is None] == [150, 230]
    with httpx.Client() as http:
        for path, r in zip(paths, results, strict=True):
            if r is not None:
                assert r.object.key.endswith("/" + path.name)
                assert hashlib.sha256(http.get(r.url).content).hexdigest() == file_sha(path) == r.object.sha256
    for i in range(20):  # the same bytes under the same name share one object
        assert results[i].object.key == results[200 + i].object.key
    assert len({r.object.key for r in results if r}) == 298 - 20
    # One listing of the prefix (its 200 is the bucket check) shows every key absent: each file is one PUT (the 20
    # shared keys are PUT by both of their files) and one URL is preflighted for all; no HEAD, no check per file.
    # All of it is signed and sent without a botocore call.
    assert requests == {"GET list": 1, "GET uploads": 1, "PUT": 298, "GET url": 1}, requests
    assert calls == [], sorted(set(calls))
    assert reports[-1].stage == "upload 298/300 files" and reports[-1].unit == "bytes"
    assert reports[-1].total == sum(p.stat().st_size for i, p in enumerate(paths) if results[i])

    good = [p for p, r in zip(paths, results, strict=True) if r]
    calls.clear()
    requests.clear()
    reports.clear()
    again = upload_and_presign(
        good, bucket=bucket, client=client, settings=settings_for(s3), on_progress=reports.append
    )
    assert [r.object.key for r in again] == [r.object.key for r in results if r]
    assert all(r.object.skipped for r in again) and sum(r.object.bytes_sent for r in again) == 0
    assert reports[-1].done == reports[-1].total > 0  # bytes found stored count as done: the bar ends full
    # Every key is listed now: each file's URL is fetched, which is the check that the same bytes are stored (size
    # and SHA-256) and that the URL serves them; nothing is PUT.
    assert calls == [] and requests == {"GET list": 1, "GET uploads": 1, "GET url": 298}, requests


def _mp3s(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"take{i}.mp3" for i in range(count)]
    for f in files:
        f.write_bytes(b"ID3" + os.urandom(2000))
    return files


def _mp3_keyed(path: Path, low: bool) -> Path:
    """An MP3 whose content-addressed key starts below "8" (low) or at "8" and above in its hash part."""
    while True:  # half of all random bytes qualify
        data = b"ID3" + os.urandom(2000)
        if (hashlib.sha256(data).hexdigest()[0] < "8") == low:
            path.write_bytes(data)
            return path


def test_a_listing_that_does_not_reach_every_key_leaves_the_rest_to_their_own_checks(s3, client, bucket, tmp_path,
                                                                                     monkeypatch):  # fmt: skip
    """The prefix holds more keys than the listing reads (2 per file to upload): keys past its last one are
    unknown and checked one by one; a file whose bytes are stored is found and not sent again."""
    low = [_mp3_keyed(tmp_path / f"low{i}.mp3", True) for i in range(4)]
    high = [_mp3_keyed(tmp_path / f"high{i}.mp3", False) for i in range(4)]
    [kept] = upload_and_presign(low[:1], bucket=bucket, settings=settings_for(s3), prefix="crowd")
    for i in range(40):  # the listing's 16 keys: the stored file's and 15 of these; the high files' come later
        client.put_object(Bucket=bucket, Key=f"crowd/8{i:015x}/old.mp3", Body=b"x")

    requests = count_requests(monkeypatch)
    results = upload_and_presign(low + high, bucket=bucket, settings=settings_for(s3), prefix="crowd")
    assert [r.object.key for r in results] == [f"crowd/{file_sha(f)[:16]}/{f.name}" for f in low + high]
    assert results[0].object.key == kept.object.key
    assert [r.object.skipped for r in results] == [True] + [False] * 7
    for f, r in zip(low + high, results, strict=True):
        assert httpx.get(r.url).content == f.read_bytes()
    # GET url: the stored file's check (listed), one preflight for the 3 keys listed absent (PUT at once), and the
    # check of each of the 4 keys past the listing before its PUT.
    assert requests == {"GET list": 1, "GET uploads": 1, "PUT": 7, "GET url": 1 + 1 + 4}, requests


def test_the_listing_reads_keys_with_any_characters(s3, bucket, tmp_path, monkeypatch):
    """Names XML escapes (& < > ' "), percent signs, plus, non-ASCII and a control character: a second upload
    finds every key in the listing (so checks it by its URL and sends nothing); a misread key would be PUT again."""
    names = ["a&b.mp3", "x<y>z.mp3", "it's \"q\".mp3", "50%41 off+.mp3", "grüße 東京.mp3", "tab\there.mp3",
             "ctl\x01.mp3", "plain.mp3"]  # fmt: skip
    files = []
    for name in names:
        (tmp_path / name).write_bytes(b"ID3" + os.urandom(1500))
        files.append(tmp_path / name)
    first = upload_and_presign(files, bucket=bucket, settings=settings_for(s3), prefix="odd")
    requests = count_requests(monkeypatch)
    again = upload_and_presign(files, bucket=bucket, settings=settings_for(s3), prefix="odd")
    assert [r.object.key for r in again] == [r.object.key for r in first]
    assert [r.object.skipped for r in again] == [True] * len(files)
    assert requests == {"GET list": 1, "GET uploads": 1, "GET url": len(files)}, requests
    assert [httpx.get(r.url).content for r in again] == [f.read_bytes() for f in files]


def test_when_the_sample_preflight_fails_every_url_is_preflighted_and_named(s3, bucket, tmp_path, monkeypatch):
    import assetprep.upload as upload

    real = upload.preflight
    seen: list[str] = []

    def failing_first(url: str, **kw) -> None:
        seen.append(url)
        if len(seen) == 1:  # the sample: as if the consumer's fetch of this URL had been refused
            raise PreflightError(f"presigned URL {url.split('?')[0]} answered 403: AccessDenied")
        real(url, **kw)

    monkeypatch.setattr(upload, "preflight", failing_first)
    files = _mp3s(tmp_path, 10)
    with pytest.raises(UploadError) as err:
        upload_and_presign(files, bucket=bucket, settings=settings_for(s3), jobs=4)
    [(failed, exc)] = err.value.failures
    assert isinstance(exc, PreflightError) and "answered 403" in str(exc)
    assert len(seen) == len(set(seen)) == 10  # the sample, then each of the others on its own
    done = [r for r in err.value.results if r is not None]
    assert len(done) == 9 and failed not in {str(f) for f, r in zip(files, err.value.results, strict=True) if r}
    for r in done:
        assert r.url in seen and httpx.get(r.url).status_code == 200


def test_a_listing_of_a_missing_bucket_falls_back_to_the_bucket_check(s3, client, tmp_path, monkeypatch):
    files = _mp3s(tmp_path, 8)
    with pytest.raises(StorageError, match="bucket 'never-made' does not exist"):
        upload_and_presign(files, bucket="never-made", settings=settings_for(s3))
    requests = count_requests(monkeypatch)
    results = upload_and_presign(files, bucket="made-now", settings=settings_for(s3), create_bucket=True)
    try:
        assert [httpx.get(r.url).content for r in results] == [f.read_bytes() for f in files]
        # The listing's 404 tells nothing about the keys: each file is checked by its URL's GET, then PUT.
        assert requests == {"GET list": 1, "HEAD bucket": 1, "GET uploads": 1, "GET url": 8, "PUT": 8}, requests
    finally:
        for r in results:
            client.delete_object(Bucket="made-now", Key=r.object.key)
        client.delete_bucket(Bucket="made-now")


def test_the_fast_path_signs_like_botocore_and_hands_anything_else_to_it(s3, client, bucket, tmp_path):
    from assetprep._s3http import ABSENT, FileSlice, HttpPool, SignedS3

    fast = SignedS3.from_client(client, bucket, HttpPool(1))
    for key in ["p/ab/plain.mp4", "p/ab/a b+c~d!$&'()*,;=:@ü.mp4", "p/ab/%41 %2F.wav"]:
        sample = client.generate_presigned_url("head_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=60)
        assert fast.url(key) == sample.split("?")[0]
        for _ in range(5):  # the same URL as botocore's, signature included (unless the second ticked in between)
            ours = fast.presign_get(key, 3600)
            theirs = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600)
            if parse_qs(urlsplit(ours).query)["X-Amz-Date"] == parse_qs(urlsplit(theirs).query)["X-Amz-Date"]:
                break
        assert ours == theirs
    # Such a name through the whole many-file path: stored under its key, fetched back through its URL.
    odd = tmp_path / "a b+c~d!$&'()ü.wav"
    odd.write_bytes(b"RIFF" + os.urandom(3000))
    [r] = upload_and_presign([odd], bucket=bucket, client=client, settings=settings_for(s3))
    assert r.object.key.endswith("/a b+c~d!$&'()ü.wav") and httpx.get(r.url).content == odd.read_bytes()
    assert client.head_object(Bucket=bucket, Key=r.object.key)["Metadata"]["sha256"] == r.object.sha256

    # Other bytes already under the key (no sha256 of ours): replaced, and the URL then serves our bytes.
    f = tmp_path / "clip.mp3"
    f.write_bytes(b"ID3" + os.urandom(5000))
    key = f"assetprep/{file_sha(f)[:16]}/clip.mp3"
    client.put_object(Bucket=bucket, Key=key, Body=b"ID3 stale", ContentType="audio/mpeg")
    [r] = upload_and_presign([f], bucket=bucket, client=client, settings=settings_for(s3))
    assert r.object.key == key and not r.object.skipped and httpx.get(r.url).content == f.read_bytes()
    # Our bytes under the key but served as the wrong type: the check that skips the upload is still a preflight.
    g = tmp_path / "typed.mp3"
    g.write_bytes(b"ID3" + os.urandom(800))
    client.put_object(Bucket=bucket, Key=f"assetprep/{file_sha(g)[:16]}/typed.mp3", Body=g.read_bytes(),
                      ContentType="text/plain", Metadata={"sha256": file_sha(g)})  # fmt: skip
    with pytest.raises(PreflightError, match="serves Content-Type 'text/plain', expected 'audio/mpeg'"):
        upload_and_presign([g], bucket=bucket, client=client, settings=settings_for(s3))

    # What the fast path answers itself (found, absent, stored) and what it hands to botocore: a refused request
    # (here: wrong credentials) is None/False, so the caller asks botocore, whose message names the problem.
    sha = base64.b64encode(hashlib.sha256(b"RIFF").digest()).decode()
    fields = {
        "sha256_b64": sha,
        "content_type": "audio/wav",
        "content_disposition": "inline",
        "metadata": {"sha256": "x"},
    }
    assert fast.head(key) == (f.stat().st_size, r.object.sha256) and fast.head("p/none.wav") == ABSENT
    assert fast.put("p/four.wav", b"RIFF", **fields) and fast.head("p/four.wav") == (4, "x")
    assert not fast.put("p/five.wav", b"RIFFF", **fields)  # the server checked the SHA-256: BadDigest
    bad = make_s3_client(settings_for(s3, secret_access_key="WRONG-secret-" + "z" * 20), retries=0)
    refused = SignedS3.from_client(bad, bucket, HttpPool(1))
    assert refused.head(key) is None and not refused.put("p/six.wav", b"RIFF", **fields)
    assert fast.head("p/six.wav") == ABSENT

    # A part sent from the file: its ETag; a wrong checksum, wrong credentials, or a client that signs payloads
    # (the part would have to be read to hash it) → None, and botocore sends it.
    part = tmp_path / "part.bin"
    part.write_bytes(os.urandom(6 * MiB))
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="p/mp.bin", ChecksumAlgorithm="SHA256")["UploadId"]
    whole = base64.b64encode(hashlib.sha256(part.read_bytes()).digest()).decode()
    counted: list[int] = []
    assert fast.put_part("p/mp.bin", upload_id, 1, FileSlice(str(part), MiB, 5 * MiB, counted.append),
                         sha256_b64=whole) is None  # fmt: skip
    assert sum(counted) == 0  # what was counted as sent is taken back when the request fails
    wanted = base64.b64encode(hashlib.sha256(part.read_bytes()[MiB:]).digest()).decode()
    assert refused.put_part("p/mp.bin", upload_id, 1, FileSlice(str(part), MiB, 5 * MiB), sha256_b64=wanted) is None
    signing = make_s3_client(settings_for(s3))
    signing.meta.config.s3["payload_signing_enabled"] = True
    assert SignedS3.from_client(signing, bucket, HttpPool(1)).put_part("p/mp.bin", upload_id, 1, FileSlice(str(part), MiB, 5 * MiB),
                                                            sha256_b64=wanted) is None  # fmt: skip
    etag = fast.put_part(
        "p/mp.bin", upload_id, 1, FileSlice(str(part), MiB, 5 * MiB, counted.append), sha256_b64=wanted
    )
    assert etag and sum(counted) == 5 * MiB
    client.complete_multipart_upload(Bucket=bucket, Key="p/mp.bin", UploadId=upload_id,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag, "ChecksumSHA256": wanted}]})  # fmt: skip
    assert client.get_object(Bucket=bucket, Key="p/mp.bin")["Body"].read() == part.read_bytes()[MiB:]


@pytest.mark.parametrize("token", [None, "session/tok+en=="])
def test_the_fast_signer_signs_byte_for_byte_like_botocore(monkeypatch, token):
    import datetime as dt

    import botocore.auth
    from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials

    from assetprep import _sigv4

    clock = dt.datetime(2026, 12, 31, 23, 59, 59)  # one fixed second for both signers
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: clock)
    monkeypatch.setattr(_sigv4, "_now", clock.timetuple)
    creds = Credentials("AKIDEXAMPLE", "wJalr/XUtnFEMI+K7MDENG", token)
    body = b"hello"
    put = {"Content-Type": "video/mp4", "Content-Disposition": 'inline;  filename="a  b.mp4"', "Content-Length": "5",
           "x-amz-checksum-sha256": "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=", "x-amz-meta-sha256": "2cf2",
           "User-Agent": "not signed", "Expect": "100-continue"}  # fmt: skip
    cases = [("HEAD", "", {}, False), ("PUT", "", put, False), ("PUT", "", put, True), ("GET", "", {}, True),
             ("PUT", "partNumber=12&uploadId=a%2Fb%3D", {"x-amz-checksum-sha256": "q=="}, False),
             ("GET", "uploads&prefix=p%2Fab", {}, False)]  # fmt: skip
    assert frozenset(botocore.auth.SIGNED_HEADERS_BLACKLIST) == _sigv4._NOT_SIGNED  # the copy is botocore's list
    for base, host in [("http://127.0.0.1:8333/bucket", "127.0.0.1:8333"),
                       ("https://s3.eu-west-1.amazonaws.com/bucket", "s3.eu-west-1.amazonaws.com")]:  # fmt: skip
        signer = _sigv4.SigV4(creds, "eu-west-1", host)
        for key in ["p/ab/plain.mp4", "p/ab/a%20b%2Bc~d%21%24%26%27%28%29%C3%BC.mp4", "p/ab/%2541%20%252F.wav"]:
            path = urlsplit(base).path + "/" + key
            for method, query, headers, signed_payload in cases:
                theirs = AWSRequest(method=method, url=f"{base}/{key}" + (f"?{query}" if query else ""),
                                    data=body if signed_payload else None, headers=dict(headers))  # fmt: skip
                theirs.context["client_config"] = Config(s3={"payload_signing_enabled": signed_payload})
                S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(theirs)
                payload = hashlib.sha256(body).hexdigest() if signed_payload else _sigv4.UNSIGNED_PAYLOAD
                assert signer.headers(method, path, query, headers, payload) == dict(theirs.headers.items())
            presigned = AWSRequest(method="GET", url=f"{base}/{key}")
            S3SigV4QueryAuth(creds, "s3", "eu-west-1", expires=604800).add_auth(presigned)
            assert signer.presign_get(f"{base}/{key}", path, 604800) == presigned.url
        with pytest.raises(ValueError, match="not ASCII"):  # left to botocore
            signer.headers("PUT", "/bucket/k", "", {"x-amz-meta-name": "ü"}, _sigv4.UNSIGNED_PAYLOAD)


def test_no_fast_path_when_botocore_would_use_a_proxy(s3, client, bucket, monkeypatch):
    from assetprep._s3http import HttpPool, SignedS3

    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert SignedS3.for_client(client, bucket, HttpPool(1)) is not None
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there: a direct request would differ
    assert SignedS3.for_client(client, bucket, HttpPool(1)) is None
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert SignedS3.for_client(client, bucket, HttpPool(1)) is not None
    monkeypatch.delenv("HTTP_PROXY")
    proxied = make_s3_client(settings_for(s3))
    proxied.meta.config.proxies = {"http": "http://127.0.0.1:9"}
    assert SignedS3.for_client(proxied, bucket, HttpPool(1)) is None


def test_upload_files_returns_objects_in_order_without_presigning(client, bucket, tmp_path):
    paths = []
    for i in range(12):
        f = tmp_path / f"a{i}.wav"
        f.write_bytes(b"RIFF" + os.urandom(50_000 - 2000 * i))  # sizes differ, so finishing order differs from input
        paths.append(f)
    objs = upload_files(paths, bucket=bucket, client=client, jobs=4)
    assert [o.size for o in objs] == [p.stat().st_size for p in paths]
    assert [o.sha256 for o in objs] == [file_sha(p) for p in paths]
    assert all(o.content_type == "audio/wav" and not o.skipped for o in objs)
    for o in objs:
        assert client.head_object(Bucket=bucket, Key=o.key)["ContentLength"] == o.size
    assert all(o.skipped for o in upload_files(paths, bucket=bucket, client=client))


def test_cli_upload_reports_the_files_that_made_it_and_each_failure(s3, tmp_path):
    good, bad = tmp_path / "a.mp3", tmp_path / "b.mp3"
    good.write_bytes(b"ID3" + os.urandom(500))
    bad.write_bytes(b"not audio")
    env = {**os.environ, **s3.env()}
    proc = subprocess.run([sys.executable, "-m", "assetprep", "upload", str(good), str(bad), "--bucket", "cli-many",
                           "--create-bucket", "--json"], capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    assert [o["sha256"] for o in data["objects"]] == [file_sha(good)]
    assert data["failed"][0]["file"] == str(bad) and "b.mp3 is named .mp3 but its content is text" in proc.stderr


@pytest.mark.parametrize("many", [False, True], ids=["botocore-parts", "sendfile-parts"])
def test_kill_9_during_a_concurrent_multipart_upload_resumes_with_only_the_missing_parts(
    s3, client, bucket, tmp_path, many
):
    """upload_file sends parts through botocore; upload_files (and upload_and_presign) through the fast path."""
    f = tmp_path / "big.mp4"
    with open(f, "wb") as out:
        out.write(MP4_HEAD + os.urandom(60 * MiB - len(MP4_HEAD)))
    # A child uploads with 5 MiB parts, 3 at a time, and kills itself (SIGKILL: no cleanup) past 30 MiB sent.
    script = f"""
import os, signal
from boto3.s3.transfer import TransferConfig
from assetprep.upload import S3Settings, make_s3_client, upload_file, upload_files
c = make_s3_client(S3Settings(endpoint_url={s3.endpoint_url!r}, access_key_id={s3.access_key!r},
                              secret_access_key={s3.secret_key!r}))
cfg = TransferConfig(multipart_threshold=8 * 2**20, multipart_chunksize=5 * 2**20, max_concurrency=3)
def die(p):
    if p.done > 30 * 2**20:
        os.kill(os.getpid(), signal.SIGKILL)
if {many!r}:
    upload_files([{str(f)!r}], bucket={bucket!r}, client=c, transfer_config=cfg, on_progress=die)
else:
    upload_file({str(f)!r}, bucket={bucket!r}, client=c, transfer_config=cfg, on_progress=die)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # nothing visible
    [pending] = client.list_multipart_uploads(Bucket=bucket)["Uploads"]

    def stored_now() -> int:
        parts = client.list_parts(Bucket=bucket, Key=pending["Key"], UploadId=pending["UploadId"]).get("Parts", [])
        return sum(p["Size"] for p in parts)

    # A part whose bytes had all been sent before the kill may still be landing on the server: wait until the
    # stored parts stop changing (bounded), then the rerun must send exactly the rest.
    stored, end = stored_now(), time.monotonic() + 15
    while time.monotonic() < end:
        time.sleep(1.0)
        if (now := stored_now()) == stored:
            break
        stored = now
    assert stored >= 15 * MiB  # at least three parts had finished
    cfg = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=5 * MiB, max_concurrency=3)
    reports = []
    if many:
        [obj] = upload_files([f], bucket=bucket, client=client, transfer_config=cfg, on_progress=reports.append)
    else:
        obj = upload_file(f, bucket=bucket, client=client, transfer_config=cfg, on_progress=reports.append)
    assert obj.key == pending["Key"] and not obj.skipped
    assert obj.bytes_sent == obj.size - stored  # only the missing parts were sent
    assert reports[-1].done == reports[-1].total == obj.size  # the reused parts count as done
    body = client.get_object(Bucket=bucket, Key=obj.key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == obj.sha256 == file_sha(f)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_two_uploads_of_the_same_big_file_at_once_leave_one_whole_object(s3, bucket, tmp_path):
    """Two runs (own clients, fast-path parts) race on one key: both succeed, the object is the file, and no
    multipart upload is left behind (the loser of CompleteMultipartUpload finds the object stored)."""
    import threading

    f = tmp_path / "race.mp4"
    f.write_bytes(MP4_HEAD + os.urandom(24 * MiB - len(MP4_HEAD)))
    cfg = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=5 * MiB, max_concurrency=3)
    results: list[object] = []
    start = threading.Barrier(2)

    def run() -> None:
        c = make_s3_client(settings_for(s3))
        start.wait(10)
        try:
            results.extend(upload_files([f], bucket=bucket, client=c, transfer_config=cfg))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == 2 and all(not isinstance(r, Exception) for r in results), results
    key = results[0].key  # type: ignore[attr-defined]
    assert results[1].key == key  # type: ignore[attr-defined]
    body = make_s3_client(settings_for(s3)).get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == file_sha(f)
    assert make_s3_client(settings_for(s3)).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_one_pass_digest_matches_the_whole_file_and_each_part(tmp_path):
    f = tmp_path / "x.mp4"
    data = MP4_HEAD + os.urandom(13 * MiB + 12345)
    f.write_bytes(data)
    cfg = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=5 * MiB)
    d = digest_file(f, cfg)
    assert d.sha256 == hashlib.sha256(data).hexdigest() and d.part_size == 5 * MiB and len(d.parts) == 3
    for n, part in enumerate(d.parts):
        chunk = data[n * 5 * MiB : (n + 1) * 5 * MiB]
        assert base64.b64decode(part) == hashlib.sha256(chunk).digest()
    assert file_sha256(f) == d.sha256
    # Bytes counted by the stat and gone by the read (something truncates the file meanwhile) are named, not hashed
    # as a shorter file: the part sizes would not add up.
    with pytest.raises(ShrankError, match=r"x\.mp4 ended at byte 13"):
        hash_range(f, 0, len(data) + 1)
    # S3 allows 10,000 parts: a huge file gets bigger parts (whole MiB), never more parts.
    assert part_size_for(200 * 1024 * MiB, cfg) == 21 * MiB
    assert -(-200 * 1024 * MiB // part_size_for(200 * 1024 * MiB, cfg)) <= 10_000


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_public_endpoint_urls_are_preflighted_where_the_consumer_fetches_them(s3, client, bucket, tmp_path):
    """--public-endpoint-url: the URLs name another host (a reverse proxy, a tunnel). Each is fetched there after the
    upload. A "public" host that is really another server (404 for everything) must fail the preflight, though the
    upload itself worked — the existence check by URL would have read its 404 as "not stored yet, URL good"."""
    import http.server

    from tests._media import http_server

    upstream = urlsplit(s3.endpoint_url)

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        other_server = False

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if Proxy.other_server:
                status, headers = 404, {"Content-Type": "application/xml"}
                body = b"<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>"
            else:  # forwarded with the Host it was sent to (the signed one), like a reverse proxy does
                forwarded = {"Host": self.headers["Host"], "Range": self.headers.get("Range", "")}
                r = httpx.get(f"{s3.endpoint_url}{self.path}", headers=forwarded)
                status, body = r.status_code, r.content
                headers = {k: r.headers[k] for k in ("Content-Type", "Content-Range") if k in r.headers}
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    files = []
    for i in range(3):
        f = tmp_path / f"p{i}.wav"
        f.write_bytes(b"RIFF" + os.urandom(2000 + i))
        files.append(f)
    with http_server(Proxy) as proxy:
        public = f"http://127.0.0.1:{proxy.server_address[1]}"
        settings = settings_for(s3, public_endpoint_url=public)
        results = upload_and_presign(files, bucket=bucket, client=client, settings=settings)
        assert all(r.url.startswith(public + "/") for r in results) and upstream.netloc not in results[0].url
        assert [httpx.get(r.url).content for r in results] == [f.read_bytes() for f in files]

        Proxy.other_server = True
        g = tmp_path / "new.wav"
        g.write_bytes(b"RIFF" + os.urandom(3000))
        with pytest.raises(PreflightError, match="answered 404: The specified key does not exist"):
            upload_and_presign([g], bucket=bucket, client=client, settings=settings)
        stored = client.head_object(Bucket=bucket, Key=f"assetprep/{file_sha(g)[:16]}/new.wav")
        assert stored["ContentLength"] == g.stat().st_size  # uploaded; only the public URL does not serve it


def test_a_stopped_or_killed_server_leaves_no_unix_sockets_in_tmp(tmp_path):
    """weed makes /tmp/seaweedfs-<service>-<port>.sock files and left three behind per run, all six when killed
    (500 in /tmp after a day of tests)."""

    def sockets(ports: list[int]) -> list[Path]:
        return [s for p in ports for q in (p, p + 10000) for s in Path("/tmp").glob(f"seaweedfs-*-{q}.sock")]

    server = LocalS3(tmp_path / "s3").start()
    try:
        first = list(server._ports)
        assert len(sockets(first)) >= 4  # what it makes while it runs (master, volume, filer, s3 …)
        server.kill()
        assert sockets(first) == []
        server.start()
        second = list(server._ports)
    finally:
        server.stop()
    assert sockets(second) == []


def test_errors_say_whether_s3_may_answer_later(s3, client, bucket, tmp_path):
    """A batch waits out an S3 outage (refused, cut off, a 5xx) and fails at once on what waiting cannot fix (bad
    credentials, a missing bucket): the errors carry which it is, from real answers."""
    import botocore.exceptions

    from assetprep.upload import S3Settings, make_s3_client, storage_error

    f = tmp_path / "a.wav"
    f.write_bytes(b"RIFF" + os.urandom(500))
    wrong_key = make_s3_client(S3Settings(endpoint_url=s3.endpoint_url, access_key_id=s3.access_key,
                                          secret_access_key="not-the-secret"), retries=0)  # fmt: skip
    with pytest.raises(StorageError, match="rejected the credentials") as denied:
        upload_file(f, bucket=bucket, client=wrong_key)
    with pytest.raises(StorageError, match="does not exist") as missing:
        upload_file(f, bucket="no-such-bucket-here", client=client)
    (port,) = free_port_block(1)
    nobody = make_s3_client(S3Settings(endpoint_url=f"http://127.0.0.1:{port}", access_key_id="a",
                                       secret_access_key="b"), retries=0)  # fmt: skip
    with pytest.raises(StorageError, match="cannot reach S3") as refused:
        upload_file(f, bucket=bucket, client=nobody)
    assert (denied.value.transient, missing.value.transient, refused.value.transient) == (False, False, True)
    busy = botocore.exceptions.ClientError(
        {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject"
    )
    assert storage_error(busy, "uploading a.wav", client).transient
    with pytest.raises(PreflightError, match="not reachable") as unreachable:
        preflight(f"http://127.0.0.1:{port}/b/a.wav?X-Amz-Signature=s")
    assert unreachable.value.transient
