"""The gevent server: accept connections, run one greenlet each, shut down cleanly.

``DaemonServer`` owns the listening socket (TCP or Unix), the per-connection
loop (handshake, receive, dispatch, reply) and the shutdown sequence. It does
not monkey-patch: ``gnrdaemon start`` patches before importing this module,
and tests may run a server in a thread with its own hub.

Per connection, in order: send the hello and read the client's within the
handshake timeout. Then, for each frame, wait up to the idle timeout for its
first byte and up to the read timeout for the rest, verify it, run the call
under the call timeout, and send one reply frame. A frame that fails the
protocol or the HMAC check gets a plain-text error frame, a WARNING line with
the peer and the reason, and the connection is closed. A request that is
well signed but malformed, or whose handler fails, gets an error reply and
the connection stays open.

Shutdown (``stop()``, SIGTERM, SIGINT or the ``stop`` call): close the
listener, close idle connections, let calls in flight finish for up to the
drain timeout, cancel the rest with an error reply, save state when asked,
and return from ``serve_forever``.
"""

import collections
import ctypes
import errno
import importlib
import logging
import os
import socket
import ssl
import stat
import sys
import time

import gevent
import gevent.event
import gevent.pool
import gevent.socket
from gevent.server import StreamServer

from .errors import (
    CallTimeout,
    DaemonUnavailable,
    GnrDaemonError,
    MethodNotFound,
    ProtocolError,
    describe_exception,
)
from .safepickle import current_policy
from .systemd import notify_stopping
from .protocol import (
    KIND_REQUEST,
    KIND_RESPONSE,
    Channel,
    PayloadError,
    PeerClosed,
    encode_payload,
)

__all__ = ["DaemonServer", "ShutdownInterrupt"]

log = logging.getLogger(__name__)

# Extra greenlets beyond max_connections, so that connections over the limit
# still get a quick "too many connections" reply instead of waiting in the
# listen backlog.
_REJECT_MARGIN = 64
_LISTEN_BACKLOG = 1024


class ShutdownInterrupt(BaseException):
    """Thrown into a connection greenlet to end it during shutdown.

    It derives from BaseException, like GreenletExit, so that no handler's
    ``except Exception`` swallows it.
    """


def _current_peer():
    return getattr(gevent.getcurrent(), "gnrd_peer", "?")


def _failure(call_id, exc, with_traceback=True):
    return (call_id, False, describe_exception(exc, with_traceback))


