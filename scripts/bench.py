#!/usr/bin/env python
"""Benchmark gnr_daemon side by side with the legacy Pyro4 stack and a minimal floor.

One command runs everything in one process tree, on 127.0.0.1 only, with
bounded call counts:

    python scripts/bench.py [--rounds 2] [--calls 20000] [--json FILE] [--plot FILE.png]

Systems, measured in the same run and interleaved (A B C, A B C, ...):

- ``gnrd``: gnr_daemon on the memory store, HMAC on;
- ``legacy``: a Pyro4 daemon (pickle serializer, HMAC key) exposing ping and echo,
  as Genropy sites run today;
- ``floor``: a minimal gevent server written in scripts/bench_systems.py
  (length prefix, HMAC-SHA256 checked before pickle.loads, getattr dispatch
  refusing ``_`` names): the cost of the design itself.

Scenarios: ping and echo of a 1 KB dict, sequential and with 8, 32, 64 and
512 concurrent callers as threads and as greenlets; a site mix on gnr_daemon
(memory store, and Redis when ``--redis`` finds a redis-server binary);
handle_ping latency and daemon RSS at 100, 10,000 and 100,000 pages.
Each load runs in its own client process (bench_systems.py load ...).
"""

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time


HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEMS_SCRIPT = os.path.join(HERE, "bench_systems.py")
sys.path.insert(0, HERE)

from bench_registers import cpu_model  # noqa: E402  (a sibling script)

CONCURRENCY = (8, 32, 64, 512)
SYSTEM_NAMES = ("gnrd", "legacy", "floor")


def clean_environment():
    env = {name: value for name, value in os.environ.items() if not name.startswith("GNR_DAEMON_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Server:
    """One benchmarked server process on 127.0.0.1."""

    def __init__(self, name, command, workdir, port_from_log=False):
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.port_file = os.path.join(workdir, f"{name}.port")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=clean_environment())
        self.port = self._wait_port(port_from_log)

    def _wait_port(self, port_from_log):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited:\n{open(self.log_path).read()}")
            if port_from_log:
                match = re.search(r"listening on 127\.0\.0\.1:(\d+)", open(self.log_path).read())
                if match:
                    return int(match.group(1))
            elif os.path.exists(self.port_file):
                return int(open(self.port_file).read())
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not start within 30 s")

    def rss_mib(self):
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        return None

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def start_gnrd(key, workdir, store=None, name="gnrd"):
    command = [sys.executable, "-m", "gnr_daemon", "start", "-H", "127.0.0.1", "-P", "0",
               "-K", key, "--state-dir", workdir, "--max-connections", "2000"]
    if store:
        command += ["--store", store]
    return Server(name, command, workdir, port_from_log=True)


def start_system(name, key, workdir):
    if name == "gnrd":
        return start_gnrd(key, workdir)
    command = [sys.executable, SYSTEMS_SCRIPT, f"serve-{name}", os.path.join(workdir, f"{name}.port"),
               key]
    return Server(name, command, workdir)


def run_load(system, port, key, mode, callers, calls, method, site=None):
    command = [sys.executable, SYSTEMS_SCRIPT, "load", system, "127.0.0.1", str(port), key, mode,
               str(callers), str(calls), method]
    if site:
        command.append(site)
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=clean_environment())
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"system": system, "mode": mode, "callers": callers, "method": method,
                "calls": 0, "errors": calls, "calls_per_s": 0, "p50_us": None, "p99_us": None,
                "first_error": (result.stderr or result.stdout)[-300:]}
    return json.loads(lines[-1])


def scenario_list(concurrency):
    scenarios = []
    for method in ("ping", "echo"):
        scenarios.append((method, "threads", 1))
        for callers in concurrency:
            for mode in ("threads", "greenlets"):
                scenarios.append((method, mode, callers))
    return scenarios


def calls_for(callers, base_calls):
    # Sequential runs take longer per call; keep every run to a few seconds.
    return base_calls // 4 if callers == 1 else base_calls


