"""The Redis store in this process: key layout, shared state, atomicity, value protection.

Two RedisStore objects on one key prefix stand for two daemons on one Redis.
The register-level behaviour is covered by the register tests, which run on
Redis too; this module covers what only a shared, networked store has.
"""

import os
import pickle
import threading
import time
from datetime import datetime, timedelta

import pytest

from gnr_daemon.dispatch import dispatch
from gnr_daemon.errors import StoreError, StoreUnavailable
from gnr_daemon.registers import DataTree, SiteRegister
from gnr_daemon.store import open_store
from gnr_daemon.store.redis_site import MAX_ATTEMPTS

from redis_fixtures import new_prefix

KEY = b"store-key-0123456789abcdef0123456789"


class Clock:
    def __init__(self):
        self.now = datetime(2024, 5, 1, 12, 0, 0)

    def __call__(self):
        return self.now


@pytest.fixture
def prefix():
    return new_prefix()


@pytest.fixture
def two_stores(redis_server, prefix):
    """Two stores on one prefix, as two daemons on one Redis would open them."""
    stores = [open_store(redis_server.url(prefix=prefix), hmac_key=KEY) for _ in range(2)]
    yield stores
    for store in stores:
        store.close()


def site_keys(redis_server, prefix):
    client = redis_server.client()
    try:
        return sorted(key.decode() for key in client.scan_iter(match=f"{{{prefix}*", count=1000))
    finally:
        client.close()


def call(register, name, *args, **kwargs):
    return dispatch(register, name, args, kwargs)


def open_tab(register, connection_id="c1", page_id="p1", user="guest_c1", **page_fields):
    if register.connection(connection_id) is None:
        register.new_connection(connection_id, user=user)
    register.new_page(page_id, connection_id=connection_id, user=user, **page_fields)


# -- key layout


def test_keys_share_site_hash_tag(two_stores, redis_server, prefix):
    register = SiteRegister("demo", two_stores[0].site_store("demo"))
    open_tab(register, subscribed_tables="lib.invoice", data={"a": 1})
    call(register, "lock_item", "p1", reason="A", register_name="page")
    keys = site_keys(redis_server, prefix)
    assert keys
    assert all(key.startswith(f"{{{prefix}demo}}:") for key in keys)
    assert f"{{{prefix}demo}}:item:page:p1" in keys
    assert f"{{{prefix}demo}}:idx:pages_by_table:lib.invoice" in keys
    assert f"{{{prefix}demo}}:lock:page:p1" in keys


def test_colon_and_brace_names_encoded(two_stores, redis_server, prefix):
    store = two_stores[0]
    odd = store.site_store("a:b}{c")
    odd.put_item("page", "x:item:page:y", {"v": 1})
    odd.index_add("idx", "k:1", "m")
    keys = site_keys(redis_server, prefix)
    assert f"{{{prefix}a%3Ab%7D%7Bc}}:item:page:x%3Aitem%3Apage%3Ay" in keys
    assert f"{{{prefix}a%3Ab%7D%7Bc}}:idx:idx:k%3A1" in keys
    assert store.site_store("a").get_item("page", "x:item:page:y") is None
    assert odd.get_item("page", "x:item:page:y") == {"v": 1}
    assert odd.index_keys("idx") == ["k:1"]


@pytest.mark.parametrize("page_id", ["p1", "gnrd:p1", "{demo}:item:page:p1", "a:b:c", "%3A"])
@pytest.mark.parametrize("drop", ["page", "connection", "user"])
def test_dropped_page_leaves_no_table_index(two_stores, redis_server, prefix, page_id, drop):
    register = SiteRegister("demo", two_stores[0].site_store("demo"))
    open_tab(register, connection_id="c:1", page_id=page_id, user="u:1",
             subscribed_tables="app.invoice")
    open_tab(register, connection_id="c:2", page_id="other", user="u:2",
             subscribed_tables="app.invoice")
    if drop == "page":
        register.drop_page(page_id)
    elif drop == "connection":
        register.drop_connection("c:1", cascade=True)
    else:
        register.drop_user("u:1")
    pages = register.subscribed_table_pages("app.invoice")
    assert [page["register_item_id"] for page in pages] == ["other"]
    assert None not in pages
    other = SiteRegister("demo", two_stores[1].site_store("demo"))
    assert other.subscribed_table_pages("app.invoice") == pages
    register.drop_page("other")
    assert call(register, "filter_subscribed_tables", ["app.invoice"],
                register_name="page") == []
    keys = site_keys(redis_server, prefix)
    assert not [key for key in keys if ":idx:pages_by_table:" in key]


