"""Running the daemon as a service: shutdown paths, readiness, process managers, TLS, metrics."""

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from gnr_daemon import DaemonClient
from gnr_daemon.errors import AuthenticationError, DaemonUnavailable

from conftest import SLOW_DAEMON, TEST_KEY, clean_environment

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent


def client_for(process, **kwargs):
    kwargs.setdefault("hmac_key", TEST_KEY)
    return DaemonClient(host="127.0.0.1", port=process.port, timeout=30, use_environment=False,
                        use_config_file=False, **kwargs)


def keyed_env(tmp_path, **extra):
    return clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY, **extra)


def wait_for(predicate, timeout=10, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# -- graceful shutdown -----------------------------------------------------------


def test_sigterm_lets_calls_finish(tmp_path, start_daemon_process):
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=keyed_env(tmp_path),
                                  program=SLOW_DAEMON)
    results, errors = [], []

    def caller():
        with client_for(daemon) as client:
            try:
                results.append(client.slow(1.5))
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    daemon.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert daemon.process.wait(30) == 0
    assert errors == []
    assert results == ["slow done"] * 20
    assert "calls in flight drained" in daemon.log_text()


def test_drain_timeout_cancels_rest(tmp_path, start_daemon_process):
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--drain-timeout", "1",
                                  env=keyed_env(tmp_path), program=SLOW_DAEMON)
    errors = []

    def caller():
        with client_for(daemon) as client:
            try:
                client.slow(20)
            except Exception as exc:
                errors.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(30) == 0
    thread.join(10)
    assert time.monotonic() - started < 8
    assert len(errors) == 1
    assert isinstance(errors[0], DaemonUnavailable)
    assert "shutting down" in str(errors[0])
    assert "drain timeout of 1.0 s expired" in daemon.log_text()


def test_second_sigterm_exits_fast(tmp_path, start_daemon_process):
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--drain-timeout", "60",
                                  env=keyed_env(tmp_path), program=SLOW_DAEMON)
    thread = threading.Thread(target=lambda: _ignore_errors(lambda: client_for(daemon).slow(60)))
    thread.start()
    time.sleep(0.5)
    daemon.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    daemon.process.wait(10)
    assert time.monotonic() - started < 5
    assert "received again: exiting without waiting" in daemon.log_text()
    thread.join(10)


def _ignore_errors(function):
    try:
        function()
    except Exception:
        pass


