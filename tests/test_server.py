"""Bad input against a real daemon: each gets its outcome, others keep being served."""

import os
import pickle
import socket
import struct
import time

import pytest

from gnr_daemon.errors import AuthenticationError, MethodNotFound, ProtocolError
from gnr_daemon.protocol import (
    HELLO_SIZE,
    KIND_ERROR,
    KIND_REQUEST,
    compute_tag,
    pack_frame,
)

from conftest import OTHER_KEY, TEST_KEY, RawConnection

pytestmark = pytest.mark.timeout(60)


def error_text(data):
    """Return the text of the error frame that ends ``data`` (after a hello, if any)."""
    if data[:4] == b"GNRD":
        data = data[HELLO_SIZE:]
    kind, _flags, _reserved, length = struct.unpack(">BBHI", data[:8])
    assert kind == KIND_ERROR
    return data[8:8 + length].decode()


def signed_frame(conn, payload, kind=KIND_REQUEST):
    """Sign ``payload`` as the next request frame of ``conn`` (bytes of any content)."""
    header = struct.pack(">BBHI", kind, 1, 0, len(payload))
    tag = compute_tag(conn.channel._prefix, b"Q", conn.channel._send_seq, header, payload)
    conn.channel._send_seq += 1
    return header + tag + payload


class Marker:
    """Unpickling this creates the file at ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def assert_still_serving(daemon):
    with daemon.client() as client:
        assert client.ping() == "pong"


# -- frames rejected before unpickling ----------------------------------------


def test_truncated_header_closes(daemon):
    conn = RawConnection(daemon.address, key=TEST_KEY)
    conn.send_raw(b"\x01\x01\x00")
    conn.sock.shutdown(socket.SHUT_WR)
    assert "received 3 of 8 bytes" in error_text(conn.read_all())
    assert_still_serving(daemon)


def test_truncated_body_closes(daemon):
    conn = RawConnection(daemon.address, key=TEST_KEY)
    frame = signed_frame(conn, pickle.dumps((1, None, "ping", (), {})))
    conn.send_raw(frame[:-5])
    conn.sock.shutdown(socket.SHUT_WR)
    expected = len(frame) - 8 - 32
    assert f"received {expected - 5} of {expected} bytes" in error_text(conn.read_all())
    assert_still_serving(daemon)


@pytest.mark.parametrize("length", [0x7FFFFFFF, 0xFFFFFFFF])
def test_oversized_length_rejected(daemon_factory, length):
    daemon = daemon_factory(max_frame_size=1024 * 1024)
    conn = RawConnection(daemon.address, key=TEST_KEY)
    conn.send_raw(struct.pack(">BBHI", KIND_REQUEST, 1, 0, length))
    text = error_text(conn.read_all())
    assert f"frame of {length} bytes exceeds the maximum frame size" in text
    assert_still_serving(daemon)


def test_random_bytes_rejected(daemon):
    conn = RawConnection(daemon.address, key=TEST_KEY)
    conn.send_raw(os.urandom(4096))
    assert error_text(conn.read_all()).startswith("ProtocolError")
    assert_still_serving(daemon)


def test_random_bytes_instead_of_hello(daemon):
    conn = RawConnection(daemon.address, key=TEST_KEY, handshake=False)
    conn.send_raw(b"\xff" * 64)
    assert "magic" in error_text(conn.read_all())
    assert_still_serving(daemon)


def test_wrong_tag_rejected(daemon):
    conn = RawConnection(daemon.address, key=TEST_KEY)
    frame = bytearray(signed_frame(conn, pickle.dumps((1, None, "ping", (), {}))))
    frame[10] ^= 0xFF  # inside the tag
    conn.send_raw(bytes(frame))
    assert "tag does not match" in error_text(conn.read_all())
    assert_still_serving(daemon)


def test_other_key_rejected(daemon):
    conn = RawConnection(daemon.address, key=OTHER_KEY)
    conn.channel.send(KIND_REQUEST, (1, None, "ping", (), {}))
    assert error_text(conn.read_all()).startswith("AuthenticationError")
    assert_still_serving(daemon)


def test_client_with_other_key_gets_authentication_error(daemon):
    with daemon.client(hmac_key=OTHER_KEY) as client:
        with pytest.raises(AuthenticationError, match="tag does not match"):
            client.ping()


def test_replay_on_second_connection_rejected(daemon):
    first = RawConnection(daemon.address, key=TEST_KEY)
    frame = signed_frame(first, pickle.dumps((1, None, "ping", (), {})))
    first.send_raw(frame)
    assert first.channel.receive(10, 10)[1] == (1, True, "pong")
    second = RawConnection(daemon.address, key=TEST_KEY)
    second.send_raw(frame)
    assert "tag does not match" in error_text(second.read_all())
    assert_still_serving(daemon)


def test_replay_on_same_connection_rejected(daemon):
    conn = RawConnection(daemon.address, key=TEST_KEY)
    frame = signed_frame(conn, pickle.dumps((1, None, "ping", (), {})))
    conn.send_raw(frame)
    assert conn.channel.receive(10, 10)[1] == (1, True, "pong")
    conn.send_raw(frame)
    assert "tag does not match" in error_text(conn.read_all())


def test_unsigned_frame_to_keyed_daemon(daemon):
    conn = RawConnection(daemon.address, key=TEST_KEY)
    conn.send_raw(pack_frame(KIND_REQUEST, pickle.dumps((1, None, "ping", (), {}))))
    assert "unsigned frame" in error_text(conn.read_all())
    assert_still_serving(daemon)


def test_client_without_key_to_keyed_daemon(daemon):
    with daemon.client(hmac_key=None) as client:
        with pytest.raises(AuthenticationError, match="requires an HMAC key"):
            client.ping()


def test_silent_client_dropped(daemon_factory):
    daemon = daemon_factory(handshake_timeout=0.5)
    conn = RawConnection(daemon.address, key=TEST_KEY, handshake=False)
    started = time.monotonic()
    data = conn.read_all(timeout=10)
    assert time.monotonic() - started < 5
    assert "timed out" in error_text(data)
    assert_still_serving(daemon)


def test_silent_client_does_not_block_others(daemon_factory):
    daemon = daemon_factory(handshake_timeout=5)
    silent = [RawConnection(daemon.address, key=TEST_KEY, handshake=False) for _ in range(20)]
    started = time.monotonic()
    assert_still_serving(daemon)
    assert time.monotonic() - started < 2
    for conn in silent:
        conn.close()


@pytest.mark.parametrize("variant", ["unsigned", "other_key", "flipped_byte", "short_tag"])
def test_marker_pickle_never_unpickled(daemon, tmp_path, variant):
    marker = tmp_path / f"gnr_pwned_{variant}"
    payload = pickle.dumps((1, None, "echo", (Marker(str(marker)),), {}))
    if variant == "other_key":
        conn = RawConnection(daemon.address, key=OTHER_KEY)
        conn.send_raw(signed_frame(conn, payload))
    else:
        conn = RawConnection(daemon.address, key=TEST_KEY)
        if variant == "unsigned":
            conn.send_raw(pack_frame(KIND_REQUEST, payload))
        elif variant == "flipped_byte":
            frame = bytearray(signed_frame(conn, payload))
            frame[-3] ^= 0x01
            conn.send_raw(bytes(frame))
        else:
            frame = signed_frame(conn, payload)
            conn.send_raw(frame[:8 + 16])
            conn.sock.shutdown(socket.SHUT_WR)
    conn.read_all()
    assert_still_serving(daemon)
    assert not marker.exists()


def test_rejection_logged_with_peer(daemon, caplog):
    conn = RawConnection(daemon.address, key=OTHER_KEY)
    local_port = conn.sock.getsockname()[1]
    with caplog.at_level("WARNING", logger="gnr_daemon.server"):
        conn.channel.send(KIND_REQUEST, (1, None, "ping", (), {}))
        conn.read_all()
    lines = [record.getMessage() for record in caplog.records]
    assert any(f"127.0.0.1:{local_port}" in line and "tag does not match" in line for line in lines)
    assert not any(TEST_KEY in line or OTHER_KEY in line for line in lines)


# -- dispatcher over the wire ------------------------------------------------


@pytest.mark.parametrize("name", ["_private", "__class__", "a.b", "version", "no_such_method",
                                  "x" * 10_000, "méthode"])
def test_bad_names_keep_connection(daemon, name):
    conn = RawConnection(daemon.address, key=TEST_KEY)
    call_id, ok, error = conn.call(name, call_id=5)
    assert (call_id, ok) == (5, False)
    assert error[0] == "MethodNotFound"
    assert conn.call("ping", call_id=6) == (6, True, "pong")


def test_bad_name_raises_method_not_found(client):
    with pytest.raises(MethodNotFound, match="not a callable method"):
        client.call("version")


# -- malformed but signed requests ---------------------------------------------


@pytest.mark.parametrize(
    "request_object, expected",
    [
        (42, "expected a tuple"),
        ((1, None, "ping"), "a tuple of 3 items"),
        ((1, None, "echo", "abc", {}), "args must be a tuple or list"),
        ((1, None, "echo", (), {1: "x"}), "keyword argument name 1"),
        ((1, None, "echo", (), []), "kwargs must be a dict"),
        ((1, 5, "ping", (), {}), "site must be a string"),
    ],
)
def test_malformed_request_gets_error_reply(daemon, request_object, expected):
    conn = RawConnection(daemon.address, key=TEST_KEY)
    conn.channel.send(KIND_REQUEST, request_object)
    _call_id, ok, error = conn.channel.receive(10, 10)[1]
    assert ok is False
    assert error[0] == "ProtocolError"
    assert expected in error[1]
    assert conn.call("ping", call_id=9) == (9, True, "pong")


def deep_list_pickle(depth):
    """A pickle of a list nested ``depth`` levels, built without recursion."""
    return b"]" * depth + b"a" * (depth - 1)


def test_deeply_nested_argument_gets_error_reply(daemon):
    conn = RawConnection(daemon.address, key=TEST_KEY)
    payload = (b"\x80\x05(K\x01N\x8c\x04echo" + deep_list_pickle(100_000) + b"\x85}t.")
    conn.send_raw(signed_frame(conn, payload))
    call_id, ok, error = conn.channel.receive(10, 10)[1]
    assert (call_id, ok) == (1, False)
    assert "nested too deeply" in error[1]
    assert conn.call("ping", call_id=2) == (2, True, "pong")


def test_unpicklable_payload_gets_error_reply(daemon):
    conn = RawConnection(daemon.address, key=TEST_KEY)
    conn.send_raw(signed_frame(conn, b"\x80\x05garbage"))
    call_id, ok, error = conn.channel.receive(10, 10)[1]
    assert ok is False
    assert "invalid request payload" in error[1]
    assert conn.call("ping", call_id=3) == (3, True, "pong")


# -- connection limit ------------------------------------------------------------


def test_connection_limit_plain_text_refusal(daemon_factory):
    daemon = daemon_factory(max_connections=2)
    held = [RawConnection(daemon.address, key=TEST_KEY) for _ in range(2)]
    time.sleep(0.2)
    extra = RawConnection(daemon.address, key=TEST_KEY, handshake=False)
    text = error_text(extra.read_all())
    assert "too many connections (limit 2)" in text
    held[0].close()
    time.sleep(0.3)
    assert_still_serving(daemon)
    held[1].close()


def test_connection_limit_client_error(daemon_factory):
    from gnr_daemon.errors import DaemonUnavailable

    daemon = daemon_factory(max_connections=1)
    held = RawConnection(daemon.address, key=TEST_KEY)
    time.sleep(0.2)
    with daemon.client() as client:
        with pytest.raises(DaemonUnavailable, match="too many connections"):
            client.ping()
    held.close()


def test_status_reports_connections(client):
    status = client.status()
    assert status["connections"] >= 1
    assert status["signing"] is True
    assert status["store"] == "memory:"
    assert TEST_KEY not in repr(status)


def test_echo_returns_payload(client):
    payload = {"a": [1, 2.5, None], "b": ("x", b"bytes"), "c": {1, 2}}
    assert client.echo(payload) == payload


def test_large_echo_round_trip(client):
    payload = os.urandom(5 * 1024 * 1024)
    assert client.echo(payload) == payload


def test_oversized_echo_rejected(daemon_factory):
    daemon = daemon_factory(max_frame_size=1024)
    with daemon.client() as client:
        with pytest.raises(ProtocolError, match="exceeds the maximum frame size"):
            client.echo("x" * 100_000)
