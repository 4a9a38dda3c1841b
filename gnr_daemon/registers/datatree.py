"""Hierarchical path store of register items: DataTree and DataNode.

A DataTree is the daemon's own counterpart of Genropy's Bag, written without
importing genropy. It is an ordered tree of DataNode objects, and each node has
a label, a value (possibly a nested DataTree) and a dict of attributes. Remote
callers invoke its methods by name, so the Bag method names (getItem, setItem,
getNodeByAttr, ...) are a fixed public interface.

Path syntax, as in Bag:

* ``'a.b.c'`` addresses nested labels. Empty segments are skipped, so
  ``'a..b'`` is ``'a.b'``. A list or tuple of labels is also accepted.
* ``'#N'`` selects the N-th node of a level (``'a.#0'``), and ``'#name=text'``
  selects the first node whose attribute ``name`` equals the string ``text``
  (``'#=text'`` uses the attribute ``id``).
* ``'path?name'`` reads (getItem) or writes (setItem) the attribute ``name`` of
  the node at ``path``.

Labels are unique within a level, so setting an existing label updates that
node. Setting an attribute to None removes it, as in Bag.

Change events: ``subscribe(key, callback)`` registers ``callback(event, path,
node)``. Events are 'ins', 'upd' (value or attributes changed) and 'del'. They
bubble up, so each tree with subscribers receives them with ``path`` relative
to itself, and the root receives the full dotted path. Subscribers are not
pickled.

A DataTree is not thread-safe: callers serialize access to it.
"""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ['DataNode', 'DataTree']

logger = logging.getLogger(__name__)

Subscriber = Callable[[str, str, 'DataNode'], Any]

# A failing subscriber is logged with its traceback on the first failure and
# then once every this many failures, so a broken callback cannot flood the log.
SUBSCRIBER_FAILURE_LOG_INTERVAL = 1000

_VALUE_REPR = reprlib.Repr()
_VALUE_REPR.maxstring = 60
_VALUE_REPR.maxother = 60

_DEFAULT_DIGEST = '#k,#v,#a'


class DataNode:
    """A labelled value with attributes, stored in a DataTree.

    Assigning ``node.value`` or calling ``setAttr`` emits an 'upd' event when
    the node belongs to a tree. Mutating the ``attr`` dict directly emits nothing.
    """

    __slots__ = ('_label', '_value', 'attr', '_tree')

    def __init__(self, label: str, value: Any = None, attr: dict | None = None) -> None:
        self._label = label
        self._value = None
        self.attr: dict = {}
        self._tree: DataTree | None = None
        if attr:
            _merge_attributes(self.attr, attr)
        _replace_value(self, value, None)

    @property
    def label(self) -> str:
        """Label of the node within its tree level (read-only)."""
        return self._label

    @property
    def value(self) -> Any:
        """Stored value. Assigning it behaves like ``setValue``."""
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        self.setValue(value)

    def getLabel(self) -> str:
        return self._label

    def getValue(self) -> Any:
        return self._value

    def setValue(self, value: Any, _attributes: dict | None = None, **kwargs: Any) -> None:
        """Store ``value`` and merge attributes, emitting 'upd' if anything changed."""
        _update_node(self, value, _combine_attributes(_attributes, kwargs))

    def getAttr(self, name: str | None = None, default: Any = None) -> Any:
        """Return attribute ``name``, or a copy of all attributes when ``name`` is None."""
        if name is None:
            return dict(self.attr)
        return self.attr.get(name, default)

    def setAttr(self, _attributes: dict | None = None, **kwargs: Any) -> None:
        """Merge attributes (None removes one), emitting 'upd' if anything changed."""
        attributes = _combine_attributes(_attributes, kwargs)
        if attributes and _merge_attributes(self.attr, attributes) and self._tree is not None:
            self._tree._emit('upd', self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataNode):
            return NotImplemented
        return (self._label == other._label
                and self.attr == other.attr
                and self._value == other._value)

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return 'DataNode(%r, %s, attr=%s)' % (
            self._label, _VALUE_REPR.repr(self._value), _VALUE_REPR.repr(self.attr))

    def __getstate__(self) -> tuple:
        # The owning tree is not pickled: DataTree.__setstate__ builds its own
        # nodes and links, and a node unpickled alone belongs to no tree.
        return (self._label, self._value, self.attr)

    def __setstate__(self, state: tuple) -> None:
        self._label, self._value, self.attr = state
        self._tree = None


