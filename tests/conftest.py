"""Shared fixtures: real daemons on ephemeral loopback ports.

``daemon_factory`` runs a ``DaemonServer`` in a thread of this process, with
its own gevent hub, so a test can hold the daemon's clock and move it.
``start_daemon_process`` runs ``python -m gnr_daemon start`` as a
subprocess, on port 0, and reads the bound port back from the start-up log.
Every daemon a test starts is stopped in the fixture's teardown.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

import pytest

from gnr_daemon.client import DaemonClient
from gnr_daemon.config import load_settings

pytest_plugins = ["redis_fixtures", "register_fixtures"]

TEST_KEY = "test-key-0123456789abcdef0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef0123456789abcdef"


class FakeClock:
    """A clock that tests move by hand; starts at the real time."""

    def __init__(self):
        self.now = datetime.now()

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


class ThreadDaemon:
    """A DaemonServer running in a thread, on 127.0.0.1 and an ephemeral port."""

    def __init__(self, state_dir, key=None, clock=None, daemon_class=None, **overrides):
        self.key = key
        self.daemon_class = daemon_class
        self.clock = clock or FakeClock()
        self.state_dir = state_dir
        values = {"host": "127.0.0.1", "port": 0, "hmac_key": key, "state_dir": str(state_dir)}
        values.update(overrides)
        self.settings = load_settings(values, use_environment=False, use_config_file=False)
        self._ready = threading.Event()
        self._error = None
        self.server = None
        self.hub = None
        self.thread = threading.Thread(target=self._run, name="test-daemon", daemon=True)

    def _run(self):
        import gevent

        from gnr_daemon.daemon import Daemon
        from gnr_daemon.server import DaemonServer
        from gnr_daemon.store import open_store

        try:
            self.hub = gevent.get_hub()
            store = open_store(self.settings.store)
            daemon_class = self.daemon_class or Daemon
            self.daemon = daemon_class(store, self.settings.state_dir, clock=self.clock)
            from gnr_daemon.safepickle import UnpicklePolicy

            settings = self.settings
            policy = UnpicklePolicy(settings.allow_classes, not settings.unrestricted_pickle)
            self.server = DaemonServer(self.daemon, settings, key=settings.key_bytes(),
                                       previous_key=settings.previous_key_bytes(),
                                       admin_key=settings.admin_key_bytes(), policy=policy)
            self.server.start()
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.server.serve_forever()

    def start(self):
        self.thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self):
        return self.server.address[1]

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def client(self, **kwargs):
        kwargs.setdefault("hmac_key", self.key)
        kwargs.setdefault("timeout", 10)
        return DaemonClient(host="127.0.0.1", port=self.port, use_environment=False,
                            use_config_file=False, **kwargs)

    def call_in_hub(self, function, *args):
        """Run ``function`` in the daemon's thread and wait for its result."""
        done = threading.Event()
        box = {}

        def runner():
            try:
                box["result"] = function(*args)
            except BaseException as exc:
                box["error"] = exc
            done.set()

        self.hub.loop.run_callback_threadsafe(runner)
        done.wait(10)
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def stop(self):
        if self.thread.is_alive() and self.server is not None:
            self.hub.loop.run_callback_threadsafe(self.server.request_stop)
            self.thread.join(15)


@pytest.fixture
def daemon_factory(tmp_path):
    started = []

    def factory(key=TEST_KEY, **overrides):
        state_dir = overrides.pop("state_dir", tmp_path / f"state{len(started)}")
        daemon = ThreadDaemon(state_dir, key=key, **overrides).start()
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(daemon_factory):
    """A signed daemon with the test key."""
    return daemon_factory()


@pytest.fixture
def client(daemon):
    with daemon.client() as client:
        yield client


def rss_kib(pid):
    """Return the resident memory of process ``pid`` in KiB, read from /proc."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS line in /proc/{pid}/status")


# -- subprocess daemons ------------------------------------------------------

_LISTEN_LINE = re.compile(r"listening on (\S+):(\d+) ")
SLOW_DAEMON = [sys.executable, os.path.join(os.path.dirname(__file__), "helpers", "slow_daemon.py")]


class DaemonProcess:
    """``python -m gnr_daemon start`` in a subprocess; stderr collected in a file."""

    def __init__(self, args, env, log_path, program=None):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        program = program or [sys.executable, "-m", "gnr_daemon"]
        self.process = subprocess.Popen(
            [*program, "start", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        self.port = None

    def wait_listening(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            match = _LISTEN_LINE.search(text)
            if match:
                self.port = int(match.group(2))
                return self
            if "listening on unix:" in text:
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{text}")
            time.sleep(0.05)
        raise AssertionError(f"daemon did not start listening within {timeout} s:\n{self.log_text()}")

    def log_text(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def terminate(self, timeout=20):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


def clean_environment(tmp_path, **extra):
    """An environment without GNR_DAEMON_* settings and with a private HOME."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("GNR_DAEMON_")}
    env.pop("GENRO_GNRFOLDER", None)
    env.pop("VIRTUAL_ENV", None)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def start_daemon_process(tmp_path):
    started = []

    def start(*args, env=None, wait=True, program=None):
        env = env if env is not None else clean_environment(tmp_path)
        log_path = tmp_path / f"daemon{len(started)}.log"
        process = DaemonProcess(list(args), env, log_path, program=program)
        started.append(process)
        if wait:
            process.wait_listening()
        return process

    yield start
    for process in started:
        process.terminate()


# -- raw protocol access -----------------------------------------------------


class RawConnection:
    """A hand-driven client connection, for sending malformed or replayed frames."""

    def __init__(self, address, key=None, handshake=True):
        import socket

        from gnr_daemon.protocol import Channel

        self.sock = socket.create_connection(address, timeout=10)
        self.channel = Channel(self.sock, "client", key=key.encode() if isinstance(key, str) else key,
                               peer=f"{address[0]}:{address[1]}")
        if handshake:
            self.channel.client_handshake(10)

    def call(self, method, *args, site=None, call_id=1, **kwargs):
        from gnr_daemon.protocol import KIND_REQUEST

        self.channel.send(KIND_REQUEST, (call_id, site, method, args, kwargs))
        return self.channel.receive(10, 10)[1]

    def send_raw(self, data):
        self.sock.sendall(data)

    def read_all(self, timeout=10):
        """Read until the daemon closes the connection; return the bytes."""
        self.sock.settimeout(timeout)
        chunks = []
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def close(self):
        self.sock.close()
