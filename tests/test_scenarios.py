"""A browser session's life, end to end, through the client and a real daemon.

Every test drives the site ``demo`` over the network; the daemon's clock is
a ``FakeClock`` that the tests move instead of sleeping. Every test runs
twice: on a daemon with the memory store and on one with a Redis store (a
key prefix of its own on the test session's redis-server).
"""

from datetime import timedelta

import pytest

from gnr_daemon.errors import MethodNotFound, SiteNotFound
from gnr_daemon.registers.datatree import DataTree

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", "redis"])
def store_url(request):
    """The daemon's store URL; the Redis one has a key prefix of this test alone."""
    if request.param == "memory":
        return "memory:"
    return request.getfixturevalue("redis_url")


@pytest.fixture
def daemon(daemon_factory, store_url):
    """A signed daemon with the test key on the parametrized store."""
    return daemon_factory(store=store_url)


@pytest.fixture
def site(daemon, client):
    client.addSiteRegister("demo", storage_path="demo.pik", autorestore=True)
    return client.site("demo")


def open_tab(site, connection_id="c1", page_id="p1", user=None):
    user = user or f"guest_{connection_id}"
    if site.connection(connection_id) is None:
        site.new_connection(connection_id, connection_name="127_0_0_1_Chrome", user=user,
                            user_ip="127.0.0.1", browser_name="Chrome")
    site.new_page(page_id, pagename="index.py", connection_id=connection_id, user=user,
                  relative_url="/", data={"pageArgs": {"x": 1}})


def test_s01_site_registration(daemon, client):
    assert client.addSiteRegister("demo", storage_path="demo.pik", autorestore=True) is None
    assert client.getSite(sitename="demo")["status"] == "ready"
    assert [name for name, _info in client.siteRegisters()] == ["demo"]
    client.addSiteRegister("demo", storage_path="demo.pik", autorestore=True)
    assert [name for name, _info in client.siteRegisters()] == ["demo"]
    site = client.site("demo")
    assert site.get_item("*", register_name="global")["register_item_id"] == "*"
    site.setConfiguration(cleanup={"page_max_age": 30})
    open_tab(site, user="alice")
    daemon.clock.advance(31)
    assert site.expire_pages("c1") == ["p1"]


def test_s02_guest_tab_opens(site):
    connection = site.new_connection("c1", connection_name="127_0_0_1_Chrome", user="guest_c1",
                                     user_ip="127.0.0.1", browser_name="Chrome")
    assert connection["register_name"] == "connection"
    assert site.user("guest_c1") is not None
    assert site.counters() == {"users": 1, "connections": 1, "pages": 0}
    site.new_page("p1", pagename="index.py", connection_id="c1", user="guest_c1",
                  relative_url="/", data={"pageArgs": {"x": 1}})
    assert [page["register_item_id"] for page in site.pages(connection_id="c1")] == ["p1"]
    assert site.connection_page_keys("c1") == ["p1"]
    assert site.remotebag_getItem("pageArgs.x", _siteregister_register_name="page",
                                  _siteregister_register_item_id="p1") == 1
    assert site.counters() == {"users": 1, "connections": 1, "pages": 1}


def test_s03_quiet_ping(daemon, site):
    open_tab(site)
    t1 = daemon.clock.now - timedelta(seconds=5)
    envelope = site.handle_ping(page_id="p1", _lastUserEventTs=t1, _lastRpc=t1)
    assert isinstance(envelope, DataTree)
    assert envelope.getItem("result") is None
    assert envelope.getItem("dataChanges") is None
    for item in (site.page("p1"), site.connection("c1"), site.user("guest_c1")):
        assert item["last_refresh_ts"] == daemon.clock.now
        assert item["last_user_ts"] == t1
    site.handle_ping(page_id="p1", _lastUserEventTs=t1 - timedelta(seconds=60))
    assert site.page("p1")["last_user_ts"] == t1
    assert site.handle_ping(page_id="p1") is not False