class DataTree:
    """Ordered tree of DataNode objects addressed by dotted paths (see the module docstring)."""

    __slots__ = ('_nodes', '_by_label', '_parent_node', '_subscribers',
                 '_subscriber_failures', '__weakref__')

    def __init__(self, source: dict | DataTree | list | tuple | None = None) -> None:
        """Build a tree from a dict, another DataTree or a list of tuples.

        A dict is inserted with setItem, so dotted keys become paths and nested
        dicts become nested trees. Another DataTree is copied as ``deepcopy()``
        does. A list contains ``(label, value)`` or ``(label, value, attr)`` tuples,
        whose values are stored as given.
        """
        self._nodes: list[DataNode] = []
        self._by_label: dict[str, DataNode] = {}
        self._parent_node: DataNode | None = None
        # Both dicts are created on first use and dropped when empty, because
        # most trees never have a subscriber and every page has several trees.
        self._subscribers: dict[Any, Subscriber] | None = None
        self._subscriber_failures: dict[Any, int] | None = None
        if source is None:
            return
        if isinstance(source, DataTree):
            for node in source._nodes:
                self._insert_new(node._label, _copy_value(node._value), node.attr, None)
        elif isinstance(source, dict):
            for key, value in source.items():
                if isinstance(value, dict):
                    value = DataTree(value)
                self.setItem(key, value)
        elif isinstance(source, (list, tuple)):
            for entry in source:
                self._insert_entry(entry)
        else:
            raise TypeError('DataTree source must be a dict, a DataTree or a list of '
                            '(label, value[, attr]) tuples, not %s' % type(source).__name__)

    def _insert_entry(self, entry: Any) -> None:
        if not isinstance(entry, (list, tuple)) or len(entry) not in (2, 3):
            raise ValueError('invalid DataTree source entry %s: expected (label, value) '
                             'or (label, value, attr)' % _VALUE_REPR.repr(entry))
        attributes = entry[2] if len(entry) == 3 else None
        if attributes is not None and not isinstance(attributes, dict):
            raise ValueError('invalid DataTree source entry %s: attr must be a dict or None'
                             % _VALUE_REPR.repr(entry))
        self.setItem(entry[0], entry[1], _attributes=attributes)

    # ------------------------------------------------------------------ read

    def getItem(self, path: Any, default: Any = None) -> Any:
        """Return the value at ``path``, or ``default`` when no node is there.

        An empty path returns the tree itself, and ``'path?name'`` returns the
        attribute ``name`` of the node at ``path``.
        """
        if path is None or path == '':
            return self
        if type(path) is str and _is_plain_label(path):
            node = self._by_label.get(path)
            return default if node is None else node._value
        labels, attribute_name = _parse_path(path)
        if not labels:
            if attribute_name is None:
                return self
            holder = self._parent_node
            return default if holder is None else holder.attr.get(attribute_name, default)
        node = self._find_node(labels)
        if node is None:
            return default
        if attribute_name is None:
            return node._value
        return node.attr.get(attribute_name, default)

    def get(self, label: str, default: Any = None) -> Any:
        """Return the value of the direct child ``label`` (also ``'#N'`` or ``'label?name'``)."""
        attribute_name = None
        if isinstance(label, str) and '?' in label:
            label, attribute_name = label.split('?', 1)
        if not label:
            return self if attribute_name is None else default
        node = self._child(label)
        if node is None:
            return default
        if attribute_name is None:
            return node._value
        return node.attr.get(attribute_name, default)

    def getNode(self, path: Any, autocreate: bool = False) -> DataNode | None:
        """Return the node at ``path``, or None.

        An empty path returns the node whose value is this tree (None for a root).
        With ``autocreate`` the missing nodes are created, the last one with a
        None value, emitting 'ins' for each.
        """
        if path is None or path == '':
            return self._parent_node
        labels = _parse_node_path(path, 'getNode')
        if not labels:
            return self._parent_node
        tree = self._walk(labels[:-1], create=autocreate)
        if tree is None:
            return None
        node = tree._child(labels[-1])
        if node is None and autocreate:
            node = tree._insert_new(labels[-1], None, None, None)
        return node

    def getNodeByAttr(self, attr: str, value: Any, path: list | None = None) -> DataNode | None:
        """Return the first node, depth-first in tree order, whose attribute ``attr`` equals ``value``.

        When ``path`` is a list, the labels leading from this tree to the node
        are appended to it. Bag differs: it checks all nodes of a level before
        descending into their subtrees.
        """
        for node in self._nodes:
            if attr in node.attr and node.attr[attr] == value:
                if isinstance(path, list):
                    path.append(node._label)
                return node
            child = node._value
            if isinstance(child, DataTree):
                child_path: list[str] = []
                found = child.getNodeByAttr(attr, value, child_path)
                if found is not None:
                    if isinstance(path, list):
                        path.append(node._label)
                        path.extend(child_path)
                    return found
        return None

    def getAttr(self, path: Any = None, attr: str | None = None, default: Any = None) -> Any:
        """Return attribute ``attr`` of the node at ``path``, or a copy of all its attributes when ``attr`` is None."""
        node = self.getNode(path)
        if node is None:
            return default
        if attr is None:
            return dict(node.attr)
        return node.attr.get(attr, default)

    def keys(self) -> list[str]:
        return [node._label for node in self._nodes]

    def values(self) -> list[Any]:
        return [node._value for node in self._nodes]

    def items(self) -> list[tuple[str, Any]]:
        return [(node._label, node._value) for node in self._nodes]

    def digest(self, what: str | list | tuple = _DEFAULT_DIGEST) -> list:
        """Return one tuple per direct child with the requested columns, as Bag.digest does.

        Keys: ``#k`` label, ``#v`` value, ``#v.path`` the value at ``path``
        inside a child tree (None for leaves), ``#a`` a copy of the attributes,
        ``#a.name`` one attribute. A ``'path:keys'`` prefix digests the subtree
        at ``path``. With a single key the result is a flat list, not tuples.
        """
        tree = self
        if isinstance(what, str):
            what = what or _DEFAULT_DIGEST
            if ':' in what:
                where, what = what.split(':', 1)
                tree = self.getItem(where)
                if not isinstance(tree, DataTree):
                    return []
            keys = [key.strip() for key in what.split(',')]
        else:
            keys = list(what)
        columns = [tree._digest_column(key) for key in keys]
        if len(columns) == 1:
            return columns[0]
        return list(zip(*columns))

    def _digest_column(self, key: str) -> list:
        nodes = self._nodes
        if key == '#k':
            return [node._label for node in nodes]
        if key == '#v':
            return [node._value for node in nodes]
        if key == '#a':
            return [dict(node.attr) for node in nodes]
        if key.startswith('#a.'):
            name = key[3:]
            return [node.attr.get(name) for node in nodes]
        if key.startswith('#v.'):
            inner_path = key[3:]
            return [node._value.getItem(inner_path) if isinstance(node._value, DataTree) else None
                    for node in nodes]
        raise ValueError('unknown digest key %r: use #k, #v, #v.<path>, #a or #a.<name>' % (key,))

    def asDict(self, ascii: bool = False, lower: bool = False) -> dict[str, Any]:
        """Return a shallow dict label -> value of the direct children.

        ``lower`` lowercases the keys. ``ascii`` is accepted for Bag
        compatibility and changes nothing, because labels are already str.
        """
        result = {}
        for node in self._nodes:
            key = str(node._label) if ascii else node._label
            if lower:
                key = key.lower()
            result[key] = node._value
        return result

    def asString(self) -> str:
        """Return an indented text listing of the tree, one node per line."""
        return '\n'.join(self._format_lines(0))

    def _format_lines(self, depth: int) -> Iterator[str]:
        indent = '    ' * depth
        for node in self._nodes:
            attributes = ''
            if node.attr:
                attributes = ' <%s>' % ' '.join(
                    '%s=%s' % (name, _VALUE_REPR.repr(value)) for name, value in node.attr.items())
            if isinstance(node._value, DataTree):
                yield '%s%s:%s' % (indent, node._label, attributes)
                yield from node._value._format_lines(depth + 1)
            else:
                yield '%s%s: %s%s' % (indent, node._label, _VALUE_REPR.repr(node._value), attributes)

    def __str__(self) -> str:
        return self.asString()

    def __repr__(self) -> str:
        return '<DataTree %s>' % _VALUE_REPR.repr(self.keys())

    # ----------------------------------------------------------------- write

    def setItem(self, path: Any, value: Any, _attributes: dict | None = None,
                _position: str | int | None = None, **kwargs: Any) -> None:
        """Store ``value`` at ``path``, creating missing intermediate trees.

        ``_attributes`` and ``kwargs`` are merged into the node's attributes
        (None removes an attribute). ``'path?name'`` sets the attribute ``name``
        to ``value`` instead. ``_position`` places a new node: '>' last (default),
        '<' first, an int index (a negative one appends), '#N', '<label',
        '>label', '<#N' or '>#N'. It does not move an existing node.
        Raises ValueError when a DataTree value already belongs to another tree
        or would contain itself.
        """
        attributes = _combine_attributes(_attributes, kwargs)
        if type(path) is str and path and _is_plain_label(path):
            node = self._by_label.get(path)
            if node is None:
                self._insert_new(path, value, attributes, _position)
            else:
                _update_node(node, value, attributes)
            return
        labels, attribute_name = _parse_path(path)
        if not labels:
            raise ValueError('setItem needs a non-empty path, got %r' % (path,))
        tree = self._walk(labels[:-1], create=True)
        label = labels[-1]
        node = tree._child(label)
        if attribute_name is not None:
            attributes = dict(attributes or {})
            attributes[attribute_name] = value
            if node is None:
                tree._insert_new(label, None, attributes, _position)
            else:
                node.setAttr(attributes)
        elif node is None:
            tree._insert_new(label, value, attributes, _position)
        else:
            _update_node(node, value, attributes)

    def setAttr(self, path: Any = None, _attributes: dict | None = None, **kwargs: Any) -> None:
        """Merge attributes into the node at ``path`` (None removes one), creating the node if missing."""
        attributes = _combine_attributes(_attributes, kwargs)
        labels = _parse_node_path(path, 'setAttr') if path not in (None, '') else []
        if not labels:
            if self._parent_node is None:
                raise ValueError('setAttr needs a node path: a root DataTree has no attributes')
            self._parent_node.setAttr(attributes)
            return
        tree = self._walk(labels[:-1], create=True)
        node = tree._child(labels[-1])
        if node is None:
            tree._insert_new(labels[-1], None, attributes, None)
        else:
            node.setAttr(attributes)

    def popNode(self, path: Any) -> DataNode | None:
        """Remove the node at ``path`` and return it, or return None if it is missing."""
        labels = _parse_node_path(path, 'popNode')
        if not labels:
            return None
        tree = self._walk(labels[:-1], create=False)
        if tree is None:
            return None
        node = tree._child(labels[-1])
        if node is None:
            return None
        tree._remove(node)
        return node

    def pop(self, path: Any, default: Any = None) -> Any:
        """Remove the node at ``path`` and return its value, or ``default`` if it is missing."""
        node = self.popNode(path)
        return default if node is None else node._value

    def delItem(self, path: Any) -> Any:
        """Remove the node at ``path`` and return its value, or None when the path is missing (no error, as in Bag)."""
        return self.pop(path)

    def update(self, other: dict | DataTree) -> None:
        """Merge ``other`` into this tree.

        Subtrees present on both sides are merged recursively, other values are
        replaced, and attributes are merged. New subtrees are inserted as copies,
        so ``other`` keeps its own nodes. A dict is first converted as the
        constructor does. Events are emitted per node changed or inserted.
        """
        if isinstance(other, dict):
            other = DataTree(other)
        elif not isinstance(other, DataTree):
            raise TypeError('update() takes a dict or a DataTree, not %s' % type(other).__name__)
        for source_node in list(other._nodes):
            node = self._by_label.get(source_node._label)
            incoming = source_node._value
            if node is None:
                self._insert_new(source_node._label, _copy_value(incoming), source_node.attr, None)
            elif isinstance(node._value, DataTree) and isinstance(incoming, DataTree):
                node.setAttr(source_node.attr)
                node._value.update(incoming)
            else:
                _update_node(node, _copy_value(incoming), source_node.attr)

    def deepcopy(self) -> DataTree:
        """Return a copy of the tree structure and attribute dicts that shares the leaf values."""
        return DataTree(self)

    # ------------------------------------------------------------- protocols

    __getitem__ = getItem

    def __setitem__(self, path: Any, value: Any) -> None:
        self.setItem(path, value)

    def __delitem__(self, path: Any) -> None:
        self.delItem(path)

    def __contains__(self, item: Any) -> bool:
        if isinstance(item, DataNode):
            return self._index_of(item) >= 0
        if not isinstance(item, (str, list, tuple)) or not item:
            return False
        labels, attribute_name = _parse_path(item)
        if not labels:
            return False
        node = self._find_node(labels)
        if node is None:
            return False
        return attribute_name is None or attribute_name in node.attr

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[DataNode]:
        # Iterate over a snapshot, so callers may change the tree in the loop.
        return iter(list(self._nodes))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataTree):
            return NotImplemented
        if len(self._nodes) != len(other._nodes):
            return False
        for mine, theirs in zip(self._nodes, other._nodes):
            if mine._label != theirs._label or mine.attr != theirs.attr:
                return False
            if mine._value != theirs._value:
                return False
        return True

    __hash__ = None  # mutable

    # Public aliases: remote callers cannot call names that start with '_'.
    def len(self) -> int:
        return len(self._nodes)

    def contains(self, item: Any) -> bool:
        return self.__contains__(item)

    def equals(self, other: object) -> bool:
        return self.__eq__(other) is True

    def __copy__(self) -> DataTree:
        # A shallow copy would share subtrees between two parents, which breaks
        # event paths, so copy.copy() copies the structure like deepcopy().
        return self.deepcopy()

    def __getstate__(self) -> dict:
        # Subscribers and parent links are left out: pickles carry no callables,
        # and a pickled subtree loads as a root. The dict is never empty, so
        # pickle always calls __setstate__, even for an empty tree.
        return {'nodes': [(node._label, node._value, node.attr) for node in self._nodes]}

    def __setstate__(self, state: dict) -> None:
        self._nodes = []
        self._by_label = {}
        self._parent_node = None
        self._subscribers = None
        self._subscriber_failures = None
        for label, value, attributes in state['nodes']:
            node = DataNode.__new__(DataNode)
            node._label = label
            node._value = value
            node.attr = attributes
            node._tree = self
            if isinstance(value, DataTree):
                value._parent_node = node
            self._nodes.append(node)
            self._by_label[label] = node

    # ---------------------------------------------------------------- events

    def subscribe(self, key: Any, callback: Subscriber) -> None:
        """Register ``callback(event, path, node)`` under ``key``, replacing any callback with that key."""
        if not callable(callback):
            raise TypeError('subscribe() needs a callable, got %s' % type(callback).__name__)
        if self._subscribers is None:
            self._subscribers = {}
        self._subscribers[key] = callback
        if self._subscriber_failures:
            self._subscriber_failures.pop(key, None)

    def unsubscribe(self, key: Any) -> None:
        """Remove the callback registered under ``key``, ignoring an unknown key."""
        if self._subscribers:
            self._subscribers.pop(key, None)
            if not self._subscribers:
                self._subscribers = None
        if self._subscriber_failures:
            self._subscriber_failures.pop(key, None)
            if not self._subscriber_failures:
                self._subscriber_failures = None

    def _emit(self, event: str, node: DataNode) -> None:
        """Call the subscribers of this tree and of every ancestor, each with its own relative path.

        A subscriber that raises is logged and skipped, because the change is
        already applied and the other subscribers must still see it.
        """
        tree = self
        labels = [node._label]
        while True:
            if tree._subscribers:
                path = '.'.join(reversed(labels))
                for key, callback in list(tree._subscribers.items()):
                    try:
                        callback(event, path, node)
                    except Exception:
                        tree._log_subscriber_failure(key, event, path)
            holder = tree._parent_node
            if holder is None or holder._tree is None:
                return
            labels.append(holder._label)
            tree = holder._tree

    def _log_subscriber_failure(self, key: Any, event: str, path: str) -> None:
        if self._subscriber_failures is None:
            self._subscriber_failures = {}
        count = self._subscriber_failures.get(key, 0) + 1
        self._subscriber_failures[key] = count
        if count == 1 or count % SUBSCRIBER_FAILURE_LOG_INTERVAL == 0:
            logger.exception('DataTree subscriber %r failed on %r event at %r (failure %d)',
                             key, event, path, count)

    # -------------------------------------------------------------- internals

    def _child(self, label: str) -> DataNode | None:
        node = self._by_label.get(label)
        if node is not None or not label.startswith('#'):
            return node
        selector = label[1:]
        if selector.isdigit() and selector.isascii():
            index = int(selector)
            return self._nodes[index] if index < len(self._nodes) else None
        if '=' in selector:
            name, text = selector.split('=', 1)
            name = name or 'id'
            for candidate in self._nodes:
                if candidate.attr.get(name) == text:
                    return candidate
        return None

    def _walk(self, labels: list[str], create: bool) -> DataTree | None:
        """Return the tree reached by following ``labels``, or None.

        With ``create``, missing nodes get a new DataTree ('ins') and leaf
        values on the way are replaced by one ('upd'), as Bag does.
        """
        tree = self
        for label in labels:
            node = tree._child(label)
            if node is None:
                if not create:
                    return None
                child = DataTree()
                tree._insert_new(label, child, None, None)
                tree = child
                continue
            value = node._value
            if not isinstance(value, DataTree):
                if not create:
                    return None
                value = DataTree()
                _update_node(node, value, None)
            tree = value
        return tree

    def _find_node(self, labels: list[str]) -> DataNode | None:
        tree = self._walk(labels[:-1], create=False)
        if tree is None:
            return None
        return tree._child(labels[-1])

    def _insert_new(self, label: str, value: Any, attributes: dict | None,
                    position: str | int | None) -> DataNode:
        if label.startswith('#'):
            raise KeyError('no node matches %r: a label starting with "#" selects an '
                           'existing node and cannot create one' % (label,))
        if '.' in label or '?' in label:
            raise ValueError('invalid label %r: a label cannot contain "." or "?"' % (label,))
        index = self._resolve_position(position)
        node = DataNode(label, None, attributes)
        node._tree = self
        _replace_value(node, value, self)
        self._nodes.insert(index, node)
        self._by_label[label] = node
        self._emit('ins', node)
        return node

    def _remove(self, node: DataNode) -> None:
        del self._nodes[self._index_of(node)]
        del self._by_label[node._label]
        node._tree = None
        self._emit('del', node)

    def _index_of(self, node: DataNode) -> int:
        for index, candidate in enumerate(self._nodes):
            if candidate is node:
                return index
        return -1

    def _resolve_position(self, position: str | int | None) -> int:
        """Return the list index where a new node goes (see setItem for the syntax)."""
        count = len(self._nodes)
        if position is None or position == '>':
            return count
        if position == '<':
            return 0
        if isinstance(position, int) and not isinstance(position, bool):
            return position if 0 <= position < count else count
        if not isinstance(position, str) or not position:
            raise ValueError('invalid _position %r: use "<", ">", an int, "#N", '
                             '"<label", ">label", "<#N" or ">#N"' % (position,))
        if position.startswith('#'):
            return min(_parse_position_index(position[1:], position), count)
        direction, reference = '<', position
        if position[0] in '<>':
            direction, reference = position[0], position[1:]
        if reference.startswith('#'):
            index = _parse_position_index(reference[1:], position)
            if index >= count:
                return count
        else:
            reference_node = self._by_label.get(reference)
            if reference_node is None:
                return count
            index = self._index_of(reference_node)
        return index + 1 if direction == '>' else index


