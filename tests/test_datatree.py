import copy
import pickle

import pytest

from gnr_daemon.registers.datatree import DataNode, DataTree


def record_events(tree):
    """Subscribe a recorder to ``tree`` and return its list of (event, path, value) tuples."""
    events = []

    def recorder(event, path, node):
        value = node.value
        events.append((event, path, 'tree' if isinstance(value, DataTree) else value))

    tree.subscribe('recorder', recorder)
    return events


def sample_tree():
    tree = DataTree()
    tree.setItem('people.alice', 30, role='admin')
    tree.setItem('people.bob', 25, role='user')
    tree.setItem('config.theme', 'dark')
    return tree


# ------------------------------------------------------------------ construction

def test_dict_source_nests_trees():
    tree = DataTree({'a': {'b': 1}})
    assert isinstance(tree['a'], DataTree)
    assert tree['a.b'] == 1


def test_dict_source_dotted_keys_are_paths():
    tree = DataTree({'a.b': 1})
    assert tree['a.b'] == 1
    assert tree.keys() == ['a']


def test_list_source_with_attributes():
    tree = DataTree([('a', 1), ('b', 2, {'color': 'red'})])
    assert tree.items() == [('a', 1), ('b', 2)]
    assert tree.getAttr('b', 'color') == 'red'


def test_list_source_keeps_dict_values():
    tree = DataTree([('a', {'x': 1})])
    assert tree['a'] == {'x': 1}


@pytest.mark.parametrize('source', [[('a',)], [('a', 1, {}, 'extra')], ['abc'], [('a', 1, 'attr')]])
def test_list_source_rejects_bad_entry(source):
    with pytest.raises(ValueError):
        DataTree(source)


def test_source_rejects_other_types():
    with pytest.raises(TypeError):
        DataTree(42)


def test_tree_source_copies_structure():
    original = sample_tree()
    copied = DataTree(original)
    copied['people.alice'] = 99
    copied.setAttr('people.bob', role='guest')
    assert copied != original
    assert original['people.alice'] == 30
    assert original.getAttr('people.bob', 'role') == 'user'


# ------------------------------------------------------------------ paths

def test_getitem_nested_path():
    assert sample_tree().getItem('people.alice') == 30


def test_getitem_missing_returns_default():
    tree = sample_tree()
    assert tree.getItem('people.carol') is None
    assert tree.getItem('nobody.here', 'dflt') == 'dflt'


@pytest.mark.parametrize('path', ['', None])
def test_getitem_empty_returns_tree(path):
    tree = sample_tree()
    assert tree.getItem(path) is tree


def test_getitem_through_leaf_returns_default():
    tree = sample_tree()
    assert tree.getItem('people.alice.age', 'none') == 'none'


@pytest.mark.parametrize('path, expected', [
    ('#0.alice', 30),
    ('people.#1', 25),
    ('#1.#0', 'dark'),
    ('people.#2', None),
])
def test_getitem_positional_labels(path, expected):
    assert sample_tree().getItem(path) == expected


def test_getitem_attribute_selector():
    tree = sample_tree()
    assert tree.getItem('people.#role=user') == 25
    assert tree.getItem('people.#role=nobody') is None


def test_getitem_attribute_suffix():
    tree = sample_tree()
    assert tree.getItem('people.alice?role') == 'admin'
    assert tree.getItem('people.alice?missing', 'x') == 'x'
    assert tree.getItem('people.carol?role', 'x') == 'x'


def test_getitem_list_path():
    assert sample_tree().getItem(['people', 'bob']) == 25


def test_getitem_skips_empty_segments():
    assert sample_tree().getItem('people..alice') == 30


def test_non_string_key_becomes_label():
    tree = DataTree()
    tree[5] = 'five'
    assert tree.keys() == ['5']
    assert tree[5] == 'five'


def test_setitem_creates_intermediate_trees():
    tree = DataTree()
    tree.setItem('a.b.c', 1)
    assert isinstance(tree['a'], DataTree)
    assert isinstance(tree['a.b'], DataTree)
    assert tree['a.b.c'] == 1


