"""Real redis-server processes for the tests, loaded as a pytest plugin by conftest.py.

``redis_server`` is one redis-server for the whole session, on a free
loopback port in a temporary folder, with ``appendonly yes``. Tests share it
and keep apart through ``redis_url``, which gives every test its own key
prefix. Tests that stop, pause or reconfigure Redis start their own server
with ``redis_server_factory``. Every server is stopped by its PID at the end.
The Redis that may run on 127.0.0.1:6379 is never touched: the fixtures
refuse that port.

Without a ``redis-server`` binary the Redis tests are skipped with the
reason; CI installs one.
"""

import itertools
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = ("redis-server is not installed (apt-get install redis-server); the Redis "
               "store tests need a real server")
RESERVED_PORT = 6379

_prefixes = itertools.count(1)


def free_port():
    """Return a TCP port that is free on 127.0.0.1 right now, never 6379."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != RESERVED_PORT:
            return port


class RedisServer:
    """A redis-server process on 127.0.0.1 (and ::1 when available), owned by the test run.

    ``options`` are extra configuration lines (``"requirepass secret"``);
    ``tls`` is a dict with ``cert``, ``key`` and ``ca`` paths, which makes
    the server listen with TLS only.
    """

    def __init__(self, directory, options=(), tls=None, sentinel=False, fsync="everysec"):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.options = list(options)
        self.tls = tls
        self.sentinel = sentinel
        self.fsync = fsync
        self.port = None
        self.process = None

    @property
    def pid(self):
        return self.process.pid

    def _config(self):
        lines = [
            "bind 127.0.0.1 -::1",
            f"dir {self.directory}",
            "daemonize no",
            f"logfile {os.path.join(self.directory, 'redis.log')}",
        ]
        if self.tls:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.tls['cert']}",
                f"tls-key-file {self.tls['key']}",
                f"tls-ca-cert-file {self.tls['ca']}",
                f"tls-auth-clients {self.tls.get('auth_clients', 'no')}",
            ]
        else:
            lines.append(f"port {self.port}")
        if not self.sentinel:
            lines += ["save \"\"", "appendonly yes", f"appendfsync {self.fsync}"]
        return "\n".join(lines + self.options) + "\n"

    def start(self, timeout=10):
        if self.port is None:
            self.port = free_port()
        assert self.port != RESERVED_PORT
        config_path = os.path.join(self.directory, "redis.conf")
        with open(config_path, "w") as handle:
            handle.write(self._config())
        command = [REDIS_SERVER, config_path] + (["--sentinel"] if self.sentinel else [])
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n"
                                   f"{self.log_text()}")
            if self._ready():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout} s:\n{self.log_text()}")

    def _ready(self):
        log_text = self.log_text()
        return "Ready to accept connections" in log_text or "Sentinel ID is" in log_text

    def log_text(self):
        try:
            with open(os.path.join(self.directory, "redis.log")) as handle:
                return handle.read()
        except OSError:
            return ""

    def stop(self, timeout=10):
        """Stop the server with SIGTERM (Redis then flushes its append-only file)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def restart(self):
        """Stop the server and start it again on the same port, with the same data folder."""
        self.stop()
        # The log of the first run must not make the second look ready at once.
        os.replace(os.path.join(self.directory, "redis.log"),
                   os.path.join(self.directory, f"redis.{time.monotonic_ns()}.log"))
        return self.start()

    def suspend(self):
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def client(self, **kwargs):
        """Return a redis-py client of this server (plain TCP servers only)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kwargs)

    def url(self, prefix=None, **params):
        query = dict(params)
        if prefix is not None:
            query["prefix"] = prefix
        text = f"redis://127.0.0.1:{self.port}/0"
        if query:
            text += "?" + "&".join(f"{name}={value}" for name, value in query.items())
        return text


def make_certificates(directory):
    """Write a test CA and a server and a client certificate signed by it; return their paths.

    The server certificate is valid for localhost, 127.0.0.1 and ::1. Uses the
    openssl command when it exists, else the ``cryptography`` package, else
    skips the test.
    """
    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    paths = {name: os.path.join(directory, name) for name in (
        "ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key")}
    if shutil.which("openssl"):
        _certificates_with_openssl(directory, paths)
    else:
        try:
            import cryptography  # noqa: F401
        except ImportError:
            pytest.skip("neither the openssl command nor the cryptography package is "
                        "available to make a test certificate")
        _certificates_with_cryptography(paths)
    return {"ca": paths["ca.crt"], "cert": paths["server.crt"], "key": paths["server.key"],
            "client_cert": paths["client.crt"], "client_key": paths["client.key"]}


def _certificates_with_openssl(directory, paths):
    def run(*arguments):
        subprocess.run(["openssl", *arguments], check=True, cwd=directory,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *new_key, "-keyout", paths["ca.key"], "-out", paths["ca.crt"],
        "-days", "2", "-subj", "/CN=gnr_daemon test CA")
    extensions = os.path.join(directory, "server.ext")
    with open(extensions, "w") as handle:
        handle.write("subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n")
    for name, subject, extra in (("server", "/CN=localhost", ["-extfile", extensions]),
                                 ("client", "/CN=gnr_daemon test client", [])):
        request = os.path.join(directory, f"{name}.csr")
        run("req", *new_key, "-keyout", paths[f"{name}.key"], "-out", request, "-subj", subject)
        run("x509", "-req", "-in", request, "-CA", paths["ca.crt"], "-CAkey", paths["ca.key"],
            "-CAcreateserial", "-out", paths[f"{name}.crt"], "-days", "2", *extra)


def _certificates_with_cryptography(paths):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def write(path, data):
        with open(path, "wb") as handle:
            handle.write(data)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("gnr_daemon test CA")
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    write(paths["ca.crt"], ca_cert.public_bytes(serialization.Encoding.PEM))
    for label, subject, alternative in (
        ("server", "localhost", x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))])),
        ("client", "gnr_daemon test client", None),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(ca_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=2)))
        if alternative is not None:
            builder = builder.add_extension(alternative, critical=False)
        certificate = builder.sign(ca_key, hashes.SHA256())
        write(paths[f"{label}.crt"], certificate.public_bytes(serialization.Encoding.PEM))
        write(paths[f"{label}.key"], key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))


def require_redis():
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)


def new_prefix():
    return f"t{os.getpid()}-{next(_prefixes)}:"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis-session")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """A store URL of the session's server with a key prefix of this test alone."""
    return redis_server.url(prefix=new_prefix())


