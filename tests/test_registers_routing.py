"""Site register unit tests: dispatch routing, the remotebag allow-list and site isolation."""

import inspect
from datetime import datetime

import pytest

from gnr_daemon.dispatch import dispatch
from gnr_daemon.errors import MethodNotFound
from gnr_daemon.registers import DataTree, SiteRegister
from gnr_daemon.registers.items import PageRegister
from gnr_daemon.registers.remotebag import ALLOWED_OPS, RemoteBag

from redis_fixtures import make_store


def clock():
    return datetime(2024, 5, 1, 12, 0, 0)


@pytest.fixture(params=["memory", "redis"])
def store(request):
    return make_store(request)


@pytest.fixture
def register(store):
    register = SiteRegister("demo", store.site_store("demo"), clock=clock)
    register.new_connection("c1", user="guest_c1")
    register.new_page("p1", connection_id="c1", user="guest_c1", data={"form": {"name": "Ann"}})
    return register


def call(register, name, *args, **kwargs):
    return dispatch(register, name, args, kwargs)


def bag(register, op, *args, item_id="p1", register_name="page", **kwargs):
    kwargs.update(_siteregister_register_name=register_name,
                  _siteregister_register_item_id=item_id)
    return dispatch(register, f"remotebag_{op}", args, kwargs)


# -- register_name routing


def test_register_name_routes(register):
    assert call(register, "exists", "p1", register_name="page") is True
    assert call(register, "exists", "p1", register_name="connection") is False


def test_register_name_consumed(register):
    kwargs = {"register_name": "page"}
    dispatch(register, "keys", (), kwargs)
    assert kwargs == {}


def test_site_method_not_routed(register):
    item = call(register, "get_item", "p1", register_name="page")
    assert item["register_item_id"] == "p1"


def test_unknown_register_name(register):
    with pytest.raises(ValueError, match="invalid register_name 'pages'"):
        call(register, "exists", "p1", register_name="pages")


def test_rn_method_without_register_name(register):
    with pytest.raises(MethodNotFound, match="'exists' works on one register"):
        call(register, "exists", "p1")


def test_page_only_method_on_user(register):
    with pytest.raises(MethodNotFound, match="notifyDbEvents"):
        call(register, "notifyDbEvents", register_name="user")


def test_unknown_name(register):
    with pytest.raises(MethodNotFound):
        call(register, "no_such_method")


@pytest.mark.parametrize("name", ["_route", "_dump", "_state", "__init__", "_info"])
def test_private_names_refused(register, name):
    with pytest.raises(MethodNotFound):
        call(register, name)


def test_private_name_on_sub_register(register):
    with pytest.raises(MethodNotFound):
        call(register, "_get", "p1", register_name="page")


def test_stop_does_not_raise(register):
    assert register.stop() is None
    assert register.counters()["pages"] == 1


SITE_API = {
    "setConfiguration", "on_site_stop", "on_reloader_restart", "stop", "checkCachedTables",
    "counters", "get_item", "get_item_data", "store_ops",
    "new_user", "user", "users", "drop_user", "drop_connections",
    "new_connection", "connection", "connections", "user_connection_keys",
    "user_connection_items", "user_connections", "change_connection_user", "drop_connection",
    "drop_pages",
    "new_page", "page", "pages", "connection_page_keys", "connection_page_items",
    "connection_pages", "subscribed_table_pages", "drop_page",
    "refresh", "handle_ping", "handle_ping_get_datachanges", "set_serverstore_changes",
    "subscription_storechanges", "subscribeTable", "setStoreSubscription",
    "setMaintenance", "isInMaintenance", "allowedUsers",
    "pendingProcessCommands", "sendProcessCommand",
    "cleanup", "claim_cleanup", "expire_pages", "expire_connection", "dump", "load",
}


def test_public_api_exact():
    public = {name for name, value in vars(SiteRegister).items() if not name.startswith("_")}
    assert public == SITE_API


# -- remotebag


