"""Site register unit tests: users, connections, pages, cascades and indexes.

Every test runs three times: on the memory store, on a store that copies
every value in and out as a networked backend does, and on a Redis store.
"""

import logging

import pytest

from gnr_daemon.dispatch import dispatch
from gnr_daemon.registers import DataTree, SiteRegister
from gnr_daemon.registers.constants import (
    INDEX_CONNECTIONS_BY_USER,
    INDEX_PAGES_BY_CONNECTION,
    INDEX_PAGES_BY_TABLE,
    INDEX_PAGES_BY_USER,
)
from gnr_daemon.store import MemorySiteStore, MemoryStore





def open_tab(register, connection_id="c1", page_id="p1", user=None):
    user = user or f"guest_{connection_id}"
    register.new_connection(connection_id, connection_name="127_0_0_1_Chrome", user=user,
                            user_ip="127.0.0.1", browser_name="Chrome")
    register.new_page(page_id, pagename="index.py", connection_id=connection_id, user=user,
                      relative_url="/", data={"pageArgs": {"x": 1}})


def index_keys(register, index):
    return register._state.store.index_keys(index)


# -- site registration and configuration


def test_global_item_created(register):
    item = register.get_item("*", register_name="global")
    assert item["register_name"] == "global"
    assert item["datachanges_idx"] == 0


def test_configuration_partial_keys(register, clock):
    register.setConfiguration(cleanup={"page_max_age": 30})
    open_tab(register, user="alice")
    clock.advance(31)
    assert register.expire_pages("c1") == ["p1"]
    # connection_max_age keeps its default of 7200 s
    assert register.expire_connection("c1") is False


# -- a browser tab opens


def test_new_connection_creates_guest_user(register):
    item = register.new_connection("c1", connection_name="127_0_0_1_Chrome", user="guest_c1",
                                   user_ip="127.0.0.1", browser_name="Chrome")
    assert item["register_name"] == "connection"
    assert register.user("guest_c1") is not None
    assert register.counters() == {"users": 1, "connections": 1, "pages": 0}


def test_new_page_seeds_data_and_indexes(register):
    open_tab(register)
    assert [page["register_item_id"] for page in register.pages(connection_id="c1")] == ["p1"]
    assert register.connection_page_keys("c1") == ["p1"]
    value = dispatch(register, "remotebag_getItem", ("pageArgs.x",),
                     {"_siteregister_register_name": "page",
                      "_siteregister_register_item_id": "p1"})
    assert value == 1
    assert register.counters() == {"users": 1, "connections": 1, "pages": 1}


def test_new_page_subscribed_tables(register):
    register.new_page("p1", connection_id="c1", user="u", subscribed_tables="lib.a, lib.b,")
    assert register.page("p1")["subscribed_tables"] == {"lib.a", "lib.b"}
    assert [page["register_item_id"] for page in register.subscribed_table_pages("lib.b")] == ["p1"]


def test_new_page_rejects_bad_data(register):
    with pytest.raises(TypeError, match="expected a dict or a DataTree"):
        register.new_page("p1", data=["not", "a", "dict"])
    assert register.page("p1") is None


def test_duplicate_connection_replaces(register, caplog):
    open_tab(register)
    with caplog.at_level(logging.WARNING):
        register.new_connection("c1", user="guest_c1")
    assert "registered again" in caplog.text
    assert register.page("p1") is None
    assert register.connection("c1") is not None


def test_duplicate_connection_other_user(register):
    open_tab(register)
    register.new_connection("c1", user="alice")
    assert register.user("guest_c1") is None
    assert register.user_connection_keys("alice") == ["c1"]


# -- login, tab close and logout


def test_login_moves_connection_and_pages(register):
    open_tab(register)
    register.new_page("p2", connection_id="c1", user="guest_c1")
    register.change_connection_user("c1", user="alice", user_id="U1", user_name="Alice",
                                    user_tags="admin", avatar_extra={})
    assert register.connection("c1")["user"] == "alice"
    assert [page["register_item_id"] for page in register.pages(user="alice")] == ["p1", "p2"]
    assert register.user("guest_c1") is None
    assert register.user("alice")["user_name"] == "Alice"
    assert register.user_connection_keys("alice") == ["c1"]


def test_login_updates_page_user_index(register):
    open_tab(register)
    register.change_connection_user("c1", user="alice")
    assert register.pages(user="guest_c1") == []
    assert register.page("p1")["user"] == "alice"
    assert "guest_c1" not in index_keys(register, INDEX_PAGES_BY_USER)
    assert "guest_c1" not in index_keys(register, INDEX_CONNECTIONS_BY_USER)


def test_login_unknown_connection_ignored(register, caplog):
    with caplog.at_level(logging.WARNING):
        assert register.change_connection_user("nope", user="alice") is None
    assert register.user("alice") is None
    assert "unknown connection" in caplog.text


