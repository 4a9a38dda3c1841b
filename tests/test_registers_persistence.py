"""Site register unit tests: dump and load.

Every test runs three times: on the memory store, on a store that copies
every value in and out as a networked backend does, and on a Redis store.
"""

import logging
import os
import pickle

import pytest

from gnr_daemon.dispatch import dispatch
from gnr_daemon.errors import ConfigurationError
from gnr_daemon.registers import SiteRegister, persistence

from redis_fixtures import STORE_PARAMS, make_store
from register_fixtures import Clock


class Marker:
    """Pickles as a call that would create a file if the pickle were trusted."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(params=STORE_PARAMS)
def store_class(request):
    """Return a function that opens a new, empty store of the parametrized kind."""
    return lambda: make_store(request)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def dump_path(tmp_path):
    return str(tmp_path / "siteregister_data.pik")


@pytest.fixture
def register(store_class, clock, dump_path):
    register = SiteRegister("demo", store_class().site_store("demo"), storage_path=dump_path,
                            clock=clock)
    register.new_connection("c1", user="guest_c1")
    register.new_page("p1", pagename="index.py", connection_id="c1", user="guest_c1",
                      subscribed_tables="lib.invoice", data={"pageArgs": {"x": 1}})
    return register


def restarted(store_class, clock, dump_path):
    """Return a register on a new, empty store, as after a daemon restart."""
    return SiteRegister("demo", store_class().site_store("demo"), storage_path=dump_path,
                        clock=clock)


def call(register, name, *args, **kwargs):
    return dispatch(register, name, args, kwargs)


def bag_set(register, register_name, item_id, path, value, **attributes):
    call(register, "remotebag_setItem", path, value, _siteregister_register_name=register_name,
         _siteregister_register_item_id=item_id, **attributes)


# -- round trip


def test_round_trip_items(register, store_class, clock, dump_path):
    register.dump()
    loaded = restarted(store_class, clock, dump_path)
    assert loaded.load() is True
    assert loaded.counters() == {"users": 1, "connections": 1, "pages": 1}
    assert loaded.page("p1") == register.page("p1")
    assert loaded.get_item_data("p1").getItem("pageArgs.x") == 1


def test_round_trip_global_store(register, store_class, clock, dump_path):
    bag_set(register, "global", "*", "CACHE_TS.k", 7)
    register.dump()
    loaded = restarted(store_class, clock, dump_path)
    loaded.load()
    assert loaded.get_item_data("*", register_name="global").getItem("CACHE_TS.k") == 7


def test_round_trip_indexes(register, store_class, clock, dump_path):
    register.dump()
    loaded = restarted(store_class, clock, dump_path)
    loaded.load()
    assert [page["register_item_id"] for page in loaded.pages(connection_id="c1")] == ["p1"]
    assert [page["register_item_id"] for page in loaded.pages(user="guest_c1")] == ["p1"]
    assert loaded.user_connection_keys("guest_c1") == ["c1"]
    subscribed = loaded.subscribed_table_pages("lib.invoice")
    assert [page["register_item_id"] for page in subscribed] == ["p1"]
    assert call(loaded, "filter_subscribed_tables", ["lib.invoice"], register_name="page") == [
        "lib.invoice"
    ]


def test_round_trip_cascade(register, store_class, clock, dump_path):
    register.dump()
    loaded = restarted(store_class, clock, dump_path)
    loaded.load()
    loaded.drop_page("p1", cascade=True)
    assert loaded.connection("c1") is None
    assert loaded.subscribed_table_pages("lib.invoice") == []


def test_trigger_after_load(register, store_class, clock, dump_path):
    bag_set(register, "page", "p1", "form.name", "")
    call(register, "subscribe_path", "p1", "form", register_name="page")
    register.dump()
    loaded = restarted(store_class, clock, dump_path)
    loaded.load()
    bag_set(loaded, "page", "p1", "form.name", "Ann")
    changes = call(loaded, "get_datachanges", "p1", register_name="page")
    assert [(change.path, change.value) for change in changes] == [("form.name", "Ann")]


def test_table_cache_after_load(register, store_class, clock, dump_path):
    bag_set(register, "page", "p1", "tables.inv", "cached", _caching_table="lib.invoice")
    register.dump()
    loaded = restarted(store_class, clock, dump_path)
    loaded.load()
    loaded.checkCachedTables("lib.invoice")
    assert loaded.get_item_data("p1").getItem("tables.inv") is None


def test_datachanges_and_locks_kept(register, store_class, clock, dump_path):
    call(register, "set_datachange", "p1", "gnr.msg", value="hi", register_name="page")
    call(register, "lock_item", "p1", reason="A", register_name="page")
    register.dump()
    loaded = restarted(store_class, clock, dump_path)
    loaded.load()
    changes = call(loaded, "get_datachanges", "p1", register_name="page")
    assert [(change.path, change.change_idx) for change in changes] == [("gnr.msg", 1)]
    assert call(loaded, "lock_item", "p1", reason="B", register_name="page") is False


def test_user_subscription_after_load(register, store_class, clock, dump_path):
    register.setStoreSubscription("p1", storename="user", client_path="batch", active=True)
    call(register, "set_datachange", "guest_c1", "batch.a", value=1, register_name="user")
    register.dump()
    loaded = restarted(store_class, clock, dump_path)
    loaded.load()
    call(loaded, "set_datachange", "guest_c1", "batch.b", value=2, register_name="user")
    delivered = loaded.subscription_storechanges("guest_c1", "p1")
    assert [change.value for change in delivered] == [1, 2]


def test_load_keeps_running_settings(register, store_class, clock, dump_path):
    register.dump()
    loaded = restarted(store_class, clock, dump_path)
    loaded.setMaintenance(True, allowed_users=["admin"])
    loaded.load()
    assert loaded.isInMaintenance("bob") is True


def test_load_replaces_state(register, store_class, clock, dump_path):
    register.dump()
    loaded = restarted(store_class, clock, dump_path)
    loaded.new_connection("stale", user="someone")
    loaded.load()
    assert loaded.connection("stale") is None
    assert loaded.user_connection_keys("someone") == []
    assert loaded.get_item("*", register_name="global") is not None


# -- the dump file


def test_load_renames_file(register, store_class, clock, dump_path):
    register.dump()
    loaded = restarted(store_class, clock, dump_path)
    assert loaded.load() is True
    assert not os.path.exists(dump_path)
    assert os.path.exists(dump_path.replace(".pik", "_loaded.pik"))
    assert loaded.load() is False


def test_load_replaces_older_loaded_file(register, store_class, clock, dump_path):
    loaded_path = dump_path.replace(".pik", "_loaded.pik")
    with open(loaded_path, "w") as handle:
        handle.write("old")
    register.dump()
    restarted(store_class, clock, dump_path).load()
    with open(loaded_path, "rb") as handle:
        assert handle.read() != b"old"


def test_load_missing_file(register):
    assert register.load() is False


def test_load_without_storage_path(store_class, clock):
    register = SiteRegister("demo", store_class().site_store("demo"), clock=clock)
    assert register.load() is False


def test_load_empty_file(register, dump_path, caplog):
    open(dump_path, "wb").close()
    with caplog.at_level(logging.WARNING):
        assert register.load() is False
    assert "empty" in caplog.text
    assert register.page("p1") is not None


def test_load_truncated_file(register, store_class, clock, dump_path, caplog):
    register.dump()
    with open(dump_path, "rb") as handle:
        data = handle.read()
    with open(dump_path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    loaded = restarted(store_class, clock, dump_path)
    loaded.new_connection("kept", user="x")
    with caplog.at_level(logging.WARNING):
        assert loaded.load() is False
    assert "truncated or corrupt" in caplog.text
    assert loaded.connection("kept") is not None
    assert os.path.exists(dump_path)


def test_load_other_format(register, dump_path):
    with open(dump_path, "wb") as handle:
        pickle.dump(({}, {}, {}, {}), handle)
    assert register.load() is False


def test_load_refuses_foreign_class(register, dump_path, tmp_path):
    marker = tmp_path / "gnr_pwned"
    with open(dump_path, "wb") as handle:
        pickle.dump({"format": persistence.DUMP_FORMAT, "x": Marker(str(marker))}, handle)
    assert register.load() is False
    assert not marker.exists()


def test_dump_without_storage_path(store_class, clock):
    register = SiteRegister("demo", store_class().site_store("demo"), clock=clock)
    with pytest.raises(ConfigurationError, match="no storage path"):
        register.dump()


def test_crash_mid_dump_keeps_previous(register, store_class, clock, dump_path, monkeypatch):
    register.dump()
    register.new_page("p2", connection_id="c1", user="guest_c1")

    def failing_dump(payload, handle, protocol=None):
        handle.write(b"partial pickle bytes")
        raise OSError("disk full")

    monkeypatch.setattr(persistence.pickle, "dump", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        register.dump()
    monkeypatch.undo()
    assert os.listdir(os.path.dirname(dump_path)) == [os.path.basename(dump_path)]
    loaded = restarted(store_class, clock, dump_path)
    assert loaded.load() is True
    assert loaded.page("p1") is not None
    assert loaded.page("p2") is None


def test_fsync_failure_keeps_previous(register, dump_path, monkeypatch):
    register.dump()
    with open(dump_path, "rb") as handle:
        previous = handle.read()

    def failing_fsync(descriptor):
        raise OSError("I/O error")

    monkeypatch.setattr(persistence.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        register.dump()
    monkeypatch.undo()
    with open(dump_path, "rb") as handle:
        assert handle.read() == previous


def test_dump_format_fields(register, dump_path):
    register.dump()
    payload = persistence.read_dump(dump_path)
    assert payload["format"] == "gnr_daemon.siteregister"
    assert payload["version"] == 1
    assert set(payload["registers"]) == {"global", "user", "connection", "page"}
    assert "*" in payload["registers"]["global"]["items"]