def test_setitem_replaces_leaf_on_the_way():
    tree = DataTree({'a': 1})
    tree['a.b'] = 2
    assert tree['a.b'] == 2


def test_setitem_existing_keeps_position():
    tree = DataTree([('a', 1), ('b', 2)])
    tree.setItem('a', 10, _position='>')
    assert tree.items() == [('a', 10), ('b', 2)]


def test_setitem_empty_path_rejected():
    with pytest.raises(ValueError):
        DataTree().setItem('', 1)


def test_setitem_missing_positional_rejected():
    with pytest.raises(KeyError):
        DataTree().setItem('#3', 1)


def test_setitem_label_with_dot_rejected():
    with pytest.raises(ValueError):
        DataTree().setItem(['a.b'], 1)


def test_get_reads_direct_child_only():
    tree = sample_tree()
    assert isinstance(tree.get('people'), DataTree)
    assert tree.get('people.alice') is None
    assert tree.get('#1') is tree['config']
    assert tree['people'].get('alice?role') == 'admin'
    assert tree.get('missing', 'dflt') == 'dflt'


# ------------------------------------------------------------------ positions

@pytest.mark.parametrize('position, expected', [
    (None, ['a', 'b', 'c', 'new']),
    ('>', ['a', 'b', 'c', 'new']),
    ('<', ['new', 'a', 'b', 'c']),
    (0, ['new', 'a', 'b', 'c']),
    (1, ['a', 'new', 'b', 'c']),
    (3, ['a', 'b', 'c', 'new']),
    (99, ['a', 'b', 'c', 'new']),
    (-1, ['a', 'b', 'c', 'new']),
    ('#2', ['a', 'b', 'new', 'c']),
    ('<b', ['a', 'new', 'b', 'c']),
    ('>b', ['a', 'b', 'new', 'c']),
    ('b', ['a', 'new', 'b', 'c']),
    ('<#0', ['new', 'a', 'b', 'c']),
    ('>#0', ['a', 'new', 'b', 'c']),
    ('<missing', ['a', 'b', 'c', 'new']),
])
def test_setitem_position(position, expected):
    tree = DataTree([('a', 1), ('b', 2), ('c', 3)])
    tree.setItem('new', 0, _position=position)
    assert tree.keys() == expected


@pytest.mark.parametrize('position', ['#x', '<#-1', '', 1.5])
def test_setitem_invalid_position(position):
    with pytest.raises(ValueError):
        DataTree([('a', 1)]).setItem('new', 0, _position=position)


def test_position_applies_to_last_label():
    tree = DataTree([('x', 1)])
    tree.setItem('a.b', 1, _position='<')
    assert tree.keys() == ['x', 'a']


# ------------------------------------------------------------------ attributes

def test_setitem_kwargs_become_attributes():
    tree = DataTree()
    tree.setItem('a', 1, _attributes={'x': 1}, y=2)
    assert tree.getAttr('a') == {'x': 1, 'y': 2}


def test_setitem_merges_existing_attributes():
    tree = DataTree()
    tree.setItem('a', 1, x=1, y=2)
    tree.setItem('a', 2, y=3, z=4)
    assert tree.getAttr('a') == {'x': 1, 'y': 3, 'z': 4}


def test_setitem_without_attributes_keeps_them():
    tree = DataTree()
    tree.setItem('a', 1, x=1)
    tree['a'] = 2
    assert tree.getAttr('a') == {'x': 1}


def test_none_attribute_removes_it():
    tree = DataTree()
    tree.setItem('a', 1, x=1, y=2)
    tree.setAttr('a', x=None)
    assert tree.getAttr('a') == {'y': 2}


def test_setattr_creates_missing_node():
    tree = DataTree()
    tree.setAttr('a.b', color='red')
    assert tree.getNode('a.b').value is None
    assert tree.getAttr('a.b', 'color') == 'red'


def test_setattr_dict_and_kwargs():
    tree = DataTree({'a': 1})
    tree.setAttr('a', {'x': 1}, y=2)
    assert tree.getAttr('a') == {'x': 1, 'y': 2}


