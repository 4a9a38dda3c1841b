"""gnrdaemon: run and control a gnr_daemon.

Usage:
  gnrdaemon start [--allow-class=CLASS]... [options]
  gnrdaemon stop [--savestatus] [options]
  gnrdaemon status [--json] [options]
  gnrdaemon ping [options]
  gnrdaemon sites [options]
  gnrdaemon call [--site=NAME] [options] METHOD [ARG...]
  gnrdaemon keygen [--file=PATH]
  gnrdaemon -h | --help
  gnrdaemon --version

Commands:
  start        Run the daemon in the foreground until SIGTERM, SIGINT or a stop call.
  stop         Ask the daemon to stop (--savestatus saves register state first).
  status       Print version, uptime, store, sites and connection figures.
  ping         Check that the daemon responds.
  sites        List the registered sites with their user, connection and page counts.
  call         Call METHOD with ARGs; an ARG is a Python literal, or NAME=literal for a
               keyword argument; a bare word such as c1 is taken as a string.
  keygen       Print a new random 32-byte key in hex, or write it to --file with mode 0600.

Options:
  -H HOST, --host=HOST         Daemon host name or address (default localhost).
  -P PORT, --port=PORT         Daemon TCP port (default 40404).
  -S PATH, --socket=PATH       Unix socket path, used instead of TCP.
  -K KEY, --hmac-key=KEY       Shared HMAC key. Visible in ps: prefer GNR_DAEMON_HMAC_KEY
                               or --hmac-key-file.
  --hmac-key-file=PATH         File that contains the shared HMAC key.
  --store=URL                  State store URL (default memory:).
  --state-dir=DIR              Directory of saved register state.
  --bind=ADDRESS               Address to listen on when it differs from --host.
  --max-frame-size=BYTES       Largest accepted frame payload in bytes (default 67108864).
  --max-connections=N          Most client connections served at once (default 1000).
  --call-timeout=SECONDS       Longest run time of one call on the daemon (default 30).
  --handshake-timeout=SECONDS  Time a new connection has for its hello (default 10).
  --read-timeout=SECONDS       Time a started frame has to arrive completely (default 30).
  --idle-timeout=SECONDS       Time a connection may stay idle (default 600).
  --drain-timeout=SECONDS      Time calls in flight get at shutdown (default 10).
  --timeout=SECONDS            Client-side call timeout of this command (default 30).
  --insecure                   Allow a non-loopback address without a key.
  --socket-group=GROUP         Group that owns the Unix socket (its mode is 0660).
  --tls                        Client commands: connect with TLS.
  --tls-cert=PATH              PEM certificate: the daemon's (start), or the client's own.
  --tls-key=PATH               PEM private key of --tls-cert.
  --tls-ca=PATH                PEM CA bundle: start requires client certificates signed by
                               it; client commands verify the daemon with it.
  --metrics-port=PORT          Serve Prometheus metrics on this port (needs the
                               prometheus extra); off when unset.
  --metrics-host=HOST          Address of the metrics endpoint (default 127.0.0.1).
  --log-level=LEVEL            DEBUG, INFO, WARNING or ERROR (default INFO).
  --log-format=FORMAT          plain (one text line per record) or json (default plain).
  --hmac-key-previous=KEY      The key being retired: also accepted during a key rotation.
  --admin-key=KEY              Key that stop, restart, dump, load and maintenance calls
                               need; client commands sign with it when it is given.
  --admin-key-file=PATH        File that contains the admin key.
  --allow-class=CLASS          Extra class (module.Class) requests may carry; repeatable.
  --unrestricted-pickle        Unpickle requests without the class allow-list (trusted
                               legacy setups only).
  --site=NAME                  With call: the site whose register runs METHOD.
  --savestatus                 With stop: save register state before stopping.
  --json                       With status: print JSON.
  --file=PATH                  With keygen: write the key to PATH (mode 0600).
  -h, --help                   Show this help.
  --version                    Show the version.

Each option also has an environment variable (GNR_DAEMON_HOST, GNR_DAEMON_PORT,
GNR_DAEMON_HMAC_KEY, GNR_DAEMON_STORE, ...); an option given on the command
line wins over the environment, which wins over Genropy's environment.xml.

Exit status: 0 on success, 1 on failure, 2 on a usage error.

Trust: this module trusts the operator who runs it and nothing it receives;
it never prints the key.
"""

import ast
import json
import logging
import os
import secrets
import sys
import time

from docopt import DocoptExit, docopt

from . import __version__

__all__ = ["main", "parse_call_argument"]

log = logging.getLogger(__name__)

