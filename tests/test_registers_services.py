"""Site register unit tests: locks, table subscriptions, page filters, maintenance, mailboxes.

Every test runs three times: on the memory store, on a store that copies
every value in and out as a networked backend does, and on a Redis store.
"""


import pytest

from gnr_daemon.dispatch import dispatch
from gnr_daemon.registers import SiteRegister



@pytest.fixture
def register(store, clock):
    register = SiteRegister("demo", store.site_store("demo"), clock=clock)
    register.new_connection("c1", user="guest_c1")
    register.new_page("p1", pagename="index.py", connection_id="c1", user="guest_c1")
    register.new_page("p2", pagename="orders.py", connection_id="c1", user="guest_c1")
    return register


def call(register, name, *args, **kwargs):
    return dispatch(register, name, args, kwargs)


def page_ids(pages):
    return [page["register_item_id"] for page in pages]


# -- locks


def lock(register, reason, item_id="p1"):
    return call(register, "lock_item", item_id, reason=reason, register_name="page")


def unlock(register, reason, item_id="p1"):
    return call(register, "unlock_item", item_id, reason=reason, register_name="page")


def test_lock_reentrant(register):
    assert lock(register, "A") is True
    assert lock(register, "B") is False
    assert lock(register, "A") is True
    assert unlock(register, "B") is False
    assert unlock(register, "A") is None
    assert lock(register, "B") is False
    assert unlock(register, "A") is None
    assert lock(register, "B") is True


def test_lock_expiry(register, clock):
    assert lock(register, "B") is True
    clock.advance(11)
    assert lock(register, "A") is False
    assert lock(register, "A") is True


def test_lock_expiry_counts_from_reentry(register, clock):
    lock(register, "B")
    clock.advance(8)
    lock(register, "B")
    clock.advance(8)
    assert lock(register, "A") is False
    assert lock(register, "A") is False


def test_lock_unregistered_id(register):
    assert lock(register, "A", item_id="not-registered") is True
    assert unlock(register, "A", item_id="not-registered") is None


def test_unlock_free_lock(register):
    assert unlock(register, "A") is None


def test_lock_cleared_on_cascade(register):
    lock(register, "A", item_id="p1")
    call(register, "lock_item", "c1", reason="A", register_name="connection")
    call(register, "lock_item", "guest_c1", reason="A", register_name="user")
    register.drop_user("guest_c1")
    store = register._state.store
    assert store.locks("page") == {}
    assert store.locks("connection") == {}
    assert store.locks("user") == {}


# -- table subscriptions and database events


def test_db_event_reaches_subscriber(register):
    register.subscribeTable("p1", "lib.invoice", True)
    register.subscribeTable("p1", "lib.invoice", True)
    assert call(register, "filter_subscribed_tables", ["lib.invoice", "lib.other"],
                register_name="page") == ["lib.invoice"]
    call(register, "notifyDbEvents", dbeventsDict={"lib.invoice": [{"pkey": "1"}], "lib.other": []},
         origin_page_id="p2", dbevent_reason="save", register_name="page")
    changes = call(register, "get_datachanges", "p1", register_name="page")
    assert len(changes) == 1
    assert changes[0].path == "gnr.dbchanges.lib_invoice"
    assert changes[0].value == [{"pkey": "1"}]
    assert changes[0].attributes == {"from_page_id": "p2", "dbevent_reason": "save"}
    assert call(register, "get_datachanges", "p2", register_name="page") == []


def test_unsubscribe_table(register):
    register.subscribeTable("p1", "lib.invoice", True)
    register.subscribeTable("p1", "lib.invoice", False)
    assert call(register, "filter_subscribed_tables", ["lib.invoice"], register_name="page") == []
    assert register.page("p1")["subscribed_tables"] == set()


def test_subscribe_mode_accepted(register):
    register.subscribeTable(page_id="p1", table="lib.invoice", subscribe=True,
                            subscribeMode="light")
    assert register.subscribed_table_pages("lib.invoice")[0]["register_item_id"] == "p1"


def test_subscribe_table_unknown_page(register):
    register.subscribeTable("nope", "lib.invoice", True)
    assert register.subscribed_table_pages("lib.invoice") == []


def test_db_events_extra_kwargs(register):
    register.subscribeTable("p1", "lib.invoice", True)
    call(register, "notifyDbEvents", dbeventsDict={"lib.invoice": [1]}, origin_page_id=None,
         dbevent_reason=None, origin_connection_id="c1", register_name="page")
    assert len(call(register, "get_datachanges", "p1", register_name="page")) == 1


