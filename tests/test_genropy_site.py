"""End to end: a real Genropy site keeps its register in gnr_daemon, started by ``gnr web daemon``.

The module builds one Genropy environment: the hello project, plus an
instance with the sys and adm packages. It starts gnr_daemon with
``gnr web daemon`` on a free loopback port with a key, then builds the
sites in this process and drives them with werkzeug's test client. The
round-trip comparison and Genropy's own daemon run in subprocesses, because
the plug-in is chosen once per process.
"""

import os
import re
import time

import pytest

from genropy_site import (
    HELLO_PAGE,
    TEST_KEY,
    GenropyEnvironment,
    SiteDriver,
    WebDaemon,
    free_loopback_port,
    genropy_missing_reason,
    pyro_missing_reason,
    run_measure,
    unpickle_as_daemon,
)

GENROPY_MISSING = genropy_missing_reason()

pytestmark = [
    pytest.mark.skipif(GENROPY_MISSING is not None, reason=GENROPY_MISSING or ""),
    pytest.mark.timeout(300),
]

INSTANCES = ["baseinstance", "fullinstance"]
PHASES = ["get", "main", "ping"]


@pytest.fixture(scope="module")
def genropy_env(tmp_path_factory):
    environment = GenropyEnvironment(tmp_path_factory.mktemp("genropy")).build()
    environment.add_full_instance()
    return environment


@pytest.fixture(scope="module")
def web_daemon(genropy_env):
    """gnr_daemon started by ``gnr web daemon`` from the address and key in environment.xml."""
    port = free_loopback_port()
    genropy_env.set_daemon_address("127.0.0.1", port, TEST_KEY)
    daemon = WebDaemon(genropy_env, [], os.path.join(genropy_env.base, "web_daemon.log"))
    try:
        assert daemon.wait_listening() == port
        yield daemon
    finally:
        daemon.terminate()


@pytest.fixture(scope="module")
def in_process_env(genropy_env):
    """Point this process's Genropy configuration lookups at the test environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in genropy_env.env().items():
            if name in ("HOME", "GENRO_GNRFOLDER"):
                patch.setenv(name, value)
        patch.delenv("VIRTUAL_ENV", raising=False)
        patch.delenv("GNR_DAEMON_GENROPY", raising=False)
        yield genropy_env


@pytest.fixture(scope="module", params=INSTANCES)
def site(request, in_process_env, web_daemon):
    from gnr.web.daemon.siteregister_client import SiteRegisterClient

    assert SiteRegisterClient.__module__ == "gnr_daemon.genropy._register", \
        "Genropy did not load the gnr_daemon plug-in (is GNR_DAEMON_GENROPY=off set?)"
    return SiteDriver(in_process_env.root_py(request.param))


@pytest.fixture(scope="module")
def register(web_daemon, site):
    """gnr_daemon's own client, bound to the register of the site under test."""
    from gnr_daemon.client import DaemonClient

    with DaemonClient(host="127.0.0.1", port=web_daemon.port, hmac_key=TEST_KEY,
                      use_environment=False, use_config_file=False) as client:
        yield client.site(site.site.site_name)


def open_page(site):
    response, page_id = site.open_page(HELLO_PAGE)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert page_id
    return page_id


# -- the site on gnr_daemon


def test_page_main_and_ping(site, register):
    page_id = open_page(site)
    assert site.main(page_id).status_code == 200
    response = site.ping(page_id)
    assert response.status_code == 200
    assert "<GenRoBag>" in response.get_data(as_text=True)

    page = register.page(page_id)
    assert page is not None
    assert page["relative_url"] == f"/{HELLO_PAGE}"
    connection = register.connection(page["connection_id"])
    assert connection is not None
    assert register.user(page["user"]) is not None
    assert page["user"] == connection["user"]
    assert page["last_refresh_ts"] is not None


def test_requests_carry_no_genropy_classes(site, monkeypatch):
    from gnr_daemon.client import DaemonClient

    sent = []
    original = DaemonClient._call

    def recording_call(self, site_name, method, args, kwargs):
        sent.append((method, args, kwargs))
        return original(self, site_name, method, args, kwargs)

    monkeypatch.setattr(DaemonClient, "_call", recording_call)
    page_id = open_page(site)
    assert site.main(page_id).status_code == 200
    assert site.ping(page_id).status_code == 200
    assert site.close(page_id).status_code == 200
    assert {method for method, _, _ in sent} >= {"new_page", "store_ops", "handle_ping"}
    for method, args, kwargs in sent:
        unpickle_as_daemon((args, kwargs))


def test_site_uses_register_per_site_name(site, web_daemon):
    from gnr_daemon.genropy._register import SiteRegisterClient

    client = site.site.register
    assert isinstance(client, SiteRegisterClient)
    assert client.domain_identifier == site.site.site_name
    assert client.client.port == web_daemon.port


def test_datachange_reaches_next_ping(site, register):
    page_id = open_page(site)
    register.set_datachange(page_id, "gnr.test.message", value="hello from gnr_daemon",
                            reason="e2e", register_name="page")
    body = site.ping(page_id).get_data(as_text=True)
    assert re.search(r"<sc_0 [^>]*change_path=\"gnr.test.message\"", body), body
    assert "hello from gnr_daemon" in body
    assert 'change_reason="e2e"' in body
    again = site.ping(page_id).get_data(as_text=True)
    assert "gnr.test.message" not in again


