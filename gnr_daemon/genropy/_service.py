"""``gnr web daemon``: start and control gnr_daemon with Genropy's command line and config.

Genropy's command parses ``-H``, ``-P``, ``-S``, ``-K``, ``-C COMMAND`` and
``--savestatus`` and hands them to ``DaemonService``. Host, port, socket and
key come from those options first, then from the ``<gnrdaemon>`` node of
Genropy's ``environment.xml``, and only then from ``GNR_DAEMON_*``
environment variables, as Genropy's own daemon reads them. Every other
gnr_daemon setting (store, state directory, timeouts) keeps its usual
sources.

The command replaces the current process with ``python -m gnr_daemon
COMMAND`` (``os.execve``): ``start`` must begin in a fresh interpreter,
because gnr_daemon monkey-patches with gevent before anything else is
imported, and the process id stays the one the process manager started.
The key travels in ``GNR_DAEMON_HMAC_KEY``, never on the command line.

Commands:

- ``start`` (the default) runs the daemon in the foreground;
- ``stop`` stops it, saving the registers first with ``--savestatus``;
- ``restart`` stops it with the registers saved and leaves the new start to
  the process manager, as Genropy's own daemon does;
- ``status``, ``ping`` and ``sites`` print what the same ``gnrdaemon``
  commands print.
"""

import logging
import os
import sys

from ..client import DaemonClient
from ._client import DaemonProxy
from ._config import daemon_options, environment_daemon_node, wire_key

__all__ = [
    "DaemonService",
    "GnrDaemon",
    "GnrDaemonProxy",
    "getFullOptions",
    "build_daemon_command",
    "COMMANDS",
]

log = logging.getLogger(__name__)

#: ``-C`` values and the gnr_daemon command each runs.
COMMANDS = {
    "start": ["start"],
    "stop": ["stop"],
    "restart": ["stop", "--savestatus"],
    "status": ["status"],
    "ping": ["ping"],
    "sites": ["sites"],
}

_ENVIRONMENT_NAMES = (
    ("host", "GNR_DAEMON_HOST"),
    ("port", "GNR_DAEMON_PORT"),
    ("socket", "GNR_DAEMON_SOCKET"),
    ("hmac_key", "GNR_DAEMON_HMAC_KEY"),
)


def _given(value):
    return value is not None and value != ""


def getFullOptions(options=None):
    """Return ``options`` completed with the ``<gnrdaemon>`` node of environment.xml.

    A value in ``options`` wins. The node's ``sockets`` attribute is turned
    into a ``socket`` path (see ``daemon_options``).
    """
    merged = {name: value for name, value in daemon_options(environment_daemon_node()).items()
              if _given(value)}
    merged.update({name: value for name, value in (options or {}).items() if _given(value)})
    return merged


def build_daemon_command(command, options, environ=None, use_environment=True):
    """Return ``(argv, env)`` that run gnr_daemon's ``command`` for Genropy's ``options``.

    With ``use_environment`` false, environment.xml is not read. Raises
    ValueError for a command gnr_daemon does not have.
    """
    command = command or "start"
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}: gnr web daemon -C accepts "
                         f"{', '.join(sorted(COMMANDS))}")
    env = dict(os.environ if environ is None else environ)
    if use_environment:
        full = getFullOptions(options)
    else:
        full = {name: value for name, value in options.items() if _given(value)}
    for name, env_name in _ENVIRONMENT_NAMES:
        value = full.get(name)
        if not _given(value):
            continue
        env[env_name] = wire_key(value) if name == "hmac_key" else str(value)

    arguments = list(COMMANDS[command])
    if command == "stop" and options.get("savestatus"):
        arguments.append("--savestatus")
    if command == "start":
        if options.get("debug"):
            arguments.append("--log-level=DEBUG")
        if options.get("size_limit"):
            arguments.append(f"--max-frame-size={int(options['size_limit'])}")
    return [sys.executable, "-m", "gnr_daemon", *arguments], env


def _exec(argv, env):
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


class DaemonService:
    """The runner of ``gnr web daemon``: starts gnr_daemon or sends it a command."""

    def __init__(self, options, command=None, sitename=None):
        self.options = dict(options or {})
        self.command = command
        self.sitename = sitename

    def run(self):
        """Replace this process with the gnr_daemon command; exit with status 2 on a usage error."""
        if self.sitename:
            print(f"gnr web daemon: per-site daemons ({self.sitename!r}) are not supported "
                  "with gnr_daemon: one gnr_daemon serves every site; run 'gnr web daemon' "
                  "without a site name", file=sys.stderr)
            sys.exit(2)
        try:
            argv, env = build_daemon_command(self.command, self.options)
        except ValueError as exc:
            print(f"gnr web daemon: {exc}", file=sys.stderr)
            sys.exit(2)
        if self.command == "restart":
            print("gnr web daemon: stopping gnr_daemon with its registers saved; the process "
                  "manager starts it again", file=sys.stderr)
        _exec(argv, env)


class GnrDaemon:
    """Genropy's daemon entry point; ``start`` runs gnr_daemon in this process's place."""

    def start(self, use_environment=False, **options):
        """Replace this process with ``python -m gnr_daemon start`` (see ``build_daemon_command``)."""
        argv, env = build_daemon_command("start", options, use_environment=use_environment)
        _exec(argv, env)


class GnrDaemonProxy:
    """Address of gnr_daemon for daemon-level calls; ``proxy()`` returns a client."""

    def __init__(self, host=None, port=None, socket=None, hmac_key=None, compression=True,
                 use_environment=False, serializer="pickle"):
        options = {"host": host, "port": port, "socket": socket, "hmac_key": hmac_key}
        if use_environment:
            options = getFullOptions(options)
        self._options = options

    def proxy(self):
        """Return a ``DaemonProxy``: daemon methods as attributes, values converted."""
        options = self._options
        port = options.get("port")
        client = DaemonClient(host=options.get("host") or None,
                              port=int(port) if _given(port) else None,
                              socket=options.get("socket") or None,
                              hmac_key=wire_key(options.get("hmac_key")))
        return DaemonProxy(client)