def test_insertion_order_kept(two_stores):
    first, second = (store.site_store("demo") for store in two_stores)
    first.put_item("page", "b", {})
    second.put_item("page", "a", {})
    first.put_item("page", "c", {})
    first.put_item("page", "b", {"again": True})
    assert second.item_ids("page") == ["b", "a", "c"]
    first.delete_item("page", "b")
    second.put_item("page", "b", {})
    assert first.item_ids("page") == ["a", "c", "b"]
    assert first.count_items("page") == 3


# -- one state for several daemons, kept across restarts


def test_second_daemon_sees_changes_at_once(two_stores):
    clock = Clock()
    one = SiteRegister("demo", two_stores[0].site_store("demo"), clock=clock)
    two = SiteRegister("demo", two_stores[1].site_store("demo"), clock=clock)
    open_tab(one)
    assert two.page("p1")["connection_id"] == "c1"
    call(two, "set_datachange", "p1", "gnr.msg", value="hi", register_name="page")
    envelope = one.handle_ping(page_id="p1")
    assert envelope.getItem("dataChanges.sc_0") == "hi"
    assert two.handle_ping(page_id="p1").getItem("dataChanges") is None
    one.setMaintenance(True, allowed_users=["admin"])
    assert two.isInMaintenance("bob") is True
    two.sendProcessCommand(("clear", {}))
    assert one.pendingProcessCommands() == []
    one.setConfiguration(cleanup={"page_max_age": 30})
    assert two._cleanup_interval() == 120
    assert two._state.store.get_meta("cleanup_config")["page_max_age"] == 30


def test_state_survives_reopen(redis_server, prefix):
    url = redis_server.url(prefix=prefix)
    store = open_store(url, hmac_key=KEY)
    register = SiteRegister("demo", store.site_store("demo"))
    open_tab(register, data={"pageArgs": {"x": 1}})
    call(register, "lock_item", "p1", reason="A", register_name="page")
    register.subscribeTable("p1", "lib.t", True)
    register.setMaintenance(True)
    register.claim_cleanup(60)
    store.close()

    reopened = open_store(url, hmac_key=KEY)
    again = SiteRegister("demo", reopened.site_store("demo"))
    assert again.counters() == {"users": 1, "connections": 1, "pages": 1}
    assert again.get_item_data("p1", register_name="page").getItem("pageArgs.x") == 1
    assert call(again, "lock_item", "p1", reason="B", register_name="page") is False
    assert again._registers["page"].subscribed_table_page_keys("lib.t") == ["p1"]
    assert again.isInMaintenance() is True
    assert again.claim_cleanup(60) is False
    reopened.close()


# -- round trips


def test_handle_ping_two_round_trips(two_stores):
    store = two_stores[0]
    register = SiteRegister("demo", store.site_store("demo"))
    open_tab(register, data={"pageArgs": {"x": 1}})
    open_tab(register, page_id="p2")
    register.setStoreSubscription("p1", storename="user", client_path="batch", active=True)
    register._registers["user"].set_datachange("guest_c1", "batch.b1", value=1)
    register._registers["page"].set_datachange("p1", "gnr.msg", value="hi")

    calls = [
        dict(page_id="p1", _lastUserEventTs=datetime.now(), _lastRpc=datetime.now(),
             _serverstore_changes={"form.a": "1::L"}, _pageProfilers={"t": 1}),
        dict(page_id="p1", _children_pages_info={"p2": {"form.count": "12::L"}}),
        dict(page_id="p1"),
    ]
    for kwargs in calls:
        before = store.stats["round_trips"]
        envelope = register.handle_ping(**kwargs)
        assert envelope is not False
        assert store.stats["round_trips"] - before <= 2, kwargs


def test_first_ping_on_other_daemon_learns_route(two_stores):
    one = SiteRegister("demo", two_stores[0].site_store("demo"))
    two = SiteRegister("demo", two_stores[1].site_store("demo"))
    open_tab(one)
    store = two_stores[1]
    before = store.stats["round_trips"]
    two.handle_ping(page_id="p1")
    first = store.stats["round_trips"] - before
    before = store.stats["round_trips"]
    two.handle_ping(page_id="p1")
    assert store.stats["round_trips"] - before == 2
    assert first > 2


# -- atomicity


