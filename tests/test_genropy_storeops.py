"""SiteRegister.store_ops: several item operations in one call, optionally under the item's lock.

Runs on every store (memory, copying memory, Redis when a redis-server is
installed) and once over the wire. Needs no genropy.
"""

from datetime import datetime, timedelta

import pytest

from gnr_daemon.dispatch import dispatch
from gnr_daemon.errors import MethodNotFound
from gnr_daemon.registers import DataTree, SiteRegister
from gnr_daemon.registers.storeops import MAX_STORE_OPS

try:
    from redis_fixtures import STORE_PARAMS, make_store
except ImportError:  # a checkout without the Redis store runs the memory stores only
    from gnr_daemon.store import CopyingMemoryStore, MemoryStore

    STORE_PARAMS = ["memory", "copying"]

    def make_store(request):
        return MemoryStore() if request.param == "memory" else CopyingMemoryStore()


class Clock:
    def __init__(self):
        self.now = datetime(2026, 5, 1, 12, 0, 0)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=STORE_PARAMS)
def register(request):
    clock = Clock()
    register = SiteRegister("demo", make_store(request).site_store("demo"), clock=clock)
    register.new_connection("c1", user="ann")
    register.new_page("p1", connection_id="c1", user="ann", data={"form": {"name": "Ann"}})
    register.clock = clock
    return register


def lock(register, item_id, reason):
    return dispatch(register, "lock_item", (item_id,), {"reason": reason, "register_name": "page"})


def unlock(register, item_id, reason):
    return dispatch(register, "unlock_item", (item_id,), {"reason": reason,
                                                          "register_name": "page"})


def op(name, *args, **kwargs):
    return (name, args, kwargs)


def values(outcome):
    granted, results = outcome
    assert granted is True
    assert all(ok for ok, _ in results), results
    return [value for _, value in results]


def test_reads_and_writes_in_order(register):
    outcome = register.store_ops("page", "p1", [
        op("getItem", "form.name"),
        op("setItem", "form.name", "Bob"),
        op("getItem", "form.name"),
        op("keys"),
    ])
    assert values(outcome) == ["Ann", None, "Bob", ["form"]]
    assert register.get_item_data("p1", register_name="page").getItem("form.name") == "Bob"


def test_unknown_item_data_ops_return_none(register):
    outcome = register.store_ops("page", "nope", [
        op("getItem", "x"), op("setItem", "x", 1), op("keys"), op("get_item"),
    ])
    assert values(outcome) == [None, None, None, None]
    assert register.page("nope") is None


def test_item_ops(register):
    outcome = register.store_ops("page", "p1", [
        op("set_datachange", "gnr.msg", value="hi", reason="test"),
        op("get_item"),
    ])
    _, item = values(outcome)
    assert item["register_item_id"] == "p1"
    assert [change.path for change in item["datachanges"]] == ["gnr.msg"]
    assert item["datachanges"][0].change_idx == 1

    values(register.store_ops("page", "p1", [op("drop_datachanges", "gnr")]))
    assert register.page("p1")["datachanges"] == []


def test_write_fires_change_trigger(register):
    values(register.store_ops("page", "p1", [op("subscribe_path", "form"),
                                            op("setItem", "form.name", "Cid")]))
    changes = register.get_item("p1", register_name="page")["datachanges"]
    assert [(change.path, change.value, change.reason) for change in changes] == \
        [("form.name", "Cid", "serverChange")]


def test_acquire_grants_and_keeps_lock(register):
    granted, _ = register.store_ops("page", "p1", [op("getItem", "form.name")],
                                    lock_reason="A", acquire=True)
    assert granted is True
    # Another holder is refused while A holds the lock, and A itself re-enters.
    assert lock(register, "p1", "B") is False
    assert lock(register, "p1", "A") is True


def test_refused_lock_runs_nothing(register):
    assert lock(register, "p1", "B") is True
    outcome = register.store_ops("page", "p1", [op("setItem", "form.name", "Zed")],
                                 lock_reason="A", acquire=True, release=True)
    assert outcome == (False, [])
    assert register.get_item_data("p1", register_name="page").getItem("form.name") == "Ann"
    # B still holds it: the refused call released nothing.
    assert unlock(register, "p1", "B") is None
    assert lock(register, "p1", "A") is True


def test_expired_lock_taken_on_next_attempt(register):
    assert lock(register, "p1", "B") is True
    register.clock.advance(11)
    assert register.store_ops("page", "p1", [], lock_reason="A", acquire=True)[0] is False
    assert register.store_ops("page", "p1", [], lock_reason="A", acquire=True)[0] is True


def test_acquire_and_release_in_one_call(register):
    outcome = register.store_ops("page", "p1", [op("setItem", "form.name", "Dee")],
                                 lock_reason="A", acquire=True, release=True)
    assert values(outcome) == [None]
    assert lock(register, "p1", "B") is True


def test_failure_stops_and_releases(register):
    granted, results = register.store_ops("page", "p1", [
        op("setItem", "form.name", "Eve"),
        op("getNode", "a?b"),
        op("setItem", "form.name", "Never"),
    ], lock_reason="A", acquire=True, release=True)
    assert granted is True
    assert len(results) == 2
    assert results[0] == (True, None)
    ok, (class_name, message, _traceback, builtin_base) = results[1]
    assert ok is False
    assert class_name == "ValueError"
    assert builtin_base == "ValueError"
    assert "a?b" in message
    assert register.get_item_data("p1", register_name="page").getItem("form.name") == "Eve"
    assert lock(register, "p1", "B") is True


@pytest.mark.parametrize("name", ["subscribe", "toXml", "_private", "__class__", "fromXml", 3])
def test_unknown_op_rejected_before_anything(register, name):
    with pytest.raises(MethodNotFound, match="not allowed"):
        register.store_ops("page", "p1", [op("setItem", "form.name", "X"), (name, (), {})],
                           lock_reason="A", acquire=True)
    assert register.get_item_data("p1", register_name="page").getItem("form.name") == "Ann"
    assert lock(register, "p1", "B") is True


@pytest.mark.parametrize("ops, message", [
    ("getItem", "expected a list"),
    ([("getItem", ("x",))], "expected \\(name, args, kwargs\\)"),
    ([("getItem", "x", {})], "args must be a list"),
    ([("getItem", ("x",), {"_pyrosubbag": "a"})], "keyword names"),
    ([("getItem", ("x",), {})] * (MAX_STORE_OPS + 1), "at most"),
])
def test_malformed_ops(register, ops, message):
    with pytest.raises(ValueError, match=message):
        register.store_ops("page", "p1", ops)


def test_lock_needs_reason(register):
    with pytest.raises(ValueError, match="lock_reason"):
        register.store_ops("page", "p1", [], acquire=True)


def test_unknown_register_name(register):
    with pytest.raises(ValueError, match="register_name"):
        register.store_ops("pages", "p1", [])


def test_store_ops_over_the_wire(client):
    client.addSiteRegister("demo")
    site = client.site("demo")
    site.new_page("p1", data={"form": {"name": "Ann"}})
    granted, results = site.store_ops("page", "p1", [
        ("getItem", ("form",), {}),
        ("setItem", ("form.age", 3), {}),
    ], lock_reason="host:1:2", acquire=True, release=True)
    assert granted is True
    tree = results[0][1]
    assert isinstance(tree, DataTree)
    assert tree.getItem("name") == "Ann"
    assert site.get_item_data("p1", register_name="page").getItem("form.age") == 3
