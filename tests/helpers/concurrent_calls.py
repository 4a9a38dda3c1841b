"""Call a daemon from threads and greenlets at once through one DaemonClient.

Usage: concurrent_calls.py HOST PORT KEY (--patch|--no-patch) --greenlets N
       --threads N --calls TOTAL

Prints one line "mismatches=M errors=E calls=C" and exits 0 when it ran.
"""

import sys

patch = "--patch" in sys.argv
if patch:
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import threading  # noqa: E402

import gevent  # noqa: E402

from gnr_daemon import DaemonClient  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("key")
    parser.add_argument("--patch", action="store_true")
    parser.add_argument("--no-patch", action="store_true")
    parser.add_argument("--greenlets", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--calls", type=int, default=1000)
    options = parser.parse_args()

    client = DaemonClient(host=options.host, port=options.port, hmac_key=options.key,
                          pool_size=16, timeout=30, use_environment=False, use_config_file=False)
    workers = options.greenlets + options.threads
    shares = [options.calls // workers + (1 if n < options.calls % workers else 0)
              for n in range(workers)]
    mismatches, errors, calls = [], [], [0]
    lock = threading.Lock()

    def work(name, count):
        for index in range(count):
            payload = {"worker": name, "index": index}
            try:
                answer = client.echo(payload)
            except Exception as exc:  # counted and reported
                errors.append(repr(exc))
                continue
            with lock:
                calls[0] += 1
            if answer != payload:
                mismatches.append((payload, answer))

    threads = [threading.Thread(target=work, args=(f"t{n}", shares[n]))
               for n in range(options.threads)]
    for thread in threads:
        thread.start()
    greenlets = [gevent.spawn(work, f"g{n}", shares[options.threads + n])
                 for n in range(options.greenlets)]
    gevent.joinall(greenlets, timeout=90)
    for thread in threads:
        thread.join(90)
    client.close()
    print(f"mismatches={len(mismatches)} errors={len(errors)} calls={calls[0]}")
    if errors:
        print("first error:", errors[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
