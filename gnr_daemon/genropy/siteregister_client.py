"""``gnr.web.daemon.siteregister_client``: the register client Genropy sites use."""

from gnr_daemon.errors import GnrDaemonLocked
from gnr_daemon.genropy._register import (
    LOCK_MAX_RETRY,
    RETRY_DELAY,
    RegisterResolver,
    RemoteStoreBag,
    ServerStore,
    SiteRegisterClient,
)

__all__ = [
    "SiteRegisterClient",
    "ServerStore",
    "RemoteStoreBag",
    "RegisterResolver",
    "GnrDaemonLocked",
    "LOCK_MAX_RETRY",
    "RETRY_DELAY",
]