def test_setitem_attribute_suffix_sets_attribute():
    tree = DataTree({'a': 1})
    tree.setItem('a?color', 'red')
    assert tree['a'] == 1
    assert tree.getAttr('a', 'color') == 'red'


def test_getattr_missing_returns_default():
    tree = DataTree({'a': 1})
    assert tree.getAttr('a', 'x', 'dflt') == 'dflt'
    assert tree.getAttr('missing', 'x', 'dflt') == 'dflt'


def test_getattr_returns_copy():
    tree = DataTree()
    tree.setItem('a', 1, x=1)
    tree.getAttr('a')['x'] = 2
    assert tree.getAttr('a', 'x') == 1


def test_subtree_setattr_empty_path():
    tree = DataTree()
    tree['a.b'] = 1
    tree['a'].setAttr('', color='red')
    assert tree.getAttr('a', 'color') == 'red'


def test_root_setattr_empty_path_rejected():
    with pytest.raises(ValueError):
        DataTree().setAttr('', color='red')


@pytest.mark.parametrize('method', ['getNode', 'popNode', 'setAttr'])
def test_node_methods_reject_attribute_suffix(method):
    with pytest.raises(ValueError):
        getattr(DataTree({'a': 1}), method)('a?x')


# ------------------------------------------------------------------ nodes

def test_getnode_returns_node():
    node = sample_tree().getNode('people.alice')
    assert isinstance(node, DataNode)
    assert node.label == 'alice'
    assert node.value == 30
    assert node.getAttr('role') == 'admin'


def test_getnode_missing_returns_none():
    assert sample_tree().getNode('people.carol') is None


def test_getnode_autocreate():
    tree = DataTree()
    node = tree.getNode('a.b', autocreate=True)
    assert node.label == 'b'
    assert node.value is None
    assert 'a.b' in tree


def test_getnode_empty_path_is_parent_node():
    tree = sample_tree()
    assert tree.getNode('') is None
    assert tree['people'].getNode('') is tree.getNode('people')


def test_node_value_assignment_updates_tree():
    tree = DataTree({'a': 1})
    tree.getNode('a').value = 2
    assert tree['a'] == 2


def test_node_label_is_read_only():
    node = DataTree({'a': 1}).getNode('a')
    with pytest.raises(AttributeError):
        node.label = 'b'


def test_popnode_returns_removed_node():
    tree = sample_tree()
    node = tree.popNode('people.alice')
    assert node.label == 'alice'
    assert node.value == 30
    assert 'people.alice' not in tree


def test_popnode_missing_returns_none():
    assert sample_tree().popNode('people.carol') is None


def test_pop_returns_value_or_default():
    tree = sample_tree()
    assert tree.pop('people.bob') == 25
    assert tree.pop('people.bob', 'gone') == 'gone'


def test_delitem_and_del_statement():
    tree = sample_tree()
    assert tree.delItem('config.theme') == 'dark'
    del tree['people.alice']
    del tree['people.nobody']
    assert tree['people'].keys() == ['bob']
    assert tree['config'].keys() == []


def test_index_consistent_after_delete():
    tree = DataTree([('a', 1), ('b', 2), ('c', 3)])
    del tree['b']
    tree['d'] = 4
    assert tree.items() == [('a', 1), ('c', 3), ('d', 4)]
    assert tree['#1'] == 3


# ------------------------------------------------------------------ protocols

def test_contains_paths_nodes_and_attributes():
    tree = sample_tree()
    node = tree['people'].getNode('alice')
    assert 'people.alice' in tree
    assert 'people.carol' not in tree
    assert 'people.alice?role' in tree
    assert 'people.alice?age' not in tree
    assert node in tree['people']
    assert node not in tree
    assert 42 not in tree


def test_len_and_iter_over_nodes():
    tree = sample_tree()
    assert len(tree) == 2
    assert [node.label for node in tree] == ['people', 'config']


def test_iter_allows_changes_during_loop():
    tree = DataTree([('a', 1), ('b', 2)])
    for node in tree:
        del tree[node.label]
    assert len(tree) == 0


