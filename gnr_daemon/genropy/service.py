"""``gnr.web.daemon.service``: ``DaemonService``, run by ``gnr web daemon``.

genropy also installs a console script named ``gnrdaemon`` (a deprecated
alias of ``gnr web daemon``), and pip keeps the script of whichever package
it installed last. When that is genropy's, its script imports this module
first thing. The module then replaces the process with gnr_daemon's own
command line (same PID, same arguments), so ``gnrdaemon start|stop|status
...`` works whatever the install order was.
"""

import os
import sys

from gnr_daemon.genropy._service import DaemonService

__all__ = ["DaemonService"]


def _running_genropy_gnrdaemon_script():
    """Tell whether ``__main__`` is genropy's ``gnrdaemon`` console script."""
    if os.path.basename(sys.argv[0] or "") != "gnrdaemon":
        return False
    if "gnr.web.cli.gnrdaemon" not in sys.modules:
        return False
    path = getattr(sys.modules.get("__main__"), "__file__", None) or sys.argv[0]
    try:
        with open(path, encoding="utf-8") as handle:
            return "gnr.web.cli.gnrdaemon" in handle.read(4096)
    except OSError:
        return False


if _running_genropy_gnrdaemon_script():
    os.execv(sys.executable, [sys.executable, "-m", "gnr_daemon", *sys.argv[1:]])
