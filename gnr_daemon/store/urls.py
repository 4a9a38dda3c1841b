"""Parsing of store URLs, and their masked form for logs and messages.

Accepted forms::

    memory:                                   (also memory:// and None)
    redis://[user[:password]@]host[:port][/db][?param=value&...]
    rediss://[user[:password]@]host[:port][/db][?param=value&...]      TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N&param=value&...]
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db][?...]

User names, passwords and query values are percent-decoded. The parser
rejects every URL it cannot read one way only, for example a password with
an unencoded ``@``, ``/``, ``?`` or ``#``, a bare IPv6 address or an unknown
query parameter, instead of guessing and connecting somewhere else.
``StoreURL.masked`` is the URL with every secret replaced by ``***``; it is
the only form that may be logged or shown.
"""

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from ..errors import ConfigurationError

__all__ = [
    "StoreURL",
    "parse_store_url",
    "redact_url",
    "DEFAULT_PREFIX",
    "DEFAULT_PORT",
    "DEFAULT_SENTINEL_PORT",
    "DEFAULT_SOCKET_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
]

DEFAULT_PREFIX = "gnrd:"
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
#: Seconds a Redis command may wait for its reply, and a connection attempt for its handshake.
DEFAULT_SOCKET_TIMEOUT = 5.0
#: Connections one daemon opens to Redis at most.
DEFAULT_MAX_CONNECTIONS = 64

MEMORY_SCHEMES = ("memory",)
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")

_MASK = "***"
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_SSL_CERT_REQS = ("none", "optional", "required")
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}


def _parse_positive_float(value):
    number = float(value)
    if not number > 0:
        raise ValueError("expected a positive number of seconds")
    return number


def _parse_positive_int(value):
    number = int(value)
    if number <= 0:
        raise ValueError("expected a positive whole number")
    return number


def _parse_db(value):
    if not value.isdigit():
        raise ValueError("expected a database number such as 0 or 3")
    return int(value)


def _parse_cert_reqs(value):
    if value.lower() not in _SSL_CERT_REQS:
        raise ValueError(f"expected one of {', '.join(_SSL_CERT_REQS)}")
    return value.lower()


def _parse_bool(value):
    try:
        return _BOOLEANS[value.lower()]
    except KeyError:
        raise ValueError("expected true or false") from None


def _parse_prefix(value):
    if not value:
        raise ValueError("the key prefix cannot be empty")
    if "{" in value or "}" in value:
        raise ValueError("'{' and '}' are not allowed, because the store puts the prefix "
                         "inside a Redis hash tag")
    if not value.isprintable() or len(value) > 100:
        raise ValueError("expected at most 100 printable characters")
    return value


