"""The gnr_daemon wire protocol: handshake, framing, HMAC signing, pickle codec.

This module owns the bytes on the socket and nothing above them: it does not
know about methods, sites or registers. Both the server and the client use it,
so it imports no gevent and patches nothing; it works on any socket object
with ``recv_into``, ``sendall`` and ``settimeout``.

Handshake (both hellos are 24 bytes, big-endian, never signed)::

    offset size  field
    0      4     magic            b"GNRD"
    4      1     version          PROTOCOL_VERSION (1)
    5      1     flags            bit 0: a key is required (server) / used (client)
    6      2     reserved         0
    8      16    nonce            16 random bytes from ``secrets``

The server sends its hello as soon as it accepts a connection; the client
reads it and replies with its own hello before its first frame. Every later
message is a frame::

    offset size  field
    0      1     kind             1 request, 2 response, 3 error (plain text)
    1      1     flags            bit 0: a tag follows the header
    2      2     reserved         0
    4      4     length           payload length in bytes
    8      32    tag              HMAC-SHA256, present only when flags bit 0 is set
    8|40   len   payload          pickle (requests, responses) or UTF-8 text (errors)

Tag = HMAC-SHA256(key, server nonce + client nonce + direction + sequence +
header + payload), where direction is b"Q" for client-to-server and b"R" for
server-to-client frames, and sequence is the 8-byte big-endian count of
signed frames already sent in that direction on this connection. A frame
captured on one connection therefore fails on any other connection (other
nonces), and a frame replayed, dropped or reordered on the same connection
fails too (other sequence number).

Invariants:

- The length is checked against the maximum frame size right after the
  8 header bytes, before the tag or the body is read or any buffer is sized.
- A signed frame's tag is checked with ``hmac.compare_digest`` before its
  payload is unpickled. ``_unpickle`` is called from one place only,
  ``Channel.receive``, after that check. With a key configured, an unsigned
  frame is rejected, and so is a peer whose hello says it has no key.
- Error frames are never pickled and never signed; their text is shown to the
  peer as it is, so it must never contain a key or a payload.
"""

import hmac
import logging
import pickle
import secrets
import socket
import struct
import time
from hashlib import sha256

from .errors import AuthenticationError, GnrDaemonError, ProtocolError, RemoteError, rebuild_error

__all__ = [
    "MAGIC",
    "PROTOCOL_VERSION",
    "HELLO_SIZE",
    "HEADER_SIZE",
    "TAG_SIZE",
    "NONCE_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "KIND_REQUEST",
    "KIND_RESPONSE",
    "KIND_ERROR",
    "PICKLE_PROTOCOL",
    "FrameTooLarge",
    "PayloadError",
    "PeerClosed",
    "Channel",
    "pack_hello",
    "unpack_hello",
    "pack_frame",
    "compute_tag",
    "encode_payload",
]

log = logging.getLogger(__name__)

# -- constants ---------------------------------------------------------------

MAGIC = b"GNRD"
PROTOCOL_VERSION = 1
NONCE_SIZE = 16
TAG_SIZE = 32
PICKLE_PROTOCOL = 5

#: Default maximum payload length of one frame, in bytes (64 MiB).
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024

KIND_REQUEST = 1
KIND_RESPONSE = 2
KIND_ERROR = 3
_KINDS = {KIND_REQUEST: "request", KIND_RESPONSE: "response", KIND_ERROR: "error"}

FLAG_KEY = 0x01  # hello: key required (server) or in use (client)
FLAG_SIGNED = 0x01  # frame: a tag follows the header

_HELLO = struct.Struct(">4sBBH16s")
_HEADER = struct.Struct(">BBHI")
HELLO_SIZE = _HELLO.size
HEADER_SIZE = _HEADER.size

DIRECTION_REQUEST = b"Q"
DIRECTION_RESPONSE = b"R"

# Receive buffer of a channel; frames larger than this get their own buffer.
_BUFFER_SIZE = 64 * 1024

# First size of the buffer of a frame larger than _BUFFER_SIZE; it doubles
# as data arrives, up to the frame's length.
_LARGE_CHUNK = 1024 * 1024

# Payloads up to this size are tagged with one C call over a joined copy.
# Larger ones extend a per-connection HMAC state instead of being copied.
_ONE_SHOT_TAG_LIMIT = 64 * 1024

# Maximum length of an error text accepted from or sent to a peer.
_MAX_ERROR_TEXT = 4096


class FrameTooLarge(ProtocolError):
    """A frame header announced a payload longer than the maximum frame size."""


class PayloadError(GnrDaemonError):
    """A frame passed verification but its payload could not be unpickled."""


class PeerClosed(ProtocolError):
    """The peer closed the connection; ``received`` bytes of a message had arrived."""

    def __init__(self, message, received=0):
        super().__init__(message)
        self.received = received


