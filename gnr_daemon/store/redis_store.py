"""Redis backend: Redis is the source of truth for every site's state.

Every read goes to Redis, so several daemons on one Redis (on one host or
several) see one state at once, and a restarted daemon finds its state
again. The layout and the transactions are in ``redis_site.py``; this module
owns the connections and the store's health.

Connections come from one redis-py pool per store, opened from the store
URL (``urls.py``). Under ``gevent.monkey.patch_all()`` (``gnrdaemon start``)
redis-py's sockets are cooperative, so a greenlet waiting on Redis lets the
daemon serve every other connection. redis-py's pool notices a fork by its
process id and opens new sockets in the child. This module keeps no socket
outside the pool, so parent and child never share one.

Faults. A connection failure or a reply slower than ``socket_timeout``
makes the call fail with StoreUnavailable and marks the store down. While
it is down, store calls fail at once with StoreUnavailable, without
touching the network, and a background thread (a greenlet under the monkey
patch) sends PING with a growing delay, from 0.05 s up to 1 s, until Redis
responds. Then the store is up again. The daemon keeps running throughout,
and ``health()`` (part of the daemon's ``status``) reports the state.
"""

import logging
import os
import threading
import time
from datetime import datetime

from ..errors import ConfigurationError, StoreError, StoreUnavailable
from .base import Store
from .codec import ValueCodec
from .redis_site import RedisSiteStore, RoundTripFailure
from .urls import DEFAULT_MAX_CONNECTIONS, DEFAULT_SOCKET_TIMEOUT, StoreURL, parse_store_url

try:
    import redis
    from redis import exceptions as redis_errors
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # pragma: no cover - the redis extra is not installed
    redis = None

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)

# Delays of the background reconnection, in seconds.
_MONITOR_FIRST_DELAY = 0.05
_MONITOR_MAX_DELAY = 1.0
# While the store stays down, "still unavailable" is logged at most this often, in seconds.
_DOWN_LOG_INTERVAL = 30.0
# The message of redis-py's BlockingConnectionPool when every connection is in use
# (redis-py 4 to 8). That is load, not an outage, so it does not mark the store down.
_POOL_EXHAUSTED = "No connection available."


