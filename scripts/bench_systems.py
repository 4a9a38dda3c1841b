"""Servers and load clients for scripts/bench.py: gnr_daemon, the legacy stack, the floor.

Run as a subprocess by bench.py, never imported by the daemon:

    bench_systems.py serve-legacy PORT_FILE KEY     Pyro4 daemon, pickle serializer, HMAC key
    bench_systems.py serve-floor PORT_FILE KEY      minimal gevent server (the floor)
    bench_systems.py load SYSTEM HOST PORT KEY MODE CALLERS CALLS METHOD
                                                    run one load, print one JSON line

The servers bind 127.0.0.1 on an ephemeral port and write it to PORT_FILE.
MODE is ``threads`` or ``greenlets`` (gevent's monkey patch, applied first).
"""

import sys

if len(sys.argv) > 5 and sys.argv[1] == "load" and sys.argv[6] == "greenlets":
    from gevent import monkey

    monkey.patch_all()

import hmac  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from hashlib import sha256  # noqa: E402

ECHO_PAYLOAD = {f"field{n:02d}": "x" * 24 for n in range(32)}  # about 1 KB pickled
_LENGTH = struct.Struct(">I")


class Service:
    """The two methods every benchmarked system exposes."""

    def ping(self):
        return "pong"

    def echo(self, payload):
        return payload


# -- the legacy stack: Pyro4 with pickle and an HMAC key ----------------------


def serve_legacy(port_file, key):
    import Pyro4

    Pyro4.config.SERIALIZER = "pickle"
    Pyro4.config.SERIALIZERS_ACCEPTED = {"pickle"}
    Pyro4.config.SERVERTYPE = "thread"
    exposed = Pyro4.expose(Service)
    daemon = Pyro4.Daemon(host="127.0.0.1", port=0)
    daemon._pyroHmacKey = key.encode()
    daemon.register(exposed(), objectId="service")
    write_port(port_file, daemon.locationStr.rsplit(":", 1)[1])
    daemon.requestLoop()


def legacy_caller(host, port, key):
    import Pyro4

    Pyro4.config.SERIALIZER = "pickle"
    proxy = Pyro4.Proxy(f"PYRO:service@{host}:{port}")
    proxy._pyroHmacKey = key.encode()
    return proxy


# -- the floor: length prefix, HMAC before pickle.loads, getattr dispatch ------


def _recv_exactly(sock, size):
    data = bytearray(size)
    view = memoryview(data)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:])
        if not count:
            raise ConnectionError("peer closed")
        received += count
    return data


def _floor_send(sock, key, obj):
    payload = pickle.dumps(obj, protocol=5)
    tag = hmac.digest(key, payload, "sha256")
    sock.sendall(_LENGTH.pack(len(payload)) + tag + payload)


def _floor_receive(sock, key):
    length = _LENGTH.unpack(_recv_exactly(sock, 4))[0]
    data = _recv_exactly(sock, 32 + length)
    tag, payload = bytes(data[:32]), data[32:]
    if not hmac.compare_digest(tag, hmac.new(key, payload, sha256).digest()):
        raise PermissionError("bad tag")
    return pickle.loads(payload)


def serve_floor(port_file, key):
    from gevent.server import StreamServer

    key = key.encode()
    service = Service()

    def handle(sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                method, args, kwargs = _floor_receive(sock, key)
                if method.startswith("_"):
                    result = (False, "private")
                else:
                    result = (True, getattr(service, method)(*args, **kwargs))
                _floor_send(sock, key, result)
        except (ConnectionError, OSError, PermissionError):
            sock.close()

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    write_port(port_file, server.address[1])
    server.serve_forever()


class FloorCaller:
    def __init__(self, host, port, key):
        self.key = key.encode()
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, method, *args):
        _floor_send(self.sock, self.key, (method, args, {}))
        ok, value = _floor_receive(self.sock, self.key)
        return value


# -- load ----------------------------------------------------------------------


def make_call(system, host, port, key, callers):
    """Return a factory of per-caller functions ``call(method, *args)``."""
    if system == "gnrd":
        from gnr_daemon import DaemonClient

        client = DaemonClient(host=host, port=port, hmac_key=key, pool_size=max(callers, 1),
                              timeout=30, use_environment=False, use_config_file=False)
        return lambda: client.call
    if system == "legacy":
        def legacy_factory():
            proxy = legacy_caller(host, port, key)
            return lambda method, *args: getattr(proxy, method)(*args)
        return legacy_factory
    if system == "floor":
        return lambda: FloorCaller(host, port, key).call
    raise SystemExit(f"unknown system {system!r}")


