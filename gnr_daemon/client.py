"""DaemonClient: the pooled, thread-safe and greenlet-safe client of gnr_daemon.

Importing this module never monkey-patches. It uses the ``socket`` module as
it finds it at call time: a web worker that runs under gevent's monkey patch
gets cooperative sockets, a threaded worker gets plain blocking sockets.

Safety rules of the pool:

- a connection is checked out for exactly one call and returned in a
  ``finally``; one that failed mid-call (timeout, broken pipe, bad reply) is
  closed and never returned, so no late bytes can be taken for the reply to a later call;
- every reply must carry the ``call_id`` of its request;
- a call is sent again only when a pooled connection turned out to be closed
  by the daemon before the request reached it (send failed); a call that
  timed out or lost its connection after sending is never repeated, because
  handlers are not idempotent;
- connections belong to the OS thread that opened them (a gevent socket is
  bound to its thread's hub, and ``threading.get_native_id`` is not patched
  by gevent), and the pool starts afresh in a child process after ``fork()``.
"""

import itertools
import logging
import os
import select
import socket
import ssl
import sys
import threading
import weakref
from urllib.parse import urlsplit

from .config import load_settings
from .tls import client_context
from .errors import (
    AuthenticationError,
    CallTimeout,
    ConfigurationError,
    DaemonUnavailable,
    GnrDaemonError,
    ProtocolError,
    rebuild_error,
)
from .protocol import KIND_REQUEST, KIND_RESPONSE, Channel, PeerClosed, encode_payload, is_timeout

__all__ = [
    "DaemonClient",
    "SiteClient",
    "Batch",
    "BatchResult",
    "ConnectionPool",
    "parse_daemon_url",
]

log = logging.getLogger(__name__)

#: Default number of idle connections a client keeps open.
DEFAULT_POOL_SIZE = 10


_POLL_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


def _original_poll():
    """Return ``select.poll`` as the standard library defines it, even under gevent's patch."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")
    return select.poll


def parse_daemon_url(url):
    """Parse ``gnrd://host:port`` or ``unix:///path``; return a dict of settings."""
    parts = urlsplit(url)
    if parts.scheme in ("unix", "gnrd+unix"):
        if not parts.path:
            raise ConfigurationError(f"invalid daemon URL {url!r}: a unix URL needs a path, "
                                     "for example unix:///run/gnrdaemon/gnrd.sock")
        return {"socket": parts.path}
    if parts.scheme not in ("gnrd", "gnrds"):
        raise ConfigurationError(
            f"invalid daemon URL {url!r}: the scheme must be gnrd:// (TCP), gnrds:// (TCP "
            "with TLS) or unix:// (socket)"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"invalid daemon URL {url!r}: the port is not a number "
                                 "from 0 to 65535") from None
    if not parts.hostname:
        raise ConfigurationError(f"invalid daemon URL {url!r}: the host is missing "
                                 "(gnrd://HOST:PORT)")
    settings = {"host": parts.hostname}
    if port is not None:
        settings["port"] = port
    if parts.scheme == "gnrds":
        settings["tls"] = True
    return settings


class _PooledConnection:
    """One socket to the daemon with its channel, owner thread and pid."""

    __slots__ = ("channel", "thread_id", "pid", "reused", "_poller")

    def __init__(self, channel):
        self.channel = channel
        self._poller = _original_poll()()
        self._poller.register(channel.sock.fileno(), _POLL_READABLE)
        self.thread_id = threading.get_native_id()
        self.pid = _current_pid[0]
        self.reused = False

    def is_stale(self):
        """Tell whether the daemon closed this idle connection or sent it data.

        Either way the connection is unusable: the daemon sends nothing
        unasked except an error frame (such as an idle timeout) before it
        closes. It is one poll with a zero timeout, so it does not block or switch greenlets.
        """
        try:
            return bool(self._poller.poll(0))
        except OSError:
            return True

    def close(self):
        self.channel.close()