def _connection_kwargs(url):
    socket_timeout = url.option("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
    kwargs = {
        "db": url.db,
        "username": url.username,
        "password": url.password,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": url.option("socket_connect_timeout", socket_timeout),
        # The store decides about retries itself; redis-py must not retry a
        # connection attempt or a command behind its back.
        "retry": Retry(NoBackoff(), 0),
        "client_name": "gnr_daemon",
    }
    if url.scheme == "rediss":
        cert_reqs = url.option("ssl_cert_reqs", "required")
        kwargs["ssl_cert_reqs"] = cert_reqs
        # Python's ssl module cannot check the host name without a certificate.
        kwargs["ssl_check_hostname"] = url.option("ssl_check_hostname", cert_reqs != "none")
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if name in url.options:
                kwargs[name] = url.options[name]
    return kwargs


def _make_pool(url):
    """Return a redis-py connection pool for ``url`` (a StoreURL)."""
    kwargs = _connection_kwargs(url)
    max_connections = url.option("max_connections", DEFAULT_MAX_CONNECTIONS)
    if url.scheme == "redis+sentinel":
        from redis.sentinel import Sentinel, SentinelConnectionPool

        sentinel_kwargs = {
            "socket_timeout": kwargs["socket_timeout"],
            "socket_connect_timeout": kwargs["socket_connect_timeout"],
            "password": url.option("sentinel_password"),
        }
        manager = Sentinel(list(url.hosts), sentinel_kwargs=sentinel_kwargs)
        return SentinelConnectionPool(url.service_name, manager, is_master=True,
                                      max_connections=max_connections,
                                      socket_keepalive=True, **kwargs)
    if url.scheme == "unix":
        kwargs["path"] = url.socket_path
        kwargs["connection_class"] = redis.UnixDomainSocketConnection
    else:
        kwargs["host"], kwargs["port"] = url.hosts[0]
        kwargs["socket_keepalive"] = True
        if url.scheme == "rediss":
            kwargs["connection_class"] = redis.SSLConnection
    # A blocking pool caps the connections; a call waits for a free one up
    # to the socket timeout.
    return redis.BlockingConnectionPool(max_connections=max_connections,
                                        timeout=kwargs["socket_timeout"], **kwargs)


def _pack(commands):
    """Return the RESP encoding of ``commands``, tuples of str, bytes and int arguments."""
    chunks = []
    for command in commands:
        chunks.append(b"*%d\r\n" % len(command))
        for argument in command:
            if isinstance(argument, str):
                argument = argument.encode("utf-8")
            elif isinstance(argument, int):
                argument = b"%d" % argument
            chunks.append(b"$%d\r\n%b\r\n" % (len(argument), argument))
    return b"".join(chunks)


def _explain(error):
    """Return the text of a redis-py error with a hint at the usual fix."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, redis_errors.AuthenticationError) or "NOAUTH" in str(error) or \
            "WRONGPASS" in str(error):
        return text + " (check the user name and password in the store URL)"
    if "certificate" in str(error).lower() or "SSL" in str(error):
        return text + " (check ssl_ca_certs, ssl_certfile and ssl_keyfile in the store URL)"
    if isinstance(error, redis_errors.BusyLoadingError):
        return text + " (Redis is loading its data after a restart)"
    return text


# Replace a value only if it is still the one read, keeping any expiry.
_RETAG_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
    return 1
end
return 0
"""


def _glob_escape(text):
    """Escape the characters Redis's MATCH pattern treats specially."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


class RedisStore(Store):
    """Store backend on a Redis server, Sentinel-managed primary or Unix socket.

    ``url`` is a store URL (string or StoreURL). With ``hmac_key`` (bytes or
    None) every value carries an HMAC tag, which is checked before the value
    is unpickled (see ``codec.py``).
    """

    shared = True

    def __init__(self, url, hmac_key=None, previous_key=None):
        if redis is None:
            raise ConfigurationError(
                "the Redis store needs the redis package: pip install 'gnr_daemon[redis]'"
            )
        if not isinstance(url, StoreURL):
            url = parse_store_url(url)
        if url.is_memory:
            raise ConfigurationError(f"{url.masked!r} is not a Redis store URL")
        self._url = url
        self.url = url.masked
        self.prefix = url.prefix
        self.codec = ValueCodec(hmac_key, previous_key)
        self._pool = _make_pool(url)
        self._sites = {}
        self._lock = threading.Lock()
        self._closed = False
        self._down_since = None
        self._last_error = None
        self._monitor = None
        self._last_down_log = 0.0
        self.stats = {"round_trips": 0, "conflicts": 0, "gave_up": 0, "failures": 0,
                      "rejected_while_down": 0}
        self._probe_at_start()

    def __repr__(self):
        return f"<RedisStore {self.url}>"

    # -- Store interface

    def site_store(self, sitename):
        site_store = self._sites.get(sitename)
        if site_store is None:
            site_store = self._sites[sitename] = RedisSiteStore(self, sitename)
        return site_store

    def drop_site(self, sitename):
        self.site_store(sitename).clear()
        self._sites.pop(sitename, None)
        log.info("store %s: keys of site %r deleted", self.url, sitename)

    def health(self):
        down_since = self._down_since
        if down_since is None:
            detail = f"{self.url} (key prefix {self.prefix!r}) is up"
        else:
            seconds = time.monotonic() - down_since[1]
            detail = (f"{self.url} (key prefix {self.prefix!r}) is unavailable since "
                      f"{down_since[0].isoformat(timespec='seconds')} ({seconds:.0f} s): "
                      f"{self._last_error}")
        return {
            "ok": down_since is None,
            "detail": detail,
            "state": "up" if down_since is None else "down",
            "url": self.url,
            "prefix": self.prefix,
            "down_since": down_since[0] if down_since else None,
            "last_error": self._last_error,
            "signed_values": self.codec.signed,
            **self.stats,
        }

    def retag(self, batch_size=500):
        """Rewrite every value still tagged with the previous key with the current key.

        Run it once all daemons of the store use the new key, before the
        previous key is removed. A value changed meanwhile is left alone (it
        was rewritten with the current key anyway). Returns the number of
        values rewritten.
        """
        client = redis.Redis(connection_pool=self._pool)
        compare_and_set = client.register_script(_RETAG_SCRIPT)
        pattern = _glob_escape("{" + self.prefix) + "*"
        rewritten = 0
        for name in client.scan_iter(match=pattern, count=batch_size, _type="string"):
            stored = client.get(name)
            key_name = name.decode("utf-8", "surrogateescape")
            if stored is None or not self.codec.tagged_with_previous(key_name, stored):
                continue
            pickled = self.codec.open(key_name, stored)
            resealed = self.codec.seal(key_name, pickled)
            rewritten += compare_and_set(keys=[name], args=[stored, resealed])
        log.info("store %s: %d value(s) retagged with the current key", self.url, rewritten)
        return rewritten

    def close(self):
        self._closed = True
        self._pool.disconnect()
        log.info("store %s closed", self.url)

    # -- connections (used by redis_site)

    def _count(self, name):
        self.stats[name] += 1

    def _acquire(self):
        """Return a pooled connection; raise StoreUnavailable at once while the store is down."""
        if self._down_since is not None:
            self._ensure_monitor()
            self._count("rejected_while_down")
            raise StoreUnavailable(
                f"store {self.url} is unavailable ({self._last_error}); the daemon is "
                "reconnecting in the background"
            )
        try:
            return self._pool.get_connection()
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as error:
            if str(error) == _POOL_EXHAUSTED or isinstance(
                error, getattr(redis_errors, "MaxConnectionsError", ())
            ):
                self._count("failures")
                raise StoreUnavailable(
                    f"store {self.url}: all {self._pool.max_connections} connections are busy; "
                    "raise max_connections in the store URL if this repeats"
                ) from None
            raise self._unavailable(error) from None

    def _release(self, connection, broken=False):
        if broken:
            connection.disconnect()
        self._pool.release(connection)

    def _execute(self, connection, commands):
        """Send ``commands`` in one write and read one reply per command.

        An error reply is returned in place as a redis-py ResponseError. A
        broken or timed-out connection raises RoundTripFailure; the caller
        then releases the connection as broken.
        """
        self.stats["round_trips"] += 1
        try:
            connection.send_packed_command([_pack(commands)], check_health=False)
            replies = []
            for _command in commands:
                try:
                    replies.append(connection.read_response(disable_decoding=True))
                except redis_errors.ResponseError as error:
                    replies.append(error)
            return replies
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as error:
            retryable = isinstance(error, redis_errors.ConnectionError) and not isinstance(
                error, (redis_errors.AuthenticationError, redis_errors.BusyLoadingError))
            raise RoundTripFailure(error, retryable) from None

    def _unavailable(self, error):
        """Mark the store down after ``error`` and return the StoreUnavailable to raise."""
        self._count("failures")
        explained = _explain(error)
        self._mark_down(explained)
        return StoreUnavailable(f"store {self.url} is unavailable: {explained}")

    # -- health

    def _probe_at_start(self):
        try:
            self._ping()
        except (redis_errors.RedisError, OSError) as error:
            self._mark_down(_explain(error))
            return
        log.info("store %s: connected (key prefix %r, values %s)", self.url, self.prefix,
                 "signed with HMAC-SHA256" if self.codec.signed else "not signed")

    def _ping(self):
        """Check that Redis responds; through Sentinel, also that the connection reaches the primary.

        A connection to a primary that Sentinel demoted is closed here, so
        the next attempt asks Sentinel for the new primary.
        """
        sentinel = self._url.scheme == "redis+sentinel"
        connection = self._pool.get_connection()
        broken = True
        try:
            connection.send_command("ROLE" if sentinel else "PING", check_health=False)
            reply = connection.read_response()
            broken = sentinel and not (reply and reply[0] in (b"master", "master"))
        finally:
            self._release(connection, broken)
        if sentinel and broken:
            raise redis_errors.ConnectionError(
                f"the Sentinel-managed primary is now a {reply[0]!r} (failover in progress)")
        if not sentinel and reply not in (b"PONG", "PONG", True):
            raise StoreError(f"store {self.url}: unexpected reply {reply!r} to PING")

    def _mark_down(self, explained):
        with self._lock:
            self._last_error = explained
            if self._down_since is not None:
                return
            self._down_since = (datetime.now(), time.monotonic())
            self._last_down_log = time.monotonic()
        log.error("store %s is unavailable, so store calls fail until it responds again "
                  "(reconnecting in the background): %s", self.url, explained)
        self._ensure_monitor()

    def _mark_up(self):
        with self._lock:
            down_since, self._down_since = self._down_since, None
        if down_since is not None:
            log.warning("store %s is available again after %.1f s", self.url,
                        time.monotonic() - down_since[1])

    def _ensure_monitor(self):
        with self._lock:
            if self._closed or (self._monitor is not None and self._monitor.is_alive()):
                return
            self._monitor = threading.Thread(target=self._reconnect_loop,
                                             name="gnr_daemon-store-reconnect", daemon=True)
            self._monitor.start()

    def _reconnect_loop(self):
        delay = _MONITOR_FIRST_DELAY
        attempts = 0
        pid = os.getpid()
        while not self._closed and self._down_since is not None and os.getpid() == pid:
            time.sleep(delay)
            attempts += 1
            try:
                self._ping()
            except (redis_errors.RedisError, OSError) as error:
                self._last_error = _explain(error)
                delay = min(delay * 2, _MONITOR_MAX_DELAY)
                now = time.monotonic()
                down_since = self._down_since
                if down_since is not None and now - self._last_down_log >= _DOWN_LOG_INTERVAL:
                    self._last_down_log = now
                    log.warning("store %s still unavailable after %.0f s and %d attempts: %s",
                                self.url, now - down_since[1], attempts, self._last_error)
                continue
            except Exception:
                log.exception("store %s: reconnection attempt failed", self.url)
                delay = _MONITOR_MAX_DELAY
                continue
            self._mark_up()
