"""DaemonClient against a real daemon: pool safety, errors, threads and greenlets."""

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import gevent
import pytest

from gnr_daemon import DaemonClient
from gnr_daemon.client import parse_daemon_url
from gnr_daemon.daemon import Daemon
from gnr_daemon.errors import (
    CallTimeout,
    ConfigurationError,
    DaemonUnavailable,
    GnrDaemonError,
    MethodNotFound,
    RemoteError,
    SiteNotFound,
)

from conftest import TEST_KEY

pytestmark = pytest.mark.timeout(120)

HELPER = Path(__file__).parent / "helpers" / "concurrent_calls.py"


class CountingDaemon(Daemon):
    """A daemon with a slow method and a counter, for timeout tests."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._counter = 0
        self._values = {}

    def slow(self, seconds):
        gevent.sleep(seconds)
        return "slow done"

    def increment(self):
        gevent.sleep(0.3)
        self._counter += 1
        return self._counter

    def counter(self):
        return self._counter

    def set_value(self, key, value):
        self._values[key] = value

    def get_value(self, key):
        return self._values.get(key)


def test_threads_get_own_answers(daemon):
    client = daemon.client(pool_size=8)
    errors = []

    def worker(number):
        for index in range(50):
            payload = (number, index)
            answer = client.echo(payload)
            if answer != payload:
                errors.append((payload, answer))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    client.close()
    assert errors == []


def run_helper(daemon, *args):
    result = subprocess.run(
        [sys.executable, str(HELPER), "127.0.0.1", str(daemon.port), TEST_KEY, *args],
        capture_output=True, text=True, timeout=100,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_greenlets_get_own_answers(daemon):
    output = run_helper(daemon, "--patch", "--greenlets", "200", "--threads", "0",
                        "--calls", "2000")
    assert "mismatches=0 errors=0 calls=2000" in output


@pytest.mark.parametrize("patch", ["--patch", "--no-patch"])
def test_threads_and_greenlets_share_client(daemon, patch):
    output = run_helper(daemon, patch, "--greenlets", "50", "--threads", "8", "--calls", "10000")
    assert "mismatches=0 errors=0 calls=10000" in output


def test_import_does_not_patch():
    code = (
        "import sys, gnr_daemon\n"
        "from gnr_daemon import DaemonClient\n"
        "import socket\n"
        "assert 'gevent.monkey' not in sys.modules or not __import__('gevent.monkey').monkey.is_anything_patched()\n"
        "print('socket module', socket.socket.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "socket module socket" in result.stdout


def test_daemon_down_names_address():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = DaemonClient(host="127.0.0.1", port=port, use_environment=False, use_config_file=False)
    with pytest.raises(DaemonUnavailable, match=f"127.0.0.1:{port}"):
        client.ping()


def test_remote_error_carries_traceback(client):
    with pytest.raises(RemoteError) as info:
        client.call("echo", 1, 2, 3)
    assert isinstance(info.value, TypeError)
    assert "remote traceback" in str(info.value)
    assert "Traceback" in info.value.remote_traceback


def test_unknown_site_named(client):
    with pytest.raises(SiteNotFound, match="'nowhere' is not registered"):
        client.site("nowhere").counters()


def test_stale_pooled_socket_replaced(daemon_factory):
    daemon = daemon_factory(idle_timeout=0.3)
    with daemon.client(pool_size=1) as client:
        assert client.ping() == "pong"
        time.sleep(1.0)
        assert client.ping() == "pong"


def test_timed_out_socket_not_reused(daemon_factory):
    daemon = daemon_factory(daemon_class=CountingDaemon)
    with daemon.client(timeout=0.5, pool_size=1) as client:
        client.set_value("K", "value of K")
        with pytest.raises(CallTimeout, match="slow got no reply"):
            client.slow(1.5)
        assert client.get_value("K") == "value of K"
        time.sleep(1.5)
        assert client.get_value("K") == "value of K"


def test_timeout_never_repeats_call(daemon_factory):
    daemon = daemon_factory(daemon_class=CountingDaemon)
    with daemon.client(timeout=0.1) as client:
        with pytest.raises(CallTimeout):
            client.increment()
    time.sleep(1.0)
    with daemon.client() as client:
        assert client.counter() == 1


def test_server_call_timeout(daemon_factory):
    daemon = daemon_factory(daemon_class=CountingDaemon, call_timeout=0.3)
    with daemon.client() as client:
        with pytest.raises(CallTimeout, match="did not complete within 0.3 s"):
            client.slow(2)
        assert client.ping() == "pong"


def test_close_from_other_thread(daemon_factory):
    daemon = daemon_factory(daemon_class=CountingDaemon)
    client = daemon.client()
    results = []
    thread = threading.Thread(target=lambda: results.append(client.slow(0.5)))
    thread.start()
    time.sleep(0.1)
    client.close()
    thread.join(10)
    assert results == ["slow done"]
    with pytest.raises(DaemonUnavailable, match="closed"):
        client.ping()


@pytest.mark.parametrize(
    "url, expected",
    [
        ("gnrd://localhost:40404", {"host": "localhost", "port": 40404}),
        ("gnrd://127.0.0.1:5000", {"host": "127.0.0.1", "port": 5000}),
        ("gnrd://[::1]:40404", {"host": "::1", "port": 40404}),
        ("gnrd://daemon.example", {"host": "daemon.example"}),
        ("unix:///run/gnrd.sock", {"socket": "/run/gnrd.sock"}),
    ],
)
def test_url_parsing(url, expected):
    assert parse_daemon_url(url) == expected


@pytest.mark.parametrize("url", ["http://localhost:1", "gnrd://host:99999", "gnrd://:40404",
                                 "unix://"])
def test_bad_url_rejected(url):
    with pytest.raises(ConfigurationError, match="invalid daemon URL"):
        parse_daemon_url(url)


def test_from_url_connects(daemon):
    with DaemonClient.from_url(f"gnrd://127.0.0.1:{daemon.port}", hmac_key=TEST_KEY,
                               use_environment=False, use_config_file=False) as client:
        assert client.ping() == "pong"


def test_repr_hides_key(daemon):
    client = daemon.client()
    assert TEST_KEY not in repr(client)
    assert "signed" in repr(client)


def test_batch_runs_in_order(client):
    client.addSiteRegister("demo")
    with client.batch() as batch:
        created = batch.site("demo").new_connection("c1", user="alice")
        locked = batch.site("demo").lock_item("c1", reason="r1", register_name="connection")
        refused = batch.site("demo").lock_item("c1", reason="r2", register_name="connection")
        counters = batch.site("demo").counters()
        pong = batch.ping()
    assert created.value["register_item_id"] == "c1"
    assert locked.value is True
    assert refused.value is False
    assert counters.value == {"users": 1, "connections": 1, "pages": 0}
    assert pong.value == "pong"


def test_batch_one_round_trip(client, daemon):
    before = client.status()["calls_served"]
    with client.batch() as batch:
        for number in range(20):
            batch.echo(number)
    after = client.status()["calls_served"]
    assert after - before == 2  # the batch itself and the status call


def test_batch_error_stays_per_call(client):
    with client.batch() as batch:
        good = batch.echo("a")
        bad = batch.call("_private")
        unknown_site = batch.site("nowhere").counters()
        later = batch.echo("b")
    assert good.value == "a"
    with pytest.raises(MethodNotFound):
        bad.value
    with pytest.raises(SiteNotFound):
        unknown_site.value
    assert later.value == "b"


def test_batch_stop_on_error(client):
    with client.batch(stop_on_error=True) as batch:
        batch.echo("a")
        failing = batch.call("echo", 1, 2, 3)
        skipped = batch.echo("never")
    assert failing.ok is False
    assert skipped.done is False
    with pytest.raises(GnrDaemonError, match="has not run"):
        skipped.value


def test_batch_cannot_nest(client):
    with pytest.raises(RemoteError, match="cannot contain a batch"):
        client.call("batch", [(None, "batch", ([],), {})])