def _check_request(request):
    """Return the request's fields or raise ProtocolError naming what is wrong."""
    if not isinstance(request, tuple) or len(request) != 5:
        shape = f"a tuple of {len(request)} items" if isinstance(request, tuple) else type(request).__name__
        raise ProtocolError(
            f"invalid request: expected a tuple (call_id, site, method, args, kwargs), got {shape}"
        )
    call_id, site, method, args, kwargs = request
    if site is not None and not isinstance(site, str):
        raise ProtocolError(f"invalid request: site must be a string or None, got {type(site).__name__}")
    if not isinstance(args, (tuple, list)):
        raise ProtocolError(f"invalid request: args must be a tuple or list, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise ProtocolError(f"invalid request: kwargs must be a dict, got {type(kwargs).__name__}")
    for name in kwargs:
        if not isinstance(name, str) or not name.isidentifier():
            raise ProtocolError(f"invalid request: keyword argument name {name!r} is not an identifier")
    return call_id, site, method, args, kwargs


# Phases of a connection, each with its own deadline (see _check_deadlines).
_HANDSHAKE, _IDLE, _BUSY = "handshake", "idle", "busy"


class _DeadlineExpired(BaseException):
    """Thrown into a connection greenlet whose current phase ran past its deadline."""

    def __init__(self, phase, limit):
        super().__init__(phase, limit)
        self.phase = phase
        self.limit = limit


class _LoopBlocked(BaseException):
    """Raised asynchronously in a handler that kept the event loop busy past the call timeout."""


def _original(module, name):
    """Return the standard library's ``module.name``, even under gevent's monkey patch."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched(module):
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


class _LoopWatchdog:
    """An OS thread that notices when one handler keeps the gevent loop from running.

    The hub refreshes ``heartbeat`` from its deadline timer. When the
    heartbeat is ``report_after`` seconds old, the thread logs the method that
    blocks the loop. When that call has run longer than the call timeout, the
    thread raises ``_LoopBlocked`` inside it (``PyThreadState_SetAsyncExc``),
    so a CPU-bound handler gets a CallTimeout reply instead of starving every
    other connection. Code running inside a C function (a huge pickle.dumps,
    say) is interrupted only when it returns to Python.
    """

    def __init__(self, server, report_after):
        self._server = server
        self._report_after = report_after
        self._thread_ident = _original("_thread", "get_ident")()
        self._sleep = _original("time", "sleep")
        self._stopped = False
        self.heartbeat = time.monotonic()
        #: (generation, method, site, peer, started) of the call running now, or None
        self.current_call = None
        self._generation = 0
        self._reported = None

    def begin_call(self, method, site, peer):
        self._generation += 1
        self.current_call = (self._generation, method, site, peer, time.monotonic())

    def end_call(self):
        self.current_call = None

    def start(self):
        _original("_thread", "start_new_thread")(self._run, ())

    def stop(self):
        self._stopped = True

    def _run(self):
        interval = min(self._report_after / 2, 0.5)
        while not self._stopped:
            self._sleep(interval)
            try:
                self._check()
            except Exception:  # the watchdog must never die silently
                log.exception("the event loop watchdog failed")

    def _check(self):
        now = time.monotonic()
        blocked_for = now - self.heartbeat
        call = self.current_call
        if blocked_for < self._report_after or call is None:
            return
        generation, method, site, peer, started = call
        if self._reported != generation:
            self._reported = generation
            log.warning("event loop blocked for %.1f s by %s (site %r) from %s",
                        blocked_for, method, site, peer)
        timeout = self._server.settings.call_timeout
        if now - started > timeout and self.current_call is call:
            log.warning("interrupting %s (site %r) from %s: it kept the event loop busy past "
                        "the call timeout of %.1f s", method, site, peer, timeout)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread_ident), ctypes.py_object(_LoopBlocked))
            self.current_call = None


class _Connection:
    """State of one client connection, as seen by the deadline check and the shutdown."""

    __slots__ = ("channel", "greenlet", "phase", "since", "expired", "peer")

    def __init__(self, channel, peer):
        self.channel = channel
        self.peer = peer
        self.greenlet = gevent.getcurrent()
        self.enter(_HANDSHAKE)

    def enter(self, phase):
        self.phase = phase
        self.since = time.monotonic()
        self.expired = False

    @property
    def busy(self):
        return self.phase == _BUSY


def _auth_failure_reason(message):
    """Return a short, fixed reason name for an authentication failure message."""
    if "tag does not match" in message:
        return "bad_tag"
    if "unsigned frame" in message:
        return "unsigned"
    if "key" in message:
        return "key_mismatch"
    return "other"


def _set_socket_group(path, group):
    """Give the socket file at ``path`` to ``group`` (a name or a number)."""
    import grp

    try:
        gid = int(group) if str(group).isdigit() else grp.getgrnam(group).gr_gid
        os.chown(path, -1, gid)
    except KeyError:
        raise OSError(f"cannot give {path} to group {group!r}: no such group") from None
    except OSError as exc:
        raise OSError(f"cannot give {path} to group {group!r}: {exc.strerror}") from None


class DaemonServer:
    """Serve a ``Daemon`` root object over TCP or a Unix socket.

    ``settings`` is a ``gnr_daemon.config.Settings``; ``key`` the HMAC key as
    bytes or None.
    """

    def __init__(self, daemon, settings, key=None, tls_context=None, previous_key=None,
                 admin_key=None, policy=None):
        self.daemon = daemon
        self.settings = settings
        self._key = key
        self._tls_context = tls_context
        self._admin_key = admin_key
        other_keys = []
        if previous_key:
            other_keys.append((previous_key, "previous"))
        if admin_key:
            other_keys.append((admin_key, "admin"))
        self._other_keys = tuple(other_keys)
        self._policy = policy or current_policy()
        self._loads = self._policy.loads
        self._connections = set()
        self._server = None
        self._listener = None
        self._address = None
        self._stopping = False
        self._stopped = None
        self._deadline_timer = None
        self._watchdog = None
        self._save_on_stop = False
        self.calls_served = 0
        self.call_errors = 0
        self.call_timeouts = 0
        self.auth_failures = 0
        self.auth_failures_by_reason = collections.Counter()
        self.protocol_errors = 0
        self.rejected_connections = 0
        daemon._server = self

    def __repr__(self):
        if self._stopping:
            state = "stopping"
        elif self._server is not None:
            state = "listening"
        else:
            state = "new"
        return f"<DaemonServer {self.address_text} {state} connections={len(self._connections)}>"

    # listening

    @property
    def address(self):
        """The bound address: ``(host, port)`` for TCP, the path for a Unix socket."""
        return self._address

    @property
    def address_text(self):
        if self._address is None:
            return "unbound"
        if isinstance(self._address, str):
            return f"unix:{self._address}"
        host, port = self._address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _bind(self):
        if self.settings.socket:
            return self._bind_unix(self.settings.socket)
        host = self.settings.bind or self.settings.host
        return self._bind_tcp(host, self.settings.port)

    def _bind_tcp(self, host, port):
        # An empty host means every IPv4 interface, stated explicitly: left to
        # the resolver, some platforms would listen on IPv6 only.
        host = host.strip("[]") if host else "0.0.0.0"
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve listen address {host!r}: {exc.strerror}") from None
        failures = []
        # The first address that binds wins, in the resolver's order, which is
        # the order a client's create_connection() tries them in.
        for family, socktype, proto, _name, sockaddr in infos:
            listener = gevent.socket.socket(family, socktype, proto)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listener.bind(sockaddr)
                listener.listen(_LISTEN_BACKLOG)
            except OSError as exc:
                listener.close()
                failures.append(f"{sockaddr[0]}: {exc.strerror or exc}")
                continue
            self._address = listener.getsockname()[:2]
            return listener
        raise OSError(f"cannot listen on {host} port {port}: {'; '.join(failures)}")

    def _bind_unix(self, path):
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                raise OSError(f"cannot listen on {path}: the path exists and is not a socket")
            probe = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # a stale socket left by a daemon that died
            else:
                raise OSError(f"cannot listen on {path}: another process is listening there")
            finally:
                probe.close()
        listener = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The umask makes the socket 0660 from the moment it exists, so no
        # other user can connect in the window between bind and chmod.
        old_umask = os.umask(0o117)
        try:
            listener.bind(path)
        except OSError as exc:
            listener.close()
            raise OSError(exc.errno, f"cannot listen on {path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        try:
            os.chmod(path, 0o660)
            if self.settings.socket_group:
                _set_socket_group(path, self.settings.socket_group)
            listener.listen(_LISTEN_BACKLOG)
        except OSError:
            listener.close()
            os.unlink(path)
            raise
        self._address = path
        return listener

    def start(self):
        """Bind and start accepting; returns once the server is listening."""
        listener = self._bind()
        self._listener = listener
        pool = gevent.pool.Pool(self.settings.max_connections + _REJECT_MARGIN)
        self._server = StreamServer(listener, self._handle, spawn=pool)
        self._server.start()
        tick = self._deadline_tick()
        self._watchdog = _LoopWatchdog(self, report_after=max(1.0, tick * 2))
        self._watchdog.start()
        self._deadline_timer = gevent.get_hub().loop.timer(tick, tick)
        self._deadline_timer.start(self._check_deadlines)
        self._stopped = gevent.event.Event()
        signing = "on" if self._key else "OFF"
        tls = "on" if self._tls_context is not None else "off"
        log.info(
            "gnr_daemon listening on %s (pid %d, store %s, HMAC signing %s, TLS %s)",
            self.address_text, os.getpid(), self.daemon._store.url, signing, tls,
        )

    def _deadline_tick(self):
        settings = self.settings
        shortest = min(settings.handshake_timeout, settings.read_timeout, settings.call_timeout,
                       settings.idle_timeout)
        return min(max(shortest / 4, 0.02), 1.0)

    def _check_deadlines(self):
        """Throw _DeadlineExpired into connections whose phase ran too long.

        One periodic timer of the hub serves every connection, so no timer is
        started or allocated per call or per socket wait. The timer callback
        runs in the hub, where every connection greenlet is parked at its
        current wait; ``throw`` raises there at once. A deadline is therefore
        enforced with up to one tick of delay (at most 1 s).
        """
        settings = self.settings
        now = time.monotonic()
        self._watchdog.heartbeat = now
        for conn in list(self._connections):
            if conn.expired:
                continue
            phase, started = conn.phase, conn.since
            if phase == _IDLE:
                frame_started = conn.channel.frame_started
                if frame_started is not None and frame_started >= started:
                    phase, started, limit = "read", frame_started, settings.read_timeout
                else:
                    limit = settings.idle_timeout
            elif phase == _HANDSHAKE:
                limit = settings.handshake_timeout
            else:
                limit = settings.call_timeout
            if now - started > limit:
                conn.expired = True
                try:
                    conn.greenlet.throw(_DeadlineExpired(phase, limit))
                except Exception:
                    log.exception("ending the expired %s phase of %s failed", phase, conn.peer)

    def serve_forever(self):
        """Start if needed, then block until the server has stopped."""
        if self._server is None:
            self.start()
        self._stopped.wait()

    # shutdown

    def request_stop(self, save_status=False):
        """Start the shutdown in a new greenlet; returns at once.

        ``save_status`` dumps every site at the end of the shutdown.
        """
        self._save_on_stop = self._save_on_stop or save_status
        if not self._stopping:
            self._stopping = True
            gevent.spawn(self.stop)

    def stop(self, drain_timeout=None):
        """Stop accepting, drain calls in flight, close connections, save state if asked."""
        self._stopping = True
        notify_stopping()
        log.info("shutting down: no new connections; waiting up to %.1f s for calls in flight",
                 self.settings.drain_timeout if drain_timeout is None else drain_timeout)
        drain_timeout = self.settings.drain_timeout if drain_timeout is None else drain_timeout
        if self._server is not None:
            self._server.close()
        if isinstance(self._address, str):
            try:
                os.unlink(self._address)
            except OSError:
                pass

        self._close_idle_connections()
        deadline = time.monotonic() + drain_timeout
        while any(conn.busy for conn in self._connections) and time.monotonic() < deadline:
            gevent.sleep(0.01)
            self._close_idle_connections()
        busy = [conn for conn in self._connections if conn.busy]
        if busy:
            log.warning("drain timeout of %.1f s expired: cancelling %d call(s) in flight",
                        drain_timeout, len(busy))
        else:
            log.info("calls in flight drained")
        for conn in list(self._connections):
            conn.greenlet.kill(ShutdownInterrupt, block=False)
        gevent.joinall([conn.greenlet for conn in list(self._connections)], timeout=2)

        if self._deadline_timer is not None:
            self._deadline_timer.stop()
        if self._watchdog is not None:
            self._watchdog.stop()
        saved = self.daemon._stop_all_sites(self._save_on_stop)
        failed = sorted(name for name, outcome in saved.items() if outcome.startswith("failed"))
        if failed:
            log.error("gnr_daemon stopped; saving the state of %s failed", ", ".join(failed))
        else:
            log.info("gnr_daemon stopped")
        if self._stopped is not None:
            self._stopped.set()

    def _close_idle_connections(self):
        for conn in list(self._connections):
            if not conn.busy:
                conn.greenlet.kill(ShutdownInterrupt, block=False)

    # status

    def _status(self):
        return {
            "address": self.address_text,
            "signing": bool(self._key),
            "tls": self._tls_context is not None,
            "connections": len(self._connections),
            "previous_key_connections": sum(
                1 for conn in self._connections if conn.channel.key_role == "previous"),
            "admin_connections": sum(
                1 for conn in self._connections if conn.channel.key_role == "admin"),
            "restricted_unpickling": self._policy.restricted,
            "calls_served": self.calls_served,
            "call_errors": self.call_errors,
            "call_timeouts": self.call_timeouts,
            "auth_failures": self.auth_failures,
            "protocol_errors": self.protocol_errors,
            "rejected_connections": self.rejected_connections,
            "stopping": self._stopping,
        }

    # connections

    def _handle(self, sock, address):
        peer = self._peer_text(address)
        if self._stopping:
            sock.close()
            return
        if len(self._connections) >= self.settings.max_connections:
            self.rejected_connections += 1
            log.warning("rejected connection from %s: %d connections open (limit %d)",
                        peer, len(self._connections), self.settings.max_connections)
            if self._tls_context is not None:
                sock.close()  # no plain text can reach a TLS client before its handshake
                return
            channel = Channel(sock, "server", peer=peer)
            channel.send_error(
                f"DaemonUnavailable: too many connections (limit {self.settings.max_connections}); "
                "retry later or raise --max-connections"
            )
            channel.close()
            return
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls_context is not None:
            # The TLS handshake runs in _serve_connection, under the handshake deadline.
            sock = self._tls_context.wrap_socket(sock, server_side=True,
                                                 do_handshake_on_connect=False)
        channel = Channel(sock, "server", key=self._key,
                          max_frame_size=self.settings.max_frame_size, peer=peer,
                          loads=self._loads, other_keys=self._other_keys)
        conn = _Connection(channel, peer)
        self._connections.add(conn)
        try:
            self._serve_connection(conn)
        except ShutdownInterrupt:
            pass
        finally:
            self._connections.discard(conn)
            channel.close()

    @staticmethod
    def _peer_text(address):
        if isinstance(address, tuple) and address:
            host, port = address[:2]
            return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        return "unix-peer"

    def _serve_connection(self, conn):
        channel = conn.channel
        try:
            if self._tls_context is not None:
                channel.sock.do_handshake()
            channel.server_handshake(None)
        except _DeadlineExpired as exc:
            self._reject_expired(conn, exc)
            return
        except (ProtocolError, OSError) as exc:
            self._reject(conn, exc, "handshake")
            return

        admin_pending = True
        conn.greenlet.gnrd_admin = self._admin_key is None
        conn.greenlet.gnrd_peer = conn.peer
        while not self._stopping:
            conn.enter(_IDLE)
            try:
                kind, request = channel.receive(None, None)
            except _DeadlineExpired as exc:
                self._reject_expired(conn, exc)
                return
            except PeerClosed as exc:
                if exc.received:
                    self._reject(conn, exc, "frame")
                return
            except (ProtocolError, OSError) as exc:
                self._reject(conn, exc, "frame")
                return
            except PayloadError as exc:
                # The tag checked out but the payload did not unpickle (or
                # named a class outside the allow-list): the peer has the
                # key, so it gets an error reply and may go on.
                conn.enter(_BUSY)
                self.protocol_errors += 1
                log.warning("invalid request payload from %s: %s", conn.peer, exc)
                error = ProtocolError(f"invalid request payload: {exc}")
                channel.send_payload(KIND_RESPONSE, encode_payload(_failure(None, error, False)))
                continue
            conn.enter(_BUSY)
            if admin_pending:
                admin_pending = False
                # Without an admin key every connection may call admin methods.
                conn.greenlet.gnrd_admin = (self._admin_key is None
                                            or channel.key_role == "admin")
                if channel.key_role == "previous":
                    log.info("%s signs with the previous key", conn.peer)
            if kind != KIND_REQUEST:
                self._reject(conn, ProtocolError(f"unexpected frame kind {kind} from a client"), "frame")
                return
            reply = self._run_request(request)
            try:
                channel.send_payload(KIND_RESPONSE, reply)
            except _DeadlineExpired:
                log.warning("sending a reply to %s took longer than the call timeout; "
                            "connection closed", conn.peer)
                return

    def _reject_expired(self, conn, exc):
        """Close a connection whose handshake, idle wait or frame read ran past its deadline."""
        if exc.phase == _HANDSHAKE:
            log.warning("dropped %s: no hello within %.1f s", conn.peer, exc.limit)
        elif exc.phase == "read":
            log.warning("dropped %s: frame not received completely within %.1f s",
                        conn.peer, exc.limit)
        else:
            log.debug("closed %s: idle for %.1f s", conn.peer, exc.limit)
        conn.channel.send_error(
            f"ProtocolError: timed out after {exc.limit:g} s waiting for data ({exc.phase}); "
            "connection closed"
        )

    def _reject(self, conn, exc, stage):
        """Reply to a failed handshake or frame with plain text, then log and count it."""
        if isinstance(exc, ssl.SSLError):
            self.auth_failures += 1
            self.auth_failures_by_reason["tls"] += 1
            log.warning("TLS handshake with %s failed: %s", conn.peer, exc)
            return
        if isinstance(exc, OSError) and not isinstance(exc, GnrDaemonError):
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.EBADF, None):
                log.warning("connection error with %s: %s", conn.peer, exc)
            return
        if type(exc).__name__ == "AuthenticationError":
            self.auth_failures += 1
            self.auth_failures_by_reason[_auth_failure_reason(str(exc))] += 1
        else:
            self.protocol_errors += 1
        log.warning("rejected %s from %s: %s", stage, conn.peer, exc)
        conn.channel.send_error(f"{type(exc).__name__}: {exc}")

    def _run_request(self, request):
        """Run one decoded request and return the pickled reply payload."""
        call_id = request[0] if isinstance(request, tuple) and request else None
        try:
            call_id, site, method, args, kwargs = _check_request(request)
        except ProtocolError as exc:
            self.protocol_errors += 1
            return encode_payload(_failure(call_id, exc, False))

        self.calls_served += 1
        watchdog = self._watchdog
        try:
            if watchdog is not None:
                watchdog.begin_call(method, site, _current_peer())
            try:
                result = self.daemon._call(site, method, args, kwargs)
            finally:
                if watchdog is not None:
                    watchdog.end_call()
            return encode_payload((call_id, True, result))
        except _LoopBlocked:
            self.call_errors += 1
            self.call_timeouts += 1
            error = CallTimeout(f"{method} kept the daemon busy for longer than the call timeout "
                                f"of {self.settings.call_timeout:g} s and was interrupted")
            return encode_payload(_failure(call_id, error, False))
        except _DeadlineExpired:
            self.call_errors += 1
            self.call_timeouts += 1
            log.warning("call %s on site %r timed out after %.1f s", method, site,
                        self.settings.call_timeout)
            error = CallTimeout(f"{method} did not complete within {self.settings.call_timeout:g} s "
                                "(daemon call timeout)")
            return encode_payload(_failure(call_id, error, False))
        except ShutdownInterrupt:
            self.call_errors += 1
            error = DaemonUnavailable(f"{method} was cancelled because the daemon is shutting down")
            return encode_payload(_failure(call_id, error, False))
        except MethodNotFound as exc:
            self.call_errors += 1
            log.debug("method not found: site %r method %r: %s", site, method, exc)
            return encode_payload(_failure(call_id, exc, False))
        except RecursionError as exc:
            self.call_errors += 1
            log.warning("call %s on site %r hit the recursion limit: %s", method, site, exc)
            error = ProtocolError(f"{method}: value nested too deeply to process ({exc})")
            return encode_payload(_failure(call_id, error, False))
        except Exception as exc:
            self.call_errors += 1
            if not isinstance(exc, GnrDaemonError):
                log.exception("call %s on site %r failed", method, site)
            return self._encode_failure(call_id, exc)

    def _encode_failure(self, call_id, exc):
        try:
            return encode_payload(_failure(call_id, exc))
        except RecursionError:
            return encode_payload((call_id, False, (type(exc).__name__, "error too deep to report",
                                                    "", None)))
