"""``gnr.web.daemon.handler``: start gnr_daemon (``GnrDaemon``) and reach it (``GnrDaemonProxy``)."""

from gnr_daemon.genropy._service import GnrDaemon, GnrDaemonProxy, getFullOptions

__all__ = ["GnrDaemon", "GnrDaemonProxy", "getFullOptions"]
