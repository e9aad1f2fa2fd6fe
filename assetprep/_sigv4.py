"""SigV4 for the fast path's S3 requests and presigned GETs, signed exactly as botocore's S3SigV4Auth and
S3SigV4QueryAuth sign them (tests/test_upload.py compares the two, byte for byte) at a fraction of the CPU.

botocore builds an email-parser header map three times per request and derives the signing key (four HMACs) each
time: ~0.1 ms per signature idle, 0.3-0.5 ms on a 2-core machine busy with the S3 server, and a small file takes two
(its presigned URL and its PUT). Here the canonical request is one join and the signing key is kept per day.
Anything this does not sign (non-ASCII header values) is left to botocore by the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from urllib.parse import quote

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# botocore.auth.SIGNED_HEADERS_BLACKLIST, copied (a test keeps them equal): importing botocore costs a command
# ~50 ms of start-up that the fast path otherwise never pays.
_NOT_SIGNED = frozenset({
    "baggage", "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "traceparent",
    "tracestate", "trailer", "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
})  # fmt: skip
_OWN = frozenset({"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"})


def _now() -> time.struct_time:  # one place for tests to fix the clock
    return time.gmtime()


class SigV4:
    """Signs requests to one host of one region's S3 with `credentials` (botocore's, refreshable or not: their
    current frozen set is read per signature)."""

    def __init__(self, credentials: Any, region: str, host: str, *, service: str = "s3") -> None:
        self._credentials, self._region, self._host, self._service = credentials, region, host, service
        self._key: tuple[str, str, bytes] = ("", "", b"")  # (secret, day, signing key)

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached_secret, cached_day, key = self._key
        if cached_secret != secret or cached_day != day:
            key = ("AWS4" + secret).encode()
            for part in (day, self._region, self._service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key = (secret, day, key)
        return key

    def _signature(self, secret: str, stamp: str, scope: str, canonical: str) -> str:
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        return hmac.new(self._signing_key(secret, stamp[:8]), to_sign.encode(), hashlib.sha256).hexdigest()

    def headers(self, method: str, path: str, query: str, headers: dict[str, str], payload: str) -> dict[str, str]:
        """`headers` plus the date, payload hash, session token and Authorization fields. `path` and `query`: as
        in the URL (already quoted); `payload`: UNSIGNED_PAYLOAD or the body's SHA-256 in hex. Raises ValueError
        for a header value that is not ASCII (botocore's to sign)."""
        creds = self._credentials.get_frozen_credentials()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", _now())
        out = {name: value for name, value in headers.items() if name.lower() not in _OWN}
        out["X-Amz-Date"] = stamp
        out["X-Amz-Content-SHA256"] = payload
        if creds.token is not None:
            out["X-Amz-Security-Token"] = creds.token
        signed: dict[str, list[str]] = {}
        for name, value in out.items():
            if not value.isascii():
                raise ValueError(f"header {name} is not ASCII")
            lname = name.lower()
            if lname not in _NOT_SIGNED:
                signed.setdefault(lname, []).append(" ".join(value.split()))
        signed.setdefault("host", [self._host])  # the field the pool sends
        names = sorted(signed)
        lines = "".join(f"{n}:{','.join(signed[n])}\n" for n in names)
        pairs = sorted(pair.partition("=")[::2] for pair in query.split("&")) if query else []
        canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
        signed_names = ";".join(names)
        canonical = f"{method}\n{path}\n{canonical_query}\n{lines}\n{signed_names}\n{payload}"
        scope = f"{stamp[:8]}/{self._region}/{self._service}/aws4_request"
        signature = self._signature(creds.secret_key, stamp, scope, canonical)
        out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                f"SignedHeaders={signed_names}, Signature={signature}")  # fmt: skip
        return out

    def presign_get(self, url: str, path: str, expires_in: int) -> str:
        """`url` (no query; `path` its quoted path) as a GET URL valid for `expires_in` seconds."""
        creds = self._credentials.get_frozen_credentials()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", _now())
        scope = f"{stamp[:8]}/{self._region}/{self._service}/aws4_request"
        params = [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", f"{creds.access_key}/{scope}"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(expires_in)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if creds.token is not None:
            params.append(("X-Amz-Security-Token", creds.token))
        encoded = [(quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in params]
        query = "&".join(f"{k}={v}" for k, v in encoded)  # botocore's order in the URL; sorted in the signature
        canonical_query = "&".join(f"{k}={v}" for k, v in sorted(encoded))
        canonical = f"GET\n{path}\n{canonical_query}\nhost:{self._host}\n\nhost\n{UNSIGNED_PAYLOAD}"
        return f"{url}?{query}&X-Amz-Signature={self._signature(creds.secret_key, stamp, scope, canonical)}"