def test_public_aliases():
    tree = sample_tree()
    assert tree.len() == 2
    assert tree.contains('config.theme')
    assert tree.equals(sample_tree())
    assert not tree.equals('not a tree')


def test_keys_values_items():
    tree = DataTree([('a', 1), ('b', 2)])
    assert tree.keys() == ['a', 'b']
    assert tree.values() == [1, 2]
    assert tree.items() == [('a', 1), ('b', 2)]


def test_asdict_is_shallow():
    tree = DataTree({'A': 1, 'b': {'c': 2}})
    result = tree.asDict(lower=True)
    assert result['a'] == 1
    assert result['b'] is tree['b']
    assert tree.asDict(ascii=True) == {'A': 1, 'b': tree['b']}


def test_asstring_lists_nested_nodes():
    tree = DataTree()
    tree.setItem('a.b', 'x', color='red')
    assert tree.asString() == "a:\n    b: 'x' <color='red'>"
    assert str(tree) == tree.asString()


# ------------------------------------------------------------------ equality

def test_equal_trees():
    assert sample_tree() == sample_tree()


@pytest.mark.parametrize('change', [
    lambda tree: tree.setItem('people.alice', 31),
    lambda tree: tree.setAttr('people.alice', role='user'),
    lambda tree: tree.setItem('people.carol', 1),
    lambda tree: tree.pop('config'),
])
def test_unequal_trees(change):
    tree = sample_tree()
    change(tree)
    assert tree != sample_tree()


def test_equality_depends_on_order():
    assert DataTree([('a', 1), ('b', 2)]) != DataTree([('b', 2), ('a', 1)])


def test_tree_not_equal_to_dict():
    assert DataTree({'a': 1}) != {'a': 1}


# ------------------------------------------------------------------ digest

def test_digest_default_columns():
    tree = DataTree()
    tree.setItem('a', 1, x=1)
    tree.setItem('b', 2)
    assert tree.digest() == [('a', 1, {'x': 1}), ('b', 2, {})]


def test_digest_single_key_is_flat():
    assert sample_tree()['people'].digest('#k') == ['alice', 'bob']


def test_digest_attribute_and_inner_value():
    tree = sample_tree()
    assert tree['people'].digest('#k,#a.role') == [('alice', 'admin'), ('bob', 'user')]
    assert tree.digest(['#k', '#v.alice']) == [('people', 30), ('config', None)]


def test_digest_path_prefix():
    assert sample_tree().digest('people:#v') == [30, 25]
    assert sample_tree().digest('missing:#v') == []


def test_digest_unknown_key_rejected():
    with pytest.raises(ValueError):
        sample_tree().digest('#z')


# ------------------------------------------------------------------ getNodeByAttr

def test_getnodebyattr_finds_nested_node():
    tree = DataTree()
    tree.setItem('a.b.c', 1, id='target')
    path = []
    node = tree.getNodeByAttr('id', 'target', path)
    assert node is tree.getNode('a.b.c')
    assert path == ['a', 'b', 'c']


def test_getnodebyattr_is_depth_first():
    tree = DataTree()
    tree.setItem('a.deep', 1, tag='x')
    tree.setItem('b', 2, tag='x')
    assert tree.getNodeByAttr('tag', 'x').label == 'deep'


def test_getnodebyattr_missing_returns_none():
    path = []
    assert sample_tree().getNodeByAttr('role', 'root', path) is None
    assert path == []


def test_getnodebyattr_without_path_list():
    assert sample_tree().getNodeByAttr('role', 'user').label == 'bob'


# ------------------------------------------------------------------ update

def test_update_merges_subtrees():
    tree = sample_tree()
    tree.update({'people': {'bob': 26, 'carol': 40}, 'extra': 1})
    assert tree['people'].items() == [('alice', 30), ('bob', 26), ('carol', 40)]
    assert tree['extra'] == 1
    assert tree['config.theme'] == 'dark'


def test_update_merges_attributes():
    tree = sample_tree()
    other = DataTree()
    other.setItem('people.bob', 26, team='blue')
    tree.update(other)
    assert tree.getAttr('people.bob') == {'role': 'user', 'team': 'blue'}


