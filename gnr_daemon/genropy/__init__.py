"""Genropy plug-in: makes Genropy sites keep their register in gnr_daemon.

Genropy (26.x) loads its daemon through an entry point: when a module is
registered in the ``gnr.web`` group under the name ``daemon``,
``gnr/web/daemon/__init__.py`` imports it and installs it as
``gnr.web.daemon``. gnr_daemon registers this package there, so after
``pip install gnr_daemon`` every ``import gnr.web.daemon.<module>`` in
Genropy loads the module of the same name from this package:

- ``siteregister_client``: ``SiteRegisterClient`` (``site.register``),
  ``ServerStore``, ``RemoteStoreBag``, ``RegisterResolver``;
- ``siteregister``: ``GnrDaemonException``, ``GnrDaemonLocked``,
  ``DEFAULT_PAGE_MAX_AGE`` and the lock constants;
- ``handler``: ``GnrDaemon``, ``GnrDaemonProxy``, ``getFullOptions``;
- ``service``: ``DaemonService``, which ``gnr web daemon`` runs.

Those modules only re-export names from the private modules of this package
(by absolute import), so each class exists once, whether it is reached as
``gnr.web.daemon.handler`` or as ``gnr_daemon.genropy.handler``.

Switching back: with ``GNR_DAEMON_GENROPY=off`` in the environment of the web
workers and of ``gnr web daemon``, this package points its ``__path__`` at
Genropy's own ``gnr/web/daemon`` folder, so Genropy loads its original
modules (and needs Pyro4 again) without uninstalling gnr_daemon.

This is the only part of gnr_daemon that imports genropy, and only in its
submodules: importing this package itself needs nothing but the standard
library.
"""

import importlib.util
import logging
import os

__all__ = ["PLUGIN_SWITCH_ENV", "plugin_enabled", "genropy_daemon_folder"]

log = logging.getLogger(__name__)

#: Environment variable that turns the plug-in off when set to off, 0, false or no.
PLUGIN_SWITCH_ENV = "GNR_DAEMON_GENROPY"

_OFF_VALUES = ("off", "0", "false", "no")


def plugin_enabled(environ=None):
    """Tell whether Genropy should use gnr_daemon (the default) rather than its own daemon."""
    environ = os.environ if environ is None else environ
    return environ.get(PLUGIN_SWITCH_ENV, "").strip().lower() not in _OFF_VALUES


def genropy_daemon_folder():
    """Return the folder of Genropy's own ``gnr.web.daemon`` modules, or None when not found."""
    try:
        spec = importlib.util.find_spec("gnr.web")
    except ImportError:
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(folder, "daemon")
        if os.path.isfile(os.path.join(candidate, "siteregister_client.py")):
            return candidate
    return None


if not plugin_enabled():
    _original = genropy_daemon_folder()
    if _original is None:
        log.warning("%s is off but Genropy's own gnr/web/daemon folder was not found; "
                    "using gnr_daemon", PLUGIN_SWITCH_ENV)
    else:
        __path__ = [_original]  # noqa: F811 - submodules now load from Genropy's folder