def test_drop_page_keeps_connection(register):
    open_tab(register)
    register.new_page("p2", connection_id="c1", user="guest_c1")
    register.drop_page("p2")
    assert register.page("p2") is None
    assert register.connection("c1") is not None


def test_drop_page_cascade(register):
    open_tab(register, user="alice")
    register.drop_page("p1", cascade=True)
    assert register.page("p1") is None
    assert register.connection("c1") is None
    assert register.user("alice") is not None


def test_logout_cascade(register):
    open_tab(register, "c1", "p1", user="alice")
    register.new_connection("c2", user="alice")
    register.drop_connection("c1", cascade=True)
    assert register.connection("c1") is None
    assert register.page("p1") is None
    assert register.user("alice") is not None
    register.drop_connection("c2", cascade=True)
    assert register.user("alice") is None
    assert register.counters() == {"users": 0, "connections": 0, "pages": 0}


def test_drop_user_drops_everything(register):
    open_tab(register, user="alice")
    register.drop_user("alice")
    assert register.counters() == {"users": 0, "connections": 0, "pages": 0}
    assert index_keys(register, INDEX_PAGES_BY_CONNECTION) == []


def test_drop_connections_keeps_user(register):
    open_tab(register, "c1", "p1", user="alice")
    register.new_connection("c2", user="alice")
    register.drop_connections("alice")
    assert register.connections(user="alice") == []
    assert register.user("alice") is not None


def test_drop_pages_keeps_connection(register):
    open_tab(register)
    register.drop_pages("c1")
    assert register.connection_pages("c1") == []
    assert register.connection("c1") is not None


def test_drop_clears_lock_record(register):
    open_tab(register)
    dispatch(register, "lock_item", ("p1",), {"reason": "A", "register_name": "page"})
    register.drop_page("p1")
    assert register._state.store.get_lock("page", "p1") is None


# -- unknown ids


def test_unknown_page_calls(register):
    assert register.handle_ping(page_id="nope") is False
    assert register.refresh("nope") is None
    assert register.page("nope") is None
    assert dispatch(register, "set_datachange", ("nope", "x"), {"register_name": "page"}) is None
    assert register.counters() == {"users": 0, "connections": 0, "pages": 0}


def test_unknown_item_data_empty(register):
    tree = register.get_item_data("nope", register_name="page")
    assert isinstance(tree, DataTree)
    assert len(tree) == 0


def test_index_lookup_creates_no_key(register):
    register.pages(connection_id="nope")
    register.pages(user="nobody")
    register.connections(user="nobody")
    register.subscribed_table_pages("no.table")
    dispatch(register, "filter_subscribed_tables", (["no.table"],), {"register_name": "page"})
    for index in (INDEX_PAGES_BY_CONNECTION, INDEX_PAGES_BY_USER, INDEX_CONNECTIONS_BY_USER,
                  INDEX_PAGES_BY_TABLE):
        assert index_keys(register, index) == []


# -- results are copies


def test_include_data_not_stored(register):
    open_tab(register)
    with_data = register.get_item("p1", include_data=True, register_name="page")
    assert with_data["data"].getItem("pageArgs.x") == 1
    assert "data" not in register.get_item("p1", register_name="page")
    assert all("data" not in page for page in register.pages())


def test_users_include_data(register):
    open_tab(register)
    users = register.users(include_data=True)
    assert isinstance(users[0]["data"], DataTree)
    assert "data" not in register.user("guest_c1")


def test_result_is_copy(register):
    open_tab(register)
    page = register.page("p1")
    page["user"] = "mallory"
    page["subscribed_paths"].add("x")
    assert register.page("p1")["user"] == "guest_c1"
    assert register.page("p1")["subscribed_paths"] == set()


def test_item_data_is_copy(register):
    open_tab(register)
    tree = register.get_item_data("p1")
    tree.setItem("pageArgs.x", 99)
    assert register.get_item_data("p1").getItem("pageArgs.x") == 1


def test_get_item_search_order(register):
    register.new_user("x")
    register.new_page("x", connection_id="c", user="y")
    assert register.get_item("x")["register_name"] == "page"
    assert register.get_item("x", register_name="user")["register_name"] == "user"


def test_get_item_bad_register_name(register):
    with pytest.raises(ValueError, match="invalid register_name 'pages'"):
        register.get_item("x", register_name="pages")


# -- dropped pages leave no stale index entries


