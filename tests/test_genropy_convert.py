"""Conversion of Genropy values to gnr_daemon's classes and back (gnr_daemon.genropy._convert)."""

import collections
import pickle
from datetime import datetime

import pytest

from genropy_site import genropy_missing_reason, unpickle_as_daemon

pytestmark = pytest.mark.skipif(genropy_missing_reason() is not None,
                                reason=genropy_missing_reason() or "")

if genropy_missing_reason() is None:
    from gnr.core.gnrbag import Bag, BagNode, BagResolver
    from gnr.web.gnrwebpage import ClientDataChange

    from gnr_daemon.genropy._convert import bag_to_tree, from_wire, to_wire, tree_to_bag
    from gnr_daemon.registers.datachange import DataChange
    from gnr_daemon.registers.datatree import DataNode, DataTree


def sample_bag():
    bag = Bag()
    bag.setItem("rootenv.workdate", datetime(2026, 1, 2).date())
    bag.setItem("rootenv.language", "en", _attributes={"dtype": "T"})
    bag.setItem("pageArgs", {"is_mobile": False, "nested": Bag({"x": 1})})
    bag.setItem("list", [1, Bag({"y": 2}), ("t", Bag({"z": 3}))])
    bag.setItem("empty", Bag())
    bag.setItem("mark", None, _attributes={"_caching_table": "pkg.tbl", "when": datetime(2026, 1, 1)})
    return bag


def test_bag_becomes_datatree():
    tree = to_wire(sample_bag())
    assert isinstance(tree, DataTree)
    assert tree.keys() == ["rootenv", "pageArgs", "list", "empty", "mark"]
    assert tree.getItem("rootenv.language") == "en"
    assert tree.getAttr("rootenv.language", "dtype") == "T"
    assert isinstance(tree.getItem("pageArgs")["nested"], DataTree)
    assert isinstance(tree.getItem("list")[1], DataTree)
    assert isinstance(tree.getItem("list")[2][1], DataTree)
    assert tree.getAttr("mark", "_caching_table") == "pkg.tbl"


def test_converted_value_pickles_without_genropy():
    payload = to_wire(("new_page", {"data": sample_bag(), "change": ClientDataChange("a", Bag())}))
    rebuilt = unpickle_as_daemon(payload)
    assert isinstance(rebuilt[1]["data"], DataTree)
    assert isinstance(rebuilt[1]["change"], DataChange)


def test_round_trip_gives_equal_bag():
    bag = sample_bag()
    back = from_wire(to_wire(bag))
    assert isinstance(back, Bag)
    assert back.keys() == bag.keys()
    assert back["rootenv.language"] == "en"
    assert back.getAttr("rootenv.language", "dtype") == "T"
    assert isinstance(back["pageArgs"]["nested"], Bag)
    assert back["pageArgs"]["nested"]["x"] == 1
    assert isinstance(back["list"][2][1], Bag)
    assert back.getAttr("mark", "when") == datetime(2026, 1, 1)
    assert back["rootenv.workdate"] == datetime(2026, 1, 2).date()


def test_tree_to_bag_keeps_order_and_attributes():
    tree = DataTree()
    tree.setItem("b", 1, _attributes={"k": "v"})
    tree.setItem("a.c", 2)
    bag = tree_to_bag(tree)
    assert bag.keys() == ["b", "a"]
    assert bag.getAttr("b", "k") == "v"
    assert bag["a.c"] == 2


def test_empty_bag_round_trip():
    tree = bag_to_tree(Bag())
    assert isinstance(tree, DataTree) and len(tree) == 0
    back = from_wire(tree)
    assert isinstance(back, Bag) and len(back) == 0


def test_duplicate_labels_rejected():
    bag = Bag()
    bag.addItem("row", 1)
    bag.addItem("row", 2)
    with pytest.raises(ValueError, match="two nodes labelled 'row'"):
        to_wire(bag)


class CountingResolver(BagResolver):
    classKwargs = {"cacheTime": 0}
    calls = 0

    def load(self):
        CountingResolver.calls += 1
        return "resolved"


def test_resolver_sends_static_value():
    bag = Bag()
    bag.setItem("lazy", CountingResolver())
    tree = to_wire(bag)
    assert CountingResolver.calls == 0
    assert tree.getNode("lazy") is not None
    assert tree.getItem("lazy") is None


def test_client_datachange_both_ways():
    stamp = datetime(2026, 3, 4, 5, 6, 7)
    change = ClientDataChange("gnr.msg", Bag({"x": 1}), attributes={"a": 1}, reason="test",
                              fired=True, change_ts=stamp, change_idx=7, delete=True)
    wire = to_wire(change)
    assert isinstance(wire, DataChange)
    assert (wire.path, wire.reason, wire.fired, wire.change_idx, wire.delete) == \
        ("gnr.msg", "test", True, 7, True)
    assert wire.change_ts == stamp
    assert isinstance(wire.value, DataTree)
    back = from_wire(wire)
    assert isinstance(back, ClientDataChange)
    assert back == change
    assert back.attributes == {"a": 1}
    assert isinstance(back.value, Bag) and back.value["x"] == 1
    assert back.change_idx == 7
    assert back.delete is True
    assert back.change_ts == stamp