# -- hello -------------------------------------------------------------------


def pack_hello(key_flag, nonce):
    """Return the 24-byte hello with the given key flag and nonce."""
    flags = FLAG_KEY if key_flag else 0
    return _HELLO.pack(MAGIC, PROTOCOL_VERSION, flags, 0, nonce)


def unpack_hello(data):
    """Parse a hello; return ``(key_flag, nonce)`` or raise ProtocolError."""
    magic, version, flags, _reserved, nonce = _HELLO.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(
            f"invalid hello: magic {magic!r} is not {MAGIC!r}; the peer does not speak "
            "the gnr_daemon protocol"
        )
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version} (this side speaks {PROTOCOL_VERSION}); "
            "install the same gnr_daemon version on client and daemon"
        )
    return bool(flags & FLAG_KEY), nonce


# -- signing -----------------------------------------------------------------


def _tag_prefix(key, server_nonce, client_nonce):
    return hmac.new(key, server_nonce + client_nonce, sha256)


def compute_tag(prefix, direction, sequence, header, payload):
    """Return the tag of one frame from the per-connection HMAC ``prefix`` state."""
    mac = prefix.copy()
    mac.update(direction + sequence.to_bytes(8, "big") + header)
    mac.update(payload)
    return mac.digest()


# -- framing -----------------------------------------------------------------


def pack_frame(kind, payload, tag=None):
    """Return one frame as bytes; ``tag`` must be given for a signed frame."""
    flags = FLAG_SIGNED if tag is not None else 0
    header = _HEADER.pack(kind, flags, 0, len(payload))
    if tag is None:
        return header + payload
    return b"".join((header, tag, payload))


def _check_header(kind, flags, reserved, length, max_frame_size):
    if kind not in _KINDS:
        raise ProtocolError(f"invalid frame header: unknown frame kind {kind}")
    if reserved or flags & ~FLAG_SIGNED:
        raise ProtocolError(
            f"invalid frame header: reserved bits set (flags 0x{flags:02x}, reserved {reserved})"
        )
    if length > max_frame_size:
        raise FrameTooLarge(
            f"frame of {length} bytes exceeds the maximum frame size of {max_frame_size} bytes "
            "(raise it with --max-frame-size or GNR_DAEMON_MAX_FRAME_SIZE on both sides)"
        )


# -- codec -------------------------------------------------------------------


def encode_payload(obj):
    """Pickle ``obj`` for the wire."""
    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


def _unpickle(payload):
    # Called only by Channel.receive after the frame passed verification.
    return pickle.loads(payload)


# -- channel -----------------------------------------------------------------


