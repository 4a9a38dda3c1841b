"""The gnrdaemon command line, run as subprocesses against real daemons."""

import os
import re
import stat
import subprocess
import sys

import pytest

from conftest import OTHER_KEY, TEST_KEY, clean_environment

pytestmark = pytest.mark.timeout(120)


def gnrdaemon(*args, env, timeout=60):
    return subprocess.run([sys.executable, "-m", "gnr_daemon", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def address(process):
    return ["-H", "127.0.0.1", "-P", str(process.port)]


def test_help_exits_zero(tmp_path):
    result = gnrdaemon("--help", env=clean_environment(tmp_path))
    assert result.returncode == 0
    assert "gnrdaemon start [--allow-class=CLASS]... [options]" in result.stdout


def test_version_printed(tmp_path):
    from gnr_daemon import __version__

    result = gnrdaemon("--version", env=clean_environment(tmp_path))
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_unknown_command_is_usage_error(tmp_path):
    result = gnrdaemon("explode", env=clean_environment(tmp_path))
    assert result.returncode == 2


def test_unsigned_session(tmp_path, start_daemon_process):
    env = clean_environment(tmp_path)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=env)

    ping = gnrdaemon("ping", *address(daemon), env=env)
    assert ping.returncode == 0
    assert ping.stdout.startswith("pong from 127.0.0.1:")

    echo = gnrdaemon("call", *address(daemon), "echo", "{'a': [1, 2]}", env=env)
    assert echo.stdout.strip() == "{'a': [1, 2]}"

    status = gnrdaemon("status", "--json", *address(daemon), env=env)
    assert '"signing": false' in status.stdout

    stop = gnrdaemon("stop", *address(daemon), env=env)
    assert stop.returncode == 0
    assert daemon.process.wait(20) == 0
    log_text = daemon.log_text()
    assert "HMAC signing off" in log_text
    assert "gnr_daemon stopped" in log_text


def test_signed_session_and_sites(tmp_path, start_daemon_process):
    env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=env)

    assert gnrdaemon("ping", *address(daemon), env=env).returncode == 0
    added = gnrdaemon("call", *address(daemon), "addSiteRegister", "demo", env=env)
    assert added.returncode == 0, added.stderr
    connection = gnrdaemon("call", *address(daemon), "--site", "demo", "new_connection", "c1",
                           "user=alice", env=env)
    assert connection.returncode == 0, connection.stderr
    assert "'register_item_id': 'c1'" in connection.stdout
    page = gnrdaemon("call", *address(daemon), "--site", "demo", "new_page", "p1",
                     "connection_id=c1", "user=alice", "pagename='index'", env=env)
    assert page.returncode == 0, page.stderr
    pages = gnrdaemon("call", *address(daemon), "--site", "demo", "pages", "connection_id=c1",
                      env=env)
    assert "'register_item_id': 'p1'" in pages.stdout

    sites = gnrdaemon("sites", *address(daemon), env=env)
    assert sites.stdout.strip() == "demo\tusers=1\tconnections=1\tpages=1"

    status = gnrdaemon("status", *address(daemon), env=env)
    assert "HMAC signing: on" in status.stdout
    assert "demo: users=1 connections=1 pages=1" in status.stdout
    assert TEST_KEY not in status.stdout

    assert gnrdaemon("stop", *address(daemon), env=env).returncode == 0
    assert daemon.process.wait(20) == 0
    log_text = daemon.log_text()
    assert "HMAC signing on; key from environment variable GNR_DAEMON_HMAC_KEY" in log_text
    assert TEST_KEY not in log_text


def test_wrong_key_exit_one(tmp_path, start_daemon_process):
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0",
                                  env=clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY))
    result = gnrdaemon("ping", *address(daemon),
                       env=clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=OTHER_KEY))
    assert result.returncode == 1
    assert result.stderr.startswith("gnrdaemon: authentication failed:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert OTHER_KEY not in result.stderr


def test_missing_key_exit_one(tmp_path, start_daemon_process):
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0",
                                  env=clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY))
    result = gnrdaemon("ping", *address(daemon), env=clean_environment(tmp_path))
    assert result.returncode == 1
    assert "requires an HMAC key" in result.stderr


def test_daemon_down_exit_one(tmp_path):
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    result = gnrdaemon("ping", "-H", "127.0.0.1", "-P", str(port), env=clean_environment(tmp_path))
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr


def test_sigterm_exits_zero(tmp_path, start_daemon_process):
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=clean_environment(tmp_path))
    assert daemon.terminate() == 0
    assert "SIGTERM received: shutting down" in daemon.log_text()


def test_unix_socket_mode(tmp_path, start_daemon_process):
    path = str(tmp_path / "gnrd.sock")
    env = clean_environment(tmp_path)
    daemon = start_daemon_process("-S", path, env=env)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    result = gnrdaemon("ping", "-S", path, env=env)
    assert result.returncode == 0, result.stderr
    assert daemon.terminate() == 0
    assert not os.path.exists(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["-K", "-P", "40405"], "-K needs a value but is followed by a word that starts"),
        (["-K", "--host", "::1"], "-K needs a value but is followed by a word that starts"),
        (["-K", "-abcdefghijklmnopqrstuvwxyz0123456789"], "followed by a word that starts"),
        (["--hmac-key=-P0123456789abcdefgh"], "could be another option taken as the key"),
        (["-K", ""], "shorter than 16 bytes"),
        (["-K", "abc"], "shorter than 16 bytes"),
    ],
)
def test_bad_key_is_usage_error(tmp_path, args, message):
    result = gnrdaemon("start", *args, env=clean_environment(tmp_path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "listening" not in result.stderr
    assert "abcdefghijklmnopqrstuvwxyz" not in result.stderr


def test_option_key_overrides_environment(tmp_path, start_daemon_process):
    env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=OTHER_KEY)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "-K", TEST_KEY, env=env)
    log_text = daemon.log_text()
    assert "key from option --hmac-key" in log_text
    assert "overrides GNR_DAEMON_HMAC_KEY" in log_text
    assert TEST_KEY not in log_text
    assert OTHER_KEY not in log_text
    client_env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY)
    assert gnrdaemon("ping", *address(daemon), env=client_env).returncode == 0