def run_systems(options, key, workdir):
    servers = {name: start_system(name, key, workdir) for name in options.systems}
    results = {}
    try:
        for round_number in range(options.rounds):
            for method, mode, callers in scenario_list(options.concurrency):
                for name in options.systems:
                    calls = calls_for(callers, options.calls)
                    outcome = run_load(name, servers[name].port, key, mode, callers, calls, method)
                    results.setdefault((method, mode, callers, name), []).append(outcome)
                    print(f"round {round_number + 1} {method:4} {mode:9} {callers:>3} callers  "
                          f"{name:6} {outcome['calls_per_s']:>7} calls/s  p50 {outcome['p50_us']} us  "
                          f"p99 {outcome['p99_us']} us  errors {outcome['errors']}", flush=True)
        rss = {name: server.rss_mib() for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    return results, rss


def summarize(results, systems):
    rows = []
    for (method, mode, callers, name), outcomes in sorted(results.items()):
        rows.append({
            "method": method, "mode": mode, "callers": callers, "system": name,
            "calls_per_s": round(statistics.median(o["calls_per_s"] for o in outcomes)),
            "p50_us": statistics.median(o["p50_us"] or 0 for o in outcomes),
            "p99_us": statistics.median(o["p99_us"] or 0 for o in outcomes),
            "errors": sum(o["errors"] for o in outcomes),
            "first_error": next((o["first_error"] for o in outcomes if o.get("first_error")), None),
        })
    return rows


def ratio_table(rows):
    by_key = {(r["method"], r["mode"], r["callers"], r["system"]): r for r in rows}
    table = []
    for (method, mode, callers, system), row in sorted(by_key.items()):
        if system != "gnrd":
            continue
        legacy = by_key.get((method, mode, callers, "legacy"))
        floor = by_key.get((method, mode, callers, "floor"))
        table.append({
            "method": method, "mode": mode, "callers": callers,
            "gnrd": row["calls_per_s"], "gnrd_p50_us": row["p50_us"], "gnrd_p99_us": row["p99_us"],
            "gnrd_errors": row["errors"],
            "legacy": legacy and legacy["calls_per_s"], "legacy_errors": legacy and legacy["errors"],
            "floor": floor and floor["calls_per_s"],
            "vs_legacy": round(row["calls_per_s"] / legacy["calls_per_s"], 2)
            if legacy and legacy["calls_per_s"] else None,
            "vs_floor": round(row["calls_per_s"] / floor["calls_per_s"], 2)
            if floor and floor["calls_per_s"] else None,
        })
    return table


def print_ratio_table(table):
    print("\nmethod mode      callers    gnrd  legacy   floor  gnrd/legacy  gnrd/floor  gnrd p50/p99 us"
          "  errors gnrd/legacy")
    for row in table:
        print(f"{row['method']:6} {row['mode']:9} {row['callers']:>7} {row['gnrd']:>7} "
              f"{row['legacy'] or '-':>7} {row['floor'] or '-':>7} {row['vs_legacy'] or '-':>12} "
              f"{row['vs_floor'] or '-':>11}  {row['gnrd_p50_us']}/{row['gnrd_p99_us']}"
              f"  {row['gnrd_errors']}/{row['legacy_errors']}")


# -- site mix ------------------------------------------------------------------


def fill_site(port, key, pages):
    from bench_registers import grow_site

    from gnr_daemon import DaemonClient

    client = DaemonClient(host="127.0.0.1", port=port, hmac_key=key, timeout=120,
                          use_environment=False, use_config_file=False)
    client.addSiteRegister("bench")
    site = client.site("bench")
    grow_site(site, 0, pages)
    for number in range(pages):
        site.set_datachange(f"p{number}", "bench.pending", value=number, register_name="page")
    client.close()


def run_site_mix(options, key, workdir, store=None, label="memory"):
    server = start_gnrd(key, workdir, store=store, name=f"gnrd-mix-{label}")
    try:
        fill_site(server.port, key, options.mix_pages)
        results = []
        for mode, callers in (("threads", 1), ("greenlets", 32)):
            calls = calls_for(callers, options.calls)
            ping = run_load("gnrd", server.port, key, mode, callers, calls, "ping")
            mix = run_load("gnrd", server.port, key, mode, callers, calls, "mix", site="bench")
            share = round(mix["calls_per_s"] / ping["calls_per_s"], 2) if ping["calls_per_s"] else None
            print(f"site mix ({label}) {mode} {callers:>3} callers: {mix['calls_per_s']} calls/s "
                  f"(ping {ping['calls_per_s']}; {share} of ping), p50 {mix['p50_us']} us, "
                  f"p99 {mix['p99_us']} us, errors {mix['errors']}", flush=True)
            results.append({"store": label, "mode": mode, "callers": callers, "mix": mix,
                            "ping": ping, "share_of_ping": share})
        return results
    finally:
        server.stop()


def start_redis(workdir):
    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    log = open(os.path.join(workdir, "redis.log"), "wb")
    process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                "--appendonly", "no", "--dir", workdir],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    return None, None