def test_datanode_becomes_bagnode():
    node = DataNode("label", DataTree({"x": 1}), {"attr": "v"})
    back = from_wire(node)
    assert isinstance(back, BagNode)
    assert back.label == "label"
    assert back.attr == {"attr": "v"}
    assert isinstance(back.value, Bag) and back.value["x"] == 1
    assert isinstance(to_wire(back), DataNode)


def test_ping_envelope_becomes_bag():
    envelope = DataTree()
    envelope.setItem("result", None)
    changes = DataTree()
    changes.setItem("sc_0", "hi", _attributes={"change_path": "gnr.msg", "change_reason": "x",
                                                "change_fired": False, "change_attr": None,
                                                "change_ts": datetime(2026, 1, 1),
                                                "change_delete": False})
    envelope.setItem("dataChanges", changes)
    envelope.setItem("childDataChanges.p2", changes.deepcopy())
    envelope.setItem("runningBatch", True)
    bag = from_wire(envelope)
    assert isinstance(bag, Bag)
    assert isinstance(bag["dataChanges"], Bag)
    assert bag["dataChanges.sc_0"] == "hi"
    assert bag.getAttr("dataChanges.sc_0", "change_path") == "gnr.msg"
    assert isinstance(bag["childDataChanges.p2"], Bag)
    assert bag["runningBatch"] is True
    assert "sc_0" in bag.toXml(unresolved=True, omitUnknownTypes=True)


def test_containers_without_genropy_values_are_not_copied():
    value = {"a": [1, 2, (3, "x")], "b": {"c": {4}}}
    assert to_wire(value) is value
    assert from_wire(value) is value


def test_containers_with_bags_are_rebuilt():
    value = {"a": [Bag({"x": 1})], "b": frozenset({1})}
    wire = to_wire(value)
    assert wire is not value
    assert isinstance(wire["a"][0], DataTree)
    assert wire["b"] is value["b"]
    back = from_wire(wire)
    assert isinstance(back["a"][0], Bag)


def test_other_objects_pass_unchanged():
    marker = object()
    assert to_wire(marker) is marker
    assert from_wire(marker) is marker


def test_genropy_builtin_subclasses_sent_as_builtins():
    from gnr.app.gnrlocalization import GnrLocString
    from gnr.core.gnrdict import GnrDict
    from gnr.core.gnrlist import GnrNamedList

    value = {
        "title": GnrLocString("Hello"),
        "options": GnrDict([("a", Bag({"x": 1})), ("b", 2)]),
        "row": GnrNamedList({"name": 0, "age": 1}, ["Ann", 30]),
    }
    wire = to_wire(value)
    assert type(wire["title"]) is str
    assert wire["title"] == "Hello"
    assert type(wire["options"]) is dict
    assert list(wire["options"]) == ["a", "b"]
    assert isinstance(wire["options"]["a"], DataTree)
    assert type(wire["row"]) is list
    assert wire["row"] == ["Ann", 30]
    rebuilt = unpickle_as_daemon(wire)
    assert rebuilt["options"]["a"].getItem("x") == 1


def test_other_container_subclasses_keep_their_type():
    Point = collections.namedtuple("Point", "x y")
    value = {
        "ordered": collections.OrderedDict(a=Bag({"x": 1})),
        "default": collections.defaultdict(list, a=Bag({"x": 1})),
        "point": Point(Bag({"x": 1}), 2),
    }
    wire = to_wire(value)
    assert type(wire["ordered"]) is collections.OrderedDict
    assert type(wire["default"]) is collections.defaultdict
    assert wire["default"].default_factory is list
    assert isinstance(wire["default"]["a"], DataTree)
    assert type(wire["point"]) is Point and isinstance(wire["point"].x, DataTree)


def test_whole_requests_unpickle_under_allow_list():
    request = (1, "site", "new_page", ("p1",), {
        "data": sample_bag(),
        "pending": [ClientDataChange("gnr.x", Bag({"y": 1}), change_ts=datetime(2026, 1, 1))],
        "node": BagNode(None, "n", Bag({"z": 1}), attr={"a": Bag()}),
    })
    with pytest.raises(pickle.UnpicklingError):
        unpickle_as_daemon(request)
    rebuilt = unpickle_as_daemon(to_wire(request))
    assert rebuilt[4]["data"].getItem("rootenv.language") == "en"
    assert isinstance(rebuilt[4]["pending"][0], DataChange)
    assert isinstance(rebuilt[4]["node"], DataNode)
