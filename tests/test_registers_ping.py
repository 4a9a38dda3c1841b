"""Site register unit tests: refresh, ping envelope, datachanges and store subscriptions.

Every test runs three times: on the memory store, on a store that copies
every value in and out as a networked backend does, and on a Redis store.
"""

from datetime import datetime, timedelta

import pytest

from gnr_daemon.dispatch import dispatch
from gnr_daemon.registers import DataTree, SiteRegister
from gnr_daemon.registers.typedtext import TypedTextError



@pytest.fixture
def register(store, clock):
    register = SiteRegister("demo", store.site_store("demo"), clock=clock)
    register.new_connection("c1", user="guest_c1")
    register.new_page("p1", connection_id="c1", user="guest_c1", data={"pageArgs": {"x": 1}})
    register.new_page("p2", connection_id="c1", user="guest_c1")
    return register


def call(register, name, *args, **kwargs):
    return dispatch(register, name, args, kwargs)


def changes_of(envelope, path="dataChanges"):
    tree = envelope.getItem(path)
    return [] if tree is None else list(tree)


# -- refresh and quiet pings


def test_quiet_ping(register, clock):
    t1 = clock.now - timedelta(seconds=5)
    envelope = register.handle_ping(page_id="p1", _lastUserEventTs=t1, _lastRpc=t1)
    assert envelope.getItem("result") is None
    assert "result" in envelope.keys()
    assert envelope.getItem("dataChanges") is None
    for item in (register.page("p1"), register.connection("c1"), register.user("guest_c1")):
        assert item["last_refresh_ts"] == clock.now
        assert item["last_user_ts"] == t1


def test_ping_older_timestamp_kept(register, clock):
    t1 = clock.now
    register.handle_ping(page_id="p1", _lastUserEventTs=t1)
    register.handle_ping(page_id="p1", _lastUserEventTs=t1 - timedelta(seconds=30))
    assert register.page("p1")["last_user_ts"] == t1


def test_ping_without_timestamps(register):
    assert isinstance(register.handle_ping(page_id="p1"), DataTree)


def test_refresh_none_keeps_timestamp(register, clock):
    t1 = clock.now
    register.refresh("p1", last_user_ts=t1)
    assert register.refresh("p1", last_user_ts=None)["last_user_ts"] == t1
    assert register.page("p1")["last_user_ts"] == t1


def test_refresh_returns_user(register):
    assert register.refresh("p1")["register_name"] == "user"


def test_ping_missing_connection_not_gone(register):
    register.new_page("orphan", connection_id="missing", user="nobody")
    assert isinstance(register.handle_ping(page_id="orphan"), DataTree)
    assert register.refresh("orphan") is None
    assert register.page("orphan")["last_refresh_ts"] is not None


def test_ping_reason_ignored(register):
    assert isinstance(register.handle_ping(page_id="p1", reason="auto"), DataTree)


def test_single_item_refresh_routed(register, clock):
    item = call(register, "refresh", "c1", register_name="connection", refresh_ts=clock.now)
    assert item["register_name"] == "connection"
    assert register.page("p1").get("last_refresh_ts") is None


# -- server push


def test_push_to_one_page(register, clock):
    call(register, "set_datachange", "p1", "gnr.msg", value="hi", reason="test",
         register_name="page")
    nodes = changes_of(register.handle_ping(page_id="p1"))
    assert len(nodes) == 1
    node = nodes[0]
    assert node.label == "sc_0"
    assert node.value == "hi"
    assert node.attr["change_path"] == "gnr.msg"
    assert node.attr["change_reason"] == "test"
    assert node.attr["change_fired"] is False
    assert node.attr["change_delete"] is False
    assert node.attr["change_ts"] == clock.now
    assert changes_of(register.handle_ping(page_id="p1")) == []


def test_push_replace(register):
    for value in ("first", "second"):
        call(register, "set_datachange", "p1", "gnr.msg", value=value, reason="test",
             replace=True, register_name="page")
    nodes = changes_of(register.handle_ping(page_id="p1"))
    assert [node.value for node in nodes] == ["second"]


def test_datachange_index_increments(register):
    for _ in range(3):
        call(register, "set_datachange", "p1", "x", register_name="page")
    changes = call(register, "get_datachanges", "p1", register_name="page")
    assert [change.change_idx for change in changes] == [1, 2, 3]


def test_reset_keeps_index(register):
    call(register, "set_datachange", "guest_c1", "a", register_name="user")
    call(register, "get_datachanges", "guest_c1", reset=True, register_name="user")
    call(register, "reset_datachanges", "guest_c1", register_name="user")
    call(register, "set_datachange", "guest_c1", "b", register_name="user")
    changes = call(register, "get_datachanges", "guest_c1", register_name="user")
    assert [change.change_idx for change in changes] == [2]
    assert register.user("guest_c1")["datachanges_idx"] == 2


