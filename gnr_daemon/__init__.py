"""gnr_daemon: the shared-state daemon of Genropy web sites.

This package exposes the client API. Importing it never monkey-patches and
never imports gevent; the client classes are imported on first use, so that
``gnrdaemon start`` can patch before any socket code is loaded.
"""

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "DaemonClient",
    "SiteClient",
    "GnrDaemonError",
    "ProtocolError",
    "AuthenticationError",
    "MethodNotFound",
    "SiteNotFound",
    "RemoteError",
    "DaemonUnavailable",
    "CallTimeout",
]

_LAZY = {
    "DaemonClient": "client",
    "SiteClient": "client",
    "GnrDaemonError": "errors",
    "ProtocolError": "errors",
    "AuthenticationError": "errors",
    "MethodNotFound": "errors",
    "SiteNotFound": "errors",
    "RemoteError": "errors",
    "DaemonUnavailable": "errors",
    "CallTimeout": "errors",
}


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'gnr_daemon' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f"{__name__}.{module_name}")
    value = getattr(module, name)
    globals()[name] = value
    return value