@pytest.mark.parametrize("drop", ["page", "connection", "connection_cascade", "user"])
@pytest.mark.parametrize("page_id", ["P1", "gnrd:demo:P1", "a:b::c"])
def test_dropped_page_leaves_table_index(register, drop, page_id):
    register.new_connection("c:1", user="u:1")
    register.new_page(page_id, connection_id="c:1", user="u:1", subscribed_tables="app.invoice")
    register.new_page("keep", connection_id="other", user="v", subscribed_tables="app.invoice")
    if drop == "page":
        register.drop_page(page_id)
    elif drop == "connection":
        register.drop_connection("c:1")
    elif drop == "connection_cascade":
        register.drop_connection("c:1", cascade=True)
    else:
        register.drop_user("u:1")
    pages = register.subscribed_table_pages("app.invoice")
    assert [page["register_item_id"] for page in pages] == ["keep"]
    assert None not in pages
    assert dispatch(register, "subscribed_table_page_keys", ("app.invoice",),
                    {"register_name": "page"}) == ["keep"]


def test_last_table_subscriber_dropped(register):
    register.new_page("p1", connection_id="c1", user="u", subscribed_tables="app.invoice")
    register.drop_page("p1")
    assert dispatch(register, "filter_subscribed_tables", (["app.invoice"],),
                    {"register_name": "page"}) == []
    assert index_keys(register, INDEX_PAGES_BY_TABLE) == []


def test_colon_ids_do_not_collide(register):
    register.new_page("a:b", connection_id="c", user="u", subscribed_tables="t:1")
    register.new_page("a", connection_id="c", user="u", subscribed_tables="t")
    assert register.connection_page_keys("c") == ["a", "a:b"]
    assert register.subscribed_table_pages("t")[0]["register_item_id"] == "a"
    register.drop_page("a:b")
    assert register.connection_page_keys("c") == ["a"]


# -- update_item keeps the indexes in step


def test_update_item_reindexes(register):
    register.new_page("p1", connection_id="c1", user="u1", subscribed_tables="t.a")
    dispatch(register, "update_item", ("p1",),
             {"upddict": {"connection_id": "c2", "user": "u2", "subscribed_tables": "t.b"},
              "register_name": "page"})
    assert register.connection_page_keys("c2") == ["p1"]
    assert register.connection_page_keys("c1") == []
    assert [page["register_item_id"] for page in register.pages(user="u2")] == ["p1"]
    assert register.subscribed_table_pages("t.a") == []
    assert len(register.subscribed_table_pages("t.b")) == 1


def test_update_item_rejects_identity(register):
    register.new_user("alice")
    with pytest.raises(ValueError, match="cannot change register_item_id"):
        dispatch(register, "update_item", ("alice",),
                 {"upddict": {"register_item_id": "bob"}, "register_name": "user"})
    assert register.user("alice") is not None


def test_update_item_ignores_data(register):
    register.new_user("alice")
    dispatch(register, "update_item", ("alice",),
             {"upddict": {"data": DataTree({"a": 1}), "user_name": "Alice"},
              "register_name": "user"})
    assert "data" not in register._state.store.get_item("user", "alice")
    assert register.user("alice")["user_name"] == "Alice"


# -- hot paths touch only the items involved


class ScanCountingSiteStore(MemorySiteStore):
    """Memory site store that counts the calls that list a whole register or index."""

    scans = 0

    def items(self, register):
        type(self).scans += 1
        return super().items(register)

    def item_ids(self, register):
        type(self).scans += 1
        return super().item_ids(register)

    def index_keys(self, index):
        type(self).scans += 1
        return super().index_keys(index)


class ScanCountingStore(MemoryStore):
    site_store_class = ScanCountingSiteStore


def test_hot_paths_do_not_scan(clock):
    register = SiteRegister("demo", ScanCountingStore().site_store("demo"), clock=clock)
    for number in range(20):
        open_tab(register, f"c{number}", f"p{number}")
    register.setStoreSubscription("p1", storename="user", client_path="batch", active=True)
    register.subscribeTable("p1", "lib.invoice", True)
    ScanCountingSiteStore.scans = 0

    register.connection("c1")
    register.pages(connection_id="c1")
    register.new_page("extra", connection_id="c1", user="guest_c1")
    dispatch(register, "set_datachange", ("guest_c1", "batch.a"), {"register_name": "user"})
    register.handle_ping(page_id="p1", _serverstore_changes={"form.a": "1::L"})
    register.refresh("p2")
    register.subscription_storechanges("guest_c1", "p1")
    register.set_serverstore_changes("p1", {"form.b": "2::L"})
    dispatch(register, "filter_subscribed_tables", (["lib.invoice"],), {"register_name": "page"})
    dispatch(register, "notifyDbEvents", (), {"dbeventsDict": {"lib.invoice": [1]},
                                              "register_name": "page"})
    register.drop_page("extra", cascade=True)
    register.drop_connection("c2", cascade=True)
    register.change_connection_user("c3", user="alice")
    assert ScanCountingSiteStore.scans == 0
