"""``gnrdaemon start``: settings, security checks, logging, store, server.

Imported only after ``gevent.monkey.patch_all()`` has run.
"""

import logging
import os
import signal
import stat
import sys

import gevent

from . import __version__
from .cli import configure_logging
from .config import RECOMMENDED_KEY_LENGTH, is_loopback_host, load_settings
from .errors import ConfigurationError
from .metrics import start_metrics
from .safepickle import configure as configure_unpickling
from .systemd import notify_ready
from .tls import server_context

__all__ = ["run_daemon"]

log = logging.getLogger(__name__)


def _fail(message, status=1):
    print(f"gnrdaemon: {message}", file=sys.stderr, flush=True)
    return status


def _check_key_file(path):
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("key file %s is readable by group or others (mode %o): chmod 600 it",
                    path, stat.S_IMODE(mode))


class _EarlySignals:
    """SIGTERM and SIGINT handling from the first moment of start-up.

    A signal that arrives before the server listens is remembered, and the
    daemon exits instead of starting to serve. Once the server exists, a
    signal starts its shutdown, and a second signal exits at once.
    """

    def __init__(self):
        import gevent

        self.server = None
        self.received = None
        self.count = 0
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum):
        self.count += 1
        name = signal.Signals(signum).name
        if self.count > 1:
            log.warning("%s received again: exiting without waiting for calls in flight", name)
            logging.shutdown()
            os._exit(1)
        self.received = name
        if self.server is not None:
            log.info("%s received: shutting down", name)
            self.server.request_stop()
        else:
            log.info("%s received during start-up: exiting", name)


def run_daemon(arguments, overrides, daemon_class=None):
    """Run the daemon in the foreground; return the exit status.

    ``daemon_class`` replaces ``Daemon`` (tests use it to add methods).
    """
    signals = _EarlySignals()
    from .daemon import Daemon
    from .server import DaemonServer
    from .store import open_store

    try:
        settings = load_settings(overrides)
    except ConfigurationError as exc:
        return _fail(str(exc), 2)
    tls_context = None
    if settings.tls_cert or settings.tls_key:
        try:
            tls_context = server_context(settings.tls_cert, settings.tls_key, settings.tls_ca)
        except ConfigurationError as exc:
            return _fail(str(exc))
    configure_logging(settings.log_level, settings.log_format)
    if signals.received:
        return 0

    try:
        key = settings.key_bytes()
    except ConfigurationError as exc:
        return _fail(str(exc))

    listen_host = settings.bind or settings.host
    if key is None and not settings.socket and not is_loopback_host(listen_host):
        if not settings.insecure:
            return _fail(
                f"refusing to listen on {listen_host or 'all interfaces'!r} without an HMAC key: "
                "anyone who can reach the port could run code in the daemon. Set a key "
                "(GNR_DAEMON_HMAC_KEY or --hmac-key-file; gnrdaemon keygen makes one), or "
                "pass --insecure on a network you fully trust"
            )
        log.warning("listening on %r WITHOUT an HMAC key (--insecure): every host that can "
                    "reach the port is fully trusted", listen_host)

    if key is not None:
        log.info("HMAC signing on; key from %s", settings.key_source())
        if settings.hmac_key and settings.sources.get("hmac_key", "").startswith("option"):
            if os.environ.get("GNR_DAEMON_HMAC_KEY"):
                log.info("the key given with --hmac-key overrides GNR_DAEMON_HMAC_KEY")
        if len(key) < RECOMMENDED_KEY_LENGTH:
            log.warning("the HMAC key is %d bytes long; use at least %d random bytes "
                        "(gnrdaemon keygen)", len(key), RECOMMENDED_KEY_LENGTH)
        if settings.hmac_key_file and not settings.hmac_key:
            _check_key_file(settings.hmac_key_file)
    else:
        log.info("HMAC signing off (no key configured)")

    try:
        previous_key = settings.previous_key_bytes()
        admin_key = settings.admin_key_bytes()
    except ConfigurationError as exc:
        return _fail(str(exc))
    if (previous_key or admin_key) and key is None:
        return _fail("--hmac-key-previous and --admin-key work only together with an HMAC key: "
                     "set GNR_DAEMON_HMAC_KEY or --hmac-key-file as well")
    if admin_key is not None and admin_key in (key, previous_key):
        return _fail("the admin key must differ from the HMAC key and the previous key")
    if previous_key is not None:
        log.info("key rotation: frames signed with the previous key are accepted too")
    if admin_key is not None:
        log.info("admin key set: stop, restart, dump, load and maintenance calls need it")
        if settings.admin_key_file and not settings.admin_key:
            _check_key_file(settings.admin_key_file)

    try:
        store = open_store(settings.store, hmac_key=key, previous_key=previous_key)
    except ConfigurationError as exc:
        return _fail(str(exc), 2)

    if tls_context is not None:
        log.info("TLS on: certificate %s%s", settings.tls_cert,
                 f", client certificates required (CA {settings.tls_ca})" if settings.tls_ca else "")

    policy = configure_unpickling(settings.allow_classes, restricted=not settings.unrestricted_pickle)
    if not policy.restricted:
        log.warning("restricted unpickling is OFF (--unrestricted-pickle): any client with the "
                    "key can run code in the daemon")
    elif settings.allow_classes:
        log.info("classes allowed in requests beyond the defaults: %s",
                 ", ".join(sorted(f"{module}.{name}" for module, name in settings.allow_classes)))

    daemon = (daemon_class or Daemon)(store, settings.state_dir)
    server = DaemonServer(daemon, settings, key=key, tls_context=tls_context,
                          previous_key=previous_key, admin_key=admin_key, policy=policy)
    log.info("gnr_daemon %s starting (store %s, state directory %s)",
             __version__, store.url, settings.state_dir)
    if signals.received:
        store.close()
        return 0
    try:
        server.start()
    except OSError as exc:
        store.close()
        return _fail(str(exc))
    signals.server = server
    if signals.received:
        server.request_stop()

    metrics = None
    if settings.metrics_port is not None:
        try:
            metrics = start_metrics(server, settings.metrics_host, settings.metrics_port)
        except (ConfigurationError, OSError) as exc:
            server.stop(drain_timeout=0)
            store.close()
            return _fail(str(exc))

    gevent.spawn(_announce_ready, server, store)
    server.serve_forever()
    if metrics is not None:
        metrics.stop()
    store.close()
    return 0


def _announce_ready(server, store, interval=0.5):
    """Notify systemd that the daemon is ready once it listens and its store responds."""
    waited = 0.0
    while not server._stopping:
        health = store.health()
        if health.get("ok"):
            notify_ready(f"listening on {server.address_text}, store {store.url}")
            log.info("ready: listening on %s, store %s responds", server.address_text, store.url)
            return
        if waited == 0.0:
            log.warning("store %s does not respond yet (%s); ready once it does",
                        store.url, health.get("detail"))
        gevent.sleep(interval)
        waited += interval