@pytest.mark.parametrize("delay", [0.01, 0.05, 0.3])
def test_sigterm_during_startup(tmp_path, delay):
    process = subprocess.Popen([sys.executable, "-m", "gnr_daemon", "start", "-H", "127.0.0.1",
                                "-P", "0"], env=keyed_env(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    time.sleep(delay)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    returncode = process.wait(15)
    process.stderr.close()
    assert time.monotonic() - started < 10
    assert returncode in (0, -signal.SIGTERM)


def test_stop_savestatus_restores(tmp_path, start_daemon_process):
    env = keyed_env(tmp_path, GNR_DAEMON_STATE_DIR=str(tmp_path / "state"))
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=env)
    with client_for(daemon) as client:
        client.addSiteRegister("demo", storage_path="demo.pik")
        client.site("demo").new_connection("c1", user="alice")
    result = subprocess.run([sys.executable, "-m", "gnr_daemon", "stop", "--savestatus", "-H",
                             "127.0.0.1", "-P", str(daemon.port)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert daemon.process.wait(20) == 0
    assert (tmp_path / "state" / "demo.pik").exists()
    restarted = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=env)
    with client_for(restarted) as client:
        client.addSiteRegister("demo", storage_path="demo.pik", autorestore=True)
        assert client.site("demo").connection("c1")["user"] == "alice"


# -- readiness notification --------------------------------------------------------


def test_notify_socket_ready_and_stopping(tmp_path, start_daemon_process):
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(20)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0",
                                  env=keyed_env(tmp_path, NOTIFY_SOCKET=path))
    ready = listener.recv(4096).decode()
    assert "READY=1" in ready
    assert f"MAINPID={daemon.process.pid}" in ready
    with client_for(daemon) as client:
        assert client.ping() == "pong"
    daemon.process.send_signal(signal.SIGTERM)
    assert "STOPPING=1" in listener.recv(4096).decode()
    assert daemon.process.wait(20) == 0
    listener.close()


def test_systemd_unit_verifies(tmp_path):
    analyzer = shutil.which("systemd-analyze")
    if analyzer is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs it)")
    unit = (REPO / "conf" / "gnrdaemon.service").read_text()
    assert "Type=notify" in unit
    assert "NoNewPrivileges=yes" in unit
    assert "ProtectSystem=strict" in unit
    assert "PrivateTmp=yes" in unit
    assert "ReadWritePaths=/var/lib/gnrdaemon" in unit
    assert "TimeoutStopSec=30" in unit
    # ExecStart must name an existing executable for verify; the unit's path
    # is where a system-wide pip install puts it, so point it at this one.
    installed = shutil.which("gnrdaemon")
    assert installed, "gnrdaemon is not on PATH: install the package first"
    copy = tmp_path / "gnrdaemon.service"
    copy.write_text(unit.replace("/usr/local/bin/gnrdaemon", installed))
    result = subprocess.run([analyzer, "verify", str(copy)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- supervisor ---------------------------------------------------------------------


def test_supervisor_program(tmp_path):
    supervisord = shutil.which("supervisord")
    supervisorctl = shutil.which("supervisorctl")
    if supervisord is None or supervisorctl is None:
        pytest.skip("supervisor is not installed (the test extra installs it)")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    logs = tmp_path / "logs"
    logs.mkdir()
    key_file = tmp_path / "key"
    key_file.write_text(TEST_KEY)
    key_file.chmod(0o600)
    config = tmp_path / "supervisord.conf"
    config.write_text(
        f"[supervisord]\nnodaemon=true\nlogfile={logs}/supervisord.log\n"
        f"pidfile={tmp_path}/supervisord.pid\nchildlogdir={logs}\n"
        f"[unix_http_server]\nfile={tmp_path}/supervisor.sock\n"
        f"[supervisorctl]\nserverurl=unix://{tmp_path}/supervisor.sock\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        f"[include]\nfiles={REPO}/conf/supervisor/gnrdaemon.conf\n"
    )
    env = clean_environment(tmp_path, GNR_DAEMON_HOST="127.0.0.1", GNR_DAEMON_PORT=str(port),
                            GNR_DAEMON_HMAC_KEY_FILE=str(key_file),
                            GNR_DAEMON_STATE_DIR=str(tmp_path / "state"))
    manager = subprocess.Popen([supervisord, "-c", str(config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = DaemonClient(host="127.0.0.1", port=port, hmac_key=TEST_KEY, timeout=5,
                              use_environment=False, use_config_file=False)
        assert wait_for(lambda: _pings(client), timeout=30)
        stopped = subprocess.run([supervisorctl, "-c", str(config), "stop", "gnrdaemon"],
                                 env=env, capture_output=True, text=True, timeout=60)
        assert "stopped" in stopped.stdout
        child_logs = list(logs.glob("gnrdaemon-stdout*.log"))
        assert len(child_logs) == 1
        text = child_logs[0].read_text()
        assert "gnr_daemon listening on 127.0.0.1:" in text
        assert "SIGTERM received: shutting down" in text
        assert "gnr_daemon stopped" in text
        assert TEST_KEY not in text
    finally:
        subprocess.run([supervisorctl, "-c", str(config), "shutdown"], env=env,
                       capture_output=True, timeout=60)
        try:
            manager.wait(30)
        except subprocess.TimeoutExpired:
            manager.kill()
            manager.wait(5)


def _pings(client):
    try:
        return client.ping() == "pong"
    except Exception:
        return False


def test_log_lines_reach_pipe_at_once(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "gnr_daemon", "start", "-H", "127.0.0.1",
                                "-P", "0"], env=keyed_env(tmp_path, PYTHONUNBUFFERED=""),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        started = time.monotonic()
        line = process.stderr.readline().decode()
        while "listening on" not in line:
            line = process.stderr.readline().decode()
        assert time.monotonic() - started < 10
        port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        with DaemonClient(host="127.0.0.1", port=port, hmac_key="wrong-key-0123456789abcdef",
                          use_environment=False, use_config_file=False) as client:
            with pytest.raises(AuthenticationError):
                client.ping()
        sent = time.monotonic()
        line = process.stderr.readline().decode()
        while "rejected frame" not in line:
            line = process.stderr.readline().decode()
        assert time.monotonic() - sent < 2
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        process.stderr.close()


def test_json_log_format(tmp_path, start_daemon_process):
    import json

    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--log-format", "json",
                                  env=keyed_env(tmp_path))
    daemon.port = int(daemon.log_text().split("listening on 127.0.0.1:")[1].split()[0])
    daemon.terminate()
    records = [json.loads(line) for line in daemon.log_text().splitlines() if line.startswith("{")]
    messages = [record["message"] for record in records]
    assert any(message.startswith("gnr_daemon listening on") for message in messages)
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)


# -- listening -------------------------------------------------------------------


def test_ipv6_loopback(tmp_path, start_daemon_process):
    daemon = start_daemon_process("-H", "::1", "-P", "0", env=keyed_env(tmp_path))
    assert "listening on [::1]:" in daemon.log_text()
    with DaemonClient.from_url(f"gnrd://[::1]:{daemon.port}", hmac_key=TEST_KEY,
                               use_environment=False, use_config_file=False) as client:
        assert client.ping() == "pong"


def test_bracketed_ipv6_host(tmp_path, start_daemon_process):
    daemon = start_daemon_process("-H", "[::1]", "-P", "0", env=keyed_env(tmp_path))
    assert "listening on [::1]:" in daemon.log_text()


def test_localhost_reachable_by_client(tmp_path, start_daemon_process):
    daemon = start_daemon_process("-H", "localhost", "-P", "0", env=keyed_env(tmp_path))
    with DaemonClient(host="localhost", port=daemon.port, hmac_key=TEST_KEY,
                      use_environment=False, use_config_file=False) as client:
        assert client.ping() == "pong"


def test_empty_host_needs_key(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gnr_daemon", "start", "-H", "", "-P", "0"],
                            env=clean_environment(tmp_path), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1
    assert "refusing to listen" in result.stderr


def test_unresolvable_host_clean_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gnr_daemon", "start", "-H",
                             "no-such-host.invalid", "-P", "0"], env=keyed_env(tmp_path),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no-such-host.invalid" in result.stderr


def test_unix_socket_group(tmp_path, start_daemon_process):
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    path = str(tmp_path / "gnrd.sock")
    start_daemon_process("-S", path, "--socket-group", group, env=keyed_env(tmp_path))
    info = os.stat(path)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == os.getgid()


def test_unknown_socket_group_fails(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gnr_daemon", "start", "-S",
                             str(tmp_path / "s.sock"), "--socket-group", "no-such-group-x"],
                            env=keyed_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "no such group" in result.stderr


# -- TLS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")

    def run(*args):
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=gnr_daemon test CA")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")
        (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return folder


def test_tls_server_only(tmp_path, start_daemon_process, certificates):
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--tls-cert",
                                  str(certificates / "server.pem"), "--tls-key",
                                  str(certificates / "server.key"), env=keyed_env(tmp_path))
    assert "TLS on" in daemon.log_text()
    with DaemonClient.from_url(f"gnrds://127.0.0.1:{daemon.port}", hmac_key=TEST_KEY,
                               tls_ca=str(certificates / "ca.pem"), use_environment=False,
                               use_config_file=False) as client:
        assert client.ping() == "pong"
        assert client.status()["tls"] is True
    with client_for(daemon, tls=True) as untrusting:
        with pytest.raises(AuthenticationError, match="TLS handshake"):
            untrusting.ping()


def test_tls_mutual(tmp_path, start_daemon_process, certificates):
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--tls-cert",
                                  str(certificates / "server.pem"), "--tls-key",
                                  str(certificates / "server.key"), "--tls-ca",
                                  str(certificates / "ca.pem"), env=keyed_env(tmp_path))
    with client_for(daemon, tls_ca=str(certificates / "ca.pem"),
                    tls_cert=str(certificates / "client.pem"),
                    tls_key=str(certificates / "client.key")) as client:
        assert client.ping() == "pong"
    with client_for(daemon, tls_ca=str(certificates / "ca.pem")) as anonymous:
        with pytest.raises((AuthenticationError, DaemonUnavailable)):
            anonymous.ping()
    assert wait_for(lambda: "TLS handshake with" in daemon.log_text())


def test_tls_unreadable_certificate(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gnr_daemon", "start", "-H", "127.0.0.1",
                             "-P", "0", "--tls-cert", str(tmp_path / "missing.pem")],
                            env=keyed_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "missing.pem" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- metrics ---------------------------------------------------------------------------


def test_metrics_endpoint(tmp_path, start_daemon_process):
    pytest.importorskip("prometheus_client")
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--metrics-port", "0",
                                  env=keyed_env(tmp_path))
    assert wait_for(lambda: "metrics on http://127.0.0.1:" in daemon.log_text())
    metrics_port = int(daemon.log_text().split("metrics on http://127.0.0.1:")[1].split("/")[0])
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with client_for(daemon) as client:
        client.addSiteRegister("demo")
        site = client.site("demo")
        site.new_connection("c1", user="alice")
        site.new_page("p1", connection_id="c1", user="alice")
        for number in range(50):
            site.handle_ping("p1")
            try:
                client.call(f"made_up_method_{number}")
            except Exception:
                pass
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'gnrd_requests_total{method="handle_ping",site="demo",status="ok"} 50.0' in text
    assert 'gnrd_requests_total{method="other",site="",status="error"} 50.0' in text
    assert "made_up_method" not in text
    assert 'gnrd_register_pages{site="demo"} 1.0' in text
    assert "gnrd_active_tcp_connections" in text
    assert "gnrd_request_duration_seconds_bucket" in text
    with client_for(daemon, hmac_key="wrong-key-0123456789abcdef") as intruder:
        with pytest.raises(AuthenticationError):
            intruder.ping()
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'gnrd_auth_failures_total{reason="bad_tag"} 1.0' in text


