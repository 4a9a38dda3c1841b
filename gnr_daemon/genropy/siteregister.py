"""``gnr.web.daemon.siteregister``: the exceptions and constants Genropy imports from it.

The register itself runs in gnr_daemon; Genropy's ``GnrSiteRegisterServer``
(a per-site register process) has no counterpart here.
"""

from gnr_daemon.errors import GnrDaemonError as GnrDaemonException
from gnr_daemon.errors import GnrDaemonLocked
from gnr_daemon.genropy._register import LOCK_MAX_RETRY, RETRY_DELAY
from gnr_daemon.registers.constants import LOCK_EXPIRY_SECONDS, PROCESS_SELFDESTROY_TIMEOUT

__all__ = [
    "GnrDaemonException",
    "GnrDaemonLocked",
    "DEFAULT_PAGE_MAX_AGE",
    "LOCK_MAX_RETRY",
    "LOCK_EXPIRY_SECONDS",
    "RETRY_DELAY",
    "PROCESS_SELFDESTROY_TIMEOUT",
]

#: Page age, in seconds, after which Genropy's site cleanup drops a page when
#: no <cleanup page_max_age> is set. Genropy's own daemon defines the same value.
DEFAULT_PAGE_MAX_AGE = 600
