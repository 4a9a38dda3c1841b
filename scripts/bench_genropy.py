#!/usr/bin/env python
"""Time a real Genropy site on Genropy's own daemon and on gnr_daemon, side by side.

The script builds a throw-away Genropy environment in a temporary folder
with ``gnr app initgenropy`` and ``gnr dev mkproject --helloworld``, and
optionally an instance with the sys and adm packages. It starts both
daemons through ``gnr web daemon`` on free loopback ports (Genropy's own
with ``GNR_DAEMON_GENROPY=off``), and drives the same site against each in
a fresh process. One browser tab, one request at a time: per round a page
GET, a ``main`` RPC on the new page and a ``/_ping``, then the page is
closed. It prints requests per second, median and p99 latency per phase,
and the daemon round trips of the first GET, main RPC and ping.

Needs genropy, Pyro4 and werkzeug (``pip install -e '.[test]'``). Talks to
127.0.0.1 only, and stops both daemons it started.

    python scripts/bench_genropy.py --rounds 200 --json bench_genropy.json
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from genropy_site import (  # noqa: E402 - the helper lives with the tests
    TEST_KEY,
    GenropyEnvironment,
    WebDaemon,
    free_loopback_port,
    genropy_missing_reason,
    pyro_missing_reason,
    run_measure,
)
from bench_registers import cpu_model  # noqa: E402  (a sibling script)

PHASES = ("get", "main", "ping")
MAX_ROUNDS = 100_000




def percentile(values, fraction):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summarize(report):
    """Return per-phase figures from a measure report."""
    summary = {}
    for phase in PHASES:
        latencies = report["latency"][phase]
        summary[phase] = {
            "requests_per_second": len(latencies) / sum(latencies),
            "median_ms": statistics.median(latencies) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "round_trips": report["calls"][phase],
            "new_connections": report["connects"][phase],
        }
    summary["site_start"] = {"round_trips": report["calls"]["site_start"],
                             "seconds": report["site_start_seconds"]}
    return summary


def print_table(results):
    header = (f"{'instance':<13} {'phase':<5} | {'genropy req/s':>13} {'p99 ms':>8} "
              f"{'calls':>5} | {'gnr_daemon req/s':>16} {'p99 ms':>8} {'calls':>5} | "
              f"{'speed-up':>8}")
    print(header)
    print("-" * len(header))
    for instance, figures in results.items():
        for phase in PHASES:
            theirs, ours = figures["genropy"][phase], figures["gnr_daemon"][phase]
            speedup = ours["requests_per_second"] / theirs["requests_per_second"]
            print(f"{instance:<13} {phase:<5} | {theirs['requests_per_second']:>13.1f} "
                  f"{theirs['p99_ms']:>8.2f} {theirs['round_trips']:>5} | "
                  f"{ours['requests_per_second']:>16.1f} {ours['p99_ms']:>8.2f} "
                  f"{ours['round_trips']:>5} | {speedup:>7.2f}x")


def run(options, workdir):
    environment = GenropyEnvironment(workdir).build(TEST_KEY)
    instances = ["baseinstance"]
    if options.full:
        instances.append(environment.add_full_instance())

    ours_port = free_loopback_port()
    environment.set_daemon_address("127.0.0.1", ours_port, TEST_KEY)
    legacy = environment.copy(os.path.join(workdir, "legacy"))
    legacy_port = free_loopback_port()
    legacy.set_daemon_address("127.0.0.1", legacy_port, TEST_KEY)

    ours_daemon = WebDaemon(environment, [], os.path.join(workdir, "gnr_daemon.log"))
    legacy_daemon = WebDaemon(legacy, [], os.path.join(workdir, "genropy_daemon.log"),
                              legacy=True)
    results = {}
    try:
        ours_daemon.wait_listening()
        legacy_daemon.wait_listening(port=legacy_port)
        for instance in instances:
            results[instance] = {
                "genropy": summarize(run_measure(legacy, instance, legacy=True,
                                                 rounds=options.rounds, warmup=options.warmup)),
                "gnr_daemon": summarize(run_measure(environment, instance,
                                                    rounds=options.rounds,
                                                    warmup=options.warmup)),
            }
    finally:
        legacy_daemon.command("-C", "stop")
        ours_daemon.command("-C", "stop")
        legacy_daemon.terminate()
        ours_daemon.terminate()
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200,
                        help="timed rounds (GET, main RPC, ping) per daemon and instance")
    parser.add_argument("--warmup", type=int, default=20, help="untimed rounds before timing")
    parser.add_argument("--full", action="store_true",
                        help="also time an instance with Genropy's sys and adm packages")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary Genropy environment and daemon logs")
    options = parser.parse_args(argv)
    if not 1 <= options.rounds <= MAX_ROUNDS or not 0 <= options.warmup <= MAX_ROUNDS:
        parser.error(f"--rounds must be 1 to {MAX_ROUNDS} and --warmup 0 to {MAX_ROUNDS}")
    for reason in (genropy_missing_reason(), pyro_missing_reason()):
        if reason:
            parser.error(reason)

    workdir = tempfile.mkdtemp(prefix="bench_genropy-")
    started = time.monotonic()
    try:
        results = run(options, workdir)
    finally:
        if options.keep:
            print(f"environment and logs kept in {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)

    from importlib.metadata import version

    report = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "genropy": version("genropy"),
        "gnr_daemon": version("gnr_daemon"),
        "rounds": options.rounds,
        "warmup": options.warmup,
        "seconds": round(time.monotonic() - started, 1),
        "results": results,
    }
    print(f"{report['cpu']} ({report['cpu_count']} CPUs), Python {report['python']}, "
          f"genropy {report['genropy']}, gnr_daemon {report['gnr_daemon']}; "
          f"{options.rounds} rounds after {options.warmup} warm-up, one request at a time")
    print_table(results)
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