# docopt option name -> setting name
_OPTION_SETTINGS = {
    "--host": "host",
    "--port": "port",
    "--socket": "socket",
    "--hmac-key": "hmac_key",
    "--hmac-key-file": "hmac_key_file",
    "--store": "store",
    "--state-dir": "state_dir",
    "--bind": "bind",
    "--max-frame-size": "max_frame_size",
    "--max-connections": "max_connections",
    "--call-timeout": "call_timeout",
    "--handshake-timeout": "handshake_timeout",
    "--read-timeout": "read_timeout",
    "--idle-timeout": "idle_timeout",
    "--drain-timeout": "drain_timeout",
    "--timeout": "timeout",
    "--insecure": "insecure",
    "--socket-group": "socket_group",
    "--tls": "tls",
    "--tls-cert": "tls_cert",
    "--tls-key": "tls_key",
    "--tls-ca": "tls_ca",
    "--metrics-port": "metrics_port",
    "--metrics-host": "metrics_host",
    "--log-level": "log_level",
    "--log-format": "log_format",
    "--hmac-key-previous": "hmac_key_previous",
    "--admin-key": "admin_key",
    "--admin-key-file": "admin_key_file",
    "--allow-class": "allow_classes",
    "--unrestricted-pickle": "unrestricted_pickle",
}

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UsageError(Exception):
    """The command line is invalid; exit status 2."""


def _fail(message, status=1):
    print(f"gnrdaemon: {message}", file=sys.stderr, flush=True)
    return status


def _overrides(arguments):
    overrides = {}
    for option, name in _OPTION_SETTINGS.items():
        value = arguments.get(option)
        if value is False or value == []:
            value = None
        elif isinstance(value, list):
            value = ",".join(value)
        overrides[name] = value
    return overrides


# Options whose value must never look like another option: docopt would take
# "-K -P 40405" as the key "-P".
_GUARDED_OPTIONS = ("-K", "--hmac-key", "--hmac-key-file", "--hmac-key-previous",
                    "--admin-key", "--admin-key-file")


def _check_option_values(argv):
    """Return a usage message when a guarded option is followed by an option, else None."""
    for index, token in enumerate(argv):
        if token in _GUARDED_OPTIONS:
            following = argv[index + 1] if index + 1 < len(argv) else None
            if following is None or (following.startswith("-") and following != "-"):
                # The following word is not shown: it may be the key itself.
                shown = "nothing" if following is None else "a word that starts with '-'"
                return (f"{token} needs a value but is followed by {shown}: give the key "
                        f"after {token}, or use GNR_DAEMON_HMAC_KEY or --hmac-key-file")
    return None


def parse_call_argument(text):
    """Turn one ``call`` argument into a value (a Python literal or a bare word)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if any(char in text for char in "[](){}'\"") or not text:
        raise UsageError(
            f"invalid argument {text!r}: not a Python literal; quote strings that contain "
            "brackets or quotes, for example \"'a[1]'\""
        )
    return text


def _parse_call_arguments(raw_arguments):
    args, kwargs = [], {}
    for text in raw_arguments:
        name, sep, value = text.partition("=")
        if sep and name.isidentifier():
            kwargs[name] = parse_call_argument(value)
        elif kwargs:
            raise UsageError(f"positional argument {text!r} after keyword arguments")
        else:
            args.append(parse_call_argument(text))
    return args, kwargs


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object on one line, for log shippers."""

    def format(self, record):
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level, log_format="plain"):
    """Send log records to stderr, one line each, flushed as they are written.

    StreamHandler flushes after every record, so lines reach a pipe (systemd's
    journal, supervisor's log file) at once even though stderr is then block
    buffered by Python.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv=None):
    """Run the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    problem = _check_option_values(argv)
    if problem:
        return _fail(problem, 2)
    try:
        arguments = docopt(__doc__, argv=argv, version=f"gnrdaemon {__version__}")
    except DocoptExit as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return 2

    if arguments["start"]:
        # The daemon's sockets, locks and the Redis client must all be
        # cooperative, so the patch comes before the server is imported.
        from gevent import monkey

        monkey.patch_all()
        from .startup import run_daemon

        return run_daemon(arguments, _overrides(arguments))
    if arguments["keygen"]:
        return _keygen(arguments["--file"])
    return _run_client_command(arguments)


def _keygen(path):
    key = secrets.token_hex(32)
    if path is None:
        print(key)
        return 0
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _fail(f"{path} already exists: choose a new path or remove the old key file first")
    except OSError as exc:
        return _fail(f"cannot create key file {path}: {exc.strerror}")
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    print(f"wrote a new 32-byte key to {path} (mode 0600)", file=sys.stderr)
    return 0