def test_get_datachanges_unknown(register):
    assert call(register, "get_datachanges", "nope", register_name="page") is None


def test_drop_datachanges_by_prefix(register):
    call(register, "set_datachange", "p1", "a.b", register_name="page")
    call(register, "set_datachange", "p1", "c", register_name="page")
    call(register, "drop_datachanges", "p1", "a", register_name="page")
    changes = call(register, "get_datachanges", "p1", register_name="page")
    assert [change.path for change in changes] == ["c"]


# -- item data triggers


def test_subscribed_path_trigger(register):
    register.set_serverstore_changes("p1", {"form.other": 0})
    call(register, "subscribe_path", "p1", "form", register_name="page")
    call(register, "remotebag_setItem", "form.name", "Ann",
         _siteregister_register_name="page", _siteregister_register_item_id="p1")
    changes = call(register, "get_datachanges", "p1", register_name="page")
    assert [(change.path, change.value, change.reason) for change in changes] == [
        ("form.name", "Ann", "serverChange")
    ]
    assert changes[0].change_idx == 1


def test_trigger_index_follows_explicit(register):
    register.set_serverstore_changes("p1", {"form.other": 0})
    call(register, "set_datachange", "p1", "x", register_name="page")
    call(register, "subscribe_path", "p1", "form", register_name="page")
    register.set_serverstore_changes("p1", {"form.a": "1::L"})
    changes = call(register, "get_datachanges", "p1", register_name="page")
    assert [change.change_idx for change in changes] == [1, 2]


def test_trigger_delete_change(register):
    register.set_serverstore_changes("p1", {"form.a": "x"})
    call(register, "subscribe_path", "p1", "form", register_name="page")
    call(register, "remotebag_delItem", "form.a",
         _siteregister_register_name="page", _siteregister_register_item_id="p1")
    change = call(register, "get_datachanges", "p1", register_name="page")[0]
    assert change.delete is True


def test_subscribe_path_unknown_item(register):
    with pytest.raises(KeyError, match="no page item 'nope'"):
        call(register, "subscribe_path", "nope", "x", register_name="page")


def test_caching_table_invalidated(register):
    call(register, "remotebag_setItem", "tables.inv", "cached", _caching_table="lib.invoice",
         _siteregister_register_name="page", _siteregister_register_item_id="p1")
    register.checkCachedTables("lib.invoice")
    assert register.get_item_data("p1").getItem("tables.inv") is None
    assert register._state.cached_paths() == []


def test_caching_table_other_table_kept(register):
    call(register, "remotebag_setItem", "tables.inv", "cached", _caching_table="lib.invoice",
         _siteregister_register_name="page", _siteregister_register_item_id="p1")
    register.checkCachedTables("lib.other")
    assert register.get_item_data("p1").getItem("tables.inv") == "cached"


def test_caching_table_forgotten_on_drop(register):
    call(register, "remotebag_setItem", "tables.inv", "cached", _caching_table="lib.invoice",
         _siteregister_register_name="page", _siteregister_register_item_id="p1")
    register.drop_page("p1")
    assert register._state.cached_paths() == []


# -- store subscriptions (page <- user store)


def subscribe_batch(register, *page_ids, active=True):
    for page_id in page_ids:
        register.setStoreSubscription(page_id, storename="user", client_path="batch",
                                      active=active)


def test_user_store_fan_out(register):
    subscribe_batch(register, "p1", "p2")
    call(register, "set_datachange", "guest_c1", "batch.b1", value=1, register_name="user")
    first = changes_of(register.handle_ping(page_id="p1"))
    assert [node.attr["change_path"] for node in first] == ["batch.b1"]
    assert first[0].attr["change_attr"] == {"_new_datachange": True}
    user_queue = call(register, "get_datachanges", "guest_c1", register_name="user")
    assert len(user_queue) == 1
    second = changes_of(register.handle_ping(page_id="p2"))
    assert [node.attr["change_path"] for node in second] == ["batch.b1"]
    assert "change_attr" not in second[0].attr
    assert changes_of(register.handle_ping(page_id="p1")) == []
    assert changes_of(register.handle_ping(page_id="p2")) == []


def test_user_queue_trimmed_when_all_saw(register):
    subscribe_batch(register, "p1", "p2")
    call(register, "set_datachange", "guest_c1", "batch.b1", value=1, register_name="user")
    register.handle_ping(page_id="p1")
    register.handle_ping(page_id="p2")
    assert call(register, "get_datachanges", "guest_c1", register_name="user") == []


