"""Build a real Genropy site in a temporary folder and drive it without a browser.

Used by tests/test_genropy_*.py and scripts/bench_genropy.py. Everything
runs on loopback, in folders the caller owns:

- ``GenropyEnvironment`` runs ``gnr app initgenropy`` and ``gnr dev mkproject
  --helloworld`` in its folder (the hello site, instance ``baseinstance``),
  optionally adds an instance with Genropy's ``sys`` and ``adm`` packages
  (``fullinstance``), and writes the daemon address into the ``<gnrdaemon>``
  nodes of environment.xml and siteconfig/default.xml.
- ``WebDaemon`` runs ``gnr web daemon`` (gnr_daemon through the plug-in, or
  Genropy's own Pyro daemon with ``GNR_DAEMON_GENROPY=off``) and stops it.
- ``SiteDriver`` builds ``GnrWsgiSite`` in this process and sends it the
  requests of a browser tab with werkzeug's test client.
- ``count_round_trips`` counts the request/response exchanges of either
  daemon's client.
- ``python tests/genropy_site.py measure ...`` drives one site in a fresh
  process (the plug-in is chosen per process) and prints JSON: round trips
  per phase, and optionally per-request latencies.

``gnr app initgenropy`` also creates an empty ``genropy_projects`` folder
next to the installed ``gnr`` package; that is Genropy's behaviour.
"""

import argparse
import contextlib
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree

__all__ = [
    "TEST_KEY",
    "HELLO_PAGE",
    "genropy_missing_reason",
    "pyro_missing_reason",
    "free_loopback_port",
    "GenropyEnvironment",
    "WebDaemon",
    "SiteDriver",
    "count_round_trips",
    "run_measure",
    "unpickle_as_daemon",
]

#: Key written into the test sites' <gnrdaemon> nodes (longer than gnr_daemon's minimum).
TEST_KEY = "genropy-site-key-0123456789abcdef0123456789"
#: Page of the hello project that every phase opens.
HELLO_PAGE = "hello/hello_world"

_PAGE_ID = re.compile(r"page_id:'([^']+)'")
_LISTENING = re.compile(r"listening on (\S+):(\d+) ")
_GNR_MAIN = "import sys; from gnr.core.cli.gnr import main; sys.argv[0] = 'gnr'; sys.exit(main())"