class Channel:
    """One end of a gnr_daemon connection: hellos, sequence numbers, frames.

    ``role`` is ``"server"`` or ``"client"``. A channel is not safe for
    concurrent use: one caller at a time sends and receives on it.
    """

    def __init__(self, sock, role, key=None, max_frame_size=DEFAULT_MAX_FRAME_SIZE,
                 peer="?", loads=None, other_keys=()):
        if role not in ("server", "client"):
            raise ValueError(f"invalid channel role {role!r}: use 'server' or 'client'")
        self.sock = sock
        self.role = role
        self.peer = peer
        self.max_frame_size = max_frame_size
        self._key = key or None
        self._prefix = None
        self._nonces = None
        #: Which key the peer signs with: "current", or the name given with
        #: ``other_keys`` (server side: "previous", "admin"); None without a key.
        self.key_role = "current" if self._key else None
        # Server side: (key, name) pairs tried, in order after the main key,
        # on the first signed frame; the one that matches signs the rest.
        self._candidates = [(key, "current"), *other_keys] if self._key and other_keys else None
        self._send_seq = 0
        self._recv_seq = 0
        if role == "server":
            self._send_direction, self._recv_direction = DIRECTION_RESPONSE, DIRECTION_REQUEST
        else:
            self._send_direction, self._recv_direction = DIRECTION_REQUEST, DIRECTION_RESPONSE
        self._loads = loads or _unpickle
        self._timeout = sock.gettimeout()
        #: time.monotonic() when the frame being received started to arrive
        self.frame_started = None
        self._buffer = bytearray(_BUFFER_SIZE)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0

    def __repr__(self):
        signed = "signed" if self._key else "unsigned"
        return f"<Channel {self.role} peer={self.peer} {signed} sent={self._send_seq}>"

    @property
    def signed(self):
        return self._key is not None

    # handshake

    def server_handshake(self, timeout):
        """Send the server hello, then read and check the client hello."""
        server_nonce = secrets.token_bytes(NONCE_SIZE)
        self.sock.sendall(pack_hello(self._key is not None, server_nonce))
        self._set_timeout(timeout)
        client_key_flag, client_nonce = unpack_hello(self._read_exact(HELLO_SIZE, "client hello"))
        if self._key is not None and not client_key_flag:
            raise AuthenticationError(
                "this daemon requires an HMAC key but the client sent none: configure "
                "the client with the daemon's key"
            )
        if self._key is None and client_key_flag:
            raise AuthenticationError(
                "the client uses an HMAC key but this daemon has none: start the daemon "
                "with the same key (GNR_DAEMON_HMAC_KEY or --hmac-key-file)"
            )
        if self._key is not None:
            self._start_signing(server_nonce, client_nonce)

    def client_handshake(self, timeout):
        """Read and check the server hello, then send the client hello."""
        self._set_timeout(timeout)
        # A daemon that rejects the connection outright (too many connections)
        # sends an error frame where the hello would be.
        first = bytes(self._read_exact(HEADER_SIZE, "daemon hello"))
        if first[0] == KIND_ERROR:
            _kind, _flags, _reserved, length = _HEADER.unpack(first)
            text = bytes(self._read_exact(min(length, _MAX_ERROR_TEXT), "error frame"))
            raise _error_from_text(text.decode("utf-8", "replace"))
        rest = bytes(self._read_exact(HELLO_SIZE - HEADER_SIZE, "daemon hello"))
        server_key_flag, server_nonce = unpack_hello(first + rest)
        if server_key_flag and self._key is None:
            raise AuthenticationError(
                f"daemon at {self.peer} requires an HMAC key: set GNR_DAEMON_HMAC_KEY or "
                "GNR_DAEMON_HMAC_KEY_FILE (--hmac-key-file on the command line, hmac_key= "
                "for DaemonClient)"
            )
        if self._key is not None and not server_key_flag:
            raise AuthenticationError(
                f"daemon at {self.peer} does not require an HMAC key but this client has "
                "one: start the daemon with the same key, or remove the key from the client"
            )
        client_nonce = secrets.token_bytes(NONCE_SIZE)
        self.sock.sendall(pack_hello(self._key is not None, client_nonce))
        if self._key is not None:
            self._start_signing(server_nonce, client_nonce)

    def _start_signing(self, server_nonce, client_nonce):
        self._nonces = server_nonce + client_nonce
        self._prefix = _tag_prefix(self._key, server_nonce, client_nonce)

    def _tag(self, direction, sequence, header, payload, key=None):
        if key is not None:
            prefix = _tag_prefix(key, self._nonces[:NONCE_SIZE], self._nonces[NONCE_SIZE:])
        else:
            key, prefix = self._key, self._prefix
        if len(payload) <= _ONE_SHOT_TAG_LIMIT:
            message = b"".join((self._nonces, direction, sequence.to_bytes(8, "big"), header, payload))
            return hmac.digest(key, message, "sha256")
        return compute_tag(prefix, direction, sequence, header, payload)

    def _adopt_key(self, header, tag, payload):
        """On the first frame, find which accepted key signed it and keep that key."""
        candidates, self._candidates = self._candidates, None
        for key, name in candidates:
            expected = self._tag(self._recv_direction, self._recv_seq, header, payload, key=key)
            if hmac.compare_digest(expected, tag):
                self._key = key
                self._prefix = _tag_prefix(key, self._nonces[:NONCE_SIZE], self._nonces[NONCE_SIZE:])
                self.key_role = name
                return True
        return False

    # sending

    def send(self, kind, obj):
        """Pickle ``obj`` and send it as one frame of ``kind``."""
        self.send_payload(kind, encode_payload(obj))

    def send_payload(self, kind, payload):
        """Send an already pickled payload as one frame (one ``sendall``)."""
        if len(payload) > self.max_frame_size:
            what = "request" if self.role == "client" else "reply"
            raise FrameTooLarge(
                f"{what} of {len(payload)} bytes exceeds this side's maximum frame size of "
                f"{self.max_frame_size} bytes (max_frame_size, GNR_DAEMON_MAX_FRAME_SIZE)"
            )
        if self._prefix is None:
            frame = pack_frame(kind, payload)
        else:
            header = _HEADER.pack(kind, FLAG_SIGNED, 0, len(payload))
            tag = self._tag(self._send_direction, self._send_seq, header, payload)
            self._send_seq += 1
            frame = b"".join((header, tag, payload))
        # One send() usually takes the whole frame; sendall() only finishes a
        # partial send. gevent's sendall() costs an extra system call.
        sent = self.sock.send(frame)
        if sent < len(frame):
            self.sock.sendall(memoryview(frame)[sent:])

    def send_error(self, text):
        """Send a plain-text error frame, ignoring a socket that is already broken."""
        data = text.encode("utf-8", "replace")[:_MAX_ERROR_TEXT]
        try:
            self.sock.sendall(pack_frame(KIND_ERROR, data))
        except OSError:
            pass

    # receiving

    def receive(self, idle_timeout=None, read_timeout=None):
        """Read, verify and decode one frame; return ``(kind, object)``.

        ``idle_timeout`` bounds the wait for the first byte of the frame and
        ``read_timeout`` the time to receive the rest. An error frame from the
        peer is raised as the exception its text names.
        """
        if self._end == self._start:
            self._set_timeout(idle_timeout)
            self._fill_some()
        self.frame_started = time.monotonic()
        self._set_timeout(read_timeout)
        header = bytes(self._read_exact(HEADER_SIZE, "frame header"))
        kind, flags, reserved, length = _HEADER.unpack(header)
        _check_header(kind, flags, reserved, length, self.max_frame_size)

        if kind == KIND_ERROR:
            text = bytes(self._read_exact(length, "error frame")).decode("utf-8", "replace")
            raise _error_from_text(text[:_MAX_ERROR_TEXT])

        tag = bytes(self._read_exact(TAG_SIZE, "frame tag")) if flags & FLAG_SIGNED else None
        payload = self._read_exact(length, "frame payload")
        self._verify(header, tag, payload)
        try:
            return kind, self._loads(payload)
        except Exception as exc:
            raise PayloadError(f"{type(exc).__name__}: {exc}") from None

    def _set_timeout(self, timeout):
        # A plain socket's settimeout is a system call even when the value
        # does not change, so it is skipped when the value is the same.
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout

    def _verify(self, header, tag, payload):
        if self._prefix is None:
            if tag is not None:
                raise AuthenticationError("signed frame received on a connection without a key")
            return
        if tag is None:
            raise AuthenticationError("unsigned frame received but a key is required")
        if self._candidates is not None:
            matched = self._adopt_key(header, tag, payload)
        else:
            expected = self._tag(self._recv_direction, self._recv_seq, header, payload)
            matched = hmac.compare_digest(expected, tag)
        if not matched:
            raise AuthenticationError(
                "frame tag does not match: wrong key, tampered frame, or a frame replayed "
                "from another connection or out of sequence"
            )
        self._recv_seq += 1

    def _fill_some(self):
        """Receive at least one byte into the buffer (after compacting it)."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buffer):
            pending = self._end - self._start
            self._buffer[:pending] = self._buffer[self._start:self._end]
            self._start, self._end = 0, pending
        count = self.sock.recv_into(self._view[self._end:])
        if not count:
            pending = self._end - self._start
            raise PeerClosed(f"connection closed by {self.peer}", received=pending)
        self._end += count

    def _read_exact(self, size, what):
        """Return exactly ``size`` bytes; the view is valid until the next read."""
        available = self._end - self._start
        if available >= size:
            start = self._start
            self._start += size
            return self._view[start:start + size]
        if size <= len(self._buffer) - self._start or size <= len(self._buffer) // 2:
            while self._end - self._start < size:
                try:
                    self._fill_some()
                except PeerClosed as exc:
                    raise PeerClosed(
                        f"connection closed by {self.peer} in the middle of the {what}: "
                        f"received {exc.received} of {size} bytes",
                        received=exc.received,
                    ) from None
            start = self._start
            self._start += size
            return self._view[start:start + size]
        return self._read_large(size, what)

    def _read_large(self, size, what):
        # A payload larger than the shared buffer gets a buffer of its own.
        # It grows as bytes arrive instead of being allocated at the announced
        # size, so a peer that announces a large frame and sends little costs
        # only what it sent, before its tag can be checked.
        available = self._end - self._start
        data = bytearray(max(available, min(size, _LARGE_CHUNK)))
        data[:available] = self._view[self._start:self._end]
        self._start = self._end = 0
        received = available
        while received < size:
            if received == len(data):
                data.extend(bytes(min(len(data), size - len(data))))
            with memoryview(data) as view:
                count = self.sock.recv_into(view[received:])
            if not count:
                raise PeerClosed(
                    f"connection closed by {self.peer} in the middle of the {what}: "
                    f"received {received} of {size} bytes",
                    received=received,
                )
            received += count
        return data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _error_from_text(text):
    """Turn the text of an error frame (``"ClassName: message"``) into an exception."""
    name, sep, message = text.partition(": ")
    if not sep or not name.isidentifier():
        return ProtocolError(f"daemon error: {text}")
    if name == "FrameTooLarge":
        return FrameTooLarge(message)
    error = rebuild_error(name, message)
    if isinstance(error, RemoteError):
        return ProtocolError(f"daemon error: {text}")
    return error


def is_timeout(exc):
    """Tell whether ``exc`` is a socket timeout, under gevent or not."""
    return isinstance(exc, (socket.timeout, TimeoutError))
