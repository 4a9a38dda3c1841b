#!/usr/bin/env python
"""Throw hostile input at a gnr_daemon it starts itself, and count what happened.

    python scripts/attack_run.py [--frames 20000] [--pickles 2000] [--replays 2000]
                                 [--flood 2000] [--seed 1] [--json FILE]

Starts ``python -m gnr_daemon start`` on 127.0.0.1 (ephemeral port, fresh
key, memory store) and runs, in order:

- fuzzed frames: random bytes, random headers, valid frames with one bit
  flipped or cut short, each on a fresh connection (``--frames``);
- malicious pickles whose unpickling would create a marker file: unsigned,
  signed with another key, signed then tampered, and signed with the right
  key but naming a class outside the allow-list (``--pickles`` in all);
- replays of captured signed frames on another connection and on the same
  one (``--replays``);
- a flood of idle connections (``--flood``) while a client keeps calling.

After each part it checks that the daemon still responds, that the marker
file does not exist and that a site created at the start is unchanged.
Prints a table; every loop is bounded and all traffic stays on 127.0.0.1.
"""

import argparse
import json
import os
import pickle
import random
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from gnr_daemon import DaemonClient
from gnr_daemon.protocol import KIND_REQUEST, Channel, compute_tag, pack_frame


class Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def start_daemon(key, workdir):
    env = {name: value for name, value in os.environ.items() if not name.startswith("GNR_DAEMON_")}
    env.update({"GNR_DAEMON_HMAC_KEY": key, "PYTHONUNBUFFERED": "1"})
    log_path = os.path.join(workdir, "daemon.log")
    log = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "-m", "gnr_daemon", "start", "-H", "127.0.0.1",
                                "-P", "0", "--state-dir", workdir, "--max-connections", "5000",
                                "--handshake-timeout", "2", "--read-timeout", "2"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", open(log_path).read())
        if match:
            return process, int(match.group(1)), log_path
        time.sleep(0.05)
    process.kill()
    raise SystemExit("daemon did not start")


def connect(port, key):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    channel = Channel(sock, "client", key=key.encode(), peer="attack")
    channel.client_handshake(5)
    return channel


def signed(channel, payload, sequence=None):
    sequence = channel._send_seq if sequence is None else sequence
    header = struct.pack(">BBHI", KIND_REQUEST, 1, 0, len(payload))
    return header + compute_tag(channel._prefix, b"Q", sequence, header, payload) + payload


def drain(sock):
    sock.settimeout(3)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    sock.close()


def fuzz_frames(port, key, count, rng):
    valid = pickle.dumps((1, None, "ping", (), {}))
    outcomes = {"sent": 0, "connection errors": 0}
    for number in range(count):
        choice = number % 4
        try:
            if choice == 0:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(rng.randbytes(rng.randrange(1, 300)))
                sock.shutdown(socket.SHUT_WR)
                drain(sock)
            else:
                channel = connect(port, key)
                frame = bytearray(signed(channel, valid))
                if choice == 1:
                    frame[:8] = struct.pack(">BBHI", rng.randrange(256), rng.randrange(256),
                                            rng.randrange(65536), rng.randrange(2 ** 32))
                elif choice == 2:
                    position = rng.randrange(len(frame))
                    frame[position] ^= 1 << rng.randrange(8)
                else:
                    frame = frame[:rng.randrange(1, len(frame))]
                channel.sock.sendall(bytes(frame))
                channel.sock.shutdown(socket.SHUT_WR)
                drain(channel.sock)
            outcomes["sent"] += 1
        except OSError:
            outcomes["connection errors"] += 1
    return outcomes


def malicious_pickles(port, key, count, marker):
    payload = pickle.dumps((1, None, "echo", (Marker(marker),), {}))
    kinds = ["unsigned", "other key", "tampered", "class outside allow-list"]
    outcomes = {kind: 0 for kind in kinds}
    for number in range(count):
        kind = kinds[number % 4]
        channel = connect(port, key if kind != "other key" else secrets.token_hex(32))
        if kind == "unsigned":
            channel.sock.sendall(pack_frame(KIND_REQUEST, payload))
        elif kind == "tampered":
            frame = bytearray(signed(channel, payload))
            frame[-5] ^= 0x20
            channel.sock.sendall(bytes(frame))
        else:
            channel.sock.sendall(signed(channel, payload))
        if kind == "class outside allow-list":
            channel._send_seq += 1
            reply = channel.receive(5, 5)[1]
            assert reply[1] is False, reply
            assert "not allowed" in reply[2][1], reply
            channel.sock.close()
        else:
            drain(channel.sock)
        outcomes[kind] += 1
    return outcomes


