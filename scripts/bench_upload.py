"""Benchmark: upload throughput against one local SeaweedFS, in one run.

  assetprep upload_file (tuned TransferConfig)  vs  `aws s3 cp` (awscli, the baseline)  vs  boto3 upload_file defaults
Prints throughput ratios (target assetprep >= 1.0x awscli) and the bytes sent on a re-upload (target 0).
Usage: python scripts/bench_upload.py [--mib 256]   (awscli from PATH: pip install awscli, or set AWS_CLI=/path/aws)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from assetprep.s3local import LocalS3
from assetprep.upload import S3Settings, make_s3_client, upload_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    aws = os.environ.get("AWS_CLI") or shutil.which("aws")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        f = d / "payload.mp4"
        with open(f, "wb") as out:
            out.write(b"\x00\x00\x00\x10ftypisom\x00\x00\x02\x00")  # starts like an MP4: upload checks that
            for _ in range(args.mib):
                out.write(os.urandom(1024 * 1024))
        size = f.stat().st_size
        with LocalS3(d / "s3") as s3:
            settings = S3Settings(endpoint_url=s3.endpoint_url, access_key_id=s3.access_key,
                                  secret_access_key=s3.secret_key)  # fmt: skip
            client = make_s3_client(settings)
            client.create_bucket(Bucket="bench")
            results: dict[str, float] = {}
            if aws:
                env = {**os.environ, **s3.env()}
                started = time.perf_counter()
                subprocess.run([aws, "s3", "cp", "--only-show-errors", str(f), "s3://bench/awscli/payload.mp4",
                                "--endpoint-url", s3.endpoint_url], check=True, env=env)  # fmt: skip
                results["awscli s3 cp"] = time.perf_counter() - started
            started = time.perf_counter()
            client.upload_file(str(f), "bench", "boto3/payload.mp4")
            results["boto3 defaults"] = time.perf_counter() - started
            started = time.perf_counter()
            first = upload_file(f, bucket="bench", client=client, prefix="assetprep")
            results["assetprep"] = time.perf_counter() - started
            again = upload_file(f, bucket="bench", client=client, prefix="assetprep")
    print(f"{args.mib} MiB to SeaweedFS on 127.0.0.1 (includes assetprep's SHA-256 of the file and its HEAD check)")
    base = results.get("awscli s3 cp")
    for name, seconds in results.items():
        ratio = f"  {base / seconds:.2f}x awscli" if base else ""
        print(f"  {name:<16} {seconds:6.2f} s  {size / seconds / 1e6:7.1f} MB/s{ratio}")
    if not base:
        print("  awscli not found: install it (pip install awscli) for the baseline")
    print(f"  re-upload: skipped={again.skipped}, bytes sent={again.bytes_sent} (first upload sent {first.bytes_sent})")


if __name__ == "__main__":
    main()
