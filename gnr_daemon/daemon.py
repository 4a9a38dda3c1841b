"""The daemon's root object: daemon-level methods and routing to site registers.

Every public method defined in the ``Daemon`` class body is callable remotely
by name (see ``gnr_daemon.dispatch``); helpers are private. A request that
names a site goes to that site's register, and a site that was never
registered gets ``SiteNotFound`` (a ``MethodNotFound``), never an
automatically created register, so that the client registers it again with
its own configuration and storage path.

Dump files live only inside the state directory: ``storage_path`` arguments
are resolved against it and rejected when they point outside, so no caller
can make the daemon write, rename or unpickle an arbitrary file.
"""

import logging
import os
import time
from datetime import datetime

import gevent

from . import __version__
from .dispatch import check_method_name, dispatch
from .errors import (
    ConfigurationError,
    PermissionDenied,
    SiteNotFound,
    StoreError,
    describe_exception,
)
from .registers import SiteRegister

__all__ = ["Daemon", "MAX_SITENAME_LENGTH", "MAX_BATCH_CALLS"]

log = logging.getLogger(__name__)

#: Longest accepted site name (Genropy's ``sitename|domain`` included).
MAX_SITENAME_LENGTH = 200

#: Daemon-level methods that need the admin key when one is configured.
ADMIN_DAEMON_METHODS = frozenset({
    "stop", "restart", "siteregister_stop", "siteregister_restart", "siteregister_dump",
    "siteregister_start", "restartServiceDaemon", "store_retag",
})

#: Site-register methods that need the admin key when one is configured.
ADMIN_SITE_METHODS = frozenset({"dump", "load", "setMaintenance", "stop"})

#: Most calls one batch may carry.
MAX_BATCH_CALLS = 10_000

# A batch yields to other greenlets after this many calls.
_BATCH_YIELD_EVERY = 50

# The periodic cleanup wakes at least this often, in seconds, so that a
# shorter interval set later with setConfiguration takes effect soon.
_CLEANUP_MAX_SLEEP = 5


def _check_sitename(sitename):
    if not isinstance(sitename, str) or not sitename:
        raise ValueError(f"invalid site name {sitename!r}: a site name is a non-empty string")
    if len(sitename) > MAX_SITENAME_LENGTH:
        raise ValueError(
            f"invalid site name {sitename[:40]!r}...: longer than {MAX_SITENAME_LENGTH} characters"
        )
    if not sitename.isprintable() or "/" in sitename or "\\" in sitename:
        raise ValueError(
            f"invalid site name {sitename!r}: control characters and path separators are not allowed"
        )


def _parse_site_list(sitename, known):
    """Expand ``"*"``, a comma-separated string or a list into site names."""
    if sitename in (None, "*"):
        return list(known)
    if isinstance(sitename, str):
        names = [name.strip() for name in sitename.split(",")]
    elif isinstance(sitename, (list, tuple, set)):
        names = [str(name) for name in sitename]
    else:
        raise ValueError(
            f"invalid site selection {sitename!r}: give a site name, a comma-separated "
            "list of names, a list, or '*'"
        )
    return [name for name in names if name]


def _check_batch_entry(index, call):
    """Return the fields of one batch entry or raise ValueError naming the entry."""
    if not (isinstance(call, (list, tuple)) and len(call) == 4):
        raise ValueError(f"invalid batch entry {index}: expected (site, method, args, kwargs)")
    site, method, args, kwargs = call
    if site is not None and not isinstance(site, str):
        raise ValueError(f"invalid batch entry {index}: site must be a string or None")
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise ValueError(f"invalid batch entry {index}: args must be a list or tuple and "
                         "kwargs a dict")
    if any(not isinstance(name, str) or not name.isidentifier() for name in kwargs):
        raise ValueError(f"invalid batch entry {index}: keyword names must be identifiers")
    if site is None and method == "batch":
        raise ValueError(f"invalid batch entry {index}: a batch cannot contain a batch")
    return site, method, tuple(args), dict(kwargs)


