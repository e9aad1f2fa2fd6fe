"""The callback receiver faces whoever can reach its port: bad ports, idle or garbled connections, wrong tokens."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from assetprep.callbacks import CallbackReceiver
from assetprep.errors import ConfigError


def test_a_port_out_of_range_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"HOST:PORT \(port 0-65535\), got '127.0.0.1:99999'"):
        CallbackReceiver("127.0.0.1:99999")


def test_every_interface_needs_a_public_url_and_one_given_is_what_tavus_gets():
    with pytest.raises(ConfigError, match=r"--listen 0.0.0.0:0 takes callbacks on every interface") as err:
        CallbackReceiver("0.0.0.0:0")  # refused before anything is bound
    assert "--listen-url" in (err.value.hint or "")
    for bad in ("ftp://hooks.example.com", "https://hooks.example.com/x?token=s3cret", "hooks.example.com"):
        with pytest.raises(ConfigError, match="--listen-url must be an http") as err:
            CallbackReceiver("127.0.0.1:0", bad)
        assert "s3cret" not in str(err.value)
    receiver = CallbackReceiver("127.0.0.1:0", "https://hooks.example.com/tavus/")
    try:
        assert receiver.url == f"https://hooks.example.com/tavus/callback/{receiver.token}"
        port = receiver.serving.server.server_address[1]
        for path in (f"/callback/{receiver.token}", f"/tavus/callback/{receiver.token}"):  # a proxy may keep its prefix
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", path, body=json.dumps({"video_id": "v1", "status": "ready"}))
            assert conn.getresponse().status == 200
            conn.close()
        assert receiver.drain() == [{"video_id": "v1", "status": "ready"}] * 2
    finally:
        receiver.close()


def test_idle_garbled_and_wrong_requests_are_answered_or_dropped_without_a_traceback(capfd):
    receiver = CallbackReceiver("127.0.0.1:0", idle_timeout=0.5)
    try:
        host, port = receiver.url.split("/")[2].split(":")
        path = "/" + receiver.url.split("/", 3)[3]
        # A connection that sends nothing is dropped after the idle timeout, not held for the whole batch.
        with socket.create_connection((host, int(port)), timeout=5) as idle:
            started = time.monotonic()
            assert idle.recv(1) == b""
            assert time.monotonic() - started < 3
        # A Content-Length that is not a number: 400, not a traceback.
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.putrequest("POST", path)
        conn.putheader("Content-Length", "abc")
        conn.endheaders()
        assert conn.getresponse().status == 400
        conn.close()

        def post(target: str, event: object) -> int:
            c = http.client.HTTPConnection(host, int(port), timeout=5)
            c.request("POST", target, body=json.dumps(event), headers={"Content-Type": "application/json"})
            status = c.getresponse().status
            c.close()
            return status

        assert post("/callback/wrong-token", {"video_id": "v1"}) == 404
        assert post(path, {"status": "ready"}) == 404  # no video_id: not an event
        # A body cut off by a reset mid-read.
        with socket.create_connection((host, int(port)), timeout=5) as cut:
            cut.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode())
            cut.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        assert post(path, {"video_id": "v1", "status": "ready"}) == 200
        time.sleep(0.7)  # the cut connection's handler times out or sees the reset
        assert receiver.drain() == [{"video_id": "v1", "status": "ready"}]
    finally:
        receiver.close()
    assert "Traceback" not in capfd.readouterr().err
