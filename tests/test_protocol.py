"""Framing, signing and handshake rules, on socket pairs (no daemon)."""

import pickle
import socket
import struct

import pytest

from gnr_daemon.errors import AuthenticationError, DaemonUnavailable, ProtocolError
from gnr_daemon.protocol import (
    HEADER_SIZE,
    HELLO_SIZE,
    KIND_ERROR,
    KIND_REQUEST,
    KIND_RESPONSE,
    TAG_SIZE,
    Channel,
    FrameTooLarge,
    PeerClosed,
    pack_frame,
    pack_hello,
    unpack_hello,
)

KEY = b"k" * 32


def channel_pair(server_key=KEY, client_key=KEY, max_frame_size=1024 * 1024):
    """Return (server, client) channels over a socket pair, handshake done."""
    left, right = socket.socketpair()
    server = Channel(left, "server", key=server_key, max_frame_size=max_frame_size, peer="test")
    client = Channel(right, "client", key=client_key, max_frame_size=max_frame_size, peer="test")
    import threading

    errors = []

    def serve():
        try:
            server.server_handshake(5)
        except Exception as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        client.client_handshake(5)
    finally:
        thread.join(5)
    if errors:
        raise errors[0]
    return server, client


def test_hello_round_trip():
    nonce = bytes(range(16))
    assert unpack_hello(pack_hello(True, nonce)) == (True, nonce)


def test_hello_size_is_24():
    assert len(pack_hello(False, b"\0" * 16)) == HELLO_SIZE == 24


def test_hello_wrong_magic_rejected():
    data = b"XXXX" + pack_hello(True, b"\0" * 16)[4:]
    with pytest.raises(ProtocolError, match="magic"):
        unpack_hello(data)


def test_hello_wrong_version_rejected():
    data = bytearray(pack_hello(True, b"\0" * 16))
    data[4] = 99
    with pytest.raises(ProtocolError, match="version 99"):
        unpack_hello(bytes(data))


def test_signed_request_round_trip():
    server, client = channel_pair()
    client.send(KIND_REQUEST, (1, None, "ping", (), {}))
    assert server.receive(5, 5) == (KIND_REQUEST, (1, None, "ping", (), {}))


def test_signed_response_round_trip():
    server, client = channel_pair()
    server.send(KIND_RESPONSE, (7, True, "pong"))
    assert client.receive(5, 5) == (KIND_RESPONSE, (7, True, "pong"))


def test_unsigned_round_trip_without_key():
    server, client = channel_pair(server_key=None, client_key=None)
    client.send(KIND_REQUEST, {"a": 1})
    assert server.receive(5, 5) == (KIND_REQUEST, {"a": 1})


def test_many_frames_keep_sequence():
    server, client = channel_pair()
    for number in range(50):
        client.send(KIND_REQUEST, number)
    received = [server.receive(5, 5)[1] for _ in range(50)]
    assert received == list(range(50))


def test_large_frame_uses_own_buffer():
    server, client = channel_pair()
    payload = b"x" * 300_000

    import threading

    thread = threading.Thread(target=client.send, args=(KIND_REQUEST, payload))
    thread.start()
    kind, value = server.receive(5, 5)
    thread.join(5)
    assert value == payload


def test_tampered_payload_rejected():
    server, client = channel_pair()
    payload = pickle.dumps("hello")
    header = struct.pack(">BBHI", KIND_REQUEST, 1, 0, len(payload))
    from gnr_daemon.protocol import compute_tag

    tag = compute_tag(client._prefix, b"Q", 0, header, payload)
    tampered = payload[:-2] + bytes([payload[-2] ^ 1]) + payload[-1:]
    client.sock.sendall(header + tag + tampered)
    with pytest.raises(AuthenticationError, match="tag does not match"):
        server.receive(5, 5)


def test_replayed_frame_rejected():
    server, client = channel_pair()
    payload = pickle.dumps("first")
    frame = _signed_frame(client, payload, sequence=0)
    client.sock.sendall(frame)
    assert server.receive(5, 5)[1] == "first"
    client.sock.sendall(frame)
    with pytest.raises(AuthenticationError):
        server.receive(5, 5)