def test_update_replaces_leaf_with_tree():
    tree = DataTree({'a': 1})
    tree.update({'a': {'b': 2}})
    assert tree['a.b'] == 2


def test_update_copies_new_subtrees():
    tree = DataTree()
    other = DataTree({'a': {'b': 1}})
    tree.update(other)
    tree['a.b'] = 2
    assert other['a.b'] == 1


def test_update_rejects_other_types():
    with pytest.raises(TypeError):
        DataTree().update([('a', 1)])


def test_update_emits_per_changed_leaf():
    tree = sample_tree()
    events = record_events(tree)
    tree.update({'people': {'alice': 30, 'bob': 26}, 'config': {'lang': 'it'}})
    assert events == [('upd', 'people.bob', 26), ('ins', 'config.lang', 'it')]


# ------------------------------------------------------------------ copies

def test_deepcopy_is_equal_and_independent():
    tree = sample_tree()
    copied = tree.deepcopy()
    assert copied == tree
    copied['people.alice'] = 0
    assert tree['people.alice'] == 30


def test_copy_module_copies_structure():
    tree = sample_tree()
    shallow = copy.copy(tree)
    deep = copy.deepcopy(tree)
    assert shallow == tree
    assert deep == tree
    assert shallow['people'] is not tree['people']


def test_copy_keeps_original_event_paths():
    tree = sample_tree()
    copy.copy(tree)
    events = record_events(tree)
    tree['people.alice'] = 1
    assert events == [('upd', 'people.alice', 1)]


# ------------------------------------------------------------------ subtree ownership

def test_attached_subtree_cannot_be_shared():
    tree = sample_tree()
    with pytest.raises(ValueError):
        tree['copy'] = tree['people']


def test_tree_cannot_contain_itself():
    tree = sample_tree()
    with pytest.raises(ValueError):
        tree['people.self'] = tree


def test_popped_subtree_can_move():
    tree = sample_tree()
    people = tree.pop('people')
    tree['moved.people'] = people
    assert tree['moved.people.alice'] == 30


def test_rejected_share_leaves_tree_unchanged():
    tree = sample_tree()
    before = tree.deepcopy()
    with pytest.raises(ValueError):
        tree['config.people'] = tree['people']
    assert tree == before


# ------------------------------------------------------------------ events

def test_events_insert_update_delete():
    tree = DataTree()
    events = record_events(tree)
    tree['a'] = 1
    tree['a'] = 2
    del tree['a']
    assert events == [('ins', 'a', 1), ('upd', 'a', 2), ('del', 'a', 2)]


def test_nested_events_have_full_paths():
    tree = DataTree()
    events = record_events(tree)
    tree['a.b.c'] = 1
    tree['a.b.c'] = 2
    tree.pop('a.b.c')
    assert events == [
        ('ins', 'a', 'tree'),
        ('ins', 'a.b', 'tree'),
        ('ins', 'a.b.c', 1),
        ('upd', 'a.b.c', 2),
        ('del', 'a.b.c', 2),
    ]


def test_change_on_subtree_object_reaches_root():
    tree = sample_tree()
    events = record_events(tree)
    tree['people'].setItem('alice', 31)
    assert events == [('upd', 'people.alice', 31)]


def test_subtree_subscriber_gets_relative_path():
    tree = sample_tree()
    sub_events = record_events(tree['people'])
    tree['people.alice'] = 31
    assert sub_events == [('upd', 'alice', 31)]


def test_unchanged_value_emits_nothing():
    tree = sample_tree()
    events = record_events(tree)
    tree['people.alice'] = 30
    tree.setAttr('people.alice', role='admin')
    assert events == []


def test_type_change_counts_as_update():
    tree = DataTree({'a': 1})
    events = record_events(tree)
    tree['a'] = True
    assert events == [('upd', 'a', True)]


def test_new_subtree_object_emits_update():
    tree = DataTree({'a': {}})
    events = record_events(tree)
    tree['a'] = DataTree()
    assert events == [('upd', 'a', 'tree')]


