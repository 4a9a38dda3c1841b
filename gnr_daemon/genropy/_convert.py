"""Conversion between Genropy's value classes and gnr_daemon's, at the wire boundary.

The daemon keeps item data in ``DataTree`` and queued changes in ``DataChange``
and never needs a Genropy class to unpickle a request. A web worker sends its
values through ``to_wire`` and reads the daemon's replies through
``from_wire``, which pair these classes:

- ``gnr.core.gnrbag.Bag`` (and its subclasses) and ``DataTree``, node by
  node: label, value and attributes, in order;
- ``gnr.core.gnrbag.BagNode`` and ``DataNode``;
- ``gnr.web.gnrwebpage.ClientDataChange`` and ``DataChange``, field by field.

Genropy's own subclasses of built-in types (``GnrDict``, ``GnrNamedList``,
``GnrLocString``, ...) are sent as the built-in type and come back as it,
because the daemon only rebuilds built-in and gnr_daemon classes.

Both functions walk into dicts (values only), lists, tuples, sets and
frozensets, into node values and into node attributes. A container in which
nothing changes is returned as it is, so a value without Genropy objects
costs one walk and no copy. Every other object is returned unchanged.

What does not cross:

- a Bag node's resolver: the node's static value (the value stored in the
  node, without calling the resolver) is sent instead;
- a Bag's root attributes, validators and subscribers;
- two nodes with the same label at one level, which a DataTree cannot hold:
  ``to_wire`` raises ValueError instead of dropping one of them.
"""

import copy
import logging

from gnr.core.gnrbag import Bag, BagNode

from ..registers.datachange import DataChange
from ..registers.datatree import DataNode, DataTree

__all__ = ["to_wire", "from_wire", "bag_to_tree", "tree_to_bag"]

log = logging.getLogger(__name__)

# Exact types that never contain a convertible value. They are checked first
# because they are most of what crosses the wire.
_LEAF_TYPES = frozenset({str, int, float, bool, bytes, type(None)})
_CONTAINER_TYPES = (dict, list, tuple, set, frozenset)
# Built-in bases that Genropy's own subclasses are sent as, most specific first.
_BUILTIN_BASES = (bool, int, float, str, bytes, dict, list, tuple, frozenset, set)

_client_datachange_class = None
_logged_resolver_classes = set()


def _client_datachange():
    # Imported on first use: gnr.web.gnrwebpage imports a large part of
    # Genropy, and this module is imported while gnr.web.daemon loads.
    global _client_datachange_class
    if _client_datachange_class is None:
        from gnr.web.gnrwebpage import ClientDataChange

        _client_datachange_class = ClientDataChange
    return _client_datachange_class


def _convert_items(value, convert):
    """Return the converted elements of a sequence or set, or None when none changed."""
    items = [convert(item) for item in value]
    if all(new is old for new, old in zip(items, value)):
        return None
    return items


def _convert_container(value, convert):
    """Apply ``convert`` inside a dict, list, tuple, set or frozenset; keep it if nothing changes.

    A rebuilt container keeps its type: a dict subclass is copied and
    refilled, a named tuple is built from its fields.
    """
    if isinstance(value, dict):
        result = {key: convert(item) for key, item in value.items()}
        if all(result[key] is item for key, item in value.items()):
            return value
        if type(value) is dict:
            return result
        rebuilt = copy.copy(value)
        rebuilt.update(result)
        return rebuilt
    items = _convert_items(value, convert)
    if items is None:
        return value
    if type(value) is list:
        return items
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*items)
    try:
        return type(value)(items)
    except TypeError:
        return _builtin_base(type(value))(items)


def _builtin_base(cls):
    for base in _BUILTIN_BASES:
        if issubclass(cls, base):
            return base
    return None


def _is_genropy_class(cls):
    module = cls.__module__ or ""
    return module == "gnr" or module.startswith("gnr.")


def _genropy_builtin_to_wire(value, base):
    """Send an instance of Genropy's subclass of a built-in (GnrDict, GnrLocString, ...) as the built-in."""
    if base is dict:
        return {key: to_wire(item) for key, item in value.items()}
    if base in (list, tuple, set, frozenset):
        return base(to_wire(item) for item in value)
    return base(value)


# -- web worker -> daemon

def to_wire(value):
    """Return ``value`` with every Genropy object converted to what the daemon can rebuild."""
    kind = type(value)
    if kind in _LEAF_TYPES:
        return value
    if kind in _CONTAINER_TYPES:
        return _convert_container(value, to_wire)
    if isinstance(value, Bag):
        return bag_to_tree(value)
    if isinstance(value, BagNode):
        return DataNode(value.label, to_wire(_static_value(value)), _attributes_to_wire(value.attr))
    if isinstance(value, _client_datachange()):
        return DataChange(
            value.path, to_wire(value.value), attributes=to_wire(value.attributes),
            fired=value.fired, reason=value.reason, change_ts=value.change_ts,
            change_idx=value.change_idx, delete=value.delete,
        )
    if _is_genropy_class(kind):
        base = _builtin_base(kind)
        if base is not None:
            return _genropy_builtin_to_wire(value, base)
    if isinstance(value, _CONTAINER_TYPES):
        return _convert_container(value, to_wire)
    return value


def _static_value(node):
    resolver = node.resolver
    if resolver is not None:
        name = type(resolver).__name__
        if name not in _logged_resolver_classes:
            _logged_resolver_classes.add(name)
            log.info("a Bag node with a %s resolver was sent to gnr_daemon: its static value "
                     "is stored, the resolver is not", name)
    return node.getStaticValue()


def _attributes_to_wire(attributes):
    if not attributes:
        return None
    return _convert_container(attributes, to_wire)


def bag_to_tree(bag):
    """Return a DataTree with the nodes of ``bag``, converted recursively."""
    tree = DataTree()
    for node in bag:
        label = node.label
        if tree.getNode(label) is not None:
            raise ValueError(
                f"cannot send a Bag with two nodes labelled {label!r} at one level to "
                "gnr_daemon: its data trees hold one node per label"
            )
        tree.setItem(label, to_wire(_static_value(node)),
                     _attributes=_attributes_to_wire(node.attr))
    return tree


# -- daemon -> web worker

def from_wire(value):
    """Return ``value`` with every DataTree, DataNode and DataChange turned into Genropy's class."""
    if type(value) in _LEAF_TYPES:
        return value
    if isinstance(value, DataTree):
        return tree_to_bag(value)
    if isinstance(value, DataChange):
        return _client_datachange()(
            value.path, from_wire(value.value), attributes=from_wire(value.attributes),
            reason=value.reason, fired=value.fired, change_ts=value.change_ts,
            change_idx=value.change_idx, delete=value.delete,
        )
    if isinstance(value, DataNode):
        return BagNode(None, value.label, from_wire(value.value),
                       attr=_attributes_from_wire(value.attr))
    if isinstance(value, _CONTAINER_TYPES):
        return _convert_container(value, from_wire)
    return value


def _attributes_from_wire(attributes):
    # Bag copies the attributes into the node, so the dict is not copied here.
    if not attributes:
        return None
    return _convert_container(attributes, from_wire)


def tree_to_bag(tree):
    """Return a Bag with the nodes of ``tree``, converted recursively."""
    bag = Bag()
    for node in tree:
        # Labels are unique in a DataTree, so _duplicate skips Bag's label
        # search, which would make building a large Bag quadratic.
        bag.setItem(node.label, from_wire(node.value),
                    _attributes=_attributes_from_wire(node.attr), _duplicate=True)
    return bag
