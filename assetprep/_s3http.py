"""Small S3 requests without botocore's per-call machinery, and the one HTTP pool a many-file upload uses.

A botocore call costs ~1.8 ms of CPU (parameter validation, event hooks, endpoint rules, response parsing); signing
the same request with botocore's own SigV4 signer costs ~0.1 ms and sending it over urllib3 (the library botocore
sends with) ~0.4 ms. Hundreds of small files are bound by that client CPU (scripts/bench_upload.py), so HEAD and the
single PUT of a small file go this way. Only the expected answers are handled here: anything else (an error status,
a redirect to another region, a broken connection) returns None and the caller makes the same request through
botocore, whose retries and error messages stay the reference.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import urllib3
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest

log = logging.getLogger("assetprep.upload")

# A HEAD's answer: the object's size and its x-amz-meta-sha256 ("" when it has none), or ABSENT (404).
Head = tuple[int, str]
ABSENT: Head = (-1, "")


def http_pool(size: int = 10, *, timeout: float = 60.0) -> urllib3.PoolManager:
    """One pooled HTTP client for a call (S3 requests and preflights): keep-alive, bounded timeouts, no retries of
    its own (botocore retries the S3 requests; a preflight reports what a consumer would see)."""
    return urllib3.PoolManager(
        maxsize=max(1, size), retries=False, timeout=urllib3.Timeout(connect=min(5.0, timeout), read=timeout)
    )


class SignedS3:
    """HEAD and PUT of one bucket's objects, signed like `client` signs them and sent through `pool`."""

    def __init__(self, client: Any, bucket: str, pool: urllib3.PoolManager) -> None:
        self._credentials = client._request_signer._credentials  # botocore keeps the refreshable set only here
        if self._credentials is None:
            raise ValueError("the client sends unsigned requests")
        # The object URL exactly as this client builds it (endpoint, addressing style, region): ask it once.
        sample = client.generate_presigned_url("head_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60)
        base = sample.split("?", 1)[0]
        if not base.endswith("/k"):
            raise ValueError(f"unexpected object URL shape for {client.meta.endpoint_url}")
        self._base = base[:-1]
        self._region = client.meta.region_name
        self._config = client.meta.config  # carries payload_signing_enabled (make_s3_client turns it off)
        self._pool = pool

    @classmethod
    def for_client(cls, client: Any, bucket: str, pool: urllib3.PoolManager) -> SignedS3 | None:
        """The fast path for `client`, or None when it cannot sign like it (then every request goes via botocore)."""
        try:
            return cls(client, bucket, pool)
        except Exception as exc:
            log.debug("S3 requests go through botocore only: %s", exc)
            return None

    def url(self, key: str) -> str:
        return self._base + quote(key, safe="/~")  # botocore's quoting of a key in the path

    def presign_get(self, key: str, expires_in: int) -> str:
        """The presigned GET URL botocore's generate_presigned_url gives for this key (tested equal)."""
        request = AWSRequest(method="GET", url=self.url(key))
        S3SigV4QueryAuth(self._credentials.get_frozen_credentials(), "s3", self._region, expires=expires_in).add_auth(
            request
        )
        return request.url

    def _send(self, method: str, key: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse | None:  # fmt: skip
        url = self.url(key)
        try:
            request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
            request.context["client_config"] = self._config
            S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(request)
            return self._pool.request(method, url, body=body, headers=dict(request.headers.items()), redirect=False)
        except Exception as exc:  # any failure: botocore makes the request again and reports it its way
            log.debug("%s %s via botocore: %s", method, key, type(exc).__name__)
            return None

    def head(self, key: str) -> Head | None:
        """(size, sha256 metadata) of the object, ABSENT when there is none, None when botocore should ask."""
        resp = self._send("HEAD", key)
        if resp is None:
            return None
        if resp.status == 404:
            return ABSENT
        if resp.status != 200:
            return None
        return int(resp.headers.get("content-length", -1)), resp.headers.get("x-amz-meta-sha256", "")

    def put(self, key: str, data: bytes, *, sha256_b64: str, content_type: str, content_disposition: str,
            metadata: dict[str, str]) -> bool:  # fmt: skip
        """Store `data` (the server checks its SHA-256); False when botocore should try."""
        headers = {
            "Content-Type": content_type,
            "Content-Disposition": content_disposition,
            "Content-Length": str(len(data)),
            "x-amz-checksum-sha256": sha256_b64,
            **{f"x-amz-meta-{k}": v for k, v in metadata.items()},
        }
        resp = self._send("PUT", key, data, headers)
        return resp is not None and resp.status == 200
