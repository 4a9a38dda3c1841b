"""Redis faults under a real daemon: restart under load, a paused or frozen Redis, fork safety.

Each test runs ``python -m gnr_daemon start`` (monkey-patched, as in
production) on a redis-server of its own, drives it from client threads in
this process with bounded loops, and stops everything it started by PID.
"""

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from gnr_daemon import DaemonClient
from gnr_daemon.errors import StoreUnavailable

from conftest import TEST_KEY, clean_environment, rss_kib

pytestmark = pytest.mark.timeout(120)


def start_daemon(start_daemon_process, tmp_path, store_url):
    env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY)
    return start_daemon_process("-H", "127.0.0.1", "-P", "0", "--store", store_url,
                                "--state-dir", str(tmp_path / "state"), env=env)


def client_of(daemon, **kwargs):
    kwargs.setdefault("timeout", 30)
    return DaemonClient(host="127.0.0.1", port=daemon.port, hmac_key=TEST_KEY,
                        use_environment=False, use_config_file=False, **kwargs)


class Load:
    """Client threads that each create pages in a loop and record what was acknowledged."""

    def __init__(self, client, threads=6, max_calls=400, pause=0.005):
        self.client = client
        self.site = client.site("demo")
        self.max_calls = max_calls
        self.pause = pause
        self.acknowledged = []
        self.errors = []
        self.successes_after = {}
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(number,))
                        for number in range(threads)]

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def run(self, number):
        for index in range(self.max_calls):
            if self.stop_event.is_set():
                return
            page_id = f"p{number}-{index}"
            try:
                self.site.new_page(page_id, connection_id="c1", user="alice")
            except Exception as error:
                with self.lock:
                    self.errors.append(error)
            else:
                with self.lock:
                    self.acknowledged.append((time.monotonic(), page_id))
            time.sleep(self.pause)

    def stop(self):
        self.stop_event.set()
        for thread in self.threads:
            thread.join(60)


def test_restart_under_load(redis_server_factory, start_daemon_process, tmp_path):
    redis_server = redis_server_factory(fsync="always")
    daemon = start_daemon(start_daemon_process, tmp_path,
                          redis_server.url(prefix="load:", socket_timeout=2))
    with client_of(daemon) as client:
        client.addSiteRegister("demo")
        client.site("demo").new_connection("c1", user="alice")
        load = Load(client).start()
        time.sleep(0.5)
        redis_server.restart()
        restarted_at = time.monotonic()
        deadline = restarted_at + 15
        while time.monotonic() < deadline:
            with load.lock:
                if any(when > restarted_at + 0.5 for when, _ in load.acknowledged):
                    break
            time.sleep(0.05)
        time.sleep(0.3)
        load.stop()

        # Full service again, without restarting the daemon.
        assert any(when > restarted_at for when, _ in load.acknowledged)
        assert daemon.process.poll() is None
        # Calls in flight got a clear error naming the store.
        assert load.errors, "the restart was not noticed by any call"
        for error in load.errors:
            assert isinstance(error, StoreUnavailable), repr(error)
            assert f"127.0.0.1:{redis_server.port}" in str(error)
        # Nothing acknowledged before the restart is missing after it.
        site = client.site("demo")
        stored = {page["register_item_id"] for page in site.pages(connection_id="c1")}
        missing = [page_id for _when, page_id in load.acknowledged if page_id not in stored]
        assert missing == []
        health = client.status()["store_health"]
        assert health["ok"] is True
        assert health["failures"] >= 1
    assert "is available again" in daemon.log_text()


def test_paused_redis_keeps_daemon_ping_fast(redis_server_factory, start_daemon_process,
                                             tmp_path):
    redis_server = redis_server_factory()
    daemon = start_daemon(start_daemon_process, tmp_path, redis_server.url(prefix="pause:"))
    with client_of(daemon) as client:
        client.addSiteRegister("demo")
        site = client.site("demo")
        site.new_connection("c1", user="alice")
        result = {}

        def store_call():
            started = time.monotonic()
            try:
                result["value"] = site.connection("c1")
            except Exception as error:  # reported below
                result["error"] = error
            result["seconds"] = time.monotonic() - started

        admin = redis_server.client()
        admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        waiting = threading.Thread(target=store_call)
        waiting.start()
        latencies = []
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert client.ping() == "pong"
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
        waiting.join(10)
        admin.close()
    assert len(latencies) > 20
    assert max(latencies) < 0.05, latencies
    # The store call waited for the pause to end, then returned the connection.
    assert "error" not in result, result
    assert result["value"]["user"] == "alice"
    assert result["seconds"] > 0.5


