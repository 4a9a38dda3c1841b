"""Unit tests of the store interface on every backend, and open_store.

The interface tests run on the memory store, the copying memory store and a
Redis store.
"""

import pytest

from gnr_daemon.errors import ConfigurationError
from gnr_daemon.registers import DataTree
from gnr_daemon.store import (
    CopyingMemoryStore,
    MemoryStore,
    SiteStore,
    Store,
    open_store,
)

from redis_fixtures import STORE_PARAMS, make_store


@pytest.fixture(params=STORE_PARAMS)
def store(request):
    return make_store(request)


@pytest.fixture
def site(store):
    return store.site_store("demo")


# -- open_store


@pytest.mark.parametrize("url", [None, "memory:", "memory://"])
def test_open_memory(url):
    assert isinstance(open_store(url), MemoryStore)


def test_open_redis_bad_url_masks_password():
    with pytest.raises(ConfigurationError, match="unknown query parameter") as error:
        open_store("redis://user:secret@localhost:6379/0?nope=1")
    assert "secret" not in str(error.value)
    assert "redis://***@localhost:6379/0" in str(error.value)


def test_open_unknown_scheme():
    with pytest.raises(ConfigurationError, match=r"'file:///tmp/x'.*memory:"):
        open_store("file:///tmp/x")


def test_abstract_classes():
    with pytest.raises(TypeError):
        Store()
    with pytest.raises(TypeError):
        SiteStore()


def test_health(store):
    assert store.health()["ok"] is True


# -- items, data, locks, meta


def test_items_insertion_order(site):
    for item_id in ("b", "a", "c"):
        site.put_item("page", item_id, {"register_item_id": item_id})
    assert site.item_ids("page") == ["b", "a", "c"]
    assert list(site.items("page")) == ["b", "a", "c"]
    assert site.count_items("page") == 3


def test_delete_missing_item(site):
    site.delete_item("page", "nope")
    site.delete_data("page", "nope")
    site.delete_lock("page", "nope")
    site.delete_meta("nope")
    assert site.get_item("page", "nope") is None


def test_items_listing_is_new_dict(site):
    site.put_item("page", "a", {})
    listing = site.items("page")
    site.delete_item("page", "a")
    assert list(listing) == ["a"]


def test_data_round_trip(site):
    tree = DataTree({"a": 1})
    site.put_data("page", "p1", tree)
    assert site.get_data("page", "p1").getItem("a") == 1


def test_locks(site):
    site.put_lock("page", "p1", {"reason": "A", "count": 1})
    assert site.locks("page") == {"p1": {"reason": "A", "count": 1}}
    site.delete_lock("page", "p1")
    assert site.get_lock("page", "p1") is None


def test_meta_default(site):
    assert site.get_meta("nope", 5) == 5
    site.put_meta("x", {"a": 1})
    assert site.get_meta("x") == {"a": 1}


def test_copying_store_copies():
    site = CopyingMemoryStore().site_store("demo")
    item = {"v": 1}
    site.put_item("page", "p1", item)
    item["v"] = 2
    assert site.get_item("page", "p1") == {"v": 1}
    site.get_item("page", "p1")["v"] = 3
    assert site.get_item("page", "p1") == {"v": 1}


# -- indexes


def test_index_remove_drops_empty_key(site):
    site.index_add("idx", "k", "a")
    site.index_add("idx", "k", "b")
    site.index_remove("idx", "k", "a")
    assert site.index_keys("idx") == ["k"]
    site.index_remove("idx", "k", "b")
    assert site.index_keys("idx") == []


def test_index_members_creates_nothing(site):
    assert site.index_members("idx", "unknown") == set()
    assert site.index_keys("idx") == []


def test_index_members_is_copy(site):
    site.index_add("idx", "k", "a")
    members = site.index_members("idx", "k")
    members.add("b")
    assert site.index_members("idx", "k") == {"a"}


def test_index_remove_missing(site):
    site.index_remove("idx", "k", "a")
    assert site.index_keys("idx") == []


def test_index_colon_keys(site):
    site.index_add("idx", "a:b", "m:1")
    site.index_add("idx", "a", "b:m:1")
    assert site.index_members("idx", "a:b") == {"m:1"}
    assert site.index_members("idx", "a") == {"b:m:1"}


# -- sites, transactions, clear


def test_sites_separate(store):
    store.site_store("a").put_item("page", "p", {})
    assert store.site_store("b").get_item("page", "p") is None


def test_drop_site(store):
    store.site_store("a").put_item("page", "p", {})
    store.drop_site("a")
    store.drop_site("never-created")
    assert store.site_store("a").get_item("page", "p") is None


def test_transaction_reentrant(site):
    with site.transaction():
        with site.transaction():
            site.put_meta("x", 1)
    assert site.get_meta("x") == 1


def test_clear(site):
    site.put_item("page", "p", {})
    site.index_add("idx", "k", "a")
    site.put_meta("x", 1)
    site.clear()
    assert site.count_items("page") == 0
    assert site.index_keys("idx") == []
    assert site.get_meta("x") is None