def test_remotebag_read(register):
    assert bag(register, "getItem", "form.name") == "Ann"
    assert bag(register, "keys") == ["form"]
    assert bag(register, "len") == 1
    assert bag(register, "contains", "form.name") is True


def test_remotebag_write(register):
    bag(register, "setItem", "form.age", 30)
    assert register.get_item_data("p1").getItem("form.age") == 30


def test_remotebag_subtree(register):
    assert bag(register, "getItem", "name", _pyrosubbag="form") == "Ann"
    bag(register, "setItem", "city", "Rome", _pyrosubbag="form")
    assert register.get_item_data("p1").getItem("form.city") == "Rome"


def test_remotebag_subtree_missing(register):
    with pytest.raises(KeyError, match="_pyrosubbag path 'nope'"):
        bag(register, "getItem", "x", _pyrosubbag="nope")


def test_remotebag_unknown_item(register):
    assert bag(register, "getItem", "x", item_id="nope") is None
    bag(register, "setItem", "x", 1, item_id="nope")
    assert register.get_item_data("nope", register_name="page").getItem("x") is None


def test_remotebag_global(register):
    bag(register, "setItem", "CACHE_TS.k", 5, item_id="*", register_name="global")
    assert bag(register, "getItem", "CACHE_TS.k", item_id="*", register_name="global") == 5


@pytest.mark.parametrize("op", ["subscribe", "unsubscribe", "deepcopy", "toXml", "__getitem__",
                                "_emit", "fromXml", "walk", "pickle"])
def test_remotebag_refused(register, op):
    with pytest.raises(MethodNotFound) as error:
        bag(register, op)
    if not op.startswith("_"):
        assert f"{op!r}" in str(error.value)
        assert "getItem" in str(error.value)


def test_remotebag_bad_register_name(register):
    with pytest.raises(ValueError, match="invalid _siteregister_register_name 'pages'"):
        bag(register, "getItem", "x", register_name="pages")


def test_remotebag_ops_match_allow_list():
    defined = {name for name, value in vars(RemoteBag).items()
               if inspect.isfunction(value) and not name.startswith("_")}
    assert defined == ALLOWED_OPS


def test_remotebag_ops_exist_on_datatree():
    assert all(callable(getattr(DataTree, op, None)) for op in ALLOWED_OPS)


def test_get_node_autocreate_stored(store):
    register = SiteRegister("demo", store.site_store("demo"), clock=clock)
    register.new_page("p1", connection_id="c1", user="u")
    bag(register, "getNode", "a.b", autocreate=True)
    assert "a.b" in register.get_item_data("p1")


def test_page_register_public_methods():
    public = {name for name, value in vars(PageRegister).items()
              if not name.startswith("_") and inspect.isfunction(value)}
    assert public == {"setPendingContext", "setInClientData", "filter_subscribed_tables",
                      "subscribed_table_page_keys", "subscribed_table_page_items",
                      "notifyDbEvents", "pageInMaintenance"}


# -- two sites on one store


def test_sites_isolated(store):
    site_a = SiteRegister("a", store.site_store("a"), clock=clock)
    site_b = SiteRegister("b", store.site_store("b"), clock=clock)
    site_a.new_connection("c", user="x")
    assert site_b.counters() == {"users": 0, "connections": 0, "pages": 0}
    assert site_b.connection("c") is None
    assert site_b.user_connection_keys("x") == []


def test_drop_site_keeps_other(store):
    site_a = SiteRegister("a", store.site_store("a"), clock=clock)
    site_b = SiteRegister("b", store.site_store("b"), clock=clock)
    site_a.new_connection("c", user="x")
    site_b.new_connection("c", user="x")
    store.drop_site("a")
    assert site_b.connection("c") is not None
    assert SiteRegister("a", store.site_store("a"), clock=clock).connection("c") is None


def test_info(register):
    info = register._info()
    assert info["sitename"] == "demo"
    assert info["counters"] == {"users": 1, "connections": 1, "pages": 1}
    assert info["start_ts"] == clock()
    assert info["storage_path"] is None
