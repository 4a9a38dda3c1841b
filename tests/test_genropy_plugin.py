"""The Genropy plug-in without a Genropy site: plug-in point, names, config, client behaviour.

The client tests build ``SiteRegisterClient`` for a stand-in site object
(configuration Bags, domain identifier, current request) against a real
daemon on a loopback port.
"""

import ast
import importlib.metadata
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TEST_KEY
from genropy_site import count_round_trips, genropy_missing_reason

GENROPY_MISSING = genropy_missing_reason()
needs_genropy = pytest.mark.skipif(GENROPY_MISSING is not None, reason=GENROPY_MISSING or "")

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "gnr_daemon"


def run_python(code, **env_extra):
    env = {name: value for name, value in os.environ.items()
           if name not in ("GNR_DAEMON_GENROPY",)}
    env.update(PYTHONWARNINGS="ignore", **env_extra)
    completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip().splitlines()[-1]


# -- plug-in point


def test_entry_point_registered():
    entry_points = importlib.metadata.entry_points(group="gnr.web", name="daemon")
    assert [entry.value for entry in entry_points] == ["gnr_daemon.genropy"]


def test_package_import_needs_no_genropy():
    code = "import sys, gnr_daemon.genropy; print(sorted(n for n in sys.modules if n == 'gnr' or n.startswith('gnr.')))"
    assert run_python(code) == "[]"