# -- sizes -----------------------------------------------------------------------


def run_sizes(options, key, workdir):
    import random

    from bench_registers import grow_site, time_calls

    from gnr_daemon import DaemonClient

    server = start_gnrd(key, workdir, name="gnrd-sizes")
    rows = []
    try:
        time.sleep(0.5)
        idle = server.rss_mib()
        client = DaemonClient(host="127.0.0.1", port=server.port, hmac_key=key, timeout=120,
                              use_environment=False, use_config_file=False)
        client.addSiteRegister("bench")
        site = client.site("bench")
        current = 0
        rng = random.Random(11)
        for size in options.sizes:
            grow_site(site, current, size)
            current = size
            page_ids = [f"p{rng.randrange(size)}" for _ in range(2000)]
            for page_id in page_ids[:1000]:
                site.set_datachange(page_id, "bench.value", value=1, register_name="page")
            ping = time_calls(site.handle_ping, [((page_id,), {}) for page_id in page_ids])
            rows.append({"pages": size, "rss_mib": server.rss_mib(), "handle_ping": ping})
            print(f"{size:>7} pages: handle_ping p50 {ping['p50_us']} us p99 {ping['p99_us']} us, "
                  f"RSS {rows[-1]['rss_mib']} MiB (idle {idle} MiB)", flush=True)
        client.close()
    finally:
        server.stop()
    return {"idle_rss_mib": idle, "sizes": rows}


def plot(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, method in zip(axes, ("ping", "echo")):
        for system, marker in (("gnrd", "o"), ("legacy", "s"), ("floor", "^")):
            for mode, linestyle in (("threads", "-"), ("greenlets", "--")):
                points = [(r["callers"], r[system]) for r in table
                          if r["method"] == method and r["mode"] == mode and r[system]]
                if mode == "greenlets":
                    points = [(1, next((r[system] for r in table if r["method"] == method
                                        and r["callers"] == 1), 0))] + points
                if points:
                    xs, ys = zip(*sorted(points))
                    axis.plot(xs, ys, marker=marker, linestyle=linestyle, label=f"{system} {mode}")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent callers")
        axis.set_ylabel("calls/s")
        axis.set_title(method)
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def save_report(report, path):
    """Write the figures gathered so far, so a later failure loses nothing."""
    if path:
        with open(path, "w") as handle:
            json.dump(report, handle, indent=2, default=str)




def main():
    parser = argparse.ArgumentParser(description="Benchmark gnr_daemon against the legacy stack.")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--calls", type=int, default=20000,
                        help="calls per concurrent run; sequential runs make a quarter")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--systems", default=",".join(SYSTEM_NAMES))
    parser.add_argument("--mix-pages", type=int, default=10000)
    parser.add_argument("--sizes", default="100,10000,100000")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: systems,mix,redis,sizes")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--plot", dest="plot_path")
    options = parser.parse_args()
    options.concurrency = [int(n) for n in options.concurrency.split(",") if n]
    options.systems = [name for name in options.systems.split(",") if name]
    options.sizes = [int(n) for n in options.sizes.split(",") if n]
    skip = set(options.skip.split(","))

    key = secrets.token_hex(32)
    workdir = tempfile.mkdtemp(prefix="gnrd-bench-")
    report = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                          "python": sys.version.split()[0]},
              "command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%d")}
    if "systems" not in skip:
        results, rss = run_systems(options, key, workdir)
        rows = summarize(results, options.systems)
        report["rows"] = rows
        report["ratios"] = ratio_table(rows)
        report["rss_after_load_mib"] = rss
        print_ratio_table(report["ratios"])
        save_report(report, options.json_path)
        if options.plot_path:
            plot(report["ratios"], options.plot_path)
    if "mix" not in skip:
        report["site_mix"] = run_site_mix(options, key, workdir)
    if "redis" not in skip:
        redis_process, redis_port = start_redis(workdir)
        if redis_process is None:
            print("site mix on Redis skipped: no redis-server binary or it did not start")
        else:
            try:
                store = f"redis://127.0.0.1:{redis_port}/0?prefix=bench:"
                report["site_mix"] = report.get("site_mix", []) + run_site_mix(
                    options, key, workdir, store=store, label="redis")
            except SystemExit as exc:
                print(f"site mix on Redis failed: {exc}")
            finally:
                redis_process.terminate()
                redis_process.wait(10)
    if "sizes" not in skip:
        report["sizes"] = run_sizes(options, key, workdir)
    save_report(report, options.json_path)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
