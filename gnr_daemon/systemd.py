"""Readiness and stop notices for systemd services of ``Type=notify``.

systemd passes the path of a Unix datagram socket in ``NOTIFY_SOCKET``; the
service sends ``READY=1`` there once it serves requests and ``STOPPING=1``
when it begins to shut down (see sd_notify(3)). Without the variable every
function here does nothing, so the daemon runs the same under supervisor,
in a terminal or in tests. No systemd library is needed.
"""

import logging
import os
import socket

__all__ = ["notify", "notify_ready", "notify_stopping"]

log = logging.getLogger(__name__)


def notify(message, environ=None):
    """Send ``message`` (``KEY=value`` lines) to ``$NOTIFY_SOCKET``; return True if sent."""
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    elif not address.startswith("/"):
        log.warning("ignoring NOTIFY_SOCKET %r: not a Unix socket path", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode("utf-8"), address)
    except OSError as exc:
        log.warning("sending %r to the service manager at %s failed: %s",
                    message.splitlines()[0], environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def notify_ready(status):
    """Tell systemd the daemon is ready, with a one-line status."""
    return notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")


def notify_stopping():
    """Tell systemd the daemon has begun to stop."""
    return notify("STOPPING=1\nSTATUS=shutting down")