def test_s04_server_push(site):
    open_tab(site)
    site.set_datachange("p1", "gnr.msg", value="hi", reason="test", register_name="page")
    envelope = site.handle_ping("p1")
    assert envelope.getItem("dataChanges.sc_0") == "hi"
    attributes = envelope.getAttr("dataChanges.sc_0")
    assert attributes["change_path"] == "gnr.msg"
    assert attributes["change_reason"] == "test"
    assert attributes["change_fired"] is False
    assert attributes["change_delete"] is False
    assert attributes["change_ts"] is not None
    assert site.handle_ping("p1").getItem("dataChanges") is None
    site.set_datachange("p1", "gnr.msg", value="one", reason="test", replace=True,
                        register_name="page")
    site.set_datachange("p1", "gnr.msg", value="two", reason="test", replace=True,
                        register_name="page")
    changes = site.handle_ping("p1").getItem("dataChanges")
    assert changes.values() == ["two"]


def test_s05_db_change_reaches_subscribers(site):
    open_tab(site)
    open_tab(site, page_id="p2")
    site.subscribeTable("p1", "lib.invoice", True)
    site.subscribeTable("p1", "lib.invoice", True)
    assert site.filter_subscribed_tables(["lib.invoice", "lib.other"],
                                         register_name="page") == ["lib.invoice"]
    site.notifyDbEvents(dbeventsDict={"lib.invoice": [{"pkey": "1"}], "lib.other": []},
                        origin_page_id="p2", dbevent_reason="save", register_name="page")
    changes = site.get_datachanges("p1", register_name="page")
    assert len(changes) == 1
    assert changes[0].path == "gnr.dbchanges.lib_invoice"
    assert changes[0].attributes == {"from_page_id": "p2", "dbevent_reason": "save"}
    assert site.get_datachanges("p2", register_name="page") == []
    site.subscribeTable("p1", "lib.invoice", False)
    assert site.filter_subscribed_tables(["lib.invoice"], register_name="page") == []


def test_s06_user_store_fan_out(site):
    open_tab(site)
    open_tab(site, page_id="p2")
    site.setStoreSubscription("p1", storename="user", client_path="batch", active=True)
    site.setStoreSubscription("p2", storename="user", client_path="batch", active=True)
    site.set_datachange("guest_c1", "batch.b1", value=1, register_name="user")
    first = site.handle_ping("p1").getItem("dataChanges")
    assert first.getAttr("sc_0", "change_attr")["_new_datachange"] is True
    second = site.handle_ping("p2").getItem("dataChanges")
    assert "_new_datachange" not in (second.getAttr("sc_0", "change_attr") or {})
    assert site.handle_ping("p1").getItem("dataChanges") is None
    assert site.handle_ping("p2").getItem("dataChanges") is None
    site.setStoreSubscription("p2", storename="user", client_path="batch", active=False)
    site.set_datachange("guest_c1", "batch.b2", value=2, register_name="user")
    assert site.handle_ping("p2").getItem("dataChanges") is None
    assert site.handle_ping("p1").getItem("dataChanges").values() == [2]


def test_s07_child_pages_in_one_ping(site):
    open_tab(site)
    open_tab(site, page_id="p2")
    site.set_datachange("p2", "child.msg", value="for child", register_name="page")
    envelope = site.handle_ping("p1", _children_pages_info={
        "p2": {"_lastUserEventTs": "2026-01-02T03:04:05::DH", "form.count": "12::L"}})
    child = site.page("p2")
    assert child["last_user_ts"].isoformat() == "2026-01-02T03:04:05"
    assert site.remotebag_getItem("form.count", _siteregister_register_name="page",
                                  _siteregister_register_item_id="p2") == 12
    assert envelope.getItem("childDataChanges.p2.sc_0") == "for child"


def test_s07_bad_typed_text_not_half_applied(site):
    open_tab(site)
    open_tab(site, page_id="p2")
    with pytest.raises(ValueError, match="12x::L"):
        site.handle_ping("p1", _children_pages_info={
            "p2": {"form.a": "1::L", "form.count": "12x::L"}})
    assert site.remotebag_getItem("form.a", _siteregister_register_name="page",
                                  _siteregister_register_item_id="p2") is None


