from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from gnr_daemon.registers.typedtext import TypedTextError, decode_typed_text

UTC_PLUS_2 = timezone(timedelta(hours=2))


@pytest.mark.parametrize('text, expected', [
    ('hello::T', 'hello'),
    ('http://example.com::T', 'http://example.com'),
    ('a::b::T', 'a::b'),
    ('x::TEXT', 'x'),
    ('x::P', 'x'),
    ('x::A', 'x'),
    ('::T', ''),
    ('12::L', 12),
    ('-12::L', -12),
    ('+7::I', 7),
    ('007::INT', 7),
    ('12::INTEGER', 12),
    ('12::LONG', 12),
    ('12::LONGINT', 12),
    ('::L', 0),
    ('1.5::R', 1.5),
    ('-.5::F', -0.5),
    ('1e3::FLOAT', 1000.0),
    ('2.5E-2::REAL', 0.025),
    ('3::R', 3.0),
    ('::R', 0.0),
    ('1.50::N', Decimal('1.50')),
    ('-10::NUMERIC', Decimal('-10')),
    ('1e2::DECIMAL', Decimal('1e2')),
    ('::N', Decimal('0')),
    ('2024-05-01::D', date(2024, 5, 1)),
    ('2024-5-1::D', date(2024, 5, 1)),
    ('2024/05/01::DATE', date(2024, 5, 1)),
    ('2024.05.01::D', date(2024, 5, 1)),
    ('2024-05-01T23:10:00::D', date(2024, 5, 1)),
    ('0000-00-00::D', None),
    ('::D', None),
    ('2024-05-01T10:20:30.123::DH', datetime(2024, 5, 1, 10, 20, 30, 123000)),
    ('2024-05-01 10:20::DT', datetime(2024, 5, 1, 10, 20)),
    ('2024-05-01T10:20:30Z::DHZ', datetime(2024, 5, 1, 10, 20, 30, tzinfo=timezone.utc)),
    ('2024-05-01T10:20:30+02:00::DATETIME', datetime(2024, 5, 1, 10, 20, 30, tzinfo=UTC_PLUS_2)),
    ('::DH', None),
    ('10:20:30::H', time(10, 20, 30)),
    ('10:20::TIME', time(10, 20)),
    ('10:20:30.5::H', time(10, 20, 30, 500000)),
    ('10:20:30+02:00::HZ', time(10, 20, 30, tzinfo=UTC_PLUS_2)),
    ('::H', None),
    ('{"a":1}::JS', {'a': 1}),
    ('[1, "x", null]::JS', [1, 'x', None]),
    ('"text"::JS', 'text'),
    ('::JS', None),
    ('::NN', None),
    ('None::NONE', None),
    ('null::NULL', None),
])
def test_decodes_valid_text(text, expected):
    assert decode_typed_text(text) == expected


@pytest.mark.parametrize('text, expected_type', [
    ('12::L', int),
    ('1.5::R', float),
    ('1.5::N', Decimal),
    ('true::B', bool),
    ('2024-05-01::D', date),
    ('2024-05-01T10:00::DH', datetime),
    ('10:00::H', time),
])
def test_result_has_exact_type(text, expected_type):
    assert type(decode_typed_text(text)) is expected_type


@pytest.mark.parametrize('word', ['true', 'True', 'TRUE', 'yes', 'Yes', 'y', 'Y', '1'])
def test_bool_true_words(word):
    assert decode_typed_text(word + '::B') is True


@pytest.mark.parametrize('word', ['false', 'False', 'FALSE', 'no', 'No', 'n', 'N', '0', ''])
def test_bool_false_words(word):
    assert decode_typed_text(word + '::B') is False


def test_bool_long_alias():
    assert decode_typed_text('yes::BOOLEAN') is True
    assert decode_typed_text('no::BOOL') is False


def test_datetime_naive_stays_naive():
    assert decode_typed_text('2024-05-01T10:20:30::DHZ').tzinfo is None


def test_datetime_aware_stays_aware():
    assert decode_typed_text('2024-05-01T10:20:30Z::DH').tzinfo is timezone.utc