def test_short_key_warns(tmp_path, start_daemon_process):
    env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY="0123456789abcdefXY")
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=env)
    assert "the HMAC key is 18 bytes long" in daemon.log_text()


def test_key_file_keeps_key_out_of_argv(tmp_path, start_daemon_process):
    key_file = tmp_path / "key"
    env = clean_environment(tmp_path)
    assert gnrdaemon("keygen", "--file", str(key_file), env=env).returncode == 0
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", "--hmac-key-file", str(key_file),
                                  env=env)
    key = key_file.read_text().strip()
    with open(f"/proc/{daemon.process.pid}/cmdline", "rb") as handle:
        assert key.encode() not in handle.read()
    result = gnrdaemon("ping", *address(daemon), "--hmac-key-file", str(key_file), env=env)
    assert result.returncode == 0, result.stderr


def test_non_loopback_without_key_refused(tmp_path):
    result = gnrdaemon("start", "-H", "0.0.0.0", "-P", "0", env=clean_environment(tmp_path))
    assert result.returncode == 1
    assert "refusing to listen on '0.0.0.0' without an HMAC key" in result.stderr
    assert "GNR_DAEMON_HMAC_KEY" in result.stderr


def test_keygen_prints_hex(tmp_path):
    result = gnrdaemon("keygen", env=clean_environment(tmp_path))
    assert re.fullmatch(r"[0-9a-f]{64}\n", result.stdout)


def test_keygen_file_mode(tmp_path):
    key_file = tmp_path / "new.key"
    result = gnrdaemon("keygen", "--file", str(key_file), env=clean_environment(tmp_path))
    assert result.returncode == 0
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_keygen_keeps_existing_file(tmp_path):
    key_file = tmp_path / "existing.key"
    key_file.write_text("old key")
    result = gnrdaemon("keygen", "--file", str(key_file), env=clean_environment(tmp_path))
    assert result.returncode == 1
    assert key_file.read_text() == "old key"


def test_bad_call_argument_is_usage_error(tmp_path, start_daemon_process):
    env = clean_environment(tmp_path)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=env)
    result = gnrdaemon("call", *address(daemon), "echo", "[1, 2", env=env)
    assert result.returncode == 2
    assert "not a Python literal" in result.stderr


def test_environment_xml_settings(tmp_path, start_daemon_process):
    gnr_folder = tmp_path / "gnr"
    gnr_folder.mkdir()
    env = clean_environment(tmp_path, GENRO_GNRFOLDER=str(gnr_folder))
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0",
                                  env=clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY))
    (gnr_folder / "environment.xml").write_text(
        f'<GenRoBag><gnrdaemon host="127.0.0.1" port="{daemon.port}" hmac_key="{TEST_KEY}"/>'
        "</GenRoBag>"
    )
    result = gnrdaemon("ping", env=env)
    assert result.returncode == 0, result.stderr


def test_session_demo_script(tmp_path, start_daemon_process):
    from pathlib import Path

    env = clean_environment(tmp_path)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=env)
    script = Path(__file__).parent.parent / "scripts" / "session_demo.py"
    result = subprocess.run([sys.executable, str(script), "--host", "127.0.0.1", "--port",
                             str(daemon.port)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pushed value: Invoice 42 saved gnr.message" in result.stdout
    assert "database change path: gnr.dbchanges.shop_invoice" in result.stdout
    assert "after restart: {'users': 1, 'connections': 1, 'pages': 1}" in result.stdout
    assert "after closing the tab: {'users': 1, 'connections': 0, 'pages': 0}" in result.stdout


def test_short_key_file_refused(tmp_path):
    key_file = tmp_path / "short.key"
    key_file.write_text("abc")
    result = gnrdaemon("start", "-H", "127.0.0.1", "-P", "0", "--hmac-key-file", str(key_file),
                       env=clean_environment(tmp_path))
    assert result.returncode == 1
    assert "shorter than 16 bytes" in result.stderr


def test_empty_key_variable_refused(tmp_path):
    result = gnrdaemon("start", "-H", "127.0.0.1", "-P", "0",
                       env=clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=""))
    assert result.returncode == 2
    assert "GNR_DAEMON_HMAC_KEY is set but empty" in result.stderr


def test_dash_key_from_environment_accepted(tmp_path, start_daemon_process):
    key = "-0123456789abcdef0123456789abcdef"
    env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=key)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=env)
    assert gnrdaemon("ping", *address(daemon), env=env).returncode == 0


def test_bad_port_message(tmp_path):
    result = gnrdaemon("ping", "-P", "abc", env=clean_environment(tmp_path))
    assert result.returncode == 2
    assert "'abc' is not a TCP port number" in result.stderr


def test_client_max_frame_size_option(tmp_path, start_daemon_process):
    env = clean_environment(tmp_path)
    daemon = start_daemon_process("-H", "127.0.0.1", "-P", "0", env=env)
    result = gnrdaemon("call", *address(daemon), "--max-frame-size=1024", "echo", "'" + "x" * 2000 + "'",
                       env=env)
    assert result.returncode == 1
    assert "maximum frame size" in result.stderr
