"""Remote access to one item's data tree: the target of ``remotebag_<op>`` calls.

Only the DataTree methods in ``READ_OPS`` and ``WRITE_OPS`` can be called.
Methods that take a callable (``subscribe``), touch files or the process, or
start with ``_`` are not in the lists and are rejected with MethodNotFound.
Write operations run through the change trigger and store the tree back;
read operations do not write. A read result can be a live node or subtree
of the memory store: the daemon pickles it for the wire, and in-process
callers must not change it.

``_pyrosubbag`` names a subtree of the item's data: the operation then runs
on that subtree, and events still reach the trigger with their full path.
An unknown item gives an empty tree, and writes to it are lost.
"""

from ..errors import MethodNotFound
from .datatree import DataTree

__all__ = ["READ_OPS", "WRITE_OPS", "ALLOWED_OPS", "RemoteBag", "check_op"]

READ_OPS = frozenset({
    "getItem", "get", "getNode", "getNodeByAttr", "getAttr", "keys", "values", "items",
    "digest", "asDict", "asString", "len", "contains", "equals",
})
WRITE_OPS = frozenset({"setItem", "update", "popNode", "pop", "delItem", "setAttr"})
ALLOWED_OPS = READ_OPS | WRITE_OPS


def check_op(op):
    """Raise MethodNotFound unless ``op`` is an allowed DataTree operation."""
    if op not in ALLOWED_OPS:
        raise MethodNotFound(
            f"remotebag operation {op!r} is not allowed; allowed operations are "
            f"{', '.join(sorted(ALLOWED_OPS))}"
        )


def _subtree(tree, subpath):
    if not subpath:
        return tree
    subtree = tree.getItem(subpath)
    if not isinstance(subtree, DataTree):
        raise KeyError(f"no data subtree at _pyrosubbag path {subpath!r}: the node is missing "
                       "or holds a plain value")
    return subtree


def _read_op(name):
    def read(self, *args, **kwargs):
        return self._read(name, args, kwargs)

    read.__name__ = read.__qualname__ = name
    read.__doc__ = f"Run DataTree.{name} on the item's data."
    return read


def _write_op(name):
    def write(self, *args, **kwargs):
        return self._write(name, args, kwargs)

    write.__name__ = write.__qualname__ = name
    write.__doc__ = f"Run DataTree.{name} on the item's data and store the tree."
    return write


class RemoteBag:
    """One item's data tree, with the allowed DataTree operations as public methods."""

    def __init__(self, state, register, item_id, subpath=None):
        self._state = state
        self._register = register
        self._item_id = item_id
        self._subpath = subpath

    def _read(self, name, args, kwargs):
        # getNode(path, autocreate=True) inserts nodes, so it runs as a write.
        if name == "getNode" and (kwargs.get("autocreate") or (len(args) > 1 and args[1])):
            return self._write(name, args, kwargs)
        tree = self._state.read_data(self._register, self._item_id)
        if tree is None:
            tree = DataTree()
        return getattr(_subtree(tree, self._subpath), name)(*args, **kwargs)

    def _write(self, name, args, kwargs):
        return self._state.store.run_atomic(self._write_once, name, args, kwargs)

    def _write_once(self, name, args, kwargs):
        self._state.prefetch(items=[(self._register, self._item_id)],
                             data=[(self._register, self._item_id)])
        with self._state.writing_data(self._register, self._item_id) as tree:
            return getattr(_subtree(tree, self._subpath), name)(*args, **kwargs)

    # Each allowed operation is a plain function in the class body, because
    # the dispatcher calls only functions defined on the target's class.
    getItem = _read_op("getItem")
    get = _read_op("get")
    getNode = _read_op("getNode")
    getNodeByAttr = _read_op("getNodeByAttr")
    getAttr = _read_op("getAttr")
    keys = _read_op("keys")
    values = _read_op("values")
    items = _read_op("items")
    digest = _read_op("digest")
    asDict = _read_op("asDict")
    asString = _read_op("asString")
    len = _read_op("len")
    contains = _read_op("contains")
    equals = _read_op("equals")
    setItem = _write_op("setItem")
    update = _write_op("update")
    popNode = _write_op("popNode")
    pop = _write_op("pop")
    delItem = _write_op("delItem")
    setAttr = _write_op("setAttr")