class Daemon:
    """Root object of one gnr_daemon process.

    ``store`` is an opened ``gnr_daemon.store.Store``. ``state_dir`` is the
    only directory dump files are read from and written to. ``clock``
    returns the current naive datetime and is handed to every site register.
    """

    #: Version of this daemon; a data attribute, so it is not remotely callable.
    version = __version__

    def __init__(self, store, state_dir, clock=None):
        self._store = store
        self._state_dir = os.path.abspath(state_dir)
        self._clock = clock or datetime.now
        self._sites = {}
        self._site_settings = {}
        self._cleanup_greenlets = {}
        self._started = time.monotonic()
        self._start_ts = self._clock()
        self._server = None

    def __repr__(self):
        return f"<Daemon sites={len(self._sites)} store={self._store.url}>"

    # request routing (called by the server, never remotely)

    def _call(self, site, method, args, kwargs):
        """Run one request: a daemon-level method, or a method of a site register."""
        if site is None and "_sitename" in kwargs:
            site = kwargs.pop("_sitename")
        admin_only = ADMIN_DAEMON_METHODS if site is None else ADMIN_SITE_METHODS
        if method in admin_only and not getattr(gevent.getcurrent(), "gnrd_admin", True):
            log.warning("rejected %s (site %r) from %s: the call needs the admin key", method,
                        site, getattr(gevent.getcurrent(), "gnrd_peer", "?"))
            raise PermissionDenied(
                f"{method} needs a connection signed with the admin key, and this one uses "
                "the ordinary key: run it with GNR_DAEMON_ADMIN_KEY or --admin-key-file"
            )
        if site is None:
            return dispatch(self, method, args, kwargs)
        check_method_name(method)
        register = self._sites.get(site)
        if register is None:
            raise SiteNotFound(
                f"site {site!r} is not registered on this daemon: call "
                f"addSiteRegister({site!r}, ...) first (the daemon may have restarted)"
            )
        return dispatch(register, method, args, kwargs)

    def _site_names(self):
        return list(self._sites)

    def _site_registers(self):
        return dict(self._sites)

    @staticmethod
    def _site_counters(register):
        try:
            return register.counters()
        except Exception as exc:
            log.warning("reading the counters of a site failed: %s", exc)
            return {"error": str(exc)}

    def _resolve_storage_path(self, storage_path):
        """Return the absolute dump path for ``storage_path`` inside the state directory."""
        if storage_path is None:
            return None
        if not isinstance(storage_path, str) or not storage_path.strip():
            raise ValueError(
                f"invalid storage_path {storage_path!r}: give a file name inside the "
                f"state directory {self._state_dir}"
            )
        candidate = storage_path
        if not os.path.isabs(candidate):
            candidate = os.path.join(self._state_dir, candidate)
        resolved = os.path.realpath(candidate)
        state_dir = os.path.realpath(self._state_dir)
        if resolved == state_dir or os.path.isdir(resolved):
            raise ConfigurationError(
                f"storage_path {storage_path!r} is a directory: pass a file name inside the "
                f"state directory {self._state_dir}, for example 'mysite.pik'"
            )
        if os.path.commonpath([resolved, state_dir]) != state_dir:
            via_link = " (through a symbolic link)" if resolved != os.path.abspath(candidate) else ""
            raise ConfigurationError(
                f"storage_path {storage_path!r} resolves to {resolved}{via_link}, outside the "
                f"daemon's state directory {self._state_dir}: pass a file name relative to it "
                "(for example 'mysite.pik') or start the daemon with --state-dir pointing at "
                "the folder"
            )
        os.makedirs(os.path.dirname(resolved), mode=0o700, exist_ok=True)
        return resolved

    def _save_site(self, sitename):
        """Dump one site; return ``"saved"``, ``"no storage path"`` or the error text."""
        register = self._sites[sitename]
        path = register._info().get("storage_path")
        if not path:
            return "no storage path"
        try:
            register.dump()
        except Exception as exc:
            log.exception("site %r: saving the register to %s failed", sitename, path)
            return f"failed: {type(exc).__name__}: {exc}"
        return "saved"

    def _stop_site(self, sitename, save_status):
        saved = self._save_site(sitename) if save_status else "not requested"
        register = self._sites.pop(sitename)
        cleaner = self._cleanup_greenlets.pop(sitename, None)
        if cleaner is not None:
            cleaner.kill(block=False)
        info = register._info()
        info["saved"] = saved
        register._close()
        if not getattr(self._store, "shared", False):
            # A process-local store deletes the site's state with its register,
            # but a shared store keeps the state that other daemons still serve.
            self._store.drop_site(sitename)
        log.info("site %r stopped (state %s)", sitename, saved)
        return info

    def _stop_all_sites(self, save_status):
        return {sitename: self._stop_site(sitename, save_status)["saved"]
                for sitename in list(self._sites)}

    def _start_cleanup(self, sitename, register):
        self._cleanup_greenlets[sitename] = gevent.spawn(self._cleanup_loop, sitename, register)

    def _cleanup_loop(self, sitename, register):
        """Run the site's pull-all cleanup about every ``interval`` seconds, forever."""
        last_store_warning = -60.0
        while True:
            try:
                interval = float(register._cleanup_interval())
            except StoreError:
                interval = _CLEANUP_MAX_SLEEP  # the cleanup call below reports the outage
            except Exception:
                log.exception("site %r: reading the cleanup interval failed", sitename)
                interval = _CLEANUP_MAX_SLEEP
            gevent.sleep(min(max(interval, 1.0), _CLEANUP_MAX_SLEEP))
            try:
                register.cleanup()
            except StoreError as exc:
                # A store outage repeats every few seconds: one line per minute.
                now = time.monotonic()
                if now - last_store_warning >= 60:
                    last_store_warning = now
                    log.warning("site %r: periodic cleanup skipped: %s", sitename, exc)
            except Exception:
                log.exception("site %r: periodic cleanup failed", sitename)

    # daemon-level remote API

    def ping(self, **kwargs):
        """Return ``"pong"``: the daemon is alive and serving requests."""
        return "pong"

    def echo(self, payload=None):
        """Return ``payload`` unchanged."""
        return payload

    def batch(self, calls, stop_on_error=False):
        """Run several calls in order in one round trip.

        ``calls`` is a list of ``(site, method, args, kwargs)``; each goes
        through the same routing and name checks as a single call. Returns
        one ``(True, result)`` or ``(False, (class_name, message,
        traceback_text, builtin_base))`` per call; with ``stop_on_error`` the
        calls after the first failure are not run and get no entry.
        """
        if not isinstance(calls, (list, tuple)):
            raise ValueError(f"invalid batch: expected a list of (site, method, args, kwargs), "
                             f"got {type(calls).__name__}")
        if len(calls) > MAX_BATCH_CALLS:
            raise ValueError(f"invalid batch: {len(calls)} calls, more than the limit of "
                             f"{MAX_BATCH_CALLS}; split it into several batches")
        results = []
        for index, call in enumerate(calls):
            if index and index % _BATCH_YIELD_EVERY == 0:
                gevent.sleep(0)  # let other connections run during a long batch
            site, method, args, kwargs = _check_batch_entry(index, call)
            try:
                results.append((True, self._call(site, method, args, kwargs)))
            except Exception as exc:
                results.append((False, describe_exception(exc)))
                if stop_on_error:
                    break
        return results

    def addSiteRegister(self, sitename, storage_path=None, autorestore=False, **kwargs):
        """Create the register of ``sitename`` if it does not exist yet (idempotent).

        For an existing site the storage path is set only when it had none,
        and the saved state is then loaded when ``autorestore`` is true.
        """
        _check_sitename(sitename)
        path = self._resolve_storage_path(storage_path)
        register = self._sites.get(sitename)
        if register is None:
            os.makedirs(self._state_dir, mode=0o700, exist_ok=True)
            register = SiteRegister(
                sitename, self._store.site_store(sitename), storage_path=path, clock=self._clock
            )
            self._sites[sitename] = register
            self._site_settings[sitename] = {"storage_path": path, "autorestore": bool(autorestore)}
            self._start_cleanup(sitename, register)
            log.info("site %r registered (storage %s)", sitename, path or "none")
            if autorestore and path and os.path.exists(path):
                register.load()
            elif path and os.path.exists(path):
                log.warning("site %r: %s contains saved state that is not restored "
                            "(autorestore is off); the next dump replaces it", sitename, path)
            return None
        info = register._info()
        if path and not info.get("storage_path"):
            register._set_storage_path(path)
            self._site_settings[sitename]["storage_path"] = path
            if autorestore and os.path.exists(path):
                register.load()
        else:
            log.debug("site %r is already registered; addSiteRegister changed nothing", sitename)
        return None

    def getSite(self, sitename=None, create=False, storage_path=None, autorestore=None, **kwargs):
        """Return the status of ``sitename``, creating its register when ``create`` is true."""
        if sitename is None:
            return None
        if sitename not in self._sites:
            if not create:
                return None
            self.addSiteRegister(sitename, storage_path=storage_path, autorestore=bool(autorestore))
        info = self._sites[sitename]._info()
        info["status"] = "ready"
        info["sitename"] = sitename
        return info

    def siteRegisters(self, **kwargs):
        """Return ``(sitename, info)`` for every hosted site."""
        result = []
        for sitename, register in self._sites.items():
            info = register._info()
            info.update({"sitename": sitename, "is_alive": True, "register_uri": sitename,
                         "pid": os.getpid()})
            result.append((sitename, info))
        return result

    def siteregister_stop(self, sitename=None, saveStatus=False, **kwargs):
        """Stop the selected sites (a name, a comma list, a list or ``"*"``).

        With ``saveStatus`` each site that has a storage path is dumped first.
        Returns ``{sitename: info}`` of the sites stopped; unknown names are skipped.
        """
        stopped = {}
        for name in _parse_site_list(sitename, self._sites):
            if name in self._sites:
                info = self._stop_site(name, saveStatus)
                info.update(self._site_settings.pop(name, {}))
                stopped[name] = info
        return stopped

    def siteregister_dump(self, sitename=None, **kwargs):
        """Dump the register of ``sitename`` to its storage path."""
        if sitename not in self._sites:
            raise SiteNotFound(f"site {sitename!r} is not registered on this daemon")
        self._sites[sitename].dump()

    def siteregister_start(self, stopStatus=None, **kwargs):
        """Register again the sites described by a ``siteregister_stop`` result."""
        for sitename, info in (stopStatus or {}).items():
            storage_path = info.get("storage_path")
            self.addSiteRegister(sitename, storage_path=storage_path,
                                 autorestore=bool(info.get("autorestore", True)))

    def siteregister_restart(self, sitename=None, **kwargs):
        """Stop the selected sites saving their state, then register and restore them."""
        stopped = self.siteregister_stop(sitename, saveStatus=True)
        for info in stopped.values():
            info["autorestore"] = True
        self.siteregister_start(stopped)

    def on_site_stop(self, **kwargs):
        """Note that a web site stopped; the daemon keeps its register."""
        log.debug("on_site_stop received without a site name")

    def on_reloader_restart(self, sitename=None, **kwargs):
        """Accept Genropy's code-reload hook; nothing to do on the daemon."""
        log.debug("on_reloader_restart for site %r", sitename)

    def stop(self, saveStatus=False, **kwargs):
        """Shut the daemon down; with ``saveStatus``, dump every site first.

        The dumps run before this call returns, so the result reports what was
        saved: ``{sitename: "saved" | "no storage path" | "failed: ..."}``
        (empty without ``saveStatus``). The shutdown itself starts afterwards.
        """
        log.info("stop requested by a client%s", " (saving state)" if saveStatus else "")
        results = {}
        if saveStatus:
            results = {sitename: self._save_site(sitename) for sitename in list(self._sites)}
        if self._server is not None:
            self._server.request_stop()
        else:
            self._stop_all_sites(False)
        return results

    def store_retag(self, **kwargs):
        """Rewrite stored values tagged with the previous key (key rotation); return how many.

        Only a networked store keeps tagged values; on the memory store this
        returns 0.
        """
        retag = getattr(self._store, "retag", None)
        return retag() if retag is not None else 0

    def restart(self, sitename=None, **kwargs):
        """Save state and stop; the process manager is expected to start the daemon again."""
        self.stop(saveStatus=True)

    def status(self, **kwargs):
        """Return uptime, version, store, sites and connection figures."""
        info = {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self._started, 3),
            "start_ts": self._start_ts,
            "store": self._store.url,
            "store_health": self._store.health(),
            "sites": len(self._sites),
            "site_names": sorted(self._sites),
            "site_counters": {name: self._site_counters(register)
                              for name, register in sorted(self._sites.items())},
            "state_dir": self._state_dir,
        }
        if self._server is not None:
            info.update(self._server._status())
        return info