def test_attribute_change_emits_update():
    tree = sample_tree()
    events = record_events(tree)
    tree.setAttr('people.bob', role='admin')
    tree.getNode('people.alice').setAttr(role=None)
    assert events == [('upd', 'people.bob', 25), ('upd', 'people.alice', 30)]


def test_leaf_replaced_by_tree_emits_update():
    tree = DataTree({'a': 1})
    events = record_events(tree)
    tree['a.b'] = 2
    assert events == [('upd', 'a', 'tree'), ('ins', 'a.b', 2)]


def test_tree_inserted_later_emits_deep_paths():
    tree = DataTree()
    events = record_events(tree)
    branch = DataTree({'x': {'y': 1}})
    tree['a.branch'] = branch
    branch['x.y'] = 2
    branch['x.z.w'] = 3
    assert events == [
        ('ins', 'a', 'tree'),
        ('ins', 'a.branch', 'tree'),
        ('upd', 'a.branch.x.y', 2),
        ('ins', 'a.branch.x.z', 'tree'),
        ('ins', 'a.branch.x.z.w', 3),
    ]


def test_popped_subtree_stops_emitting():
    tree = sample_tree()
    events = record_events(tree)
    people = tree.pop('people')
    people['alice'] = 1
    assert events == [('del', 'people', 'tree')]


def test_replaced_subtree_stops_emitting():
    tree = sample_tree()
    old_people = tree['people']
    tree['people'] = DataTree()
    events = record_events(tree)
    old_people['alice'] = 1
    assert events == []


def test_unsubscribe_stops_events():
    tree = DataTree()
    events = record_events(tree)
    tree.unsubscribe('recorder')
    tree.unsubscribe('never-subscribed')
    tree['a'] = 1
    assert events == []


def test_subscribe_rejects_non_callable():
    with pytest.raises(TypeError):
        DataTree().subscribe('key', 'not callable')


def test_failing_subscriber_does_not_block_others(caplog):
    tree = DataTree()

    def broken(event, path, node):
        raise RuntimeError('boom')

    tree.subscribe('broken', broken)
    events = record_events(tree)
    tree['a'] = 1
    assert tree['a'] == 1
    assert events == [('ins', 'a', 1)]
    assert 'broken' in caplog.text


# ------------------------------------------------------------------ pickling

def test_pickle_round_trip_is_exact():
    tree = sample_tree()
    tree.setItem('empty', DataTree())
    restored = pickle.loads(pickle.dumps(tree, protocol=5))
    assert restored == tree
    assert restored.keys() == tree.keys()
    assert restored.getAttr('people.alice') == {'role': 'admin'}


def test_pickle_drops_subscribers():
    tree = sample_tree()
    record_events(tree)
    restored = pickle.loads(pickle.dumps(tree, protocol=5))
    assert not restored._subscribers


def test_pickle_of_unpicklable_subscriber_succeeds():
    tree = sample_tree()
    tree.subscribe('lambda', lambda event, path, node: None)
    assert pickle.loads(pickle.dumps(tree, protocol=5)) == tree


def test_events_after_unpickle_and_resubscribe():
    tree = DataTree()
    tree['a.b.c'] = 1
    restored = pickle.loads(pickle.dumps(tree, protocol=5))
    events = record_events(restored)
    restored['a.b.c'] = 2
    restored['a']['b'].setItem('d', 3)
    assert events == [('upd', 'a.b.c', 2), ('ins', 'a.b.d', 3)]


def test_unpickled_subtree_is_a_root():
    tree = sample_tree()
    restored = pickle.loads(pickle.dumps(tree['people'], protocol=5))
    assert restored.getNode('') is None
    tree['other'] = restored
    assert tree['other.alice'] == 30


def test_pickle_survives_value_cycle():
    tree = DataTree()
    holder = [tree]
    tree['holder'] = holder
    restored = pickle.loads(pickle.dumps(tree, protocol=5))
    assert restored['holder'][0] is restored


def test_datanode_pickles_alone():
    node = sample_tree().getNode('people.alice')
    restored = pickle.loads(pickle.dumps(node, protocol=5))
    assert restored == node
    assert restored.getAttr() == {'role': 'admin'}