def test_no_genropy_import_outside_plugin():
    offenders = []
    for path in PACKAGE_ROOT.rglob("*.py"):
        if "genropy" in path.relative_to(PACKAGE_ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders.extend(f"{path.name}: {name}" for name in names
                             if name == "gnr" or name.startswith("gnr.") or name == "Pyro4")
    assert offenders == []


@needs_genropy
def test_genropy_loads_plugin_modules():
    code = ("import gnr.web.daemon.siteregister_client as m, gnr.web.daemon as p; "
            "print(m.SiteRegisterClient.__module__, p.__name__)")
    assert run_python(code) == "gnr_daemon.genropy._register gnr.web.daemon"


@needs_genropy
@pytest.mark.parametrize("value", ["off", "0", "false", "NO"])
def test_switch_back_to_genropy_daemon(value):
    code = ("import gnr.web.daemon.siteregister_client as m; "
            "print(m.SiteRegisterClient.__module__, m.__file__)")
    module, path = run_python(code, GNR_DAEMON_GENROPY=value).split()
    assert module == "gnr.web.daemon.siteregister_client"
    assert path.endswith(os.path.join("gnr", "web", "daemon", "siteregister_client.py"))
    assert "gnr_daemon" not in path


def _imported_daemon_names():
    """Return {module: names} that Genropy's own code imports from gnr.web.daemon.*."""
    import gnr

    root = Path(gnr.__file__).parent
    imports = {}
    for path in root.rglob("*.py"):
        relative = path.relative_to(root).parts
        if relative[:2] == ("web", "daemon"):
            continue
        text = path.read_text(errors="replace")
        if "gnr.web.daemon" not in text:
            continue
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gnr.web.daemon"):
                names = imports.setdefault(node.module, set())
                names.update(alias.name for alias in node.names)
    return imports


@needs_genropy
def test_every_name_genropy_imports_exists():
    import gnr.web.daemon  # noqa: F401 - installs the plug-in as gnr.web.daemon

    imports = _imported_daemon_names()
    assert "gnr.web.daemon.siteregister_client" in imports
    missing = []
    for module_name, names in imports.items():
        module = importlib.import_module(module_name)
        assert module.__name__ == module_name
        missing.extend(f"{module_name}.{name}" for name in names if not hasattr(module, name))
    assert missing == []


@needs_genropy
def test_plugin_classes_exist_once():
    import gnr.web.daemon.siteregister as legacy_name
    import gnr.web.daemon.siteregister_client as client_module

    from gnr_daemon.errors import GnrDaemonError, GnrDaemonLocked
    from gnr_daemon.genropy import siteregister_client

    assert client_module.SiteRegisterClient is siteregister_client.SiteRegisterClient
    assert legacy_name.GnrDaemonLocked is GnrDaemonLocked
    assert legacy_name.GnrDaemonException is GnrDaemonError
    assert issubclass(legacy_name.GnrDaemonLocked, legacy_name.GnrDaemonException)
    assert legacy_name.DEFAULT_PAGE_MAX_AGE == 600


def test_plugin_enabled_values():
    from gnr_daemon.genropy import plugin_enabled

    assert plugin_enabled({}) is True
    assert plugin_enabled({"GNR_DAEMON_GENROPY": "on"}) is True
    assert plugin_enabled({"GNR_DAEMON_GENROPY": " Off "}) is False


# -- configuration


def test_wire_key():
    from gnr_daemon.genropy._config import wire_key

    assert wire_key(None) is None
    assert wire_key("") is None
    assert wire_key(TEST_KEY) == TEST_KEY
    stretched = wire_key("abcdef123456")
    assert len(stretched) == 64
    assert int(stretched, 16) >= 0
    assert stretched == wire_key("abcdef123456")
    assert stretched != wire_key("abcdef123457")


@pytest.mark.parametrize("identifier, expected", [
    ("shop", "shop.pik"),
    ("shop.v2-beta_1", "shop.v2-beta_1.pik"),
])
def test_storage_name_plain(identifier, expected):
    from gnr_daemon.genropy._config import storage_name

    assert storage_name(identifier) == expected


def test_storage_name_replaced_characters():
    from gnr_daemon.genropy._config import storage_name

    north = storage_name("shop|north")
    assert north.startswith("shop_north-")
    assert north.endswith(".pik")
    assert north != storage_name("shop_north")
    assert "/" not in storage_name("../../etc/passwd")
    assert not storage_name("..").startswith(".")
    assert storage_name("..") != storage_name("...")


@needs_genropy
def test_daemon_options(tmp_path, monkeypatch):
    from gnr_daemon.genropy._config import daemon_options

    monkeypatch.setenv("GENRO_GNRFOLDER", str(tmp_path))
    assert daemon_options({"host": "localhost", "port": "40405", "hmac_key": "k"}) == {
        "host": "localhost", "port": 40405, "socket": None, "hmac_key": "k"}
    assert daemon_options({})["port"] is None
    options = daemon_options({"sockets": "true"})
    assert options["socket"] == str(tmp_path / "sockets" / "gnrdaemon.sock")
    assert (tmp_path / "sockets").is_dir()
    assert daemon_options({"sockets": str(tmp_path / "s")})["socket"] == \
        str(tmp_path / "s" / "gnrdaemon.sock")
    assert daemon_options({"sockets": "t", "socket": "/run/x.sock"})["socket"] == "/run/x.sock"
    with pytest.raises(ValueError, match="port"):
        daemon_options({"port": "forty"})


ENVIRONMENT_XML = """<?xml version='1.0' encoding='UTF-8'?>
<GenRoBag><gnrdaemon host="127.0.0.2" port="40777" hmac_key="{key}"></gnrdaemon></GenRoBag>
"""


@pytest.fixture
def genropy_config(tmp_path, monkeypatch):
    folder = tmp_path / "gnr"
    folder.mkdir()
    (folder / "environment.xml").write_text(ENVIRONMENT_XML.format(key=TEST_KEY))
    monkeypatch.setenv("GENRO_GNRFOLDER", str(folder))
    return folder


@needs_genropy
def test_daemon_command_reads_environment_xml(genropy_config):
    from gnr_daemon.genropy._service import build_daemon_command

    argv, env = build_daemon_command(None, {}, environ={"GNR_DAEMON_PORT": "1"})
    assert argv == [sys.executable, "-m", "gnr_daemon", "start"]
    assert env["GNR_DAEMON_HOST"] == "127.0.0.2"
    assert env["GNR_DAEMON_PORT"] == "40777"
    assert env["GNR_DAEMON_HMAC_KEY"] == TEST_KEY
    assert TEST_KEY not in " ".join(argv)


@needs_genropy
def test_daemon_command_options_win(genropy_config):
    from gnr_daemon.genropy._service import build_daemon_command

    argv, env = build_daemon_command("start", {"host": "127.0.0.1", "port": 0, "hmac_key": "short",
                                               "debug": True, "size_limit": 1000},
                                     environ={})
    assert env["GNR_DAEMON_HOST"] == "127.0.0.1"
    assert env["GNR_DAEMON_PORT"] == "0"
    assert len(env["GNR_DAEMON_HMAC_KEY"]) == 64
    assert argv[3:] == ["start", "--log-level=DEBUG", "--max-frame-size=1000"]


@needs_genropy
def test_daemon_command_socket(genropy_config):
    from gnr_daemon.genropy._service import build_daemon_command

    _, env = build_daemon_command("start", {"socket": "/run/gnrd.sock"}, environ={})
    assert env["GNR_DAEMON_SOCKET"] == "/run/gnrd.sock"


@needs_genropy
@pytest.mark.parametrize("command, options, expected", [
    ("stop", {}, ["stop"]),
    ("stop", {"savestatus": True}, ["stop", "--savestatus"]),
    ("restart", {}, ["stop", "--savestatus"]),
    ("status", {}, ["status"]),
    ("ping", {}, ["ping"]),
    ("sites", {}, ["sites"]),
])
def test_daemon_commands(genropy_config, command, options, expected):
    from gnr_daemon.genropy._service import build_daemon_command

    argv, _ = build_daemon_command(command, options, environ={})
    assert argv[3:] == expected


@needs_genropy
def test_daemon_command_unknown(genropy_config):
    from gnr_daemon.genropy._service import build_daemon_command

    with pytest.raises(ValueError, match="accepts .*restart"):
        build_daemon_command("reboot", {}, environ={})


@needs_genropy
def test_daemon_command_without_environment(genropy_config):
    from gnr_daemon.genropy._service import build_daemon_command

    _, env = build_daemon_command("start", {"port": 40001}, environ={}, use_environment=False)
    assert env == {"GNR_DAEMON_PORT": "40001"}


@needs_genropy
def test_per_site_daemon_rejected(capsys):
    from gnr_daemon.genropy._service import DaemonService

    with pytest.raises(SystemExit) as exit_info:
        DaemonService({}, None, "mysite").run()
    assert exit_info.value.code == 2
    assert "per-site daemons" in capsys.readouterr().err


# -- the site's register client against a real daemon


class FakeRequest:
    """Stands for the werkzeug request of one HTTP request."""


class FakeSite:
    """The attributes of GnrWsgiSite that SiteRegisterClient reads."""

    def __init__(self, port, key, domain_identifier, site_path, cleanup=None):
        from gnr.core.gnrbag import Bag

        self.config = Bag()
        self.config.setItem("gnrdaemon", None, host="127.0.0.1", port=str(port), hmac_key=key)
        self.custom_config = Bag()
        self.custom_config.setItem("cleanup", None, **(cleanup or {"page_max_age": "30"}))
        self.currentDomainIdentifier = domain_identifier
        self.site_path = str(site_path)
        self.currentRequest = None


@pytest.fixture
def make_register(daemon, tmp_path):
    from gnr_daemon.genropy._register import SiteRegisterClient

    created = []

    def make(domain_identifier="shop", key=TEST_KEY, **kwargs):
        site = FakeSite(daemon.port, key, domain_identifier, tmp_path, **kwargs)
        register = SiteRegisterClient(site)
        created.append(register)
        return register

    yield make
    for register in created:
        register.client.close()


@pytest.fixture
def register(make_register):
    register = make_register()
    register.calls.new_connection("c1", user="ann")
    return register


@needs_genropy
def test_registers_per_domain_identifier(daemon, client, make_register):
    main = make_register("shop")
    north = make_register("shop|north")
    north.calls.new_connection("c9", user="bob")
    assert main.counters() == {"users": 0, "connections": 0, "pages": 0}
    assert north.counters() == {"users": 1, "connections": 1, "pages": 0}
    sites = dict(client.siteRegisters())
    assert set(sites) == {"shop", "shop|north"}
    state_dir = os.path.realpath(daemon.settings.state_dir)
    assert sites["shop"]["storage_path"] == os.path.join(state_dir, "shop.pik")
    north_path = sites["shop|north"]["storage_path"]
    assert os.path.dirname(north_path) == state_dir
    assert os.path.basename(north_path).startswith("shop_north-")


@needs_genropy
def test_cleanup_configuration_sent(daemon, make_register):
    make_register("shop", cleanup={"interval": "7"})
    interval = daemon.call_in_hub(lambda: daemon.daemon._sites["shop"]._cleanup_interval())
    assert interval == 7


@needs_genropy
def test_registers_again_after_daemon_forgot_site(daemon, client, register, caplog):
    client.siteregister_stop("shop")
    assert client.getSite(sitename="shop") is None
    with caplog.at_level(logging.WARNING, logger="gnr_daemon.genropy._client"):
        assert register.counters() == {"users": 0, "connections": 0, "pages": 0}
    assert client.getSite(sitename="shop")["status"] == "ready"
    assert "registering it again" in caplog.text


@needs_genropy
def test_errors_are_not_masked(register):
    from gnr_daemon.errors import MethodNotFound

    with pytest.raises(MethodNotFound):
        register.no_such_method()


@needs_genropy
def test_short_key_is_stretched(daemon_factory, tmp_path):
    from gnr_daemon.genropy._config import wire_key
    from gnr_daemon.genropy._register import SiteRegisterClient

    stretched_daemon = daemon_factory(key=wire_key("abcdef123456"))
    site = FakeSite(stretched_daemon.port, "abcdef123456", "shop", tmp_path)
    register = SiteRegisterClient(site)
    try:
        assert register.counters()["pages"] == 0
    finally:
        register.client.close()


@needs_genropy
def test_values_cross_as_genropy_types(register):
    from gnr.core.gnrbag import Bag
    from gnr.web.gnrwebpage import ClientDataChange

    data = Bag()
    data.setItem("rootenv.language", "en")
    register.calls.new_page("p1", connection_id="c1", user="ann", data=data)
    item = register.get_item("p1", include_data=True, register_name="page")
    assert isinstance(item["data"], Bag)
    assert item["data"]["rootenv.language"] == "en"

    register.calls.set_datachange("p1", "gnr.msg", value=Bag({"x": 1}), reason="test",
                                  register_name="page")
    changes = register.subscription_storechanges("ann", "p1")
    assert len(changes) == 1 and isinstance(changes[0], ClientDataChange)
    assert isinstance(changes[0].value, Bag)

    register.calls.set_datachange("p1", "gnr.msg2", value=1, register_name="page")
    envelope = register.handle_ping(page_id="p1", reason="auto")
    assert isinstance(envelope, Bag)
    assert envelope.getAttr("dataChanges.sc_0", "change_path") == "gnr.msg2"
    assert register.handle_ping(page_id="nope") is False


@needs_genropy
def test_listings_are_dicts_with_lazy_data(register):
    from gnr_daemon.genropy._register import RemoteStoreBag

    register.calls.new_page("p1", connection_id="c1", user="ann", data={"a": 1})
    pages = register.pages(connection_id="c1", include_data="lazy")
    assert list(pages) == ["p1"]
    assert isinstance(pages["p1"]["data"], RemoteStoreBag)
    assert pages["p1"]["data"]["a"] == 1
    assert list(register.connections()) == ["c1"]
    assert list(register.users()) == ["ann"]
    assert register.page("p1", include_data="lazy")["data"]["a"] == 1
    assert register.page("nope", include_data="lazy") is None
    assert register.connection("c1")["user"] == "ann"
    assert register.user("ann")["register_name"] == "user"


@needs_genropy
def test_remote_store_bag_operations(register):
    from gnr.core.gnrbag import Bag

    register.calls.new_page("p1", connection_id="c1", user="ann")
    data = register.page("p1", include_data="lazy")["data"]
    data["form.name"] = "Ann"
    data.setItem("form.age", 30, _attributes={"dtype": "L"})
    assert data["form.name"] == "Ann"
    assert data.getAttr("form.age", "dtype") == "L"
    assert len(data) == 1
    assert "form.age" in data
    assert "form.nope" not in data
    whole = data.getItem("")
    assert isinstance(whole, Bag)
    assert data == whole
    assert "Ann" in str(data)
    form = data.chunk("form")
    assert form["name"] == "Ann"
    assert sorted(form.keys()) == ["age", "name"]
    # getNodeByValue is not run on the daemon: it runs on a fetched copy.
    assert data.getNodeByValue("name", "Ann").label == "form"
    with pytest.raises(AttributeError, match="no operation 'fromXml'"):
        data.fromXml


@needs_genropy
def test_server_store_operations(register):
    from gnr.core.gnrbag import Bag
    from gnr.web.gnrwebpage import ClientDataChange

    assert register.userStore("ann").getItem("x") is None
    store = register.userStore("ann")
    store.setItem("batch.b1", Bag({"state": "run"}))
    assert store.getItem("batch.b1.state") == "run"
    store.set_datachange("batch.b1", value=1, reason="btc", replace=True)
    assert [change.path for change in store.datachanges] == ["batch.b1"]
    assert isinstance(store.datachanges[0], ClientDataChange)
    store.drop_datachanges("batch")
    assert store.datachanges == []
    store.subscribe_path("batch")
    assert store.subscribed_paths == {"batch"}
    assert store.data["batch.b1.state"] == "run"
    assert store.register_item["register_item_id"] == "ann"
    unknown = register.pageStore("nope")
    assert unknown.getItem("x") is None
    assert unknown.keys() is None
    assert unknown.data is None
    assert register.globalStore().getNodeByValue("nope", 1) is None
    with pytest.raises(AttributeError):
        store.fromXml


@needs_genropy
def test_locked_block_takes_lock_with_first_operation(register, client):
    site = client.site("shop")
    store = register.connectionStore("c1")
    with count_round_trips() as counter:
        with store:
            pass
    assert counter.calls == 0

    with count_round_trips() as counter:
        with store:
            store.setItem("x", 1)
            assert site.lock_item("c1", reason="other", register_name="connection") is False
            store.setItem("y", 2)
    # The lock_item in the middle is this test's own call, as another holder.
    assert counter.methods == ["store_ops", "lock_item", "store_ops", "unlock_item"]
    assert site.lock_item("c1", reason="other", register_name="connection") is True
    assert register.connectionStore("c1").getItem("y") == 2


@needs_genropy
def test_failed_first_operation_releases_lock(register, client):
    site = client.site("shop")
    store = register.connectionStore("c1")
    with pytest.raises(ValueError, match="a\\?b"):
        with store:
            store.getNode("a?b")
    assert site.lock_item("c1", reason="other", register_name="connection") is True


@needs_genropy
def test_locked_store_gives_up(register, client):
    from gnr_daemon.errors import GnrDaemonLocked

    site = client.site("shop")
    assert site.lock_item("c1", reason="other", register_name="connection") is True
    store = register.connectionStore("c1")
    store.max_retry, store.retry_delay = 2, 0.01
    assert register.locked_exception is GnrDaemonLocked
    with pytest.raises(GnrDaemonLocked, match="stayed locked"):
        with store:
            store.setItem("x", 1)
    assert register.connectionStore("c1").getItem("x") is None
    # The refused attempts never took the lock, so the holder still has it.
    assert site.unlock_item("c1", reason="other", register_name="connection") is None


@needs_genropy
def test_lock_reason_names_host_process_thread(register):
    import socket
    import threading

    reason = register.pageStore("p1").lock_reason
    assert reason == f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@needs_genropy
def test_counters_one_call(register):
    with count_round_trips() as counter:
        assert register.counters() == {"users": 1, "connections": 1, "pages": 0}
    assert counter.methods == ["counters"]


@needs_genropy
def test_read_cache_inside_one_request(register):
    register.globalStore().setItem("CACHE_TS.x", 1)
    register.site.currentRequest = FakeRequest()
    store = register.globalStore()
    with count_round_trips() as counter:
        assert store.getItem("CACHE_TS.x") == 1
        assert store.getItem("CACHE_TS.x") == 1
        assert register.page("nope") is None
        assert store.getItem("CACHE_TS.x") == 1
    assert counter.calls == 2

    with count_round_trips() as counter:
        store.setItem("CACHE_TS.x", 2)
        assert store.getItem("CACHE_TS.x") == 2
    assert counter.calls == 2

    register.site.currentRequest = FakeRequest()
    with count_round_trips() as counter:
        assert store.getItem("CACHE_TS.x") == 2
    assert counter.calls == 1


@needs_genropy
def test_read_cache_age_limit(register, client):
    register.calls.read_cache_seconds = 0.05
    register.site.currentRequest = FakeRequest()
    store = register.globalStore()
    assert store.getItem("k") is None
    client.site("shop").store_ops("global", "*", [("setItem", ("k", 5), {})])
    assert store.getItem("k") is None
    time.sleep(0.1)
    assert store.getItem("k") == 5


@needs_genropy
def test_read_cache_off_outside_request(register):
    register.globalStore().setItem("k", 1)
    with count_round_trips() as counter:
        register.globalStore().getItem("k")
        register.globalStore().getItem("k")
    assert counter.calls == 2


@needs_genropy
def test_read_cache_returns_copies(register):
    from gnr.core.gnrbag import Bag

    register.calls.new_page("p1", connection_id="c1", user="ann", data={"env": {"a": 1}})
    register.site.currentRequest = FakeRequest()
    first = register.pageStore("p1").getItem("env")
    first["a"] = 99
    second = register.page("p1", include_data="lazy")["data"]["env"]
    assert isinstance(second, Bag) and second["a"] == 1


@needs_genropy
def test_read_cache_setting(monkeypatch):
    from gnr_daemon.errors import ConfigurationError
    from gnr_daemon.genropy._client import read_cache_seconds_from_environment

    assert read_cache_seconds_from_environment({}) == 1.0
    assert read_cache_seconds_from_environment({"GNR_DAEMON_GENROPY_READ_CACHE": "0"}) == 0
    with pytest.raises(ConfigurationError, match="seconds"):
        read_cache_seconds_from_environment({"GNR_DAEMON_GENROPY_READ_CACHE": "-1"})
    with pytest.raises(ConfigurationError, match="number"):
        read_cache_seconds_from_environment({"GNR_DAEMON_GENROPY_READ_CACHE": "soon"})


@needs_genropy
def test_daemon_proxies(daemon, register):
    from gnr_daemon.genropy.handler import GnrDaemonProxy

    proxy = register.gnrdaemon_proxy
    assert [name for name, _ in proxy.siteRegisters()] == ["shop"]
    with proxy.siteRegisterProxy("shop") as site_proxy:
        assert [item["register_item_id"] for item in site_proxy.connections()] == ["c1"]
    with register.pyroProxy(register.siteregister_uri) as site_proxy:
        assert site_proxy.counters()["connections"] == 1
    daemon_proxy = GnrDaemonProxy(host="127.0.0.1", port=daemon.port, hmac_key=TEST_KEY).proxy()
    try:
        assert daemon_proxy.ping() == "pong"
    finally:
        daemon_proxy.client.close()


@needs_genropy
def test_register_resolver(register):
    from types import SimpleNamespace

    from gnr_daemon.genropy.siteregister_client import RegisterResolver

    register.calls.new_page("p1", connection_id="c1", user="ann", pagename="index.py",
                            data={"a": 1})
    page = SimpleNamespace(site=SimpleNamespace(register=register))
    users = RegisterResolver(_page=page)()
    assert users.keys() == ["ann"]
    assert users["ann.info.user"] == "ann"
    assert "datachanges" not in users["ann.info"].keys()
    connections = RegisterResolver(user="ann", _page=page)()
    assert connections.getAttr("#0", "connection_id") == "c1"
    pages = RegisterResolver(user="ann", connection_id="c1", _page=page)()
    assert pages.keys()[0].startswith("index (")
    assert pages.getAttr("#0", "page_id") == "p1"
    assert pages["#0.data.a"] == 1
    assert "_page" not in RegisterResolver(_page=page).resolverSerialize()["kwargs"]