def test_conflict_runs_method_again(two_stores):
    first, second = (store.site_store("demo") for store in two_stores)
    first.put_meta("counter", 0)
    attempts = []

    def increment():
        value = first.get_meta("counter")
        if not attempts:
            second.put_meta("counter", 100)
        attempts.append(value)
        first.put_meta("counter", value + 1)
        return value + 1

    assert first.run_atomic(increment) == 101
    assert attempts == [0, 100]
    assert first.get_meta("counter") == 101
    assert two_stores[0].stats["conflicts"] == 1


def test_endless_conflict_gives_up(two_stores):
    first, second = (store.site_store("demo") for store in two_stores)
    first.put_meta("counter", 0)

    def always_overtaken():
        value = first.get_meta("counter")
        second.put_meta("counter", value + 1000)
        first.put_meta("counter", value + 1)

    with pytest.raises(StoreError, match=f"gave up after {MAX_ATTEMPTS} attempts"):
        first.run_atomic(always_overtaken)
    assert first.get_meta("counter") == MAX_ATTEMPTS * 1000


def test_error_keeps_earlier_writes_like_memory(two_stores):
    site = two_stores[0].site_store("demo")

    def write_then_fail():
        site.put_meta("written", 1)
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        site.run_atomic(write_then_fail)
    assert site.get_meta("written") == 1


