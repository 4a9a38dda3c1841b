"""Settings of the daemon and of its client, and where each value comes from.

Every setting is declared once in ``SETTINGS`` with its name, type, default,
environment variable, command-line flag and help text. Values are resolved in
this order, the first source that has one wins:

1. command-line options (``gnrdaemon start --port 40405``) or keyword
   arguments given to ``DaemonClient``;
2. ``GNR_DAEMON_*`` environment variables;
3. the ``<gnrdaemon .../>`` node of Genropy's ``environment.xml``, found in
   the first of ``$GENRO_GNRFOLDER``, ``$VIRTUAL_ENV/etc/gnr``, ``~/.gnr``
   and ``/etc/gnr`` that contains one;
4. the defaults below.

``Settings.sources`` records which source gave each value, so that start-up
can log where the key came from without logging the key.
"""

import ipaddress
import logging
import os
import socket
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from .errors import ConfigurationError
from .protocol import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "Setting",
    "SETTINGS",
    "Settings",
    "load_settings",
    "find_environment_xml",
    "read_key_file",
    "is_loopback_host",
    "default_state_dir",
    "MIN_KEY_LENGTH",
    "RECOMMENDED_KEY_LENGTH",
]

log = logging.getLogger(__name__)

#: Keys shorter than this many bytes are rejected.
MIN_KEY_LENGTH = 16
#: Keys shorter than this many bytes are accepted with a warning.
RECOMMENDED_KEY_LENGTH = 32


def _parse_bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not a boolean (use true or false)")


def _parse_positive_int(value):
    number = int(value)
    if number <= 0:
        raise ValueError(f"{value!r} is not a positive integer")
    return number


def _parse_port(value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a TCP port number (0 to 65535)") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{value!r} is not a TCP port number (0 to 65535)")
    return number


def _parse_seconds(value):
    number = float(value)
    if number <= 0:
        raise ValueError(f"{value!r} is not a positive number of seconds")
    return number


def _parse_log_level(value):
    level = str(value).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"{value!r} is not a log level (DEBUG, INFO, WARNING, ERROR)")
    return level


def _parse_log_format(value):
    text = str(value).lower()
    if text not in ("plain", "json"):
        raise ValueError(f"{value!r} is not a log format (plain or json)")
    return text


def _parse_class_list(value):
    from .safepickle import parse_class_names

    return parse_class_names(value)


