"""TLS contexts for the daemon and its clients, built from certificate files.

The daemon's context is gevent's (``gevent.ssl``), so TLS sockets stay
cooperative whether or not the process is monkey-patched; it imports gevent
only inside ``server_context``. Client contexts come from the standard
``ssl`` module, which gevent's patch makes cooperative in a gevent worker.
Both sides require TLS 1.2 or newer.
"""

import os
import ssl

from .errors import ConfigurationError

__all__ = ["server_context", "client_context"]


def _check_readable(path, what):
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigurationError(f"cannot read the {what} {path}: the file is missing or "
                                 "not readable; check the path and its permissions")


def _load_chain(context, cert, key, role):
    _check_readable(cert, f"{role} TLS certificate")
    if key:
        _check_readable(key, f"{role} TLS key")
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the {role} TLS certificate {cert} with key "
                                 f"{key or cert}: {exc}; check that both are PEM files and "
                                 "that the key matches the certificate") from None


def _load_ca(context, ca, role):
    _check_readable(ca, f"{role} TLS CA bundle")
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the {role} TLS CA bundle {ca}: {exc}") from None


def server_context(cert, key=None, ca=None):
    """Return the daemon's TLS context; with ``ca``, clients must present a certificate it signed."""
    import gevent.ssl

    if not cert:
        raise ConfigurationError("TLS needs a certificate: set --tls-cert (and --tls-key)")
    context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key, "daemon")
    if ca:
        _load_ca(context, ca, "daemon")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca=None, cert=None, key=None):
    """Return a client TLS context that verifies the daemon (with ``ca``, or the system's CAs)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca:
        _load_ca(context, ca, "client")
    if cert:
        _load_chain(context, cert, key, "client")
    return context