def test_metrics_port_without_library_message(tmp_path):
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "from gnr_daemon.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", code, "start", "-H", "127.0.0.1", "-P", "0",
                             "--metrics-port", "0"], env=keyed_env(tmp_path), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert "pip install 'gnr_daemon[prometheus]'" in result.stderr


def test_failed_socket_group_leaves_no_socket(tmp_path):
    path = tmp_path / "g.sock"
    result = subprocess.run([sys.executable, "-m", "gnr_daemon", "start", "-S", str(path),
                             "--socket-group", "no-such-group-x"], env=keyed_env(tmp_path),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert not path.exists()


def test_url_as_host_rejected():
    from gnr_daemon.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="DaemonClient.from_url"):
        DaemonClient(host="gnrds://127.0.0.1:40404", use_environment=False, use_config_file=False)


def test_plain_client_to_tls_daemon_hint(tmp_path, start_daemon_process, certificates):
    from gnr_daemon.errors import CallTimeout

    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--tls-cert",
                                  str(certificates / "server.pem"), "--tls-key",
                                  str(certificates / "server.key"), env=keyed_env(tmp_path))
    with DaemonClient(host="127.0.0.1", port=daemon.port, hmac_key=TEST_KEY, timeout=1,
                      use_environment=False, use_config_file=False) as client:
        with pytest.raises(CallTimeout, match="gnrds://"):
            client.ping()