def _run_client_command(arguments):
    from .client import DaemonClient
    from .errors import AuthenticationError, ConfigurationError, GnrDaemonError, RemoteError

    from .config import load_settings

    overrides = _overrides(arguments)
    configure_logging(overrides.get("log_level") or "WARNING")
    try:
        load_settings(overrides)
    except ConfigurationError as exc:
        return _fail(str(exc), 2)
    try:
        settings = load_settings(overrides)
        # An operator's command signs with the admin key when one is given.
        admin_key = settings.admin_key_bytes()
        client = DaemonClient(host=overrides["host"], port=overrides["port"],
                              socket=overrides["socket"],
                              hmac_key=admin_key or overrides["hmac_key"],
                              hmac_key_file=None if admin_key else overrides["hmac_key_file"],
                              timeout=overrides["timeout"], tls=overrides["tls"],
                              tls_ca=overrides["tls_ca"], tls_cert=overrides["tls_cert"],
                              tls_key=overrides["tls_key"],
                              max_frame_size=overrides["max_frame_size"])
    except ConfigurationError as exc:
        return _fail(str(exc))

    try:
        with client:
            return _client_command(client, arguments)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except AuthenticationError as exc:
        return _fail(f"authentication failed: {exc}")
    except RemoteError as exc:
        # The text already starts with the remote class name.
        return _fail(str(exc).splitlines()[0] if str(exc) else exc.remote_type)
    except GnrDaemonError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _fail(f"{type(exc).__name__}: {first_line}")


def _client_command(client, arguments):
    if arguments["ping"]:
        started = time.perf_counter()
        answer = client.ping()
        elapsed = (time.perf_counter() - started) * 1000
        print(f"{answer} from {client.address_text} in {elapsed:.1f} ms")
        return 0
    if arguments["status"]:
        status = client.status()
        if arguments["--json"]:
            print(json.dumps(status, default=str, indent=2, sort_keys=True))
        else:
            _print_status(status)
        return 0
    if arguments["sites"]:
        for sitename, info in client.siteRegisters():
            counters = client.site(sitename).counters()
            print(f"{sitename}\tusers={counters.get('users')}\tconnections="
                  f"{counters.get('connections')}\tpages={counters.get('pages')}")
        return 0
    if arguments["stop"]:
        return _stop(client, bool(arguments["--savestatus"]))
    if arguments["call"]:
        args, kwargs = _parse_call_arguments(arguments["ARG"])
        method = arguments["METHOD"]
        if arguments["--site"]:
            result = client.call_site(arguments["--site"], method, args, kwargs)
        else:
            result = client.call(method, *args, **kwargs)
        _print_result(result)
        return 0
    raise UsageError("no command given")


def _print_status(status):
    health = status.get("store_health") or {}
    store_state = "ok" if health.get("ok") else f"NOT OK: {health.get('detail')}"
    print(f"gnr_daemon {status.get('version')} (pid {status.get('pid')}), "
          f"up {status.get('uptime', 0):.0f} s")
    print(f"address: {status.get('address')}")
    print(f"store: {status.get('store')} ({store_state})")
    print(f"HMAC signing: {'on' if status.get('signing') else 'off'}, "
          f"TLS: {'on' if status.get('tls') else 'off'}")
    print(f"connections: {status.get('connections')} open "
          f"({status.get('previous_key_connections', 0)} on the previous key, "
          f"{status.get('admin_connections', 0)} on the admin key), "
          f"{status.get('rejected_connections', 0)} rejected at the limit")
    print(f"calls: {status.get('calls_served')} served, {status.get('call_errors')} failed, "
          f"{status.get('call_timeouts', 0)} timed out; "
          f"{status.get('auth_failures')} authentication failures, "
          f"{status.get('protocol_errors')} protocol errors")
    counters = status.get("site_counters") or {}
    print(f"sites: {status.get('sites')}")
    for sitename, values in counters.items():
        print(f"  {sitename}: users={values.get('users')} connections={values.get('connections')} "
              f"pages={values.get('pages')}")


def _print_result(result):
    import pprint

    if isinstance(result, (str, int, float, bool)) or result is None:
        print(result)
    else:
        pprint.pprint(result, width=100, sort_dicts=False)


def _process_running(pid):
    """Tell whether ``pid`` runs; a zombie waiting for its parent counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(client, save_status):
    from .config import is_loopback_host
    from .errors import DaemonUnavailable

    pid = client.status().get("pid")
    local = bool(client.socket_path) or is_loopback_host(client.host)
    saved = client.stop(saveStatus=save_status) or {}
    failures = {name: outcome for name, outcome in saved.items() if outcome.startswith("failed")}
    for sitename, outcome in sorted(saved.items()):
        print(f"site {sitename}: state {outcome}")
    # Wait (bounded) until the daemon is gone, so that a script can start a
    # new one right after this command returns. A local daemon is watched by
    # its pid, a remote one until it stops responding.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if local and pid:
            if not _process_running(pid):
                break
        else:
            try:
                client.ping()
            except DaemonUnavailable:
                break
        time.sleep(0.05)
    else:
        return _fail(f"daemon at {client.address_text} is still running 60 s after the stop request")
    print(f"daemon at {client.address_text} stopped")
    if failures:
        return _fail(f"saving the state of {', '.join(sorted(failures))} failed; see the lines "
                     "above and the daemon's log")
    return 0