def make_mix(host, port, key, callers, sitename):
    """Return a factory of per-caller site-mix functions for gnr_daemon.

    Per operation: 80 % handle_ping of a random page, 10 % connection plus
    pages(connection_id=...), 5 % new_page or drop_page (alternating, on
    pages this caller created), 5 % set_datachange on a random page.
    """
    import random

    from gnr_daemon import DaemonClient

    client = DaemonClient(host=host, port=port, hmac_key=key, pool_size=max(callers, 1),
                          timeout=30, use_environment=False, use_config_file=False)
    site = client.site(sitename)
    pages = site.counters()["pages"]
    connections = max(1, pages // 10)
    serial = iter(range(10 ** 9))

    def factory():
        rng = random.Random()
        own_pages = []
        caller_id = next(serial)

        def mix(_method):
            draw = rng.random()
            if draw < 0.80:
                return site.handle_ping(f"p{rng.randrange(pages)}")
            if draw < 0.90:
                connection_id = f"c{rng.randrange(connections)}"
                site.connection(connection_id)
                return site.pages(connection_id=connection_id)
            if draw < 0.95:
                if own_pages and rng.random() < 0.5:
                    return site.drop_page(own_pages.pop())
                page_id = f"mix{caller_id}_{rng.getrandbits(40)}"
                own_pages.append(page_id)
                return site.new_page(page_id, pagename="index.py", connection_id="c0",
                                     user="user0", data={"pageArgs": {}})
            return site.set_datachange(f"p{rng.randrange(pages)}", "bench.mix", value=draw,
                                       register_name="page")
        return mix

    return factory


def run_load(system, host, port, key, mode, callers, calls, method, sitename=None):
    args = (ECHO_PAYLOAD,) if method == "echo" else ()
    label = method
    if method == "mix":
        factory = make_mix(host, port, key, callers, sitename)
        method = "ping"
    else:
        factory = make_call(system, host, port, key, callers)
    per_caller = [calls // callers + (1 if n < calls % callers else 0) for n in range(callers)]
    latencies, errors = [], []
    connected = [0]
    lock = threading.Lock()
    ready = threading.Barrier(callers + 1) if mode == "threads" else None

    def caller(count):
        try:
            call = factory()
            call(method, *args)  # connect and warm up outside the timed part
        except Exception as exc:  # counted: the legacy stack refuses extra connections
            with lock:
                errors.append(repr(exc))
            call = None
        with lock:
            connected[0] += 1
        if ready is not None:
            ready.wait()
        else:
            start_event.wait()
        own = []
        for _ in range(count):
            if call is None:
                errors.append("no connection")
                continue
            started = time.perf_counter()
            try:
                call(method, *args)
            except Exception as exc:  # counted and reported, never fatal
                with lock:
                    errors.append(repr(exc))
                continue
            own.append(time.perf_counter() - started)
        with lock:
            latencies.extend(own)

    if mode == "threads":
        workers = [threading.Thread(target=caller, args=(count,)) for count in per_caller]
        for worker in workers:
            worker.start()
        ready.wait()
        began = time.perf_counter()
        for worker in workers:
            worker.join(300)
    else:
        import gevent
        import gevent.event

        start_event = gevent.event.Event()
        workers = [gevent.spawn(caller, count) for count in per_caller]
        deadline = time.monotonic() + 60
        while connected[0] < callers and time.monotonic() < deadline:
            gevent.sleep(0.01)
        began = time.perf_counter()
        start_event.set()
        gevent.joinall(workers, timeout=300)
    elapsed = time.perf_counter() - began
    latencies.sort()
    result = {
        "system": system, "mode": mode, "callers": callers, "method": label,
        "calls": len(latencies), "errors": len(errors), "seconds": round(elapsed, 3),
        "calls_per_s": round(len(latencies) / elapsed) if elapsed else 0,
        "p50_us": round(latencies[len(latencies) // 2] * 1e6, 1) if latencies else None,
        "p99_us": round(latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1e6, 1)
        if latencies else None,
        "first_error": errors[0][:200] if errors else None,
    }
    print(json.dumps(result), flush=True)


def write_port(port_file, port):
    with open(port_file + ".tmp", "w") as handle:
        handle.write(str(port))
    os.replace(port_file + ".tmp", port_file)


def main(argv):
    command = argv[1]
    if command == "serve-legacy":
        serve_legacy(argv[2], argv[3])
    elif command == "serve-floor":
        serve_floor(argv[2], argv[3])
    elif command == "load":
        system, host, port, key, mode, callers, calls, method = argv[2:10]
        sitename = argv[10] if len(argv) > 10 else None
        run_load(system, host, int(port), key, mode, int(callers), int(calls), method, sitename)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv)