def test_s08_login(site):
    open_tab(site)
    open_tab(site, page_id="p2")
    site.change_connection_user("c1", user="alice", user_id="U1", user_name="Alice",
                                user_tags="admin", avatar_extra={})
    assert site.connection("c1")["user"] == "alice"
    assert sorted(page["register_item_id"] for page in site.pages(user="alice")) == ["p1", "p2"]
    assert site.user("guest_c1") is None
    assert site.user("alice") is not None
    assert site.user_connection_keys("alice") == ["c1"]


def test_s09_locks(daemon, site):
    open_tab(site)
    assert site.lock_item("p1", reason="A", register_name="page") is True
    assert site.lock_item("p1", reason="B", register_name="page") is False
    assert site.lock_item("p1", reason="A", register_name="page") is True
    assert site.unlock_item("p1", reason="B", register_name="page") is False
    site.unlock_item("p1", reason="A", register_name="page")
    site.unlock_item("p1", reason="A", register_name="page")
    assert site.lock_item("p1", reason="B", register_name="page") is True
    daemon.clock.advance(11)
    assert site.lock_item("p1", reason="A", register_name="page") is False
    assert site.lock_item("p1", reason="A", register_name="page") is True


def test_s10_batch_indicator(daemon, site):
    open_tab(site)
    site.remotebag_setItem("lastBatchUpdate", daemon.clock.now, _siteregister_register_name="user",
                           _siteregister_register_item_id="guest_c1")
    assert site.handle_ping("p1").getItem("runningBatch") is True
    site.remotebag_setItem("lastBatchUpdate", daemon.clock.now - timedelta(seconds=10),
                           _siteregister_register_name="user",
                           _siteregister_register_item_id="guest_c1")
    assert site.handle_ping("p1").getItem("runningBatch") is None
    assert site.remotebag_getItem("lastBatchUpdate", _siteregister_register_name="user",
                                  _siteregister_register_item_id="guest_c1") is None


def test_s11_tab_close(site):
    open_tab(site, user="alice")
    open_tab(site, page_id="p2", user="alice")
    site.drop_page("p2")
    assert site.page("p2") is None
    assert site.connection("c1") is not None
    site.drop_page("p1", cascade=True)
    assert site.page("p1") is None
    assert site.connection("c1") is None
    assert site.user("alice") is not None


def test_s12_logout(site):
    open_tab(site, user="alice")
    site.new_connection("c2", user="alice")
    site.drop_connection("c1", cascade=True)
    assert site.connection("c1") is None
    assert site.page("p1") is None
    assert site.user("alice") is not None
    site.drop_connection("c2", cascade=True)
    assert site.user("alice") is None
    assert site.counters() == {"users": 0, "connections": 0, "pages": 0}


def build_s13(daemon, site):
    """Connections and pages with ages set by moving the clock between creations."""
    clock = daemon.clock
    site.setConfiguration(cleanup={"interval": 120, "page_max_age": 600,
                                   "guest_connection_max_age": 40, "connection_max_age": 7200})
    start = clock.now
    clock.now = start - timedelta(seconds=86410)
    site.new_connection("cd", user="bob")
    clock.now = start - timedelta(seconds=8000)
    site.new_connection("ca", user="alice")
    clock.now = start - timedelta(seconds=700)
    site.new_connection("cb", user="alice")
    site.new_page("pa", connection_id="cb", user="alice")
    clock.now = start - timedelta(seconds=60)
    site.new_connection("cg", user="guest_c9")
    site.new_page("pg", connection_id="cg", user="guest_c9")
    clock.now = start - timedelta(seconds=10)
    site.new_page("pb", connection_id="cb", user="alice")
    site.refresh("pb", refresh_ts=clock.now, register_name="page")
    site.refresh("cg", refresh_ts=clock.now, register_name="connection")
    clock.now = start
    site.refresh("cb", refresh_ts=clock.now, register_name="connection")