def default_state_dir():
    """Return the default state directory: systemd's, else the XDG one."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "gnrdaemon")


@dataclass(frozen=True)
class Setting:
    """One setting: its name, parser, default, environment variable, flag and help."""

    name: str
    parse: object
    default: object
    env: str
    flag: str
    help: str
    xml_name: str = None


SETTINGS = (
    Setting("host", str, "localhost", "GNR_DAEMON_HOST", "--host",
            "host name or address of the daemon", "host"),
    Setting("port", _parse_port, 40404, "GNR_DAEMON_PORT", "--port",
            "TCP port of the daemon", "port"),
    Setting("bind", str, None, "GNR_DAEMON_BIND", "--bind",
            "address the daemon listens on when it differs from --host", "bind"),
    Setting("socket", str, None, "GNR_DAEMON_SOCKET", "--socket",
            "Unix socket path; when set, TCP is not used", "socket"),
    Setting("hmac_key", str, None, "GNR_DAEMON_HMAC_KEY", "--hmac-key",
            "shared HMAC-SHA256 key (prefer the environment or a key file)", "hmac_key"),
    Setting("hmac_key_file", str, None, "GNR_DAEMON_HMAC_KEY_FILE", "--hmac-key-file",
            "file holding the shared key", "hmac_key_file"),
    Setting("store", str, "memory:", "GNR_DAEMON_STORE", "--store",
            "state store URL", "store"),
    Setting("state_dir", str, None, "GNR_DAEMON_STATE_DIR", "--state-dir",
            "directory for saved register state", "state_dir"),
    Setting("max_frame_size", _parse_positive_int, DEFAULT_MAX_FRAME_SIZE,
            "GNR_DAEMON_MAX_FRAME_SIZE", "--max-frame-size",
            "largest accepted frame payload, in bytes"),
    Setting("max_connections", _parse_positive_int, 1000, "GNR_DAEMON_MAX_CONNECTIONS",
            "--max-connections", "most client connections served at once"),
    Setting("call_timeout", _parse_seconds, 30.0, "GNR_DAEMON_CALL_TIMEOUT", "--call-timeout",
            "longest time one call may run on the daemon, in seconds"),
    Setting("handshake_timeout", _parse_seconds, 10.0, "GNR_DAEMON_HANDSHAKE_TIMEOUT",
            "--handshake-timeout", "time a new connection has to complete its hello, in seconds"),
    Setting("read_timeout", _parse_seconds, 30.0, "GNR_DAEMON_READ_TIMEOUT", "--read-timeout",
            "time a started frame has to arrive completely, in seconds"),
    Setting("idle_timeout", _parse_seconds, 600.0, "GNR_DAEMON_IDLE_TIMEOUT", "--idle-timeout",
            "time a connection may stay idle between frames, in seconds"),
    Setting("drain_timeout", _parse_seconds, 10.0, "GNR_DAEMON_DRAIN_TIMEOUT", "--drain-timeout",
            "time calls in flight get to finish at shutdown, in seconds"),
    Setting("timeout", _parse_seconds, 30.0, "GNR_DAEMON_TIMEOUT", "--timeout",
            "client-side timeout of one call, in seconds"),
    Setting("log_level", _parse_log_level, "INFO", "GNR_DAEMON_LOG_LEVEL", "--log-level",
            "logging level"),
    Setting("insecure", _parse_bool, False, "GNR_DAEMON_INSECURE", "--insecure",
            "allow a non-loopback address without a key"),
    Setting("socket_group", str, None, "GNR_DAEMON_SOCKET_GROUP", "--socket-group",
            "group that owns the Unix socket (mode 0660)"),
    Setting("tls", _parse_bool, False, "GNR_DAEMON_TLS", "--tls",
            "client side: connect with TLS (gnrds:// URLs set it)"),
    Setting("tls_cert", str, None, "GNR_DAEMON_TLS_CERT", "--tls-cert",
            "PEM certificate chain: the daemon's (start) or the client's own (mutual TLS)"),
    Setting("tls_key", str, None, "GNR_DAEMON_TLS_KEY", "--tls-key",
            "PEM private key of --tls-cert"),
    Setting("tls_ca", str, None, "GNR_DAEMON_TLS_CA", "--tls-ca",
            "PEM CA bundle: the daemon requires client certificates signed by it; "
            "the client verifies the daemon with it"),
    Setting("metrics_port", _parse_port, None, "GNR_DAEMON_METRICS_PORT", "--metrics-port",
            "port of the Prometheus endpoint (needs prometheus-client); off when unset"),
    Setting("metrics_host", str, "127.0.0.1", "GNR_DAEMON_METRICS_HOST", "--metrics-host",
            "address of the Prometheus endpoint"),
    Setting("log_format", _parse_log_format, "plain", "GNR_DAEMON_LOG_FORMAT", "--log-format",
            "plain (one line of text per record) or json (one JSON object per line)"),
    Setting("hmac_key_previous", str, None, "GNR_DAEMON_HMAC_KEY_PREVIOUS",
            "--hmac-key-previous", "the key being retired: accepted as well during a rotation"),
    Setting("admin_key", str, None, "GNR_DAEMON_ADMIN_KEY", "--admin-key",
            "key that stop, restart, dump, load and maintenance calls need"),
    Setting("admin_key_file", str, None, "GNR_DAEMON_ADMIN_KEY_FILE", "--admin-key-file",
            "file holding the admin key"),
    Setting("allow_classes", _parse_class_list, frozenset(), "GNR_DAEMON_ALLOW_CLASSES",
            "--allow-class", "extra classes requests may carry, as module.Class "
            "(comma-separated; the option can be repeated)", "allow_classes"),
    Setting("unrestricted_pickle", _parse_bool, False, "GNR_DAEMON_UNRESTRICTED_PICKLE",
            "--unrestricted-pickle", "unpickle requests without the class allow-list "
            "(trusted legacy setups only)"),
)

_BY_NAME = {setting.name: setting for setting in SETTINGS}


class Settings:
    """Resolved settings; attribute access by setting name."""

    def __init__(self, values, sources):
        self._values = values
        self.sources = sources

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self):
        return dict(self._values)

    def __repr__(self):
        secret = ("hmac_key", "hmac_key_previous", "admin_key")
        shown = {
            name: ("<hidden>" if name in secret and value else value)
            for name, value in self._values.items()
        }
        return f"<Settings {shown}>"

    def key_bytes(self):
        """Return the HMAC key as bytes (from the key or the key file), or None.

        Raises ConfigurationError when the key file cannot be read or contains a
        key shorter than MIN_KEY_LENGTH bytes.
        """
        if self.hmac_key:
            return self.hmac_key.encode("utf-8")
        if self.hmac_key_file:
            key = read_key_file(self.hmac_key_file)
            if len(key) < MIN_KEY_LENGTH:
                raise ConfigurationError(
                    f"the HMAC key in {self.hmac_key_file} is shorter than {MIN_KEY_LENGTH} "
                    f"bytes: write a random key of at least {RECOMMENDED_KEY_LENGTH} bytes into "
                    "it (gnrdaemon keygen --file PATH makes one)"
                )
            return key
        return None

    def previous_key_bytes(self):
        """Return the retiring key as bytes, or None."""
        return self.hmac_key_previous.encode("utf-8") if self.hmac_key_previous else None

    def admin_key_bytes(self):
        """Return the admin key as bytes (from the key or its file), or None."""
        if self.admin_key:
            return self.admin_key.encode("utf-8")
        if self.admin_key_file:
            key = read_key_file(self.admin_key_file)
            if len(key) < MIN_KEY_LENGTH:
                raise ConfigurationError(
                    f"the admin key in {self.admin_key_file} is shorter than {MIN_KEY_LENGTH} "
                    "bytes: write a random key into it (gnrdaemon keygen --file PATH)"
                )
            return key
        return None

    def key_source(self):
        """Describe where the key came from, for the start-up log; never the key."""
        if self.hmac_key:
            return self.sources.get("hmac_key", "?")
        if self.hmac_key_file:
            return f"key file {self.hmac_key_file} ({self.sources.get('hmac_key_file', '?')})"
        return None


def find_environment_xml(environ=None):
    """Return the path of Genropy's environment.xml, or None."""
    environ = os.environ if environ is None else environ
    folders = []
    if environ.get("GENRO_GNRFOLDER"):
        folders.append(environ["GENRO_GNRFOLDER"])
    if environ.get("VIRTUAL_ENV"):
        folders.append(os.path.join(environ["VIRTUAL_ENV"], "etc", "gnr"))
    home = environ.get("HOME") or os.path.expanduser("~")
    folders.append(os.path.join(home, ".gnr"))
    folders.append("/etc/gnr")
    for folder in folders:
        path = os.path.join(folder, "environment.xml")
        if os.path.isfile(path):
            return path
    return None