# Query parameters: name -> (parser, schemes that accept it, is secret).
_PARAMETERS = {
    "prefix": (_parse_prefix, REDIS_SCHEMES, False),
    "db": (_parse_db, REDIS_SCHEMES, False),
    "socket_timeout": (_parse_positive_float, REDIS_SCHEMES, False),
    "socket_connect_timeout": (_parse_positive_float, REDIS_SCHEMES, False),
    "max_connections": (_parse_positive_int, REDIS_SCHEMES, False),
    "ssl_ca_certs": (str, ("rediss",), False),
    "ssl_certfile": (str, ("rediss",), False),
    "ssl_keyfile": (str, ("rediss",), False),
    "ssl_cert_reqs": (_parse_cert_reqs, ("rediss",), False),
    "ssl_check_hostname": (_parse_bool, ("rediss",), False),
    "sentinel_password": (str, ("redis+sentinel",), True),
}


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL. ``password`` never appears in ``repr`` or ``masked``."""

    scheme: str
    masked: str
    hosts: tuple = ()
    socket_path: str = None
    service_name: str = None
    db: int = 0
    username: str = None
    password: str = field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX
    options: dict = field(default_factory=dict, repr=False)

    @property
    def is_memory(self):
        return self.scheme in MEMORY_SCHEMES

    def option(self, name, default=None):
        return self.options.get(name, default)


def redact_url(text):
    """Return ``text`` with everything between ``://`` and the last ``@`` replaced by ``***``.

    Used for URLs that could not be parsed, so that a password is hidden
    even when the URL is malformed. The result is cut to 120 characters.
    """
    text = str(text)
    scheme, separator, rest = text.partition("://")
    if separator and "@" in rest:
        text = f"{scheme}://{_MASK}@{rest.rpartition('@')[2]}"
    for name, (_parser, _schemes, secret) in _PARAMETERS.items():
        if secret:
            text = re.sub(rf"({name}=)[^&#]*", rf"\g<1>{_MASK}", text)
    return text if len(text) <= 120 else text[:117] + "..."


class _Parser:
    """One parse of one URL; every error names the part at fault and the fix."""

    def __init__(self, text):
        self.text = text

    def fail(self, problem):
        raise ConfigurationError(f"invalid store URL {redact_url(self.text)!r}: {problem}")

    def decode(self, raw, part):
        if _BAD_PERCENT.search(raw):
            self.fail(f"the {part} contains a '%' that does not start a percent-encoded byte; "
                      "write a literal '%' as %25")
        try:
            return unquote(raw, errors="strict")
        except UnicodeDecodeError:
            self.fail(f"the percent-encoded bytes of the {part} are not valid UTF-8")

    def parse(self):
        text = self.text
        if any(character.isspace() or not character.isprintable() for character in text):
            self.fail("it contains white space or control characters; percent-encode them "
                      "(a space is %20)")
        scheme, separator, rest = text.partition("://")
        scheme = scheme.lower()
        if not separator:
            if text.lower() in ("memory", "memory:"):
                return StoreURL(scheme="memory", masked="memory:")
            self.fail("expected a URL such as memory:, redis://host:6379/0, "
                      "rediss://host:6380/0, unix:///path/redis.sock or "
                      "redis+sentinel://host:26379/service_name")
        if scheme == "memory":
            if rest:
                self.fail("a memory: URL takes nothing after the scheme")
            return StoreURL(scheme="memory", masked="memory:")
        if scheme not in REDIS_SCHEMES:
            self.fail(f"unsupported scheme {scheme!r}: supported schemes are memory:, "
                      "redis://, rediss://, unix:// and redis+sentinel://")
        if "#" in rest:
            self.fail("it contains '#', which would start a URL fragment; a '#' in a user "
                      "name, password or value must be percent-encoded as %23")
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        if "@" in query and "@" not in netloc:
            self.fail("it contains '@' after the '?'; percent-encode a '?' in the user name "
                      "or password as %3F, and an '@' in a query value as %40")
        if "@" in path:
            self.fail("it contains '@' after the first '/'; a '/' in the user name or "
                      "password must be percent-encoded as %2F")
        userinfo, at, hostpart = netloc.rpartition("@")
        if at and "@" in userinfo:
            self.fail("the user name or password contains '@'; percent-encode it as %40")
        username = password = None
        raw_user = ""
        if at:
            raw_user, colon, raw_password = userinfo.partition(":")
            username = self.decode(raw_user, "user name") or None
            password = self.decode(raw_password, "password") if colon else None
            password = password or None
        options = self.parse_query(query, scheme)
        masked_userinfo = ""
        if at:
            masked_userinfo = raw_user + (f":{_MASK}" if password else "") + "@"
        masked_query = self.mask_query(query)
        masked = f"{scheme}://{masked_userinfo}{hostpart}"
        masked += f"/{path}" if path or rest.endswith("/") else ""
        masked += f"?{masked_query}" if masked_query else ""

        fields = {"scheme": scheme, "masked": masked, "username": username,
                  "password": password, "options": options}
        fields["prefix"] = options.pop("prefix", DEFAULT_PREFIX)
        query_db = options.pop("db", None)
        if scheme == "unix":
            if hostpart:
                self.fail(f"a unix:// URL has no host, found {hostpart!r}; write "
                          "unix:///path/to/redis.sock (three slashes)")
            if not path:
                self.fail("the socket path is missing; write unix:///path/to/redis.sock")
            fields["socket_path"] = "/" + self.decode(path, "socket path")
            fields["db"] = query_db or 0
            return StoreURL(**fields)
        if scheme == "redis+sentinel":
            hosts = [self.parse_host(part, DEFAULT_SENTINEL_PORT) for part in hostpart.split(",")]
            segments = path.split("/") if path else []
            if not segments or not segments[0]:
                self.fail("the Sentinel service name is missing; write "
                          "redis+sentinel://host:26379/service_name[/db]")
            if len(segments) > 2:
                self.fail(f"unexpected path {path!r}: expected /service_name or "
                          "/service_name/db")
            fields["service_name"] = self.decode(segments[0], "service name")
            path_db = self.parse_path_db(segments[1]) if len(segments) == 2 else None
        else:
            if "," in hostpart:
                self.fail("several hosts are only accepted by redis+sentinel:// URLs")
            hosts = [self.parse_host(hostpart, DEFAULT_PORT)]
            if "/" in path:
                self.fail(f"unexpected path {path!r}: expected /db, a database number "
                          "such as /0")
            path_db = self.parse_path_db(path) if path else None
        if path_db is not None and query_db is not None and path_db != query_db:
            self.fail(f"the path gives database {path_db} and the query gives db={query_db}; "
                      "give it once")
        fields["hosts"] = tuple(hosts)
        fields["db"] = path_db if path_db is not None else (query_db or 0)
        return StoreURL(**fields)

    def parse_path_db(self, segment):
        if not segment.isdigit():
            self.fail(f"invalid database number {segment!r} in the path: expected a "
                      "number such as /0 or /3")
        return int(segment)

    def parse_host(self, text, default_port):
        if not text:
            self.fail("the host is missing; write for example redis://127.0.0.1:6379/0")
        if text.startswith("["):
            host, bracket, after = text[1:].partition("]")
            if not bracket:
                self.fail(f"the IPv6 address {text!r} has no closing ']'")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                self.fail(f"{host!r} in brackets is not an IPv6 address")
            if after and not after.startswith(":"):
                self.fail(f"unexpected {after!r} after the IPv6 address [{host}]")
            port_text = after[1:] if after else None
        else:
            if text.count(":") > 1:
                self.fail(f"the host {text!r} looks like an IPv6 address; put it in "
                          "brackets, for example redis://[::1]:6379/0")
            host, colon, port_text = text.partition(":")
            if not colon:
                port_text = None
            if "%" in host or not _HOST_NAME.match(host):
                self.fail(f"invalid host {host!r}: expected a host name, an IPv4 address "
                          "or an IPv6 address in brackets")
        if port_text is None:
            return host, default_port
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            self.fail(f"invalid port {port_text!r} for host {host!r}: expected a number "
                      "from 1 to 65535")
        return host, int(port_text)

    def parse_query(self, query, scheme):
        options = {}
        if not query:
            return options
        for pair in query.split("&"):
            if not pair:
                continue
            name, equals, raw_value = pair.partition("=")
            if "@" in name or ":" in name:
                self.fail("the query looks like part of a user name or password; percent-"
                          "encode a '?' in a user name or password as %3F")
            if not equals:
                self.fail(f"query parameter {name!r} has no value; write {name}=VALUE")
            if name not in _PARAMETERS:
                self.fail(f"unknown query parameter {name!r}; known parameters are "
                          f"{', '.join(sorted(_PARAMETERS))}")
            parser, schemes, _secret = _PARAMETERS[name]
            if scheme not in schemes:
                self.fail(f"query parameter {name!r} is not accepted by {scheme}:// URLs "
                          f"(only by {', '.join(s + '://' for s in schemes)})")
            if name in options:
                self.fail(f"query parameter {name!r} is given twice")
            value = self.decode(raw_value, f"value of {name}")
            try:
                options[name] = parser(value)
            except ValueError as error:
                displayed = _MASK if _PARAMETERS[name][2] else repr(value)
                self.fail(f"invalid value {displayed} for {name}: {error}")
        return options

    @staticmethod
    def mask_query(query):
        pairs = []
        for pair in query.split("&") if query else ():
            name, equals, value = pair.partition("=")
            secret = _PARAMETERS.get(name, (None, None, False))[2]
            pairs.append(f"{name}={_MASK}" if secret and equals else pair)
        return "&".join(pairs)


def parse_store_url(url):
    """Return the ``StoreURL`` of ``url`` (None means ``memory:``).

    Raises ConfigurationError naming the part of the URL at fault and the
    fix; the message never contains the password.
    """
    if url is None:
        return StoreURL(scheme="memory", masked="memory:")
    if not isinstance(url, str):
        raise ConfigurationError(f"invalid store URL {url!r}: expected a string such as "
                                 "memory: or redis://127.0.0.1:6379/0")
    return _Parser(url).parse()
