"""Failures users hit in similar daemons, replayed against gnr_daemon.

Each test names the failure it replays; all traffic stays on 127.0.0.1.
"""

import logging
import os
import socket
import struct
import time

import pytest

from gnr_daemon.daemon import Daemon
from gnr_daemon.errors import MethodNotFound
from gnr_daemon.protocol import KIND_REQUEST

from conftest import TEST_KEY, RawConnection, clean_environment, rss_kib

pytestmark = pytest.mark.timeout(120)


# -- a peer that announces a huge frame or streams garbage ----------------------


@pytest.mark.parametrize("length", [0x7FFFFFFF, 0xFFFFFFFF])
def test_huge_length_keeps_rss_flat(tmp_path, start_daemon_process, length):
    env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=env)
    before = rss_kib(daemon.process.pid)
    conn = RawConnection(("127.0.0.1", daemon.port), key=TEST_KEY)
    conn.send_raw(struct.pack(">BBHI", KIND_REQUEST, 1, 0, length))
    try:
        for _ in range(20):
            conn.send_raw(os.urandom(512))
            time.sleep(0.02)
    except OSError:
        pass  # the daemon closed the connection, as it should
    conn.close()
    assert rss_kib(daemon.process.pid) - before < 10 * 1024
    time.sleep(0.2)
    log_text = daemon.log_text()
    assert f"frame of {length} bytes exceeds the maximum frame size" in log_text
    assert "rejected frame from 127.0.0.1:" in log_text


def test_urandom_stream_keeps_rss_flat(tmp_path, start_daemon_process):
    env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=env)
    before = rss_kib(daemon.process.pid)
    deadline = time.monotonic() + 2
    connections = 0
    while time.monotonic() < deadline:
        sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
        connections += 1
        try:
            for _ in range(64):
                sock.sendall(os.urandom(16 * 1024))
        except OSError:
            pass
        sock.close()
    assert connections > 1
    assert rss_kib(daemon.process.pid) - before < 20 * 1024
    from gnr_daemon import DaemonClient

    with DaemonClient(host="127.0.0.1", port=daemon.port, hmac_key=TEST_KEY,
                      use_environment=False, use_config_file=False) as client:
        assert client.ping() == "pong"


def test_slow_large_frame_costs_what_was_sent(tmp_path, start_daemon_process):
    env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--read-timeout", "2", env=env)
    before = rss_kib(daemon.process.pid)
    senders = []
    for _ in range(20):
        conn = RawConnection(("127.0.0.1", daemon.port), key=TEST_KEY)
        conn.send_raw(struct.pack(">BBHI", KIND_REQUEST, 1, 0, 60 * 1024 * 1024) + b"\0" * 32)
        conn.send_raw(b"x" * 1024)
        senders.append(conn)
    time.sleep(0.5)
    # 20 frames announcing 60 MiB each would be 1.2 GiB if allocated up front.
    assert rss_kib(daemon.process.pid) - before < 64 * 1024
    for conn in senders:
        conn.close()


# -- only exposed methods can be called -----------------------------------------


class AttributeDaemon(Daemon):
    """A daemon whose class carries every kind of non-method attribute."""

    settings_dict = {"a": 1}
    limit = 10
    helper_class = dict
    logger = logging.getLogger("attribute-daemon")

    @property
    def computed(self):
        raise AssertionError("a property getter must never run")

    @staticmethod
    def static_helper():
        return "static"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.store_client = os.getpid


@pytest.mark.parametrize("name", ["settings_dict", "limit", "helper_class", "logger", "computed",
                                  "static_helper", "store_client"])
def test_attribute_not_callable(daemon_factory, name):
    daemon = daemon_factory(daemon_class=AttributeDaemon)
    conn = RawConnection(daemon.address, key=TEST_KEY)
    _call_id, ok, error = conn.call(name, call_id=1)
    assert ok is False
    assert error[0] == "MethodNotFound"
    assert "not a callable method" in error[1]
    assert conn.call("ping", call_id=2) == (2, True, "pong")


def test_odd_names_then_valid_call(daemon):
    conn = RawConnection(daemon.address, key=TEST_KEY)
    for number, name in enumerate(["ping\u00e9", "\u043f\u0438\u043d\u0433", "p" * 10_240, "ping()",
                                   "ping\x00"]):
        _call_id, ok, error = conn.call(name, call_id=number)
        assert ok is False
        assert error[0] == "MethodNotFound"
    assert conn.call("ping", call_id=99) == (99, True, "pong")


def test_client_raises_method_not_found(daemon_factory):
    daemon = daemon_factory(daemon_class=AttributeDaemon)
    with daemon.client() as client:
        with pytest.raises(MethodNotFound):
            client.call("helper_class")
        assert client.ping() == "pong"


# -- replies that cannot be pickled ------------------------------------------


class DeepDaemon(Daemon):
    def deep(self, depth):
        value = []
        for _ in range(depth):
            value = [value]
        return value

    def unpicklable(self):
        return lambda: None


def test_deep_return_value_gets_error_reply(daemon_factory):
    daemon = daemon_factory(daemon_class=DeepDaemon)
    conn = RawConnection(daemon.address, key=TEST_KEY)
    _call_id, ok, error = conn.call("deep", 100_000, call_id=1)
    assert ok is False
    assert "nested too deeply" in error[1]
    assert conn.call("deep", 3, call_id=2) == (2, True, [[[[]]]])


def test_unpicklable_return_value_gets_error_reply(daemon_factory):
    daemon = daemon_factory(daemon_class=DeepDaemon)
    conn = RawConnection(daemon.address, key=TEST_KEY)
    _call_id, ok, error = conn.call("unpicklable", call_id=1)
    assert ok is False
    assert error[0] in ("PicklingError", "AttributeError", "TypeError")
    assert conn.call("ping", call_id=2) == (2, True, "pong")
