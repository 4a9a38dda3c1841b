"""Every store URL form against a real server: passwords, ACL users, TLS, Sentinel, Unix sockets, IPv6.

Each test starts the redis-server (or Sentinel) it needs on loopback, with
certificates the fixture makes, and stops it by PID.
"""

import socket
import time
from urllib.parse import quote

import pytest
import redis

from gnr_daemon.errors import StoreUnavailable
from gnr_daemon.registers import SiteRegister
from gnr_daemon.store import open_store

from redis_fixtures import make_certificates

pytestmark = pytest.mark.timeout(60)

KEY = b"store-key-0123456789abcdef0123456789"
# Every character that has a meaning in a URL, plus a space and a non-ASCII letter.
ODD_PASSWORD = "p@ss:w/rd?#%&= é+"


def round_trip(url, **kwargs):
    """Open a store at ``url``, write and read back one page; return the page's user."""
    store = open_store(url, hmac_key=KEY, **kwargs)
    try:
        register = SiteRegister("demo", store.site_store("demo"))
        register.new_connection("c1", user="alice")
        register.new_page("p1", connection_id="c1", user="alice")
        return register.page("p1")["user"]
    finally:
        store.close()


def ipv6_loopback_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


# -- passwords and users


def test_password_right_and_wrong(redis_server_factory):
    server = redis_server_factory(options=["requirepass right-password"])
    url = f"redis://:right-password@127.0.0.1:{server.port}/0?prefix=pw:"
    assert round_trip(url) == "alice"

    store = open_store(f"redis://:wrong-password@127.0.0.1:{server.port}/0?socket_timeout=1")
    try:
        health = store.health()
        assert health["ok"] is False
        assert "check the user name and password" in health["last_error"]
        assert "wrong-password" not in str(health)
        with pytest.raises(StoreUnavailable) as error:
            store.site_store("demo").get_item("page", "p1")
        assert "wrong-password" not in str(error.value)
        assert f"redis://:***@127.0.0.1:{server.port}/0" in str(error.value)
    finally:
        store.close()


def test_missing_password_reported(redis_server_factory):
    server = redis_server_factory(options=["requirepass right-password"])
    store = open_store(f"redis://127.0.0.1:{server.port}/0?socket_timeout=1")
    try:
        assert store.health()["ok"] is False
        assert "check the user name and password" in store.health()["last_error"]
    finally:
        store.close()


def test_password_with_reserved_characters(redis_server_factory):
    server = redis_server_factory()
    client = server.client()
    client.config_set("requirepass", ODD_PASSWORD)
    client.close()
    url = f"redis://:{quote(ODD_PASSWORD, safe='')}@127.0.0.1:{server.port}/2?prefix=odd:"
    assert round_trip(url) == "alice"


def test_acl_user(redis_server_factory):
    server = redis_server_factory()
    client = server.client()
    client.execute_command("ACL", "SETUSER", "gnr@app", "on", ">s3cret/pw", "~*", "+@all")
    client.close()
    url = f"redis://gnr%40app:s3cret%2Fpw@127.0.0.1:{server.port}/0"
    assert round_trip(url) == "alice"
    store = open_store(f"redis://gnr%40app:nope@127.0.0.1:{server.port}/0?socket_timeout=1")
    try:
        assert store.health()["ok"] is False
    finally:
        store.close()


def test_database_number_kept_apart(redis_server_factory):
    server = redis_server_factory()
    assert round_trip(f"redis://127.0.0.1:{server.port}/3?prefix=db:") == "alice"
    client = server.client(db=3)
    assert client.dbsize() > 0
    client.close()
    client = server.client(db=0)
    assert client.dbsize() == 0
    client.close()


# -- TLS


@pytest.fixture
def certificates(tmp_path):
    return make_certificates(tmp_path / "certs")


def test_tls_with_ca(redis_server_factory, certificates):
    server = redis_server_factory(tls=certificates)
    url = (f"rediss://localhost:{server.port}/0?prefix=tls:"
           f"&ssl_ca_certs={quote(certificates['ca'])}&ssl_cert_reqs=required")
    assert round_trip(url) == "alice"


def test_tls_with_client_certificate(redis_server_factory, certificates):
    server = redis_server_factory(tls=dict(certificates, auth_clients="yes"))
    url = (f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={quote(certificates['ca'])}"
           f"&ssl_certfile={quote(certificates['client_cert'])}"
           f"&ssl_keyfile={quote(certificates['client_key'])}")
    assert round_trip(url) == "alice"
    without = open_store(f"rediss://127.0.0.1:{server.port}/0?socket_timeout=1"
                         f"&ssl_ca_certs={quote(certificates['ca'])}")
    try:
        assert without.health()["ok"] is False
    finally:
        without.close()


def test_tls_unknown_ca_rejected(redis_server_factory, certificates, tmp_path):
    server = redis_server_factory(tls=certificates)
    other = make_certificates(tmp_path / "other")
    store = open_store(f"rediss://localhost:{server.port}/0?socket_timeout=1"
                       f"&ssl_ca_certs={quote(other['ca'])}")
    try:
        health = store.health()
        assert health["ok"] is False
        assert "certificate" in health["last_error"].lower()
        assert "ssl_ca_certs" in health["last_error"]
    finally:
        store.close()