def _read_environment_xml(path):
    """Return the attributes of the first <gnrdaemon> node of ``path``."""
    try:
        tree = ElementTree.parse(path)
    except (OSError, ElementTree.ParseError) as exc:
        log.warning("ignoring %s: cannot read it as XML (%s)", path, exc)
        return {}
    node = tree.getroot().find(".//gnrdaemon")
    if node is None:
        return {}
    return dict(node.attrib)


def read_key_file(path):
    """Read a key file: its content without surrounding white space, as bytes."""
    try:
        with open(path, "rb") as handle:
            key = handle.read().strip()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the HMAC key file {path}: {exc.strerror}; check the path and "
            "its permissions"
        ) from None
    if not key:
        raise ConfigurationError(
            f"the HMAC key file {path} is empty: write a key into it "
            "(gnrdaemon keygen > FILE)"
        )
    return key


def load_settings(overrides=None, environ=None, use_environment=True, use_config_file=True):
    """Resolve every setting from ``overrides`` > environment > environment.xml > defaults.

    ``overrides`` maps setting names to values (None means "not given").
    Tests pass ``use_environment=False`` and ``use_config_file=False`` to
    get defaults that the machine cannot change.
    """
    overrides = overrides or {}
    unknown = set(overrides) - set(_BY_NAME)
    if unknown:
        raise ConfigurationError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    environ = os.environ if environ is None else environ
    xml_values, xml_path = {}, None
    if use_config_file:
        xml_path = find_environment_xml(environ)
        if xml_path:
            xml_values = _read_environment_xml(xml_path)

    values, sources = {}, {}
    for name in ("GNR_DAEMON_HMAC_KEY", "GNR_DAEMON_HMAC_KEY_FILE", "GNR_DAEMON_ADMIN_KEY",
                 "GNR_DAEMON_HMAC_KEY_PREVIOUS"):
        # An empty key variable is a mistake (a failed $(cat ...), say); taken
        # as unset, it would quietly start an unsigned daemon.
        if use_environment and name in environ and not environ[name].strip():
            raise ConfigurationError(
                f"{name} is set but empty: put the key (or the key file path) in it, or unset it"
            )
    for setting in SETTINGS:
        raw, source = None, None
        if overrides.get(setting.name) is not None:
            raw, source = overrides[setting.name], f"option {setting.flag}"
        elif use_environment and environ.get(setting.env) not in (None, ""):
            raw, source = environ[setting.env], f"environment variable {setting.env}"
        elif setting.xml_name and xml_values.get(setting.xml_name) not in (None, ""):
            raw, source = xml_values[setting.xml_name], f"{xml_path} <gnrdaemon {setting.xml_name}=>"
        if raw is None:
            values[setting.name] = setting.default
            sources[setting.name] = "default"
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except (TypeError, ValueError) as exc:
            shown = "<hidden>" if setting.name in ("hmac_key", "hmac_key_previous", "admin_key") \
                else repr(raw)
            raise ConfigurationError(
                f"invalid value {shown} for {setting.name} from {source}: {exc}"
            ) from None
        sources[setting.name] = source

    if values["state_dir"] is None:
        values["state_dir"] = default_state_dir()
    _check_key(values, sources)
    return Settings(values, sources)


def _check_key(values, sources):
    for name in ("hmac_key", "hmac_key_previous", "admin_key"):
        if values.get(name) is not None:
            _check_one_key(values[name], sources.get(name))


def _check_one_key(key, source):
    if key.startswith("-") and source.startswith("option"):
        raise ConfigurationError(
            f"the HMAC key from {source} starts with '-', so it could be another option taken "
            "as the key: keys that start with '-' are accepted only from GNR_DAEMON_HMAC_KEY "
            "or a key file"
        )
    if len(key.encode("utf-8")) < MIN_KEY_LENGTH:
        raise ConfigurationError(
            f"the HMAC key from {source} is shorter than {MIN_KEY_LENGTH} bytes: use a random "
            f"key of at least {RECOMMENDED_KEY_LENGTH} bytes (gnrdaemon keygen prints one)"
        )


def is_loopback_host(host):
    """Tell whether every address ``host`` resolves to is a loopback address."""
    host = (host or "").strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    addresses = {info[4][0].split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)