def _parse_position_index(text: str, position: str) -> int:
    if not (text.isdigit() and text.isascii()):
        raise ValueError('invalid _position %r: "#" must be followed by a '
                         'non-negative integer' % (position,))
    return int(text)


def _is_plain_label(path: str) -> bool:
    return '.' not in path and '?' not in path and not path.startswith('#')


def _parse_path(path: Any) -> tuple[list[str], str | None]:
    """Split a path into its labels and the attribute name after '?' (None if absent)."""
    if isinstance(path, str):
        attribute_name = None
        if '?' in path:
            path, attribute_name = path.split('?', 1)
        return [label for label in path.split('.') if label], attribute_name
    if isinstance(path, (list, tuple)):
        return [str(label) for label in path if label != ''], None
    # Bag turns other keys (ints, dates) into one label with '.' replaced by '_'.
    return [str(path).replace('.', '_')], None


def _parse_node_path(path: Any, method: str) -> list[str]:
    labels, attribute_name = _parse_path(path)
    if attribute_name is not None:
        raise ValueError('%s takes a node path, got %r: use getAttr/setAttr for '
                         'attributes' % (method, path))
    return labels


def _combine_attributes(attributes: dict | None, kwargs: dict) -> dict | None:
    if not kwargs:
        return attributes
    if not attributes:
        return kwargs
    combined = dict(attributes)
    combined.update(kwargs)
    return combined