def test_s13_cleanup_on_event(daemon, site):
    build_s13(daemon, site)
    assert site.claim_cleanup(14400) is True
    assert site.claim_cleanup(14400) is False
    assert site.expire_pages("cb") == ["pa"]
    assert site.expire_pages("cg") == ["pg"]
    assert site.expire_connection("ca") is True
    assert site.user("alice") is not None
    assert site.expire_connection("cb") is False
    assert site.expire_connection("cg") is False
    assert site.expire_connection("cd") is True
    assert site.user("bob") is None


def test_s13_cleanup_pull_all(daemon, client):
    daemon.clock.advance(-200)
    client.addSiteRegister("demo")
    site = client.site("demo")
    daemon.clock.advance(200)
    build_s13(daemon, site)
    daemon.clock.advance(-130)
    assert site.cleanup() == []
    daemon.clock.advance(130)
    assert sorted(site.cleanup()) == ["ca", "cd"]
    assert site.page("pa") is None
    assert site.page("pg") is None
    assert site.page("pb") is not None


def test_s14_unknown_page(site):
    assert site.handle_ping(page_id="nope") is False
    assert site.refresh("nope") is None
    assert site.page("nope") is None
    assert site.set_datachange("nope", "x", register_name="page") is None
    assert site.counters() == {"users": 0, "connections": 0, "pages": 0}


def test_s15_persistence_round_trip(daemon, client, site):
    open_tab(site)
    site.subscribeTable("p1", "lib.invoice", True)
    site.subscribe_path("p1", "watched", register_name="page")
    site.remotebag_setItem("CACHE_TS.key", 5, _siteregister_register_name="global",
                           _siteregister_register_item_id="*")
    site.dump()
    client.siteregister_stop("demo")
    client.addSiteRegister("demo", storage_path="demo.pik", autorestore=True)
    assert [page["register_item_id"] for page in site.pages(connection_id="c1")] == ["p1"]
    assert [page["register_item_id"] for page in site.subscribed_table_pages("lib.invoice")] == ["p1"]
    assert site.remotebag_getItem("CACHE_TS.key", _siteregister_register_name="global",
                                  _siteregister_register_item_id="*") == 5
    site.remotebag_setItem("watched.value", 3, _siteregister_register_name="page",
                           _siteregister_register_item_id="p1")
    paths = [change.path for change in site.get_datachanges("p1", register_name="page")]
    assert "watched.value" in paths
    assert (daemon.state_dir / "demo_loaded.pik").exists()
    assert not (daemon.state_dir / "demo.pik").exists()
    assert site.load() is False


def test_s16_isolation_and_routing(client):
    client.addSiteRegister("a")
    client.addSiteRegister("b")
    client.site("a").new_connection("c", user="x")
    assert client.site("b").counters() == {"users": 0, "connections": 0, "pages": 0}
    with pytest.raises(MethodNotFound):
        client.call("new_connection", "c", user="x")
    with pytest.raises(MethodNotFound):
        client.site("a").call("_anything")
    client.site("a").stop()
    assert client.ping() == "pong"
    with pytest.raises(SiteNotFound):
        client.site("never").counters()


def test_s17_maintenance(site):
    site.setMaintenance(True, allowed_users=["admin"])
    assert site.isInMaintenance("bob") is True
    assert site.isInMaintenance("admin") is False
    assert site.isInMaintenance("*forced*") is False
    assert site.isInMaintenance() is True
    assert site.allowedUsers() == ["admin"]
    site.setMaintenance(False)
    assert site.isInMaintenance("bob") is False
    assert site.isInMaintenance() is False
    assert site.allowedUsers() is None