@pytest.mark.parametrize('text, reason', [
    ('12x::L', "'12x' is not an integer"),
    ('1.0::L', "'1.0' is not an integer"),
    ('1_000::L', "'1_000' is not an integer"),
    (' 12::L', "' 12' is not an integer"),
    ('\u0661\u0662::L', 'is not an integer'),
    ('abc::R', "'abc' is not a decimal number"),
    ('inf::R', "'inf' is not a decimal number"),
    ('nan::R', "'nan' is not a decimal number"),
    ('Infinity::R', "'Infinity' is not a decimal number"),
    ('1e999::R', "'1e999' is out of the float range"),
    ('1,5::N', "'1,5' is not a decimal number"),
    ('NaN::N', "'NaN' is not a decimal number"),
    ('maybe::B', "'maybe' is not a boolean"),
    ('on::B', "'on' is not a boolean"),
    ('2024-13-01::D', "'2024-13-01' is not a valid date (month must be in 1..12)"),
    ('2024-02-30::D', "'2024-02-30' is not a valid date"),
    ('today::D', "'today' is not a date"),
    ('01/05/2024::D', "'01/05/2024' is not a date"),
    ('2024-05-01T25:00::DH', "'2024-05-01T25:00' is not an ISO 8601 date-time"),
    ('yesterday::DHZ', "'yesterday' is not an ISO 8601 date-time"),
    ('25:00::H', "'25:00' is not an ISO 8601 time"),
    ('noon::H', "'noon' is not an ISO 8601 time"),
    ('{a:1}::JS', "'{a:1}' is not valid JSON"),
    ('NaN::JS', 'JSON constant NaN is not allowed'),
    ('[Infinity]::JS', 'JSON constant Infinity is not allowed'),
    ('x::NN', "'x' is not empty, None or null"),
])
def test_rejects_invalid_value(text, reason):
    with pytest.raises(TypedTextError) as caught:
        decode_typed_text(text)
    assert reason in str(caught.value)


def test_error_message_format():
    with pytest.raises(TypedTextError) as caught:
        decode_typed_text('12x::L')
    assert str(caught.value) == "invalid typed text '12x::L': '12x' is not an integer"


def test_error_keeps_text_and_reason():
    with pytest.raises(TypedTextError) as caught:
        decode_typed_text('12x::L')
    assert caught.value.text == '12x::L'
    assert caught.value.reason == "'12x' is not an integer"


def test_error_is_value_error():
    with pytest.raises(ValueError):
        decode_typed_text('12x::L')


def test_error_truncates_long_text():
    with pytest.raises(TypedTextError) as caught:
        decode_typed_text('9' * 500 + 'x::L')
    message = str(caught.value)
    assert message.startswith("invalid typed text '999")
    assert '...' in message
    assert len(message) < 250


def test_deeply_nested_json_rejected():
    with pytest.raises(TypedTextError):
        decode_typed_text('[' * 100000 + ']' * 100000 + '::JS')


@pytest.mark.parametrize('text', ['x::ZZ', '1::INTX', 'x::JSON', 'x::HTML'])
def test_unknown_code_rejected(text):
    with pytest.raises(TypedTextError) as caught:
        decode_typed_text(text)
    assert 'unknown type code' in str(caught.value)


@pytest.mark.parametrize('text', [
    '<GenRoBag/>::BAG', 'x::GNRBAG', '::X', '1 day::TD', 'x::TIMEDELTA',
    'mod.func::RPC', 'os:system::CLS',
])
def test_unsupported_code_rejected(text):
    with pytest.raises(TypedTextError) as caught:
        decode_typed_text(text)
    assert 'is not supported by the daemon' in str(caught.value)


@pytest.mark.parametrize('text', [
    'plain', '', 'a::b', 'a::Lx', 'a::l', 'time 10:20', 'trailing::', '::',
    'a::L1', 'a:: L', 'x::t',
])
def test_plain_text_unchanged(text):
    assert decode_typed_text(text) == text


@pytest.mark.parametrize('data, expected', [
    (b'12::L', 12),
    (bytearray(b'1.5::R'), 1.5),
    ('caf\u00e9::T'.encode('utf-8'), 'caf\u00e9'),
    (b'plain bytes', 'plain bytes'),
])
def test_bytes_decoded_as_utf8(data, expected):
    assert decode_typed_text(data) == expected


def test_invalid_utf8_rejected():
    with pytest.raises(TypedTextError) as caught:
        decode_typed_text(b'\xff\xfe::L')
    assert 'not valid UTF-8' in str(caught.value)


@pytest.mark.parametrize('value', [12, 1.5, None, True, [1, 2], {'a': 1}])
def test_non_text_returned_unchanged(value):
    assert decode_typed_text(value) is value
