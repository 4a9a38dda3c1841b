"""``gnr.web.daemon.service``: ``DaemonService``, run by ``gnr web daemon``."""

from gnr_daemon.genropy._service import DaemonService

__all__ = ["DaemonService"]