def test_user_queue_stays_bounded(register):
    subscribe_batch(register, "p1", "p2")
    for step in range(50):
        call(register, "set_datachange", "guest_c1", "batch.b1", value=step,
             register_name="user")
        register.handle_ping(page_id="p1")
        register.handle_ping(page_id="p2")
    assert len(register.user("guest_c1")["datachanges"]) <= 1


def test_inactive_subscription_not_delivered(register):
    subscribe_batch(register, "p1")
    subscribe_batch(register, "p2", active=False)
    call(register, "set_datachange", "guest_c1", "batch.b1", value=1, register_name="user")
    assert len(changes_of(register.handle_ping(page_id="p1"))) == 1
    assert changes_of(register.handle_ping(page_id="p2")) == []


def test_delivered_change_is_page_copy(register):
    subscribe_batch(register, "p1", "p2")
    call(register, "set_datachange", "guest_c1", "batch.b1", value=1, register_name="user")
    first = register.subscription_storechanges("guest_c1", "p1")
    second = register.subscription_storechanges("guest_c1", "p2")
    assert first[0].attributes == {"_new_datachange": True}
    assert not (second[0].attributes or {}).get("_new_datachange")


def test_trigger_change_reaches_subscribers(register):
    subscribe_batch(register, "p1")
    call(register, "remotebag_setItem", "batch.progress", 0,
         _siteregister_register_name="user", _siteregister_register_item_id="guest_c1")
    call(register, "subscribe_path", "guest_c1", "batch", register_name="user")
    call(register, "remotebag_setItem", "batch.progress", 50,
         _siteregister_register_name="user", _siteregister_register_item_id="guest_c1")
    nodes = changes_of(register.handle_ping(page_id="p1"))
    assert [node.value for node in nodes] == [50]


def test_reset_user_queue_still_delivers(register):
    subscribe_batch(register, "p1")
    call(register, "set_datachange", "guest_c1", "batch.a", value=1, register_name="user")
    register.handle_ping(page_id="p1")
    call(register, "reset_datachanges", "guest_c1", register_name="user")
    call(register, "set_datachange", "guest_c1", "batch.b", value=2, register_name="user")
    nodes = changes_of(register.handle_ping(page_id="p1"))
    assert [node.value for node in nodes] == [2]


def test_login_page_gets_new_user_changes(register):
    subscribe_batch(register, "p1")
    call(register, "set_datachange", "guest_c1", "batch.a", value=1, register_name="user")
    register.handle_ping(page_id="p1")
    register.change_connection_user("c1", user="alice")
    call(register, "set_datachange", "alice", "batch.b", value=2, register_name="user")
    nodes = changes_of(register.handle_ping(page_id="p1"))
    assert [node.value for node in nodes] == [2]


# -- child pages


def test_child_pages_in_one_ping(register):
    call(register, "set_datachange", "p2", "child.msg", value="hello", register_name="page")
    envelope = register.handle_ping(
        "p1",
        _children_pages_info={"p2": {"_lastUserEventTs": "2024-05-01T11:59:00::DH",
                                     "form.count": "12::L"}},
    )
    assert register.page("p2")["last_user_ts"] == datetime(2024, 5, 1, 11, 59)
    assert register.get_item_data("p2").getItem("form.count") == 12
    assert [node.value for node in changes_of(envelope, "childDataChanges.p2")] == ["hello"]


def test_bad_child_typed_text_applies_nothing(register):
    with pytest.raises(TypedTextError) as error:
        register.handle_ping(
            "p1",
            _serverstore_changes={"form.a": "1::L"},
            _children_pages_info={"p2": {"form.ok": "2::L", "form.count": "twelve::L"}},
        )
    assert "'twelve::L'" in str(error.value)
    assert "form.count" in str(error.value)
    assert register.get_item_data("p1").getItem("form.a") is None
    assert register.get_item_data("p2").getItem("form.ok") is None
    assert register.page("p1").get("last_refresh_ts") is None


def test_bad_timestamp_named(register):
    with pytest.raises(TypedTextError, match=r"'soon::DH'.*_lastUserEventTs of page 'p1'"):
        register.handle_ping("p1", _lastUserEventTs="soon::DH")


def test_timestamp_wrong_type(register):
    with pytest.raises(ValueError, match="invalid _lastRpc of page 'p1' 12"):
        register.handle_ping("p1", _lastRpc="12::L")


def test_bad_child_timestamp_applies_nothing(register):
    with pytest.raises(TypedTextError, match="_lastUserEventTs of child page 'p2'"):
        register.handle_ping("p1", _children_pages_info={"p2": {"_lastUserEventTs": "x::DH"}})
    assert register.page("p1").get("last_refresh_ts") is None


