#!/usr/bin/env python
"""Measure the throughput of one and of two daemons on one Redis, against the memory store.

Starts its own redis-server on a free loopback port in a temporary folder
(append-only file on, fsync every second) and its own daemons
(``python -m gnr_daemon start``) on 127.0.0.1, with a fresh key. For each
setup it fills one site with pages, then starts worker processes that call
the daemons from several threads each, for a fixed number of calls, and
prints a table of calls per second and latency percentiles. Workers
alternate between the daemons of a setup. Everything talks to loopback
only, never to port 6379, and every process started is stopped by its PID.

Setups: memory store with one daemon (the reference), Redis with one
daemon, Redis with two daemons. Workloads: ``serial`` (handle_ping from one
client thread, for the latency without contention), ``ping``
(handle_ping only) and ``mix`` (per round: handle_ping, set_datachange on
another page, page, lock_item and unlock_item).

Usage: python scripts/bench_redis.py [--workers 4] [--threads 8] [--calls 1500] [--json FILE]
"""

import argparse
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from bench_registers import cpu_model  # noqa: E402  (a sibling script)


PAGES = 400
PAGES_PER_CONNECTION = 5
CONNECTIONS_PER_USER = 4
RESERVED_PORT = 6379


# -- processes


def free_port():
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != RESERVED_PORT:
            return port


def start_redis(directory):
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    config = os.path.join(directory, "redis.conf")
    with open(config, "w") as handle:
        handle.write(f"port {port}\nbind 127.0.0.1\ndir {directory}\nsave \"\"\n"
                     "appendonly yes\nappendfsync everysec\n"
                     f"logfile {os.path.join(directory, 'redis.log')}\n")
    process = subprocess.Popen([binary, config], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("redis-server did not start within 10 s")


_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+) ")


def start_daemon(key, state_dir, store_url, name):
    env = {name: value for name, value in os.environ.items() if not name.startswith("GNR_DAEMON_")}
    env.update({"GNR_DAEMON_HMAC_KEY": key, "PYTHONUNBUFFERED": "1"})
    log_path = os.path.join(state_dir, f"{name}.log")
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gnr_daemon", "start", "-H", "127.0.0.1", "-P", "0",
         "--state-dir", os.path.join(state_dir, name), "--store", store_url],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            match = _LISTENING.search(handle.read())
        if match:
            return process, int(match.group(1))
        if process.poll() is not None:
            raise SystemExit(f"daemon exited with status {process.returncode}; see {log_path}")
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"daemon did not start listening within 20 s; see {log_path}")


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# -- the site and the workers


def fill_site(port, key):
    from gnr_daemon import DaemonClient

    with DaemonClient(host="127.0.0.1", port=port, hmac_key=key, timeout=60,
                      use_environment=False, use_config_file=False) as client:
        client.addSiteRegister("bench")
        site = client.site("bench")
        for number in range(PAGES):
            connection_number = number // PAGES_PER_CONNECTION
            connection_id = f"c{connection_number}"
            user = f"user{connection_number // CONNECTIONS_PER_USER}"
            if number % PAGES_PER_CONNECTION == 0:
                site.new_connection(connection_id, user=user, user_ip="127.0.0.1")
            site.new_page(f"p{number}", pagename="index.py", connection_id=connection_id,
                          user=user, relative_url="/index",
                          data={"pageArgs": {"n": number}, "rootenv": {"workdate": "2024-01-01"}})


def register_site(port, key):
    from gnr_daemon import DaemonClient

    with DaemonClient(host="127.0.0.1", port=port, hmac_key=key, timeout=60,
                      use_environment=False, use_config_file=False) as client:
        client.addSiteRegister("bench")