def _merge_attributes(target: dict, updates: dict) -> bool:
    """Merge ``updates`` into ``target``, where None removes a key, and return whether ``target`` changed."""
    changed = False
    for name, value in updates.items():
        if value is None:
            if name in target:
                del target[name]
                changed = True
            continue
        if name not in target or _value_changed(target[name], value):
            changed = True
        target[name] = value
    return changed


def _value_changed(old: Any, new: Any) -> bool:
    if old is new:
        return False
    # Replacing a subtree object is always a change: comparing whole trees would
    # cost O(size) per write, and subscribers holding old nodes must hear of it.
    if isinstance(old, DataTree) or isinstance(new, DataTree):
        return True
    if type(old) is not type(new):
        return True
    try:
        return bool(old != new)
    except Exception:
        # Values whose comparison raises or is ambiguous (array-like) count as changed.
        return True


def _copy_value(value: Any) -> Any:
    return value.deepcopy() if isinstance(value, DataTree) else value


def _check_attachable(value: DataTree, node: DataNode, owner: DataTree | None) -> None:
    """Raise ValueError unless ``value`` may become the value of ``node`` inside ``owner``."""
    holder = value._parent_node
    if holder is not None and holder is not node and holder._tree is not None:
        raise ValueError('cannot store DataTree %r under %r: it already belongs to another '
                         'tree, so pop it first or store a deepcopy()' % (value, node._label))
    tree = owner
    while tree is not None:
        if tree is value:
            raise ValueError('cannot store DataTree %r under %r: the tree would contain '
                             'itself' % (value, node._label))
        parent = tree._parent_node
        tree = parent._tree if parent is not None else None


def _replace_value(node: DataNode, value: Any, owner: DataTree | None) -> Any:
    """Store ``value`` in ``node``, moving DataTree parent links, and return the old value."""
    old = node._value
    if isinstance(value, DataTree) and value is not old:
        _check_attachable(value, node, owner)
    if isinstance(old, DataTree) and old is not value and old._parent_node is node:
        old._parent_node = None
    if isinstance(value, DataTree):
        value._parent_node = node
    node._value = value
    return old


def _update_node(node: DataNode, value: Any, attributes: dict | None) -> None:
    """Store a value and merge attributes into an existing node, emitting 'upd' on a change.

    The new value is stored even when it compares equal, so later reads return
    the object the caller passed. Only the event is skipped.
    """
    old = _replace_value(node, value, node._tree)
    changed = _value_changed(old, value)
    if attributes and _merge_attributes(node.attr, attributes):
        changed = True
    if changed and node._tree is not None:
        node._tree._emit('upd', node)