def replays(port, key, count):
    outcomes = {"other connection": 0, "same connection": 0}
    for number in range(count):
        first = connect(port, key)
        frame = signed(first, pickle.dumps((number, None, "ping", (), {})))
        first.sock.sendall(frame)
        first._send_seq += 1
        first.receive(5, 5)
        if number % 2:
            first.sock.sendall(frame)
            drain(first.sock)
            outcomes["same connection"] += 1
        else:
            second = connect(port, key)
            second.sock.sendall(frame)
            drain(second.sock)
            first.sock.close()
            outcomes["other connection"] += 1
    return outcomes


def flood(port, key, count):
    sockets = []
    for _ in range(count):
        sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    client = DaemonClient(host="127.0.0.1", port=port, hmac_key=key, timeout=10,
                          use_environment=False, use_config_file=False)
    durations = []
    for _ in range(500):
        started = time.perf_counter()
        client.ping()
        durations.append(time.perf_counter() - started)
    client.close()
    for sock in sockets:
        sock.close()
    durations.sort()
    return {"idle connections": count, "pings during flood": len(durations),
            "ping p50 ms": round(durations[len(durations) // 2] * 1000, 2),
            "ping p99 ms": round(durations[int(len(durations) * 0.99) - 1] * 1000, 2)}


def check(port, key, marker, expected_counters):
    client = DaemonClient(host="127.0.0.1", port=port, hmac_key=key, timeout=10,
                          use_environment=False, use_config_file=False)
    try:
        alive = client.ping() == "pong"
        counters = client.site("victim").counters()
        status = client.status()
    finally:
        client.close()
    return {"daemon answers": alive, "marker file absent": not os.path.exists(marker),
            "site state unchanged": counters == expected_counters,
            "auth failures so far": status["auth_failures"],
            "protocol errors so far": status["protocol_errors"]}


def main():
    parser = argparse.ArgumentParser(description="Run hostile input against a local gnr_daemon.")
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--pickles", type=int, default=2000)
    parser.add_argument("--replays", type=int, default=2000)
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", dest="json_path")
    options = parser.parse_args()

    rng = random.Random(options.seed)
    key = secrets.token_hex(32)
    workdir = tempfile.mkdtemp(prefix="gnrd-attack-")
    marker = os.path.join(workdir, "gnr_pwned")
    process, port, log_path = start_daemon(key, workdir)
    report = {"command": " ".join(["python"] + sys.argv), "parts": []}
    try:
        setup = DaemonClient(host="127.0.0.1", port=port, hmac_key=key, use_environment=False,
                             use_config_file=False)
        setup.addSiteRegister("victim")
        setup.site("victim").new_connection("c1", user="alice")
        setup.site("victim").new_page("p1", connection_id="c1", user="alice")
        expected = setup.site("victim").counters()
        setup.close()
        parts = [
            ("fuzzed frames", lambda: fuzz_frames(port, key, options.frames, rng)),
            ("malicious pickles", lambda: malicious_pickles(port, key, options.pickles, marker)),
            ("replayed frames", lambda: replays(port, key, options.replays)),
            ("idle-connection flood", lambda: flood(port, key, options.flood)),
        ]
        for name, run in parts:
            started = time.monotonic()
            counts = run()
            outcome = check(port, key, marker, expected)
            seconds = round(time.monotonic() - started, 1)
            report["parts"].append({"part": name, "counts": counts, "outcome": outcome,
                                    "seconds": seconds})
            print(f"{name}: {counts} -> {outcome} ({seconds} s)", flush=True)
    finally:
        process.send_signal(signal.SIGTERM)
        report["daemon exit status"] = process.wait(30)
    print(f"daemon exit status after SIGTERM: {report['daemon exit status']}")
    if options.json_path:
        with open(options.json_path, "w") as handle:
            json.dump(report, handle, indent=2)
    failed = [part["part"] for part in report["parts"]
              if not all(value for key_, value in part["outcome"].items() if key_ in (
                  "daemon answers", "marker file absent", "site state unchanged"))]
    if failed:
        print(f"FAILED: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