def test_s18_process_commands(daemon, site):
    assert site.pendingProcessCommands(pid=1) == []
    assert site.pendingProcessCommands(pid=2) == []
    site.sendProcessCommand(("clearApplicationCache", {"key": "k"}))
    assert site.pendingProcessCommands(pid=1) == [("clearApplicationCache", {"key": "k"})]
    assert site.pendingProcessCommands(pid=1) == []
    assert site.pendingProcessCommands(pid=2) == [("clearApplicationCache", {"key": "k"})]
    daemon.clock.advance(601)
    site.pendingProcessCommands(pid=3)
    site.sendProcessCommand(("again", {}))
    assert site.pendingProcessCommands(pid=3) == [("again", {})]
    assert site.pendingProcessCommands(pid=1) == []


def test_periodic_cleanup_runs_alone(daemon, site):
    import time

    site.setConfiguration(cleanup={"interval": 1})
    open_tab(site, user="alice")
    daemon.clock.advance(8000)
    deadline = time.monotonic() + 15
    while site.connection("c1") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert site.page("p1") is None
    assert site.connection("c1") is None


def test_stopped_site_state(client, site, store_url):
    open_tab(site)
    client.siteregister_stop("demo")
    client.addSiteRegister("demo")
    if store_url == "memory:":
        # A process-local store forgets a stopped site.
        assert site.counters() == {"users": 0, "connections": 0, "pages": 0}
    else:
        # Redis keeps the state that other daemons may still serve.
        assert site.counters() == {"users": 1, "connections": 1, "pages": 1}


def test_storage_path_outside_state_dir_rejected(client, tmp_path):
    from gnr_daemon.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="outside the daemon's state directory"):
        client.addSiteRegister("evil", storage_path=str(tmp_path / "elsewhere.pik"))
    with pytest.raises(ConfigurationError, match="outside"):
        client.addSiteRegister("evil", storage_path="../escape.pik")
    assert client.siteRegisters() == []


def test_stop_with_save_status(daemon_factory, store_url):
    daemon = daemon_factory(store=store_url)
    with daemon.client() as client:
        client.addSiteRegister("demo", storage_path="demo.pik")
        open_tab(client.site("demo"))
        client.stop(saveStatus=True)
    daemon.thread.join(15)
    assert not daemon.thread.is_alive()
    assert (daemon.state_dir / "demo.pik").exists()
    restarted = daemon_factory(state_dir=daemon.state_dir, store=store_url)
    with restarted.client() as client:
        client.addSiteRegister("demo", storage_path="demo.pik", autorestore=True)
        assert client.site("demo").counters() == {"users": 1, "connections": 1, "pages": 1}


def test_storage_path_in_subdirectory(daemon, client):
    client.addSiteRegister("nested", storage_path="sub/dir/nested.pik")
    client.site("nested").new_connection("c1", user="alice")
    client.site("nested").dump()
    assert (daemon.state_dir / "sub" / "dir" / "nested.pik").exists()


def test_storage_path_directory_rejected(client):
    from gnr_daemon.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="is a directory"):
        client.addSiteRegister("dir", storage_path=".")


def test_stop_reports_saved_sites(daemon_factory):
    daemon = daemon_factory()
    with daemon.client() as client:
        client.addSiteRegister("with_path", storage_path="with_path.pik")
        client.addSiteRegister("without_path")
        assert client.stop(saveStatus=True) == {"with_path": "saved",
                                                "without_path": "no storage path"}
    daemon.thread.join(15)
    assert (daemon.state_dir / "with_path.pik").exists()


def test_unrestored_dump_warned(daemon, client, caplog):
    client.addSiteRegister("demo", storage_path="demo.pik")
    client.site("demo").new_connection("c1", user="alice")
    client.site("demo").dump()
    client.siteregister_stop("demo")
    with caplog.at_level("WARNING", logger="gnr_daemon.daemon"):
        client.addSiteRegister("demo", storage_path="demo.pik")
    assert any("not restored" in record.getMessage() for record in caplog.records)


def test_batch_size_limit(client):
    from gnr_daemon.daemon import MAX_BATCH_CALLS

    with pytest.raises(ValueError, match="split it into several batches"):
        client.call("batch", [(None, "ping", (), {})] * (MAX_BATCH_CALLS + 1))