def test_counter_from_threads_exact(two_stores):
    sites = [store.site_store("demo") for store in two_stores]
    sites[0].put_meta("counter", 0)
    errors = []

    def worker(site):
        try:
            for _ in range(25):
                site.run_atomic(lambda: site.put_meta("counter", site.get_meta("counter") + 1))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(sites[n % 2],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sites[1].get_meta("counter") == 200


def test_lock_never_held_twice(two_stores):
    registers = [SiteRegister("demo", store.site_store("demo")) for store in two_stores]
    holders = set()
    guard = threading.Lock()
    problems = []

    def worker(number):
        pages = registers[number % 2]._registers["page"]
        reason = f"worker-{number}"
        granted = 0
        deadline = time.monotonic() + 20
        while granted < 5 and time.monotonic() < deadline:
            if not pages.lock_item("shared", reason=reason):
                time.sleep(0.001)
                continue
            granted += 1
            with guard:
                if holders:
                    problems.append((reason, set(holders)))
                holders.add(reason)
            time.sleep(0.001)
            with guard:
                holders.discard(reason)
            pages.unlock_item("shared", reason=reason)
        if granted < 5:
            problems.append((reason, "starved"))

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert problems == []
    assert registers[0]._state.store.get_lock("page", "shared") is None


def test_claim_cleanup_granted_once(two_stores):
    registers = [SiteRegister("demo", store.site_store("demo")) for store in two_stores]
    results = []

    def claim(register):
        results.append(register.claim_cleanup(3600))

    threads = [threading.Thread(target=claim, args=(registers[n % 2],)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [False] * 9 + [True]


def test_datachange_indexes_unique(two_stores):
    registers = [SiteRegister("demo", store.site_store("demo")) for store in two_stores]
    open_tab(registers[0])

    def push(register, number):
        for index in range(10):
            register._registers["page"].set_datachange("p1", f"path.{number}.{index}", value=index)

    threads = [threading.Thread(target=push, args=(registers[n % 2], n)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    changes = registers[1]._registers["page"].get_datachanges("p1")
    assert len(changes) == 60
    assert sorted(change.change_idx for change in changes) == list(range(1, 61))


# -- value protection


def test_values_carry_tag(two_stores, redis_server, prefix):
    two_stores[0].site_store("demo").put_meta("x", {"a": 1})
    client = redis_server.client()
    raw = client.get(f"{{{prefix}demo}}:meta:x")
    client.close()
    assert raw[0] == 0x01
    assert len(raw) > 33


def test_tampered_value_rejected(two_stores, redis_server, prefix):
    site = two_stores[0].site_store("demo")
    site.put_meta("x", "original")
    client = redis_server.client()
    key = f"{{{prefix}demo}}:meta:x"
    raw = bytearray(client.get(key))
    raw[-3] ^= 0x01
    client.set(key, bytes(raw))
    client.close()
    with pytest.raises(StoreError, match="failed the HMAC check"):
        site.get_meta("x")


def test_value_moved_to_other_key_rejected(two_stores, redis_server, prefix):
    site = two_stores[0].site_store("demo")
    site.put_meta("x", "value of x")
    client = redis_server.client()
    client.set(f"{{{prefix}demo}}:meta:y", client.get(f"{{{prefix}demo}}:meta:x"))
    client.close()
    with pytest.raises(StoreError, match="failed the HMAC check"):
        site.get_meta("y")


def test_wrong_key_rejected(redis_server, prefix):
    url = redis_server.url(prefix=prefix)
    writer = open_store(url, hmac_key=KEY)
    writer.site_store("demo").put_meta("x", 1)
    reader = open_store(url, hmac_key=b"another-key-0123456789abcdef0123")
    unsigned = open_store(url)
    with pytest.raises(StoreError, match="failed the HMAC check"):
        reader.site_store("demo").get_meta("x")
    with pytest.raises(StoreError, match="this daemon has no HMAC key"):
        unsigned.site_store("demo").get_meta("x")
    unsigned.site_store("demo").put_meta("plain", 1)
    with pytest.raises(StoreError, match="has no HMAC tag"):
        writer.site_store("demo").get_meta("plain")
    for store in (writer, reader, unsigned):
        store.close()


class Exploit:
    """Pickles as a call that creates a file, if the pickle were trusted."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_planted_pickle_not_run_without_key(redis_server, prefix, tmp_path):
    store = open_store(redis_server.url(prefix=prefix))
    marker = tmp_path / "pwned"
    client = redis_server.client()
    client.set(f"{{{prefix}demo}}:meta:x", b"\x00" + pickle.dumps(Exploit(str(marker))))
    client.close()
    with pytest.raises(StoreError, match="io.open, which is not an allowed class"):
        store.site_store("demo").get_meta("x")
    assert not marker.exists()
    store.close()


def test_planted_pickle_not_run_with_key(two_stores, redis_server, prefix, tmp_path):
    marker = tmp_path / "pwned"
    client = redis_server.client()
    client.set(f"{{{prefix}demo}}:meta:x", b"\x00" + pickle.dumps(Exploit(str(marker))))
    client.set(f"{{{prefix}demo}}:meta:y",
               b"\x01" + os.urandom(32) + pickle.dumps(Exploit(str(marker))))
    client.close()
    site = two_stores[0].site_store("demo")
    with pytest.raises(StoreError, match="no HMAC tag"):
        site.get_meta("x")
    with pytest.raises(StoreError, match="failed the HMAC check"):
        site.get_meta("y")
    assert not marker.exists()


def test_unsafe_value_rejected_at_write(two_stores):
    site = two_stores[0].site_store("demo")
    with pytest.raises(StoreError, match="cannot store a value of type builtins.function"):
        site.put_meta("x", {"callback": test_unsafe_value_rejected_at_write})
    assert site.get_meta("x") is None


def test_allowed_values_round_trip(two_stores):
    from decimal import Decimal
    from uuid import uuid4

    site = two_stores[0].site_store("demo")
    value = {"tree": DataTree({"a": {"b": 1}}), "when": datetime(2024, 1, 2, 3, 4, 5),
             "span": timedelta(seconds=3), "amount": Decimal("1.50"), "id": uuid4(),
             "tags": {"x", "y"}, "frozen": frozenset([1]), "raw": b"\x00\xff"}
    site.put_meta("v", value)
    loaded = site.get_meta("v")
    assert loaded["tree"].getItem("a.b") == 1
    assert {key: loaded[key] for key in value if key != "tree"} == {
        key: value[key] for key in value if key != "tree"}


# -- an unreachable Redis


def test_store_down_fails_fast_and_recovers(tmp_path):
    from redis_fixtures import RedisServer, free_port, require_redis

    require_redis()
    port = free_port()
    store = open_store(f"redis://:s3cret@127.0.0.1:{port}/0?prefix=down:&socket_timeout=1",
                       hmac_key=KEY)
    server = None
    try:
        assert store.health()["ok"] is False
        site = store.site_store("demo")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as error:
            site.get_item("page", "p1")
        assert time.monotonic() - started < 0.5
        assert "s3cret" not in str(error.value)
        assert f"redis://:***@127.0.0.1:{port}/0" in str(error.value)

        server = RedisServer(tmp_path / "late", options=["requirepass s3cret"])
        server.port = port
        server.start()
        deadline = time.monotonic() + 10
        while not store.health()["ok"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.health()["ok"] is True
        site.put_item("page", "p1", {"v": 1})
        assert site.get_item("page", "p1") == {"v": 1}
    finally:
        store.close()
        if server is not None:
            server.stop()