class ConnectionPool:
    """Idle connections kept per OS thread, reset in a child process after fork.

    No lock is taken: each thread has its own list, and ``list.append`` and
    ``list.pop`` are atomic under the GIL, so threads never block each other
    and greenlets never wait on a lock that another greenlet of the same
    thread holds.
    """

    def __init__(self, connect, max_idle):
        self._connect = connect
        self._max_idle = max_idle
        self._idle = {}
        self._closed = False
        _pools_to_reset.add(self)

    def __repr__(self):
        idle = sum(len(connections) for connections in list(self._idle.values()))
        return f"<ConnectionPool idle={idle} max_idle={self._max_idle} per thread>"

    def _reset_after_fork(self):
        # The parent's sockets must never be used by the child: two processes
        # would interleave their frames on one stream. They are dropped, not
        # closed, so the parent's connections stay intact.
        self._idle = {}

    def get(self):
        """Return an idle connection of this thread that is still open, or a new one."""
        idle = self._idle.get(threading.get_native_id())
        while idle:
            try:
                conn = idle.pop()
            except IndexError:
                break
            if conn.is_stale():
                conn.close()
                continue
            conn.reused = True
            return conn
        return self._connect()

    def release(self, conn):
        """Return a healthy connection to the pool (or close it when full or closed)."""
        if conn.pid != _current_pid[0]:
            return
        idle = self._idle.get(conn.thread_id)
        if idle is None:
            idle = self._idle.setdefault(conn.thread_id, [])
        if not self._closed and len(idle) < self._max_idle:
            idle.append(conn)
            if not self._closed:
                return
            # close() ran meanwhile and may have missed this connection.
            try:
                idle.remove(conn)
            except ValueError:
                return
        conn.close()

    def close(self):
        """Close idle connections; connections in use are closed when released."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in list(idle.values()):
            while connections:
                try:
                    connections.pop().close()
                except IndexError:
                    break


# Pools of this process, reset in the child after os.fork().
_pools_to_reset = weakref.WeakSet()
_current_pid = [os.getpid()]


def _reset_pools_after_fork():
    _current_pid[0] = os.getpid()
    for pool in list(_pools_to_reset):
        pool._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pools_after_fork)


class DaemonClient:
    """Client of one gnr_daemon.

    Unset arguments are resolved like the daemon's settings:
    ``GNR_DAEMON_*`` environment variables, then Genropy's ``environment.xml``,
    then defaults (``localhost:40404``, no key, 30 s timeout). Any daemon
    method is available as an attribute (``client.addSiteRegister(...)``);
    ``client.site(name)`` returns a client for one site's register.
    """

    def __init__(self, host=None, port=None, socket=None, hmac_key=None, timeout=None,
                 pool_size=None, hmac_key_file=None, connect_timeout=None, tls=None,
                 tls_ca=None, tls_cert=None, tls_key=None, max_frame_size=None,
                 use_environment=True, use_config_file=True):
        if isinstance(hmac_key, bytes):
            hmac_key = hmac_key.decode("utf-8")
        settings = load_settings(
            {"host": host, "port": port, "socket": socket, "hmac_key": hmac_key,
             "hmac_key_file": hmac_key_file, "timeout": timeout, "tls": tls or None,
             "tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key,
             "max_frame_size": max_frame_size},
            use_environment=use_environment, use_config_file=use_config_file,
        )
        if "://" in settings.host:
            raise ConfigurationError(
                f"invalid host {settings.host!r}: it looks like a URL; pass URLs to "
                "DaemonClient.from_url(), for example DaemonClient.from_url('gnrds://host:40404')"
            )
        self.host = settings.host.strip("[]")
        self.port = settings.port
        self.socket_path = settings.socket
        self.timeout = settings.timeout
        self.connect_timeout = connect_timeout or min(self.timeout, 10.0)
        self._key = settings.key_bytes()
        self._tls_context = None
        if (settings.tls or settings.tls_ca or settings.tls_cert) and not self.socket_path:
            self._tls_context = client_context(settings.tls_ca, settings.tls_cert, settings.tls_key)
        self.max_frame_size = settings.max_frame_size
        self._ids = itertools.count(1)
        self._pool = ConnectionPool(self._open_connection, pool_size or DEFAULT_POOL_SIZE)
        self._closed = False

    @classmethod
    def from_url(cls, url, **kwargs):
        """Build a client from ``gnrd://host:port`` or ``unix:///path`` plus keyword arguments."""
        settings = parse_daemon_url(url)
        settings.update(kwargs)
        return cls(**settings)

    @property
    def address_text(self):
        if self.socket_path:
            return f"unix:{self.socket_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __repr__(self):
        signed = "signed" if self._key else "unsigned"
        tls = " tls" if self._tls_context is not None else ""
        state = "closed" if self._closed else "open"
        return f"<DaemonClient {self.address_text} {signed}{tls} {state}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Close the pooled connections; later calls raise DaemonUnavailable."""
        self._closed = True
        self._pool.close()

    # connections

    def _open_connection(self):
        try:
            if self.socket_path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.connect_timeout)
                sock.connect(self.socket_path)
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._tls_context is not None:
                    sock = self._tls_context.wrap_socket(sock, server_hostname=self.host)
        except ssl.SSLError as exc:
            raise AuthenticationError(
                f"TLS handshake with gnr_daemon at {self.address_text} failed: {exc.reason or exc}; "
                "check the CA (tls_ca) and, for mutual TLS, the client certificate"
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise DaemonUnavailable(
                f"cannot connect to gnr_daemon at {self.address_text}: {reason}; "
                "is the daemon running (gnrdaemon start) on that address?"
            ) from None
        channel = Channel(sock, "client", key=self._key, max_frame_size=self.max_frame_size,
                          peer=self.address_text)
        try:
            channel.client_handshake(self.timeout)
        except ProtocolError:
            channel.close()
            raise
        except DaemonUnavailable as exc:
            channel.close()
            raise DaemonUnavailable(f"gnr_daemon at {self.address_text}: {exc}") from None
        except ssl.SSLError as exc:
            channel.close()
            raise AuthenticationError(
                f"TLS with gnr_daemon at {self.address_text} failed: {exc.reason or exc}; the "
                "daemon may require a client certificate (tls_cert=, tls_key=)"
            ) from None
        except OSError as exc:
            channel.close()
            if is_timeout(exc):
                hint = "" if self._tls_context else (
                    "; if the daemon uses TLS, connect with gnrds:// or tls=True")
                raise CallTimeout(f"gnr_daemon at {self.address_text} sent no hello within "
                                  f"{self.timeout} s{hint}") from None
            raise DaemonUnavailable(f"handshake with gnr_daemon at {self.address_text} failed: "
                                    f"{exc}") from None
        return _PooledConnection(channel)

    # calls

    def call(self, method, *args, **kwargs):
        """Call a daemon-level method by name and return its result."""
        return self._call(None, method, args, kwargs)

    def call_site(self, sitename, method, args=(), kwargs=None):
        """Call a method of the register of ``sitename``."""
        return self._call(sitename, method, tuple(args), kwargs or {})

    def site(self, sitename):
        """Return a client whose attributes are the methods of one site's register."""
        return SiteClient(self, sitename)

    def batch(self, stop_on_error=False):
        """Return a Batch: calls queued on it run in order in one round trip.

        ::

            with client.batch() as batch:
                locked = batch.site("demo").lock_item("p1", reason="r", register_name="page")
                value = batch.site("demo").remotebag_getItem("x", ...)
            print(locked.value, value.value)
        """
        return Batch(self, stop_on_error)

    def ping(self):
        """Return ``"pong"`` when the daemon responds."""
        return self._call(None, "ping", (), {})

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def remote_method(*args, **kwargs):
            return self._call(None, name, args, kwargs)

        remote_method.__name__ = name
        return remote_method

    def _call(self, site, method, args, kwargs):
        if self._closed:
            raise DaemonUnavailable(f"{self!r} is closed; create a new DaemonClient")
        call_id = next(self._ids)
        request = encode_payload((call_id, site, method, args, kwargs))

        while True:
            conn = self._pool.get()
            try:
                conn.channel.send_payload(KIND_REQUEST, request)
            except OSError as exc:
                conn.close()
                if conn.reused:
                    # The daemon closed this pooled socket while it was idle;
                    # nothing reached it, so the request can go on a fresh one.
                    log.debug("pooled connection to %s was closed (%s); reconnecting",
                              self.address_text, exc)
                    continue
                raise DaemonUnavailable(
                    f"sending {method} to gnr_daemon at {self.address_text} failed: {exc}"
                ) from None
            break

        ok, value = self._receive_reply(conn, call_id, method)
        if ok:
            return value
        if not (isinstance(value, tuple) and len(value) in (3, 4)):
            raise ProtocolError(f"invalid error reply to {method}: {type(value).__name__}")
        raise rebuild_error(*value)

    def _receive_reply(self, conn, call_id, method):
        """Read the reply of ``call_id``; release the connection only when it is clean."""
        released = False
        try:
            kind, reply = conn.channel.receive(self.timeout, self.timeout)
            if kind != KIND_RESPONSE or not (isinstance(reply, tuple) and len(reply) == 3):
                raise ProtocolError(f"invalid reply to {method} from {self.address_text}")
            reply_id, ok, value = reply
            # A daemon that could not decode the request cannot know its call
            # id, so it replies with None. One call is in flight per
            # connection, so that error belongs to this call.
            if reply_id != call_id and not (reply_id is None and not ok):
                raise ProtocolError(
                    f"reply to call {reply_id!r} received while waiting for call {call_id} "
                    f"({method}); the connection was discarded"
                )
            self._pool.release(conn)
            released = True
            return ok, value
        except PeerClosed:
            raise DaemonUnavailable(
                f"gnr_daemon at {self.address_text} closed the connection during {method}; "
                "the call may or may not have run"
            ) from None
        except OSError as exc:
            if is_timeout(exc):
                raise CallTimeout(
                    f"{method} got no reply from gnr_daemon at {self.address_text} within "
                    f"{self.timeout} s; the call may still run on the daemon"
                ) from None
            raise DaemonUnavailable(
                f"connection to gnr_daemon at {self.address_text} failed during {method}: {exc}"
            ) from None
        finally:
            if not released:
                conn.close()


class SiteClient:
    """Client bound to one site: every attribute is a method of that site's register."""

    def __init__(self, client, sitename):
        self._client = client
        self.sitename = sitename

    def __repr__(self):
        return f"<SiteClient {self.sitename!r} via {self._client!r}>"

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        client, sitename = self._client, self.sitename

        def remote_method(*args, **kwargs):
            return client._call(sitename, name, args, kwargs)

        remote_method.__name__ = name
        return remote_method


_PENDING = object()


class BatchResult:
    """The outcome of one call of a batch, filled in when the batch has run."""

    __slots__ = ("method", "_ok", "_value")

    def __init__(self, method):
        self.method = method
        self._ok = None
        self._value = _PENDING

    def __repr__(self):
        if self._value is _PENDING:
            return f"<BatchResult {self.method} pending>"
        return f"<BatchResult {self.method} {'ok' if self._ok else 'failed'}>"

    @property
    def done(self):
        """True once the batch ran and this call has an outcome."""
        return self._value is not _PENDING

    @property
    def ok(self):
        """True when the call succeeded; None while pending or when it did not run."""
        return self._ok

    @property
    def value(self):
        """The call's result; raises the call's error, or an error if it never ran."""
        if self._value is _PENDING:
            raise GnrDaemonError(
                f"the result of {self.method} is not available: the batch has not run, or it "
                "stopped at an earlier error"
            )
        if not self._ok:
            raise rebuild_error(*self._value)
        return self._value


class Batch:
    """Calls queued to run on the daemon in order, in one round trip.

    Use it as a context manager (the calls run on a clean exit) or call
    ``execute()``. Queue calls with ``call``, ``call_site``, ``site(name)``
    or any daemon method as an attribute.
    """

    def __init__(self, client, stop_on_error=False):
        self._client = client
        self._stop_on_error = stop_on_error
        self._calls = []
        self._results = []
        self._executed = False

    def __repr__(self):
        return f"<Batch of {len(self._calls)} call(s) via {self._client!r}>"

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None and not self._executed:
            self.execute()
        return False

    def __len__(self):
        return len(self._calls)

    def _queue(self, site, method, args, kwargs):
        if self._executed:
            raise GnrDaemonError("this batch already ran; start a new one with client.batch()")
        result = BatchResult(method)
        self._calls.append((site, method, tuple(args), dict(kwargs)))
        self._results.append(result)
        return result

    def call(self, method, *args, **kwargs):
        """Queue a daemon-level call; return its BatchResult."""
        return self._queue(None, method, args, kwargs)

    def call_site(self, sitename, method, args=(), kwargs=None):
        """Queue a call of a site register's method; return its BatchResult."""
        return self._queue(sitename, method, args, kwargs or {})

    def site(self, sitename):
        """Return an object whose attributes queue calls of one site's register."""
        return _BatchSite(self, sitename)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._queue(None, name, args, kwargs)

    def execute(self):
        """Send the queued calls; return their BatchResults in order."""
        if self._executed:
            raise GnrDaemonError("this batch already ran; start a new one with client.batch()")
        self._executed = True
        if not self._calls:
            return []
        outcomes = self._client._call(None, "batch", (self._calls,),
                                      {"stop_on_error": self._stop_on_error})
        for result, (ok, value) in zip(self._results, outcomes):
            result._ok = ok
            result._value = value
        return list(self._results)


class _BatchSite:
    __slots__ = ("_batch", "_sitename")

    def __init__(self, batch, sitename):
        self._batch = batch
        self._sitename = sitename

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        batch, sitename = self._batch, self._sitename
        return lambda *args, **kwargs: batch._queue(sitename, name, args, kwargs)