def test_store_changes_all_or_nothing(register):
    with pytest.raises(TypedTextError) as error:
        register.set_serverstore_changes("p1", {"form.a": "1::L", "form.b": "oops::B"})
    assert "form.b" in str(error.value)
    assert "'oops::B'" in str(error.value)
    assert register.get_item_data("p1").getItem("form.a") is None


def test_store_changes_bad_path(register):
    with pytest.raises(ValueError, match="invalid store path '#0'"):
        register.set_serverstore_changes("p1", {"form.a": 1, "#0": 2})
    assert register.get_item_data("p1").getItem("form.a") is None


def test_store_changes_decoded(register):
    register.set_serverstore_changes("p1", {"a": "12::L", "b": b"text", "c": 3.5})
    tree = register.get_item_data("p1")
    assert tree.getItem("a") == 12
    assert tree.getItem("b") == "text"
    assert tree.getItem("c") == 3.5


# -- running batch indicator


def set_last_batch(register, value):
    call(register, "remotebag_setItem", "lastBatchUpdate", value,
         _siteregister_register_name="user", _siteregister_register_item_id="guest_c1")


def test_running_batch_recent(register, clock):
    set_last_batch(register, clock.now)
    assert register.handle_ping("p1").getItem("runningBatch") is True


def test_running_batch_old_cleared(register, clock):
    set_last_batch(register, clock.now - timedelta(seconds=10))
    assert register.handle_ping("p1").getItem("runningBatch") is None
    user_store = register.get_item_data("guest_c1", register_name="user")
    assert user_store.getItem("lastBatchUpdate") is None


def test_running_batch_days_old(register, clock):
    # One day and two seconds old: seconds-only arithmetic would read 2 s.
    set_last_batch(register, clock.now - timedelta(days=1, seconds=2))
    assert register.handle_ping("p1").getItem("runningBatch") is None


# -- setInClientData, pending context, dbenv


def test_set_in_client_data_filters(register):
    call(register, "setInClientData", "gnr.alert", value="x", filters="pagename:ind",
         register_name="page")
    register.new_page("p3", pagename="index.py", connection_id="c1", user="guest_c1")
    call(register, "setInClientData", "gnr.alert", value="y", filters="pagename:ind",
         register_name="page")
    assert [change.value for change in register.subscription_storechanges(None, "p3")] == ["y"]
    assert register.subscription_storechanges(None, "p2") == []


def test_set_in_client_data_replace(register):
    for value in (1, 2):
        call(register, "setInClientData", "gnr.count", value=value, page_id="p1",
             reason="r", replace=True, register_name="page")
    assert [change.value for change in register.subscription_storechanges(None, "p1")] == [2]


def test_set_in_client_data_tree(register):
    tree = DataTree()
    tree.setItem("one", 1, _client_path="gnr.one", fired=True, color="red")
    call(register, "setInClientData", tree, page_id="p1", register_name="page")
    change = register.subscription_storechanges(None, "p1")[0]
    assert change.path == "gnr.one"
    assert change.fired is True
    assert change.attributes == {"color": "red"}


def test_pending_context(register):
    call(register, "setPendingContext", "p1", [("ctx.a", 1, {"k": "v"}), ("ctx.b", 2)],
         register_name="page")
    tree = register.get_item_data("p1")
    assert tree.getItem("ctx.a") == 1
    assert tree.getAttr("ctx.a", "k") == "v"
    assert register.page("p1")["subscribed_paths"] == {"ctx.a", "ctx.b"}


def test_pending_context_bad_entry(register):
    with pytest.raises(ValueError, match="invalid pendingContext entry"):
        call(register, "setPendingContext", "p1", [("ctx.a", 1), "bad"], register_name="page")
    assert register.get_item_data("p1").getItem("ctx.a") is None


def test_get_dbenv_copy(register):
    dbenv = DataTree({"workdate": "2024-05-01"})
    call(register, "remotebag_setItem", "dbenv", dbenv,
         _siteregister_register_name="page", _siteregister_register_item_id="p1")
    call(register, "remotebag_setItem", "rootenv", DataTree({"lang": "it"}),
         _siteregister_register_name="page", _siteregister_register_item_id="p1")
    call(register, "remotebag_setItem", "form.company", "ACME", dbenv="company_code",
         _siteregister_register_name="page", _siteregister_register_item_id="p1")
    call(register, "remotebag_setItem", "form.branch", "north", dbenv=True,
         _siteregister_register_name="page", _siteregister_register_item_id="p1")
    result = call(register, "get_dbenv", "p1", register_name="page")
    assert result.getItem("workdate") == "2024-05-01"
    assert result.getItem("lang") == "it"
    assert result.getItem("company_code") == "ACME"
    assert result.getItem("branch") == "north"
    assert register.get_item_data("p1").getItem("dbenv.lang") is None