def test_plain_client_on_tls_port_fails(redis_server_factory, certificates):
    server = redis_server_factory(tls=certificates)
    store = open_store(f"redis://127.0.0.1:{server.port}/0?socket_timeout=1")
    try:
        assert store.health()["ok"] is False
    finally:
        store.close()


# -- Sentinel


def start_sentinel(redis_server_factory, primary, name="sentinel", options=()):
    return redis_server_factory(name=name, sentinel=True, options=[
        f"sentinel monitor mymaster 127.0.0.1 {primary.port} 1",
        "sentinel down-after-milliseconds mymaster 1000",
        "sentinel failover-timeout mymaster 10000",
        *options,
    ])


def test_sentinel_primary(redis_server_factory):
    primary = redis_server_factory(name="primary")
    sentinel = start_sentinel(redis_server_factory, primary)
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/1?prefix=sen:"
    assert round_trip(url) == "alice"
    client = primary.client(db=1)
    assert client.exists("{sen:demo}:item:page:p1") == 1
    client.close()


def test_sentinel_with_passwords(redis_server_factory):
    primary = redis_server_factory(name="primary", options=["requirepass primary-pw"])
    sentinel = start_sentinel(redis_server_factory, primary, options=[
        "sentinel auth-pass mymaster primary-pw", "requirepass sentinel-pw"])
    url = (f"redis+sentinel://:primary-pw@127.0.0.1:{sentinel.port}/mymaster?prefix=sp:"
           "&sentinel_password=sentinel-pw")
    assert round_trip(url) == "alice"
    store = open_store(f"redis+sentinel://:primary-pw@127.0.0.1:{sentinel.port}/mymaster"
                       "?socket_timeout=1&sentinel_password=wrong-pw")
    try:
        health = store.health()
        assert health["ok"] is False
        assert "wrong-pw" not in str(health)
        assert "sentinel_password=***" in health["url"]
    finally:
        store.close()


def test_sentinel_unknown_service(redis_server_factory):
    primary = redis_server_factory(name="primary")
    sentinel = start_sentinel(redis_server_factory, primary)
    store = open_store(f"redis+sentinel://127.0.0.1:{sentinel.port}/nosuch?socket_timeout=1")
    try:
        assert store.health()["ok"] is False
        assert "nosuch" in store.health()["last_error"]
    finally:
        store.close()


def test_sentinel_failover(redis_server_factory):
    # "shutdown-on-sigterm now": at teardown a primary does not wait for its replica.
    fast_stop = ["shutdown-on-sigterm now"]
    primary = redis_server_factory(name="primary", options=fast_stop)
    replica = redis_server_factory(name="replica",
                                   options=fast_stop + [f"replicaof 127.0.0.1 {primary.port}"])
    replica_client = replica.client()
    deadline = time.monotonic() + 20
    # Sentinel learns about replicas from the primary's INFO, which it reads
    # at start and then every 10 s, so it starts once the replica is linked.
    while replica_client.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica did not sync with the primary"
        time.sleep(0.05)
    sentinel = start_sentinel(redis_server_factory, primary)
    store = open_store(f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster?prefix=fo:"
                       "&socket_timeout=1", hmac_key=KEY)
    sentinel_client = sentinel.client()
    try:
        register = SiteRegister("demo", store.site_store("demo"))
        register.new_connection("c1", user="alice")
        primary_client = primary.client()
        assert primary_client.execute_command("WAIT", 1, 2000) == 1
        primary_client.close()
        # SENTINEL FAILOVER returns NOGOODSLAVE until Sentinel has checked the replica.
        while True:
            try:
                sentinel_client.execute_command("SENTINEL", "FAILOVER", "mymaster")
                break
            except redis.ResponseError as error:
                assert "NOGOODSLAVE" in str(error)
                assert time.monotonic() < deadline, "Sentinel found no good replica in time"
                time.sleep(0.1)
        while time.monotonic() < deadline:
            address = sentinel_client.sentinel_get_master_addr_by_name("mymaster")
            if address and int(address[1]) == replica.port:
                break
            time.sleep(0.05)
        else:
            pytest.fail("Sentinel did not promote the replica in time")
        # Writes that reach the old primary before it becomes a replica are
        # lost (Redis replication is asynchronous), so the test writes only
        # after that. Sentinel would reconfigure the old primary within about
        # 10 s; the test does it at once, as Sentinel does.
        old_primary = primary.client()
        old_primary.execute_command("REPLICAOF", "127.0.0.1", replica.port)
        old_primary.close()

        # Calls may fail while the store notices the new primary; none may hang.
        connection = None
        while time.monotonic() < deadline and connection is None:
            try:
                register.new_connection("c2", user="bob")
                connection = register.connection("c1")
            except StoreUnavailable:
                time.sleep(0.1)
        assert connection is not None and connection["user"] == "alice"
        assert replica_client.exists("{fo:demo}:item:connection:c2") == 1
    finally:
        replica_client.close()
        sentinel_client.close()
        store.close()


# -- Unix socket and IPv6


def test_unix_socket(redis_server_factory, tmp_path):
    path = tmp_path / "r.sock"
    server = redis_server_factory(options=[f"unixsocket {path}", "unixsocketperm 700"])
    assert server.port
    assert round_trip(f"unix://{quote(str(path))}?db=2&prefix=unix:") == "alice"


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback (::1) on this host")
def test_ipv6_loopback(redis_server_factory):
    server = redis_server_factory()
    assert round_trip(f"redis://[::1]:{server.port}/0?prefix=v6:") == "alice"
