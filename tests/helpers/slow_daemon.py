"""``gnrdaemon start`` with two extra methods, for shutdown tests.

Usage: slow_daemon.py start [gnrdaemon start options]

``slow(seconds)`` waits cooperatively; ``spin(seconds)`` keeps the CPU busy
without yielding. Everything else is the real start path.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from docopt import docopt  # noqa: E402

from gnr_daemon import cli, startup  # noqa: E402
from gnr_daemon.daemon import Daemon  # noqa: E402


class SlowDaemon(Daemon):
    def slow(self, seconds):
        gevent.sleep(seconds)
        return "slow done"

    def spin(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass
        return "spin done"


if __name__ == "__main__":
    arguments = docopt(cli.__doc__, argv=sys.argv[1:])
    sys.exit(startup.run_daemon(arguments, cli._overrides(arguments), daemon_class=SlowDaemon))