@pytest.fixture
def redis_store_factory(redis_server):
    """Return a function that opens a RedisStore with a new key prefix on every call."""
    from gnr_daemon.store import open_store

    opened = []

    def factory(prefix=None, **kwargs):
        store = open_store(redis_server.url(prefix=prefix or new_prefix()), **kwargs)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def redis_server_factory(tmp_path):
    """Return a function that starts a private redis-server; all are stopped at teardown."""
    require_redis()
    started = []

    def factory(name=None, **kwargs):
        directory = tmp_path / (name or f"redis{len(started)}")
        server = RedisServer(directory, **kwargs)
        started.append(server)
        return server.start()

    yield factory
    for server in reversed(started):
        server.stop()


def make_store(request):
    """Return a new store for the ``store`` fixtures of the register tests.

    ``request.param`` is ``"memory"``, ``"copying"`` or ``"redis"``; a Redis
    store gets a key prefix of its own, so it starts empty.
    """
    from gnr_daemon.store import CopyingMemoryStore, MemoryStore

    if request.param == "memory":
        return MemoryStore()
    if request.param == "copying":
        return CopyingMemoryStore()
    return request.getfixturevalue("redis_store_factory")()


#: Parameters of the register tests' ``store`` fixtures: every test runs once per store.
STORE_PARAMS = ["memory", "copying", "redis"]
