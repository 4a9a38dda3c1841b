import pickle
from datetime import datetime

import pytest

from gnr_daemon.registers.datachange import DataChange


def test_constructor_defaults():
    before = datetime.now()
    change = DataChange('a.b', 1)
    after = datetime.now()
    assert change.path == 'a.b'
    assert change.value == 1
    assert change.attributes is None
    assert change.fired is False
    assert change.reason is None
    assert change.change_idx is None
    assert change.delete is False
    assert before <= change.change_ts <= after


def test_constructor_keeps_arguments():
    ts = datetime(2024, 5, 1, 10, 0)
    change = DataChange('p', 'v', attributes={'x': 1}, fired=True, reason='r',
                        change_ts=ts, change_idx=7, delete=True)
    assert change.attributes == {'x': 1}
    assert change.fired is True
    assert change.reason == 'r'
    assert change.change_ts == ts
    assert change.change_idx == 7
    assert change.delete is True


def test_equality_ignores_value():
    assert DataChange('a', 1, reason='r') == DataChange('a', 2, reason='r')


@pytest.mark.parametrize('other', [
    DataChange('b', 1, reason='r'),
    DataChange('a', 1, reason='other'),
    DataChange('a', 1, reason='r', fired=True),
])
def test_inequality_on_key_fields(other):
    assert DataChange('a', 1, reason='r') != other


def test_not_equal_to_other_types():
    assert DataChange('a', 1) != ('a', None, False)


def test_hash_matches_equality():
    first = DataChange('a', 1, reason='r', change_idx=1)
    second = DataChange('a', 2, reason='r', change_idx=2)
    assert hash(first) == hash(second)
    assert len({first, second}) == 1


def test_list_membership_finds_pending_change():
    queue = [DataChange('a', 1), DataChange('b', 1)]
    assert DataChange('b', 99) in queue
    assert queue.index(DataChange('b', 99)) == 1


def test_has_no_instance_dict():
    change = DataChange('a', 1)
    with pytest.raises(AttributeError):
        change.extra = 1


def test_pickle_round_trip():
    change = DataChange('a', [1, 2], attributes={'x': 1}, fired=True, reason='r',
                        change_ts=datetime(2024, 5, 1), change_idx=3, delete=True)
    restored = pickle.loads(pickle.dumps(change, protocol=5))
    for name in DataChange.__slots__:
        assert getattr(restored, name) == getattr(change, name), name


def test_copy_has_independent_attributes():
    change = DataChange('a', 1, attributes={'x': 1}, change_idx=4)
    copied = change.copy()
    copied.attributes['page'] = 'p1'
    assert change.attributes == {'x': 1}
    assert copied.attributes == {'x': 1, 'page': 'p1'}


def test_copy_keeps_all_fields():
    change = DataChange('a', [1], attributes=None, fired=True, reason='r',
                        change_idx=4, delete=True)
    copied = change.copy()
    assert copied is not change
    for name in DataChange.__slots__:
        assert getattr(copied, name) == getattr(change, name), name
    assert copied.value is change.value


def test_repr_shows_key_fields():
    text = repr(DataChange('a.b', 'x' * 500, reason='r', change_idx=2))
    assert text.startswith("DataChange(path='a.b', value=")
    assert "reason='r'" in text
    assert 'change_idx=2' in text
    assert len(text) < 250