def _signed_frame(client, payload, sequence):
    from gnr_daemon.protocol import compute_tag

    header = struct.pack(">BBHI", KIND_REQUEST, 1, 0, len(payload))
    return header + compute_tag(client._prefix, b"Q", sequence, header, payload) + payload


def test_wrong_key_rejected():
    left, right = socket.socketpair()
    server = Channel(left, "server", key=KEY, peer="test")
    client = Channel(right, "client", key=b"z" * 32, peer="test")
    import threading

    thread = threading.Thread(target=server.server_handshake, args=(5,))
    thread.start()
    client.client_handshake(5)
    thread.join(5)
    client.send(KIND_REQUEST, "x")
    with pytest.raises(AuthenticationError):
        server.receive(5, 5)


def test_unsigned_frame_rejected_when_key_required():
    server, client = channel_pair()
    client.sock.sendall(pack_frame(KIND_REQUEST, pickle.dumps("x")))
    with pytest.raises(AuthenticationError, match="unsigned"):
        server.receive(5, 5)


def test_oversized_length_rejected_before_body():
    server, client = channel_pair(max_frame_size=1000)
    client.sock.sendall(struct.pack(">BBHI", KIND_REQUEST, 1, 0, 0x7FFFFFFF))
    with pytest.raises(FrameTooLarge, match="2147483647 bytes exceeds"):
        server.receive(5, 5)


def test_unknown_kind_rejected():
    server, client = channel_pair()
    client.sock.sendall(struct.pack(">BBHI", 9, 1, 0, 4) + b"\0" * (TAG_SIZE + 4))
    with pytest.raises(ProtocolError, match="unknown frame kind 9"):
        server.receive(5, 5)


def test_reserved_bits_rejected():
    server, client = channel_pair()
    client.sock.sendall(struct.pack(">BBHI", KIND_REQUEST, 0x81, 0, 4))
    with pytest.raises(ProtocolError, match="reserved bits"):
        server.receive(5, 5)


def test_truncated_header_reports_counts():
    server, client = channel_pair()
    client.sock.sendall(b"\x01\x01\x00")
    client.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(PeerClosed, match=f"received 3 of {HEADER_SIZE} bytes"):
        server.receive(5, 5)


def test_truncated_body_reports_counts():
    server, client = channel_pair(server_key=None, client_key=None)
    client.sock.sendall(struct.pack(">BBHI", KIND_REQUEST, 0, 0, 100) + b"x" * 10)
    client.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(PeerClosed, match="received 10 of 100 bytes"):
        server.receive(5, 5)


def test_error_frame_raises_named_class():
    server, client = channel_pair()
    server.send_error("DaemonUnavailable: too many connections")
    with pytest.raises(DaemonUnavailable, match="too many connections"):
        client.receive(5, 5)


def test_error_frame_unknown_class_is_protocol_error():
    server, client = channel_pair()
    server.send_error("Nonsense text without class")
    with pytest.raises(ProtocolError, match="Nonsense text"):
        client.receive(5, 5)


def test_client_without_key_rejects_keyed_daemon():
    left, right = socket.socketpair()
    left.sendall(pack_hello(True, b"n" * 16))
    client = Channel(right, "client", key=None, peer="daemon:1")
    with pytest.raises(AuthenticationError, match="requires an HMAC key"):
        client.client_handshake(5)


def test_client_with_key_rejects_unkeyed_daemon():
    left, right = socket.socketpair()
    left.sendall(pack_hello(False, b"n" * 16))
    client = Channel(right, "client", key=KEY, peer="daemon:1")
    with pytest.raises(AuthenticationError, match="does not require an HMAC key"):
        client.client_handshake(5)


def test_error_frame_instead_of_hello():
    left, right = socket.socketpair()
    left.sendall(pack_frame(KIND_ERROR, b"DaemonUnavailable: too many connections (limit 1)"))
    client = Channel(right, "client", key=KEY, peer="daemon:1")
    with pytest.raises(DaemonUnavailable, match="limit 1"):
        client.client_handshake(5)