def test_frozen_redis_fails_within_socket_timeout(redis_server_factory, start_daemon_process,
                                                  tmp_path):
    redis_server = redis_server_factory()
    daemon = start_daemon(start_daemon_process, tmp_path,
                          redis_server.url(prefix="frozen:", socket_timeout=1))
    with client_of(daemon) as client:
        client.addSiteRegister("demo")
        site = client.site("demo")
        site.new_connection("c1", user="alice")
        before = rss_kib(daemon.process.pid)
        outcomes = []
        lock = threading.Lock()

        def caller():
            for _ in range(10):
                started = time.monotonic()
                try:
                    site.connection("c1")
                    outcome = "ok"
                except StoreUnavailable:
                    outcome = "unavailable"
                except Exception as error:  # reported below
                    outcome = repr(error)
                with lock:
                    outcomes.append((outcome, time.monotonic() - started))
                time.sleep(0.1)

        redis_server.suspend()
        try:
            callers = [threading.Thread(target=caller) for _ in range(12)]
            for thread in callers:
                thread.start()
            for thread in callers:
                thread.join(60)
            status = client.status()
            ping_started = time.monotonic()
            assert client.ping() == "pong"
            ping_seconds = time.monotonic() - ping_started
        finally:
            redis_server.resume()

        assert {outcome for outcome, _ in outcomes} == {"unavailable"}, outcomes
        # The first calls wait for the 1 s socket timeout; later ones fail at once.
        assert max(seconds for _, seconds in outcomes) < 2.0
        assert sorted(seconds for _, seconds in outcomes)[len(outcomes) // 2] < 0.1
        assert ping_seconds < 0.05
        assert status["store_health"]["ok"] is False
        assert status["store_health"]["state"] == "down"
        assert status["connections"] <= 13
        assert rss_kib(daemon.process.pid) - before < 20 * 1024

        deadline = time.monotonic() + 10
        value = None
        while time.monotonic() < deadline and value is None:
            try:
                value = site.connection("c1")
            except StoreUnavailable:
                time.sleep(0.1)
        assert value is not None and value["user"] == "alice"
        assert client.status()["store_health"]["ok"] is True


def test_redis_down_at_start(redis_server_factory, start_daemon_process, tmp_path):
    from redis_fixtures import RedisServer, free_port

    port = free_port()
    url = f"redis://:hidden-pw@127.0.0.1:{port}/0?prefix=late:&socket_timeout=1"
    daemon = start_daemon(start_daemon_process, tmp_path, url)
    server = None
    try:
        with client_of(daemon) as client:
            assert client.ping() == "pong"
            health = client.status()["store_health"]
            assert health["ok"] is False
            assert "hidden-pw" not in str(health)
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as error:
                client.addSiteRegister("demo")
            assert time.monotonic() - started < 0.5
            assert "hidden-pw" not in str(error.value)
            assert f"redis://:***@127.0.0.1:{port}/0" in str(error.value)

            server = RedisServer(tmp_path / "late", options=["requirepass hidden-pw"])
            server.port = port
            server.start()
            deadline = time.monotonic() + 10
            while not client.status()["store_health"]["ok"] and time.monotonic() < deadline:
                time.sleep(0.05)
            client.addSiteRegister("demo")
            client.site("demo").new_connection("c1", user="alice")
            assert client.site("demo").counters()["connections"] == 1
        log_text = daemon.log_text()
        assert "is unavailable" in log_text
        assert "is available again" in log_text
        assert "hidden-pw" not in log_text
    finally:
        if server is not None:
            server.stop()


FORK_SCRIPT = textwrap.dedent("""
    from gevent import monkey

    monkey.patch_all()

    import json
    import os
    import sys
    import time

    from gnr_daemon.store import open_store

    store = open_store(sys.argv[1])
    site = store.site_store("fork")
    site.put_meta("value", 42)
    assert site.get_meta("value") == 42


    def sockets():
        names = []
        for connection in list(store._pool._connections):
            if connection._sock is not None:
                names.append(connection._sock.getsockname()[:2])
        return names


    parent_sockets = sockets()
    report_path = sys.argv[2]
    pid = os.fork()
    if pid == 0:
        started = time.monotonic()
        value = site.get_meta("value")
        report = {"value": value, "seconds": time.monotonic() - started,
                  "sockets": sockets(), "inherited": parent_sockets}
        with open(report_path, "w") as handle:
            json.dump(report, handle)
        os._exit(0)
    os.waitpid(pid, 0)
    assert site.get_meta("value") == 42
    with open(report_path) as handle:
        child = handle.read()
    print(json.dumps({"child": json.loads(child), "parent": sockets()}))
""")


def test_fork_after_patch_and_pool(redis_server, tmp_path):
    from redis_fixtures import new_prefix

    script = tmp_path / "fork_store.py"
    script.write_text(FORK_SCRIPT)
    url = f"redis://localhost:{redis_server.port}/0?prefix={new_prefix()}&socket_timeout=2"
    completed = subprocess.run([sys.executable, str(script), url, str(tmp_path / "child.json")],
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    child = report["child"]
    assert child["value"] == 42
    assert child["seconds"] < 1.0
    assert child["inherited"], "the parent had no open Redis socket before the fork"
    assert child["sockets"], "the child made its call on no socket"
    shared = {tuple(name) for name in child["sockets"]} & {
        tuple(name) for name in child["inherited"] + report["parent"]}
    assert shared == set()
