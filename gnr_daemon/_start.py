"""``gnrdaemon start``: settings, security checks, logging, store, server.

Imported only after ``gevent.monkey.patch_all()`` has run.
"""

import logging
import os
import stat
import sys

from . import __version__
from .cli import configure_logging
from .config import RECOMMENDED_KEY_LENGTH, is_loopback_host, load_settings
from .errors import ConfigurationError

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


def run_daemon(arguments, overrides):
    """Run the daemon in the foreground; return the exit status."""
    from .daemon import Daemon
    from .server import DaemonServer
    from .store import open_store

    try:
        settings = load_settings(overrides)
    except ConfigurationError as exc:
        return _fail(str(exc), 2)
    configure_logging(settings.log_level)

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
        store = open_store(settings.store)
    except ConfigurationError as exc:
        return _fail(str(exc), 2)

    daemon = Daemon(store, settings.state_dir)
    server = DaemonServer(daemon, settings, key=key)
    server.install_signal_handlers()
    log.info("gnr_daemon %s starting (store %s, state directory %s)",
             __version__, store.url, settings.state_dir)
    try:
        server.start()
    except OSError as exc:
        return _fail(str(exc))
    server.serve_forever()
    store.close()
    return 0