def test_subscribed_table_page_items(register):
    register.subscribeTable("p2", "lib.a", True)
    items = call(register, "subscribed_table_page_items", "lib.a", register_name="page")
    assert [page_id for page_id, _ in items] == ["p2"]
    assert items[0][1]["pagename"] == "orders.py"


# -- page filters


def test_filters_and_semantics(register):
    register.new_page("p3", pagename="index.py", connection_id="c2", user="alice")
    assert page_ids(register.pages(filters="pagename:index AND user:alice")) == ["p3"]


def test_filters_no_duplicates(register):
    assert page_ids(register.pages(filters="pagename:index AND connection_id:c1")) == ["p1"]


def test_filters_star(register):
    assert page_ids(register.pages(filters="*")) == ["p1", "p2"]


def test_filters_plain_dicts(register):
    assert all(type(page) is dict for page in register.pages(filters="user:guest"))


def test_filters_non_string_field(register):
    register.subscribeTable("p2", "lib.invoice", True)
    assert page_ids(register.pages(filters="subscribed_tables:lib\\.inv")) == ["p2"]
    assert page_ids(register.pages(filters="datachanges_idx:0")) == ["p1", "p2"]


def test_filters_empty_value(register):
    assert register.pages(filters="relative_url:.*") == []


def test_filters_bad_regex(register):
    with pytest.raises(ValueError, match=r"regular expression 'ind\[' for field 'pagename'"):
        register.pages(filters="pagename:ind[")


def test_filters_bad_clause(register):
    with pytest.raises(ValueError, match="invalid filter clause 'pagename'"):
        register.pages(filters="pagename")


def test_pages_restrictions_combined(register):
    register.new_page("p3", connection_id="c1", user="alice")
    assert page_ids(register.pages(connection_id="c1", user="alice")) == ["p3"]


# -- maintenance


def test_maintenance_on(register):
    register.setMaintenance(True, allowed_users=["admin"])
    assert register.isInMaintenance("bob") is True
    assert register.isInMaintenance("admin") is False
    assert register.isInMaintenance("*forced*") is False
    assert register.isInMaintenance() is True
    assert register.allowedUsers() == ["admin"]


def test_maintenance_off(register):
    register.setMaintenance(True, allowed_users=["admin"])
    register.setMaintenance(False)
    assert register.isInMaintenance("bob") is False
    assert register.isInMaintenance() is False
    assert register.allowedUsers() is None


def test_maintenance_no_allowed_list(register):
    register.setMaintenance(True)
    assert register.isInMaintenance("admin") is True


def test_page_in_maintenance(register):
    register.setMaintenance(True, allowed_users=["admin"])
    assert call(register, "pageInMaintenance", "p1", register_name="page") is True
    assert call(register, "pageInMaintenance", "nope", register_name="page") is None


def test_maintenance_bad_allowed_users(register):
    with pytest.raises(TypeError, match="invalid allowed_users 'admin'"):
        register.setMaintenance(True, allowed_users="admin")
    assert register.isInMaintenance("bob") is False


# -- process commands


def test_process_commands_per_worker(register):
    assert register.pendingProcessCommands(pid=1) == []
    assert register.pendingProcessCommands(pid=2) == []
    register.sendProcessCommand(("clearApplicationCache", {"key": "k"}))
    assert register.pendingProcessCommands(pid=1) == [("clearApplicationCache", {"key": "k"})]
    assert register.pendingProcessCommands(pid=2) == [("clearApplicationCache", {"key": "k"})]
    assert register.pendingProcessCommands(pid=1) == []


def test_process_command_to_one_pid(register):
    register.pendingProcessCommands(pid=1)
    register.pendingProcessCommands(pid=2)
    register.sendProcessCommand(("a", {}), pid=2)
    assert register.pendingProcessCommands(pid=1) == []
    assert register.pendingProcessCommands(pid=2) == [("a", {})]


def test_process_command_unknown_pid(register):
    register.pendingProcessCommands(pid=1)
    register.sendProcessCommand(("a", {}), pid=99)
    assert register.pendingProcessCommands(pid=1) == []
    assert register.pendingProcessCommands(pid=99) == []


def test_process_command_list(register):
    register.pendingProcessCommands(pid=1)
    register.sendProcessCommand([("a", {}), ("b", {})])
    assert register.pendingProcessCommands(pid=1) == [("a", {}), ("b", {})]


def test_idle_mailbox_discarded(register, clock):
    register.pendingProcessCommands(pid=1)
    register.pendingProcessCommands(pid=2)
    clock.advance(500)
    register.pendingProcessCommands(pid=2)
    clock.advance(101)
    register.sendProcessCommand(("a", {}))
    mailboxes = register._state.store.get_meta("process_mailboxes")
    assert list(mailboxes) == [2]
    assert register.pendingProcessCommands(pid=2) == [("a", {})]
