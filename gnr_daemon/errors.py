"""Exceptions that cross the wire between gnr_daemon and its clients.

The server never pickles an exception object. A failed call travels as the
exception's class name, its message and the server-side traceback text, and
the client rebuilds it through ``ERROR_CLASSES``, a fixed table. A name that
is not in the table arrives as ``RemoteError`` carrying the original name.
Built-in exceptions (``KeyError``, ``ValueError``, ...) come back as
``RemoteError`` subclasses of the matching built-in class, so that both
``except KeyError`` and ``except RemoteError`` catch them.
"""

import builtins
import traceback

__all__ = [
    "GnrDaemonError",
    "ProtocolError",
    "AuthenticationError",
    "MethodNotFound",
    "SiteNotFound",
    "PermissionDenied",
    "RemoteError",
    "DaemonUnavailable",
    "CallTimeout",
    "StoreError",
    "StoreUnavailable",
    "ConfigurationError",
    "GnrDaemonLocked",
    "ERROR_CLASSES",
    "rebuild_error",
    "describe_exception",
]


class GnrDaemonError(Exception):
    """Base class of every error gnr_daemon raises on purpose."""


class ProtocolError(GnrDaemonError):
    """A frame or a handshake broke the wire protocol."""


class AuthenticationError(ProtocolError):
    """A frame's HMAC tag was missing or did not match the key."""


class MethodNotFound(GnrDaemonError):
    """The requested method name is private, malformed, unknown or not callable."""


class SiteNotFound(MethodNotFound):
    """A site-scoped call named a site that is not registered on the daemon."""


class PermissionDenied(GnrDaemonError):
    """The call needs the admin key, and the connection is signed with another key."""


class RemoteError(GnrDaemonError):
    """A handler raised an exception on the daemon.

    ``remote_type`` is the class name on the server and ``remote_traceback``
    the server-side traceback text (empty when the server sent none).
    """

    def __init__(self, message="", remote_type=None, remote_traceback=""):
        super().__init__(message)
        self.remote_type = remote_type or type(self).__name__
        self.remote_traceback = remote_traceback or ""

    def __str__(self):
        message = super().__str__()
        if self.remote_type not in (type(self).__name__, "RemoteError"):
            message = f"{self.remote_type}: {message}"
        if self.remote_traceback:
            message = (
                f"{message}\n\n--- remote traceback ---\n"
                f"{self.remote_traceback.rstrip()}\n--- end of remote traceback ---"
            )
        return message


class DaemonUnavailable(GnrDaemonError):
    """The daemon could not be reached, or the connection broke mid-call."""


class CallTimeout(DaemonUnavailable):
    """A call did not complete within its timeout."""


class StoreError(GnrDaemonError):
    """The state store failed an operation."""


class StoreUnavailable(StoreError):
    """The state store cannot be reached."""


class ConfigurationError(GnrDaemonError):
    """A setting has an invalid value."""


class GnrDaemonLocked(GnrDaemonError):
    """A register item stayed locked by another holder after every retry."""


#: Class names that the client maps back to gnr_daemon exceptions.
ERROR_CLASSES = {
    cls.__name__: cls
    for cls in (
        GnrDaemonError,
        ProtocolError,
        AuthenticationError,
        MethodNotFound,
        SiteNotFound,
        PermissionDenied,
        RemoteError,
        DaemonUnavailable,
        CallTimeout,
        StoreError,
        StoreUnavailable,
        ConfigurationError,
        GnrDaemonLocked,
    )
}

# Genropy's own client catches these names; they map onto the classes above.
ERROR_CLASSES.update(
    {
        "GnrDaemonException": GnrDaemonError,
        "GnrDaemonProtoError": ProtocolError,
        "GnrDaemonMethodNotFound": MethodNotFound,
        "GnrDaemonUnavailable": DaemonUnavailable,
    }
)

_remote_builtin_classes = {}


def _remote_builtin_class(name):
    """Return a RemoteError subclass that also derives from the built-in ``name``."""
    cls = _remote_builtin_classes.get(name)
    if cls is None:
        base = getattr(builtins, name, None)
        if not (isinstance(base, type) and issubclass(base, Exception)):
            return None
        try:
            cls = type(f"Remote{name}", (RemoteError, base), {})
        except TypeError:
            # Some built-ins (OSError subclasses) have a layout that cannot be
            # combined with another exception class.
            return None
        _remote_builtin_classes[name] = cls
    return cls


def rebuild_error(class_name, message, traceback_text="", builtin_base=None):
    """Build the local exception for a failure the daemon reported by name.

    ``builtin_base`` names the nearest built-in class of the remote exception
    (``ValueError`` for a ``ValueError`` subclass), so that an unknown remote
    class can still be caught as that built-in.
    """
    cls = ERROR_CLASSES.get(class_name)
    if cls is not None and not issubclass(cls, RemoteError):
        error = cls(message)
        error.remote_traceback = traceback_text
        return error
    if cls is None:
        cls = _remote_builtin_class(class_name)
    if cls is None and builtin_base:
        cls = _remote_builtin_class(builtin_base)
    if cls is None:
        cls = RemoteError
    return cls(message, remote_type=class_name, remote_traceback=traceback_text)


def _builtin_base(exc):
    """Return the name of the nearest built-in exception class ``exc`` derives from."""
    for cls in type(exc).__mro__:
        if cls.__module__ == "builtins" and cls not in (Exception, BaseException):
            return cls.__name__
    return None


def describe_exception(exc, with_traceback=True):
    """Return ``(class_name, message, traceback_text, builtin_base)`` for the wire.

    Call it inside the ``except`` block that caught ``exc`` when the
    traceback is wanted.
    """
    text = traceback.format_exc() if with_traceback else ""
    return (type(exc).__name__, str(exc), text, _builtin_base(exc))