def run_worker(options):
    """Worker process: run ``--threads`` threads of calls; print one JSON line of latencies."""
    from gnr_daemon import DaemonClient

    ports = [int(port) for port in options.ports.split(",")]
    clients = [DaemonClient(host="127.0.0.1", port=port, hmac_key=options.key, timeout=60,
                            pool_size=options.threads, use_environment=False,
                            use_config_file=False) for port in ports]
    sites = [client.site("bench") for client in clients]
    latencies = []
    errors = []
    lock = threading.Lock()

    def thread_main(number):
        rng = random.Random(options.worker * 1000 + number)
        own = []
        calls = 0
        turn = options.worker + number
        while calls < options.calls:
            site = sites[turn % len(sites)]
            turn += 1
            page_id = f"p{rng.randrange(PAGES)}"
            steps = [("handle_ping", (), {"page_id": page_id})]  # "serial" and "ping"
            if options.workload == "mix":
                steps += [
                    ("set_datachange", (f"p{rng.randrange(PAGES)}", "bench.value"),
                     {"value": calls, "register_name": "page"}),
                    ("page", (page_id,), {}),
                    ("lock_item", (f"lock-{options.worker}-{number}",),
                     {"reason": "bench", "register_name": "page"}),
                    ("unlock_item", (f"lock-{options.worker}-{number}",),
                     {"reason": "bench", "register_name": "page"}),
                ]
            for method, args, kwargs in steps:
                started = time.perf_counter()
                try:
                    getattr(site, method)(*args, **kwargs)
                except Exception as error:  # counted and shown in the table
                    errors.append(repr(error))
                own.append(time.perf_counter() - started)
                calls += 1
        with lock:
            latencies.extend(own)

    while time.time() < options.start_at:
        time.sleep(0.005)
    threads = [threading.Thread(target=thread_main, args=(number,))
               for number in range(options.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    print(json.dumps({"latencies_us": [round(value * 1e6) for value in latencies],
                      "errors": errors[:5], "error_count": len(errors),
                      "finished_at": time.time()}))


def measure(ports, key, workload, options):
    start_at = time.time() + 1.5
    # "serial" is handle_ping from one thread: the latency of a call without contention.
    workers, threads = (1, 1) if workload == "serial" else (options.workers, options.threads)
    command = [sys.executable, os.path.abspath(__file__), "--worker-mode",
               "--ports", ",".join(map(str, ports)), "--key", key, "--workload", workload,
               "--threads", str(threads), "--calls", str(options.calls),
               "--start-at", repr(start_at)]
    workers = [subprocess.Popen(command + ["--worker", str(number)], stdout=subprocess.PIPE,
                                text=True) for number in range(workers)]
    reports = []
    for worker in workers:
        output, _ = worker.communicate(timeout=600)
        if worker.returncode != 0:
            raise SystemExit(f"a worker exited with status {worker.returncode}")
        reports.append(json.loads(output.strip().splitlines()[-1]))
    latencies = sorted(value for report in reports for value in report["latencies_us"])
    elapsed = max(report["finished_at"] for report in reports) - start_at
    return {
        "calls": len(latencies),
        "seconds": round(elapsed, 2),
        "calls_per_s": round(len(latencies) / elapsed),
        "p50_us": latencies[len(latencies) // 2],
        "p99_us": latencies[int(len(latencies) * 0.99) - 1],
        "errors": sum(report["error_count"] for report in reports),
        "error_samples": [sample for report in reports for sample in report["errors"]][:3],
    }


def store_conflicts(ports, key):
    """Return the transactions the daemons ran again after a conflict, summed (0 on memory)."""
    from gnr_daemon import DaemonClient

    total = 0
    for port in ports:
        with DaemonClient(host="127.0.0.1", port=port, hmac_key=key, timeout=60,
                          use_environment=False, use_config_file=False) as client:
            total += client.status()["store_health"].get("conflicts", 0)
    return total


def run_setup(name, store_url, daemons, key, state_dir, options):
    processes = []
    try:
        ports = []
        for number in range(daemons):
            process, port = start_daemon(key, state_dir, store_url, f"{name}-{number}")
            processes.append(process)
            ports.append(port)
        fill_site(ports[0], key)
        for port in ports[1:]:
            register_site(port, key)
        rows = []
        for workload in options.workloads.split(","):
            conflicts_before = store_conflicts(ports, key)
            result = measure(ports, key, workload, options)
            result.update({"setup": name, "daemons": daemons, "workload": workload,
                           "conflicts": store_conflicts(ports, key) - conflicts_before})
            rows.append(result)
            print(f"{name:<8} {daemons:>7} {workload:<6} {result['calls']:>7} "
                  f"{result['calls_per_s']:>8} {result['p50_us']:>8} {result['p99_us']:>8} "
                  f"{result['conflicts']:>9} {result['errors']:>6}", flush=True)
        return rows
    finally:
        for process in processes:
            stop(process)




def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--threads", type=int, default=8, help="client threads per process")
    parser.add_argument("--calls", type=int, default=1500, help="calls per client thread")
    parser.add_argument("--workloads", default="serial,ping,mix")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--worker-mode", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker_mode:
        run_worker(options)
        return 0

    key = secrets.token_hex(32)
    state_dir = tempfile.mkdtemp(prefix="gnrd-bench-redis-")
    redis_process, redis_port = start_redis(state_dir)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"load: {options.workers} client processes x {options.threads} threads x "
          f"{options.calls} calls, {PAGES} pages; everything on this machine")
    print(f"{'store':<8} {'daemons':>7} {'load':<6} {'calls':>7} {'calls/s':>8} "
          f"{'p50 us':>8} {'p99 us':>8} {'conflicts':>9} {'errors':>6}")
    rows = []
    try:
        rows += run_setup("memory", "memory:", 1, key, state_dir, options)
        for daemons in (1, 2):
            url = f"redis://127.0.0.1:{redis_port}/0?prefix=bench{daemons}:"
            rows += run_setup("redis", url, daemons, key, state_dir, options)
    finally:
        stop(redis_process)
        shutil.rmtree(state_dir, ignore_errors=True)
    if options.json_path:
        with open(options.json_path, "w") as handle:
            json.dump({"machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                   "python": platform.python_version()},
                       "options": {"workers": options.workers, "threads": options.threads,
                                   "calls": options.calls, "pages": PAGES},
                       "rows": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
