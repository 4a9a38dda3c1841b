"""Hardening: restricted unpickling, key rotation, the admin key, floods and a blocked loop."""

import fractions
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from gnr_daemon import DaemonClient
from gnr_daemon.errors import (
    AuthenticationError,
    CallTimeout,
    DaemonUnavailable,
    PermissionDenied,
    ProtocolError,
)
from gnr_daemon.protocol import KIND_REQUEST

from conftest import OTHER_KEY, SLOW_DAEMON, TEST_KEY, RawConnection, clean_environment

pytestmark = pytest.mark.timeout(180)

ADMIN_KEY = "admin-key-0123456789abcdef0123456789abcdef"


class Marker:
    """Unpickling this creates the file at ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# -- restricted unpickling ---------------------------------------------------------


def test_signed_marker_pickle_refused(daemon, tmp_path):
    marker = tmp_path / "gnr_pwned"
    conn = RawConnection(daemon.address, key=TEST_KEY)
    conn.channel.send(KIND_REQUEST, (1, None, "echo", (Marker(str(marker)),), {}))
    _call_id, ok, error = conn.channel.receive(10, 10)[1]
    assert ok is False
    assert "class io.open is not allowed" in error[1]
    assert "--allow-class io.open" in error[1]
    assert not marker.exists()
    assert conn.call("ping", call_id=2) == (2, True, "pong")


def test_refused_class_reaches_client(client):
    with pytest.raises(ProtocolError, match="fractions.Fraction is not allowed"):
        client.echo(fractions.Fraction(1, 3))


def test_default_classes_accepted(client):
    import collections
    import datetime
    import decimal
    import uuid

    from gnr_daemon.registers import DataChange, DataTree

    values = [
        datetime.datetime(2026, 1, 2, 3, 4, 5), datetime.date(2026, 1, 2),
        datetime.timedelta(seconds=5), datetime.datetime.now(datetime.timezone.utc),
        decimal.Decimal("1.25"), uuid.uuid4(), {1, 2}, frozenset({3}), bytearray(b"x"),
        collections.OrderedDict(a=1), collections.deque([1, 2]), complex(1, 2),
        DataTree({"a": {"b": 1}}), DataChange("a.b", 1, reason="r"),
    ]
    for value in values:
        assert client.echo(value) == value


def test_allow_class_option(daemon_factory):
    daemon = daemon_factory(allow_classes="fractions.Fraction")
    with daemon.client() as client:
        assert client.echo(fractions.Fraction(1, 3)) == fractions.Fraction(1, 3)


def test_unrestricted_pickle_option(daemon_factory):
    daemon = daemon_factory(unrestricted_pickle=True)
    with daemon.client() as client:
        assert client.echo(fractions.Fraction(2, 3)) == fractions.Fraction(2, 3)
        assert client.status()["restricted_unpickling"] is False


def test_unrestricted_start_warns(tmp_path, start_daemon_process):
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--unrestricted-pickle",
                                  env=clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY))
    assert "restricted unpickling is OFF" in daemon.log_text()


def test_invalid_allow_class_rejected(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gnr_daemon", "start", "--allow-class",
                             "notaclass"], env=clean_environment(tmp_path), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert "write it as module.Class" in result.stderr


# -- key rotation ---------------------------------------------------------------------


def test_previous_key_accepted_during_rotation(daemon_factory):
    daemon = daemon_factory(key=TEST_KEY, hmac_key_previous=OTHER_KEY)
    with daemon.client(hmac_key=OTHER_KEY) as old_client, daemon.client() as new_client:
        assert old_client.ping() == "pong"
        assert new_client.ping() == "pong"
        status = new_client.status()
        assert status["previous_key_connections"] == 1
        assert old_client.echo("still works") == "still works"


def test_previous_key_rejected_without_option(daemon):
    with daemon.client(hmac_key=OTHER_KEY) as old_client:
        with pytest.raises(AuthenticationError, match="tag does not match"):
            old_client.ping()


def test_rotation_keeps_replay_protection(daemon_factory):
    daemon = daemon_factory(key=TEST_KEY, hmac_key_previous=OTHER_KEY)
    conn = RawConnection(daemon.address, key=OTHER_KEY)
    payload = pickle.dumps((1, None, "ping", (), {}))
    from gnr_daemon.protocol import compute_tag

    header = struct.pack(">BBHI", KIND_REQUEST, 1, 0, len(payload))
    frame = header + compute_tag(conn.channel._prefix, b"Q", 0, header, payload) + payload
    conn.send_raw(frame)
    conn.channel._send_seq = 1
    assert conn.channel.receive(10, 10)[1] == (1, True, "pong")
    conn.send_raw(frame)
    with pytest.raises(AuthenticationError):
        conn.channel.receive(10, 10)


# -- admin key ------------------------------------------------------------------------------


def test_worker_key_cannot_stop(daemon_factory):
    daemon = daemon_factory(admin_key=ADMIN_KEY)
    with daemon.client() as worker:
        with pytest.raises(PermissionDenied, match="needs a connection signed with the admin key"):
            worker.stop()
        worker.addSiteRegister("demo", storage_path="demo.pik")
        with pytest.raises(PermissionDenied):
            worker.site("demo").dump()
        with pytest.raises(PermissionDenied):
            worker.site("demo").setMaintenance(True)
        with pytest.raises(PermissionDenied):
            worker.siteregister_stop("demo")
        with worker.batch() as batch:
            stopped = batch.stop()
        with pytest.raises(PermissionDenied):
            stopped.value
        assert worker.ping() == "pong"
        assert worker.site("demo").counters()["pages"] == 0


def test_admin_key_can_stop(daemon_factory):
    daemon = daemon_factory(admin_key=ADMIN_KEY)
    with daemon.client(hmac_key=ADMIN_KEY) as admin:
        admin.addSiteRegister("demo", storage_path="demo.pik")
        admin.site("demo").dump()
        assert admin.status()["admin_connections"] == 1
        admin.stop()
    daemon.thread.join(15)
    assert not daemon.thread.is_alive()


def test_cli_stop_with_admin_key_file(tmp_path, start_daemon_process):
    admin_file = tmp_path / "admin.key"
    admin_file.write_text(ADMIN_KEY)
    admin_file.chmod(0o600)
    env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--admin-key-file",
                                  str(admin_file), env=env)
    address = ["-H", "127.0.0.1", "-P", str(daemon.port)]
    refused = subprocess.run([sys.executable, "-m", "gnr_daemon", "stop", *address], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "admin key" in refused.stderr
    stopped = subprocess.run([sys.executable, "-m", "gnr_daemon", "stop", *address,
                              "--admin-key-file", str(admin_file)], env=env, capture_output=True,
                             text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert daemon.process.wait(20) == 0


def test_group_readable_key_file_warns(tmp_path, start_daemon_process):
    key_file = tmp_path / "key"
    key_file.write_text(TEST_KEY)
    key_file.chmod(0o640)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--hmac-key-file", str(key_file),
                                  env=clean_environment(tmp_path))
    assert "is readable by group or others (mode 640)" in daemon.log_text()
    assert TEST_KEY not in daemon.log_text()


# -- floods and slow peers -----------------------------------------------------------------


def timed_pings(client, count):
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        assert client.ping() == "pong"
        durations.append(time.perf_counter() - started)
    return sorted(durations)


def test_idle_flood_leaves_clients_served(tmp_path, start_daemon_process):
    env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--max-connections", "3000",
                                  env=env)
    with DaemonClient(host="127.0.0.1", port=daemon.port, hmac_key=TEST_KEY,
                      use_environment=False, use_config_file=False) as client:
        quiet = timed_pings(client, 200)
        idle = []
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", daemon.port), timeout=10))
        time.sleep(0.5)
        assert client.status()["connections"] >= 2000
        flooded = timed_pings(client, 200)
        for sock in idle:
            sock.close()
    # The median under 2,000 idle connections stays within a few times the
    # quiet median: idle sockets cost the loop nothing.
    assert flooded[100] < max(quiet[100] * 5, 0.005)


def test_slow_and_stalled_peers_closed(daemon_factory):
    daemon = daemon_factory(read_timeout=1.0, handshake_timeout=1.0)
    half_header = RawConnection(daemon.address, key=TEST_KEY)
    half_header.send_raw(b"\x01\x01\x00")
    dribbler = RawConnection(daemon.address, key=TEST_KEY)
    silent = RawConnection(daemon.address, key=TEST_KEY, handshake=False)
    with daemon.client() as client:
        started = time.monotonic()
        closed = {}
        while time.monotonic() - started < 6 and len(closed) < 3:
            try:
                dribbler.send_raw(b"\x01")
            except OSError:
                closed.setdefault("dribbler", time.monotonic() - started)
            for name, conn in (("half_header", half_header), ("silent", silent)):
                if name not in closed and _closed_by_peer(conn.sock):
                    closed[name] = time.monotonic() - started
            assert client.ping() == "pong"
            time.sleep(0.2)
    assert set(closed) == {"half_header", "silent", "dribbler"}
    assert max(closed.values()) < 5


def _closed_by_peer(sock):
    sock.settimeout(0.01)
    try:
        data = sock.recv(65536)
    except (socket.timeout, BlockingIOError):
        return False
    except OSError:
        return True
    while data:
        try:
            data = sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return False
        except OSError:
            return True
    return True


def test_limit_refusal_then_recovery(daemon_factory):
    daemon = daemon_factory(max_connections=20)
    held = [RawConnection(daemon.address, key=TEST_KEY) for _ in range(20)]
    time.sleep(0.2)
    started = time.monotonic()
    with daemon.client() as client:
        with pytest.raises(DaemonUnavailable, match="too many connections"):
            client.ping()
    assert time.monotonic() - started < 2
    for conn in held[:5]:
        conn.close()
    time.sleep(0.3)
    with daemon.client() as client:
        assert client.ping() == "pong"
    for conn in held[5:]:
        conn.close()


def test_cpu_bound_handler_interrupted(tmp_path, start_daemon_process):
    env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--call-timeout", "2",
                                  env=env, program=SLOW_DAEMON)
    outcome = {}

    def spinner():
        with DaemonClient(host="127.0.0.1", port=daemon.port, hmac_key=TEST_KEY, timeout=30,
                          use_environment=False, use_config_file=False) as client:
            started = time.monotonic()
            try:
                client.spin(20)
            except CallTimeout as exc:
                outcome["error"] = exc
            outcome["seconds"] = time.monotonic() - started

    with DaemonClient(host="127.0.0.1", port=daemon.port, hmac_key=TEST_KEY, timeout=30,
                      use_environment=False, use_config_file=False) as pinger:
        assert pinger.ping() == "pong"
        thread = threading.Thread(target=spinner)
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert pinger.ping() == "pong"
        waited = time.monotonic() - started
        thread.join(30)
        assert pinger.ping() == "pong"
    assert "kept the daemon busy" in str(outcome["error"])
    assert outcome["seconds"] < 10
    assert waited < 10
    log_text = daemon.log_text()
    assert "event loop blocked for" in log_text
    assert "by spin" in log_text


# -- fuzzing the frame reader ---------------------------------------------------------------


def test_frame_reader_fuzz(daemon):
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    valid = pickle.dumps((1, None, "ping", (), {}))

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(
        st.binary(max_size=200),
        st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF),
                  st.integers(0, 0xFFFFFFFF), st.binary(max_size=100)).map(
            lambda t: struct.pack(">BBHI", *t[:4]) + t[4]),
        st.binary(min_size=1, max_size=len(valid)).map(lambda b: valid[:len(b)]),
    ))
    def feed(data):
        conn = RawConnection(daemon.address, key=TEST_KEY)
        try:
            conn.send_raw(data)
            conn.sock.shutdown(socket.SHUT_WR)
            conn.read_all(timeout=10)
        except OSError:
            pass
        finally:
            conn.close()

    feed()
    with daemon.client() as client:
        assert client.ping() == "pong"
        assert client.status()["calls_served"] >= 1


def test_redis_key_rotation(redis_server):
    from gnr_daemon.store import open_store
    from redis_fixtures import new_prefix

    url = redis_server.url(prefix=new_prefix())
    old_store = open_store(url, hmac_key=OTHER_KEY.encode())
    site = old_store.site_store("demo")
    site.run_atomic(lambda: site.put_meta("answer", 42))
    old_store.close()

    rotating = open_store(url, hmac_key=TEST_KEY.encode(), previous_key=OTHER_KEY.encode())
    assert rotating.site_store("demo").get_meta("answer") == 42
    assert rotating.retag() >= 1
    assert rotating.retag() == 0
    rotating.close()

    new_only = open_store(url, hmac_key=TEST_KEY.encode())
    assert new_only.site_store("demo").get_meta("answer") == 42
    new_only.close()
    stale = open_store(url, hmac_key=OTHER_KEY.encode())
    from gnr_daemon.errors import StoreError

    with pytest.raises(StoreError, match="failed the HMAC check"):
        stale.site_store("demo").get_meta("answer")
    stale.close()


def test_rejected_admin_call_logged(daemon_factory, caplog):
    daemon = daemon_factory(admin_key=ADMIN_KEY)
    with caplog.at_level("WARNING", logger="gnr_daemon.daemon"):
        with daemon.client() as worker:
            with pytest.raises(PermissionDenied):
                worker.stop()
    rejections = [record.getMessage() for record in caplog.records
                  if "rejected stop" in record.getMessage()]
    assert len(rejections) == 1
    assert "127.0.0.1:" in rejections[0]


def test_group_readable_admin_key_file_warns(tmp_path, start_daemon_process):
    admin_file = tmp_path / "admin.key"
    admin_file.write_text(ADMIN_KEY)
    admin_file.chmod(0o644)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--admin-key-file",
                                  str(admin_file),
                                  env=clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY))
    assert f"key file {admin_file} is readable by group or others" in daemon.log_text()
