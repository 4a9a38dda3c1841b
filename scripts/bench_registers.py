#!/usr/bin/env python
"""Measure register hot paths as a site grows: handle_ping and pages(connection_id=...).

Starts its own daemon (``python -m gnr_daemon start``) on 127.0.0.1 with an
ephemeral port and a fresh key, fills one site with 100, 10,000 and 100,000
live pages (10 pages per connection), and at each size times a bounded
number of calls of each hot method from one client. Prints a table; with
``--json FILE`` also writes the figures. Talks to loopback only and stops
the daemon it started.

Usage: python scripts/bench_registers.py [--sizes 100,10000,100000] [--calls 2000] [--json FILE]
"""

import argparse
import json
import os
import platform
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from gnr_daemon import DaemonClient

PAGES_PER_CONNECTION = 10


def start_daemon(key, state_dir):
    env = {name: value for name, value in os.environ.items() if not name.startswith("GNR_DAEMON_")}
    env.update({"GNR_DAEMON_HMAC_KEY": key, "PYTHONUNBUFFERED": "1"})
    log = open(os.path.join(state_dir, "daemon.log"), "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gnr_daemon", "start", "-H", "127.0.0.1", "-P", "0",
         "--state-dir", state_dir, "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    # WARNING level hides the "listening" line, so find the port from /proc.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        port = listening_port(process.pid)
        if port:
            return process, port
        if process.poll() is not None:
            raise SystemExit(f"daemon exited with status {process.returncode}")
        time.sleep(0.05)
    process.kill()
    raise SystemExit("daemon did not start listening within 20 s")


def listening_port(pid):
    """Return the TCP port the process listens on, read from /proc, or None."""
    inodes = set()
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            match = re.match(r"socket:\[(\d+)\]", target)
            if match:
                inodes.add(match.group(1))
    except OSError:
        return None
    with open("/proc/net/tcp") as handle:
        next(handle)
        for line in handle:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                return int(fields[1].split(":")[1], 16)
    return None


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def grow_site(site, current, target):
    """Add connections and pages until the site has ``target`` pages."""
    for number in range(current, target):
        connection_id = f"c{number // PAGES_PER_CONNECTION}"
        user = f"user{number // (PAGES_PER_CONNECTION * 5)}"
        if number % PAGES_PER_CONNECTION == 0:
            site.new_connection(connection_id, user=user, user_ip="127.0.0.1",
                                browser_name="bench")
        site.new_page(f"p{number}", pagename="index.py", connection_id=connection_id, user=user,
                      relative_url="/index", data={"pageArgs": {"n": number}, "rootenv": {}})


def time_calls(function, argument_sets):
    durations = []
    for args, kwargs in argument_sets:
        started = time.perf_counter()
        function(*args, **kwargs)
        durations.append(time.perf_counter() - started)
    durations.sort()
    return {
        "calls": len(durations),
        "p50_us": round(statistics.median(durations) * 1e6, 1),
        "p99_us": round(durations[int(len(durations) * 0.99) - 1] * 1e6, 1),
        "calls_per_s": round(len(durations) / sum(durations)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,10000,100000")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", dest="json_path")
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]

    key = secrets.token_hex(32)
    state_dir = tempfile.mkdtemp(prefix="gnrd-bench-")
    process, port = start_daemon(key, state_dir)
    results = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                           "python": platform.python_version()},
               "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
               "sizes": []}
    try:
        client = DaemonClient(host="127.0.0.1", port=port, hmac_key=key, timeout=60,
                              use_environment=False, use_config_file=False)
        results["idle_rss_mib"] = round(rss_mib(process.pid), 1)
        client.addSiteRegister("bench")
        site = client.site("bench")
        current = 0
        rng = random.Random(7)
        for size in sizes:
            started = time.perf_counter()
            grow_site(site, current, size)
            fill_seconds = time.perf_counter() - started
            current = size
            page_ids = [f"p{rng.randrange(size)}" for _ in range(options.calls)]
            for page_id in page_ids[: options.calls // 2]:
                site.set_datachange(page_id, "bench.value", value=1, register_name="page")
            ping = time_calls(site.handle_ping, [((page_id,), {}) for page_id in page_ids])
            connections = [f"c{rng.randrange(max(1, size // PAGES_PER_CONNECTION))}"
                           for _ in range(options.calls)]
            pages = time_calls(site.pages, [((), {"connection_id": c}) for c in connections])
            row = {"pages": size, "fill_seconds": round(fill_seconds, 1),
                   "rss_mib": round(rss_mib(process.pid), 1),
                   "handle_ping": ping, "pages_by_connection": pages}
            results["sizes"].append(row)
            print(f"{size:>7} pages  handle_ping p50 {ping['p50_us']:>7} us p99 {ping['p99_us']:>7} us"
                  f"  pages(connection_id) p50 {pages['p50_us']:>7} us p99 {pages['p99_us']:>7} us"
                  f"  RSS {row['rss_mib']} MiB", flush=True)
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    if options.json_path:
        with open(options.json_path, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