def genropy_missing_reason():
    """Return why the Genropy tests cannot run here, or None when they can."""
    # find_spec does not import the modules, so collecting the tests stays cheap.
    for name in ("gnr", "werkzeug"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"{name} is not importable; pip install -e '.[test]' installs genropy"
    return None


def pyro_missing_reason():
    """Return why Genropy's own daemon cannot run here, or None when it can."""
    if importlib.util.find_spec("Pyro4") is None:
        return "Pyro4 is not installed, so Genropy's own daemon cannot run for the comparison"
    return None


def free_loopback_port():
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Modules whose classes gnr_daemon's restricted unpickling rebuilds by default.
_DAEMON_MODULES = ("builtins", "datetime", "decimal", "uuid", "collections")


class _DaemonUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module in _DAEMON_MODULES or module.startswith("gnr_daemon."):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a class the daemon rebuilds")


def unpickle_as_daemon(value):
    """Pickle ``value`` and unpickle it allowing only built-in and gnr_daemon classes.

    Raises pickle.UnpicklingError naming the first other class, as the
    daemon's restricted unpickling would.
    """
    return _DaemonUnpickler(io.BytesIO(pickle.dumps(value))).load()


class GenropyEnvironment:
    """A Genropy configuration folder, home and projects folder under ``base``."""

    def __init__(self, base, gnrfolder=None):
        self.base = str(base)
        self.home = os.path.join(self.base, "home")
        self.gnrfolder = gnrfolder or os.path.join(self.base, "gnr")
        self.projects = os.path.join(self.base, "projects")

    def env(self, **extra):
        """Return an environment for Genropy commands: this folder, no GNR_DAEMON_* settings."""
        # Without XDG_STATE_HOME and STATE_DIRECTORY, gnr_daemon keeps its
        # saved registers under this home: <home>/.local/state/gnrdaemon.
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("GNR_DAEMON_")
               and name not in ("VIRTUAL_ENV", "XDG_STATE_HOME", "STATE_DIRECTORY")}
        env.update(HOME=self.home, GENRO_GNRFOLDER=self.gnrfolder, PYTHONWARNINGS="ignore",
                   PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def run_gnr(self, *args, timeout=180, env=None):
        """Run ``gnr ARGS`` and return its output; raise AssertionError when it fails."""
        completed = subprocess.run([sys.executable, "-c", _GNR_MAIN, *args], env=env or self.env(),
                                   cwd=self.base, capture_output=True, text=True, timeout=timeout)
        if completed.returncode != 0:
            raise AssertionError(f"gnr {' '.join(args)} exited with {completed.returncode}:\n"
                                 f"{completed.stdout}\n{completed.stderr}")
        return completed.stdout + completed.stderr

    def build(self, key=TEST_KEY):
        """Create the configuration folder and the hello project with instance ``baseinstance``."""
        os.makedirs(self.home, exist_ok=True)
        os.makedirs(self.gnrfolder, exist_ok=True)
        self.run_gnr("app", "initgenropy", key)
        environment_xml = os.path.join(self.gnrfolder, "environment.xml")
        tree = ElementTree.parse(environment_xml)
        tree.getroot().find("projects/custom").set("path", self.projects)
        tree.write(environment_xml, encoding="UTF-8", xml_declaration=True)
        self.run_gnr("dev", "mkproject", "--helloworld", "-b", self.projects, "probe")
        return self

    @property
    def daemon_state_dir(self):
        """The state directory of a gnr_daemon started with ``env()``."""
        return os.path.join(self.home, ".local", "state", "gnrdaemon")

    def instance_folder(self, instance="baseinstance"):
        return os.path.join(self.projects, "probe", "instances", instance)

    def root_py(self, instance="baseinstance"):
        return os.path.join(self.instance_folder(instance), "root.py")

    def add_full_instance(self, instance="fullinstance"):
        """Add an instance with the sys, adm and hello packages and set up its database."""
        source = self.instance_folder()
        target = self.instance_folder(instance)
        shutil.copytree(source, target)
        with open(os.path.join(target, "config", "instanceconfig.xml"), "w") as handle:
            handle.write(_FULL_INSTANCECONFIG.format(instance=instance))
        self.run_gnr("db", "setup", instance)
        return instance

    def set_daemon_address(self, host, port, key=TEST_KEY):
        """Write the daemon address and key into environment.xml and siteconfig/default.xml."""
        for name in ("environment.xml", os.path.join("siteconfig", "default.xml")):
            path = os.path.join(self.gnrfolder, name)
            tree = ElementTree.parse(path)
            node = tree.getroot().find("gnrdaemon")
            node.attrib.clear()
            node.set("host", host)
            node.set("port", str(port))
            if key is not None:
                node.set("hmac_key", key)
            tree.write(path, encoding="UTF-8", xml_declaration=True)

    def copy(self, base):
        """Return an environment with a copy of this configuration folder, sharing the projects."""
        other = GenropyEnvironment(self.base, gnrfolder=os.path.join(str(base), "gnr"))
        other.home = os.path.join(str(base), "home")
        os.makedirs(other.home, exist_ok=True)
        shutil.copytree(self.gnrfolder, other.gnrfolder)
        return other


_FULL_INSTANCECONFIG = """<?xml version='1.0' encoding='UTF-8'?>
<GenRoBag>
\t<db dbname="{instance}"></db>
\t<packages>
\t\t<gnrcore_sys pkgcode="gnrcore:sys"></gnrcore_sys>
\t\t<gnrcore_adm pkgcode="gnrcore:adm"></gnrcore_adm>
\t\t<hello pkgcode="hello"></hello>
\t</packages>
\t<authentication pkg="adm">
\t\t<py_auth defaultTags="user" pkg="adm" method="authenticate"></py_auth>
\t</authentication>
\t<site>
\t\t<wsgi mainpackage="hello"></wsgi>
\t</site>
</GenRoBag>
"""


class WebDaemon:
    """``gnr web daemon`` in a subprocess, with its output in ``log_path``."""

    def __init__(self, environment, args, log_path, legacy=False):
        self.environment = environment
        self.legacy = legacy
        self.log_path = str(log_path)
        self.args = list(args)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _GNR_MAIN, "web", "daemon", *self.args],
            env=self.env(), stdout=self._log, stderr=subprocess.STDOUT, cwd=environment.base,
        )
        self.port = None

    def env(self):
        extra = {"GNR_DAEMON_GENROPY": "off"} if self.legacy else {}
        return self.environment.env(**extra)

    def log_text(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def wait_listening(self, port=None, socket_path=None, timeout=30):
        """Wait until the daemon accepts connections; return its port (or ``socket_path``).

        gnr_daemon logs the port it bound. Genropy's own daemon is polled on
        ``port``, and a daemon on a Unix socket on ``socket_path``.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gnr web daemon exited with {self.process.returncode}:\n"
                                     f"{self.log_text()}")
            if socket_path is not None:
                with contextlib.suppress(OSError), \
                        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.settimeout(1)
                    probe.connect(socket_path)
                    return socket_path
            elif port is None:
                match = _LISTENING.search(self.log_text())
                if match:
                    self.port = int(match.group(2))
                    return self.port
            else:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                            timeout=1):
                    self.port = port
                    return port
            time.sleep(0.05)
        raise AssertionError(f"gnr web daemon did not listen within {timeout} s:\n"
                             f"{self.log_text()}")

    def command(self, *args, timeout=60):
        """Run ``gnr web daemon ARGS`` (for example ``-C stop``); return the CompletedProcess."""
        return subprocess.run([sys.executable, "-c", _GNR_MAIN, "web", "daemon", *args],
                              env=self.env(), capture_output=True, text=True, timeout=timeout,
                              cwd=self.environment.base)

    def wait_exit(self, timeout=30):
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self, timeout=20):
        """End the daemon and, for Genropy's own daemon, its register processes (by pid)."""
        children = []
        if self.legacy and self.process.poll() is None:
            with contextlib.suppress(Exception):
                import psutil

                children = psutil.Process(self.process.pid).children(recursive=True)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if self.wait_exit(timeout) is None:
                self.process.kill()
                self.process.wait(5)
        for child in children:
            with contextlib.suppress(Exception):
                child.kill()
        self._log.close()
        return self.process.returncode


class SiteDriver:
    """A ``GnrWsgiSite`` in this process and one browser tab's requests to it."""

    def __init__(self, root_py):
        from gnr.web.gnrwsgisite import GnrWsgiSite
        from werkzeug.test import Client

        self.site = GnrWsgiSite(root_py)
        self.browser = Client(self.site)

    def new_browser(self):
        """Start a new browser (no cookie, so the next page opens a new connection)."""
        from werkzeug.test import Client

        self.browser = Client(self.site)

    def open_page(self, path=HELLO_PAGE):
        """GET the page; return ``(response, page_id)``."""
        response = self.browser.get(f"/{path}")
        match = _PAGE_ID.search(response.get_data(as_text=True))
        return response, match.group(1) if match else None

    def main(self, page_id, path=HELLO_PAGE):
        return self.browser.post(f"/{path}", data={"method": "main", "page_id": page_id,
                                                   "timeout": "50000"})

    def ping(self, page_id):
        return self.browser.post("/_ping", data={"page_id": page_id, "reason": "auto",
                                                 "_no_cache_": str(time.time())})

    def close(self, page_id):
        return self.browser.post(f"/_beacon?method=onClosedPage&page_id={page_id}"
                                 f"&_no_cache_={time.time()}")


class RoundTrips:
    """Counts of request/response exchanges and new connections since the last ``take``."""

    def __init__(self):
        self.calls = 0
        self.connects = 0
        self.methods = []

    def take(self):
        """Return ``(calls, connects, methods)`` and start counting afresh."""
        counted = (self.calls, self.connects, self.methods)
        self.calls, self.connects, self.methods = 0, 0, []
        return counted


@contextlib.contextmanager
def count_round_trips(legacy=False):
    """Count the round trips of gnr_daemon's client, or of Pyro4 proxies with ``legacy``."""
    counter = RoundTrips()
    if legacy:
        import Pyro4.core

        target = Pyro4.core.Proxy
        call_name, connect_name = "_pyroInvoke", "_Proxy__pyroCreateConnection"
    else:
        from gnr_daemon.client import DaemonClient

        target = DaemonClient
        call_name, connect_name = "_call", "_open_connection"
    original_call = getattr(target, call_name)
    original_connect = getattr(target, connect_name)

    def counted_call(self, *args, **kwargs):
        counter.calls += 1
        # Pyro4 passes (method, ...) and gnr_daemon (site, method, ...).
        counter.methods.append(args[0] if legacy else args[1])
        return original_call(self, *args, **kwargs)

    def counted_connect(self, *args, **kwargs):
        counter.connects += 1
        return original_connect(self, *args, **kwargs)

    setattr(target, call_name, counted_call)
    setattr(target, connect_name, counted_connect)
    try:
        yield counter
    finally:
        setattr(target, call_name, original_call)
        setattr(target, connect_name, original_connect)


def _check(response, expected, request_name):
    if response.status_code != expected:
        raise AssertionError(f"{request_name} returned {response.status}, expected {expected}")


def measure(root_py, page=HELLO_PAGE, legacy=False, rounds=0, warmup=0):
    """Drive one site and return round trips per phase and, with ``rounds``, latencies.

    ``warmup`` untimed rounds run before the timed ones.
    """
    report = {"daemon": "genropy" if legacy else "gnr_daemon", "calls": {}, "connects": {}}
    with count_round_trips(legacy=legacy) as counter:
        started = time.perf_counter()
        driver = SiteDriver(root_py)
        report["site_start_seconds"] = time.perf_counter() - started
        report["calls"]["site_start"], report["connects"]["site_start"], _ = counter.take()

        response, page_id = driver.open_page(page)
        _check(response, 200, "page GET")
        report["calls"]["get"], report["connects"]["get"], _ = counter.take()
        _check(driver.main(page_id, page), 200, "main RPC")
        report["calls"]["main"], report["connects"]["main"], _ = counter.take()
        _check(driver.ping(page_id), 200, "ping")
        report["calls"]["ping"], report["connects"]["ping"], _ = counter.take()
        _check(driver.close(page_id), 200, "close beacon")
        report["calls"]["close"], report["connects"]["close"], _ = counter.take()

    if rounds:
        _latencies(driver, page, warmup)
        report["latency"] = _latencies(driver, page, rounds)
    return report


def _latencies(driver, page, rounds):
    """Time ``rounds`` page GETs, main RPCs and pings of one browser; return seconds per phase."""
    timings = {"get": [], "main": [], "ping": []}
    clock = time.perf_counter
    for _ in range(rounds):
        started = clock()
        response, page_id = driver.open_page(page)
        timings["get"].append(clock() - started)
        _check(response, 200, "page GET")

        started = clock()
        response = driver.main(page_id, page)
        timings["main"].append(clock() - started)
        _check(response, 200, "main RPC")

        started = clock()
        response = driver.ping(page_id)
        timings["ping"].append(clock() - started)
        _check(response, 200, "ping")
        driver.close(page_id)
    return timings


def run_measure(environment, instance="baseinstance", legacy=False, rounds=0, warmup=0,
                timeout=600):
    """Run ``measure`` in a fresh process (the plug-in is chosen per process); return its report."""
    extra = {"GNR_DAEMON_GENROPY": "off"} if legacy else {}
    command = [sys.executable, os.path.abspath(__file__), "measure",
               "--root", environment.root_py(instance), "--rounds", str(rounds),
               "--warmup", str(warmup)]
    if legacy:
        command.append("--legacy")
    completed = subprocess.run(command, env=environment.env(**extra), capture_output=True,
                               text=True, timeout=timeout, cwd=environment.base)
    if completed.returncode != 0:
        raise AssertionError(f"measure exited with {completed.returncode}:\n{completed.stdout}\n"
                             f"{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description="Drive a Genropy site and print JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    measure_parser = sub.add_parser("measure", help="round trips per phase and latencies")
    measure_parser.add_argument("--root", required=True, help="the instance's root.py")
    measure_parser.add_argument("--page", default=HELLO_PAGE)
    measure_parser.add_argument("--legacy", action="store_true",
                                help="count Pyro4 calls (run with GNR_DAEMON_GENROPY=off)")
    measure_parser.add_argument("--rounds", type=int, default=0,
                                help="timed GET/main/ping rounds after the counted ones")
    measure_parser.add_argument("--warmup", type=int, default=0,
                                help="untimed rounds before the timed ones")
    options = parser.parse_args(argv)
    if options.legacy and os.environ.get("GNR_DAEMON_GENROPY") != "off":
        parser.error("--legacy needs GNR_DAEMON_GENROPY=off in the environment")
    report = measure(options.root, options.page, legacy=options.legacy, rounds=options.rounds,
                     warmup=options.warmup)
    # Genropy may print to stdout while it starts, so the report is the last line.
    sys.stdout.write("\n" + json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