def test_close_beacon_then_ping_412(site, register):
    page_id = open_page(site)
    assert site.ping(page_id).status_code == 200
    assert site.close(page_id).status_code == 200
    assert register.page(page_id) is None
    assert site.ping(page_id).status_code == 412


def test_datachange_of_user_store_subscription(site, register):
    page_id = open_page(site)
    user = register.page(page_id)["user"]
    register.setStoreSubscription(page_id, storename="user", client_path="batch", active=True)
    register.set_datachange(user, "batch.b1", value=1, reason="btc", register_name="user")
    body = site.ping(page_id).get_data(as_text=True)
    assert 'change_path="batch.b1"' in body


# -- gnr web daemon options and stop


def test_web_daemon_command_line_options(genropy_env, tmp_path):
    from gnr_daemon.client import DaemonClient

    daemon = WebDaemon(genropy_env, ["-H", "127.0.0.1", "-P", "0", "-K", TEST_KEY],
                       tmp_path / "options.log")
    try:
        port = daemon.wait_listening()
        with DaemonClient(host="127.0.0.1", port=port, hmac_key=TEST_KEY,
                          use_environment=False, use_config_file=False) as client:
            assert client.ping() == "pong"
            assert client.status()["pid"] == daemon.process.pid
        stopped = daemon.command("-C", "stop", "-H", "127.0.0.1", "-P", str(port), "-K", TEST_KEY)
        assert stopped.returncode == 0, stopped.stderr
        assert "stopped" in stopped.stdout
        assert daemon.wait_exit(20) == 0
    finally:
        daemon.terminate()


def test_web_daemon_unix_socket(genropy_env, tmp_path):
    from gnr_daemon.client import DaemonClient

    socket_path = str(tmp_path / "gnrd.sock")
    daemon = WebDaemon(genropy_env, ["-S", socket_path, "-K", TEST_KEY], tmp_path / "unix.log")
    try:
        daemon.wait_listening(socket_path=socket_path)
        with DaemonClient(socket=socket_path, hmac_key=TEST_KEY, use_environment=False,
                          use_config_file=False) as client:
            assert client.ping() == "pong"
        stopped = daemon.command("-C", "stop", "-S", socket_path, "-K", TEST_KEY)
        assert stopped.returncode == 0, stopped.stderr
        assert daemon.wait_exit(20) == 0
    finally:
        daemon.terminate()


def test_web_daemon_unknown_command(genropy_env):
    daemon = WebDaemon(genropy_env, ["-C", "reboot"], os.devnull)
    try:
        assert daemon.wait_exit(60) == 2
    finally:
        daemon.terminate()


def test_stop_then_site_fails_fast(genropy_env, tmp_path):
    """``gnr web daemon -C stop`` ends gnr_daemon; the site then fails at once with DaemonUnavailable."""
    from gnr_daemon.errors import DaemonUnavailable

    environment = genropy_env.copy(tmp_path)
    environment.set_daemon_address("127.0.0.1", free_loopback_port(), TEST_KEY)
    daemon = WebDaemon(environment, [], tmp_path / "stop.log")
    try:
        daemon.wait_listening()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("GENRO_GNRFOLDER", environment.gnrfolder)
            patch.setenv("HOME", environment.home)
            driver = SiteDriver(environment.root_py())
        assert driver.site.register.client.port == daemon.port
        page_id = open_page(driver)

        stopped = daemon.command("-C", "stop", "--savestatus")
        assert stopped.returncode == 0, stopped.stderr
        assert daemon.wait_exit(20) == 0
        assert os.path.isfile(os.path.join(environment.daemon_state_dir, "baseinstance.pik"))

        started = time.monotonic()
        response = driver.ping(page_id)
        assert response.status_code == 500
        with pytest.raises(DaemonUnavailable, match="cannot connect to gnr_daemon"):
            driver.site.register.handle_ping(page_id=page_id)
        assert time.monotonic() - started < 5
    finally:
        daemon.terminate()


# -- round trips compared with Genropy's own daemon


@pytest.fixture(scope="module")
def legacy_env(genropy_env, tmp_path_factory):
    """A copy of the configuration folder whose daemon address is Genropy's own daemon."""
    if pyro_missing_reason():
        pytest.skip(pyro_missing_reason())
    environment = genropy_env.copy(tmp_path_factory.mktemp("legacy"))
    port = free_loopback_port()
    environment.set_daemon_address("127.0.0.1", port, TEST_KEY)
    daemon = WebDaemon(environment, [], os.path.join(environment.home, "legacy.log"), legacy=True)
    try:
        daemon.wait_listening(port=port)
        yield environment
        daemon.command("-C", "stop")
        daemon.wait_exit(10)
    finally:
        daemon.terminate()


@pytest.mark.parametrize("instance", INSTANCES)
def test_round_trips_at_least_halved(genropy_env, web_daemon, legacy_env, instance):
    ours = run_measure(genropy_env, instance)
    theirs = run_measure(legacy_env, instance, legacy=True)
    for phase in PHASES:
        assert ours["calls"][phase] * 2 <= theirs["calls"][phase], (phase, ours, theirs)
    # gnr_daemon's client keeps its connections open, while Genropy's reconnects per store read.
    assert sum(ours["connects"][phase] for phase in PHASES) == 0
    assert ours["calls"]["site_start"] < theirs["calls"]["site_start"]
