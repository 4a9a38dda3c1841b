"""Store URL parsing: every accepted form, and malformed URLs rejected with the fix.

No server is contacted here.
"""

import pytest

from gnr_daemon.errors import ConfigurationError
from gnr_daemon.store import MemoryStore, open_store, parse_store_url
from gnr_daemon.store.urls import DEFAULT_PREFIX

# (url, expected fields); fields not named keep their defaults.
VALID = [
    ("memory:", {"scheme": "memory"}),
    ("memory://", {"scheme": "memory"}),
    ("redis://127.0.0.1", {"scheme": "redis", "hosts": (("127.0.0.1", 6379),), "db": 0}),
    ("redis://localhost:6380/3", {"hosts": (("localhost", 6380),), "db": 3}),
    ("redis://127.0.0.1:6380/", {"db": 0}),
    ("redis://127.0.0.1?db=5", {"db": 5}),
    ("redis://127.0.0.1/5?db=5", {"db": 5}),
    ("redis://[::1]:6381/2", {"hosts": (("::1", 6381),), "db": 2}),
    ("redis://[fe80::1]", {"hosts": (("fe80::1", 6379),)}),
    ("redis://:secret@127.0.0.1", {"username": None, "password": "secret"}),
    ("redis://app:secret@127.0.0.1", {"username": "app", "password": "secret"}),
    ("redis://app@127.0.0.1", {"username": "app", "password": None}),
    # Reserved characters, percent-encoded: @ : / ? # % and a space.
    ("redis://app:p%40ss%3Aw%2Frd%3F%23%25%20x@127.0.0.1",
     {"password": "p@ss:w/rd?#% x"}),
    ("redis://us%40er:pw@127.0.0.1", {"username": "us@er", "password": "pw"}),
    # An unencoded ':' after the first one belongs to the password.
    ("redis://app:a:b@127.0.0.1", {"username": "app", "password": "a:b"}),
    ("redis://:%C3%A9t%C3%A9@127.0.0.1", {"password": "été"}),
    ("redis://127.0.0.1?prefix=site1:", {"prefix": "site1:"}),
    ("redis://127.0.0.1?prefix=a%26b%3D", {"prefix": "a&b="}),
    ("redis://127.0.0.1", {"prefix": DEFAULT_PREFIX}),
    ("redis://127.0.0.1?socket_timeout=0.5&socket_connect_timeout=2&max_connections=8",
     {"options": {"socket_timeout": 0.5, "socket_connect_timeout": 2.0, "max_connections": 8}}),
    ("rediss://redis.example.org:6380/1?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=optional",
     {"scheme": "rediss", "hosts": (("redis.example.org", 6380),), "db": 1,
      "options": {"ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "optional"}}),
    ("rediss://h?ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_check_hostname=false",
     {"options": {"ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem",
                  "ssl_check_hostname": False}}),
    ("unix:///var/run/redis/redis.sock", {"scheme": "unix",
                                          "socket_path": "/var/run/redis/redis.sock", "db": 0}),
    ("unix:///tmp/r.sock?db=4&prefix=x:", {"socket_path": "/tmp/r.sock", "db": 4, "prefix": "x:"}),
    ("unix://:pw@/tmp/r.sock", {"socket_path": "/tmp/r.sock", "password": "pw"}),
    ("unix:///tmp/with%20space.sock", {"socket_path": "/tmp/with space.sock"}),
    ("redis+sentinel://127.0.0.1:26379/mymaster",
     {"scheme": "redis+sentinel", "hosts": (("127.0.0.1", 26379),),
      "service_name": "mymaster", "db": 0}),
    ("redis+sentinel://:pw@s1:26380,s2,[::1]:26381/mymaster/2",
     {"hosts": (("s1", 26380), ("s2", 26379), ("::1", 26381)), "service_name": "mymaster",
      "db": 2, "password": "pw"}),
    ("redis+sentinel://s1/mymaster?sentinel_password=s%40cret",
     {"options": {"sentinel_password": "s@cret"}}),
    ("REDIS://127.0.0.1", {"scheme": "redis"}),
]

# (url, fragment of the error message, secret that must not appear in it)
INVALID = [
    ("", "expected a URL such as", None),
    ("localhost:6379", "expected a URL such as", None),
    ("memcached://127.0.0.1", "unsupported scheme 'memcached'", None),
    ("memory://x", "takes nothing after the scheme", None),
    ("redis://", "the host is missing", None),
    ("redis://:pa/ss@127.0.0.1", "'/' in the user name or password must be percent-encoded as %2F",
     "pa/ss"),
    ("redis://:pa#ss@127.0.0.1", "percent-encoded as %23", "pa#ss"),
    ("redis://:pa?ss@127.0.0.1", "percent-encode a '?' in the user name or password as %3F",
     "pa?ss"),
    ("redis://:p@ss@127.0.0.1", "percent-encode it as %40", "p@ss"),
    ("redis://:p%zzss@127.0.0.1", "write a literal '%' as %25", "p%zzss"),
    ("redis://:100%@127.0.0.1", "write a literal '%' as %25", "100%"),
    ("redis://:%FF%FE@127.0.0.1", "not valid UTF-8", None),
    ("redis://:pass word@127.0.0.1", "white space", "pass word"),
    ("redis://::1:6379", "put it in brackets", None),
    ("redis://[::1", "no closing ']'", None),
    ("redis://[not-ip]:6379", "is not an IPv6 address", None),
    ("redis://[::1]x", "unexpected 'x' after the IPv6 address", None),
    ("redis://127.0.0.1:0", "invalid port '0'", None),
    ("redis://127.0.0.1:65536", "invalid port '65536'", None),
    ("redis://127.0.0.1:port", "invalid port 'port'", None),
    ("redis://127.0.0.1:", "invalid port ''", None),
    ("redis://bad_host!:6379", "invalid host", None),
    ("redis://127.0.0.1/x", "invalid database number 'x'", None),
    ("redis://127.0.0.1/-1", "invalid database number '-1'", None),
    ("redis://127.0.0.1/0/1", "expected /db", None),
    ("redis://127.0.0.1/1?db=2", "give it once", None),
    ("redis://h1,h2/0", "only accepted by redis+sentinel", None),
    ("redis://127.0.0.1?prefix", "has no value", None),
    ("redis://127.0.0.1?prefx=a:", "unknown query parameter 'prefx'", None),
    ("redis://127.0.0.1?prefix=a&prefix=b", "given twice", None),
    ("redis://127.0.0.1?prefix={x}", "hash tag", None),
    ("redis://127.0.0.1?prefix=", "cannot be empty", None),
    ("redis://127.0.0.1?socket_timeout=0", "positive number of seconds", None),
    ("redis://127.0.0.1?socket_timeout=soon", "invalid value 'soon' for socket_timeout", None),
    ("redis://127.0.0.1?max_connections=-1", "positive whole number", None),
    ("redis://127.0.0.1?ssl_ca_certs=/ca.pem", "not accepted by redis://", None),
    ("rediss://127.0.0.1?ssl_cert_reqs=maybe", "expected one of none, optional, required", None),
    ("unix://localhost/tmp/r.sock", "has no host", None),
    ("unix://", "socket path is missing", None),
    ("redis+sentinel://127.0.0.1:26379", "service name is missing", None),
    ("redis+sentinel://127.0.0.1:26379/m/0/1", "expected /service_name", None),
    ("redis+sentinel://127.0.0.1/m?sentinel_password=a%zz", "percent", None),
    ("redis://u:se%cret@127.0.0.1?x=1", "write a literal '%' as %25", "se%cret"),
]


@pytest.mark.parametrize("url, expected", VALID, ids=[case[0] for case in VALID])
def test_valid_url(url, expected):
    parsed = parse_store_url(url)
    for name, value in expected.items():
        if name == "options":
            for option, option_value in value.items():
                assert parsed.options[option] == option_value, option
        else:
            assert getattr(parsed, name) == value, name


@pytest.mark.parametrize("url, message, secret", INVALID, ids=[case[0] or "empty"
                                                                for case in INVALID])
def test_invalid_url(url, message, secret):
    with pytest.raises(ConfigurationError) as error:
        parse_store_url(url)
    text = str(error.value)
    assert message in text
    if secret:
        assert secret not in text


@pytest.mark.parametrize("url, masked", [
    ("redis://app:s%40cret@127.0.0.1:6380/1", "redis://app:***@127.0.0.1:6380/1"),
    ("redis://:secret@[::1]/0?prefix=p:", "redis://:***@[::1]/0?prefix=p:"),
    ("redis://app@127.0.0.1", "redis://app@127.0.0.1"),
    ("redis+sentinel://:pw@s1,s2/m?sentinel_password=other",
     "redis+sentinel://:***@s1,s2/m?sentinel_password=***"),
    ("unix://:pw@/tmp/r.sock?db=1", "unix://:***@/tmp/r.sock?db=1"),
    ("memory:", "memory:"),
])
def test_masked_url(url, masked):
    parsed = parse_store_url(url)
    assert parsed.masked == masked
    assert "pw" not in repr(parsed).replace("pw@", "")
    assert "secret" not in repr(parsed)


def test_none_is_memory():
    assert parse_store_url(None).is_memory
    assert isinstance(open_store(None), MemoryStore)


def test_non_string_rejected():
    with pytest.raises(ConfigurationError, match="expected a string"):
        parse_store_url(6379)


def test_redis_store_down_at_open_does_not_raise(unused_port):
    store = open_store(f"redis://:topsecret@127.0.0.1:{unused_port}/0?socket_timeout=0.5")
    try:
        health = store.health()
        assert health["ok"] is False
        assert "topsecret" not in str(health)
        assert ":***@" in health["detail"]
    finally:
        store.close()


@pytest.fixture
def unused_port():
    from redis_fixtures import free_port

    return free_port()
