"""Per-process command mailboxes: web workers broadcast commands to each other.

Each worker polls with its own process id, so every worker has its own
mailbox. The meta value ``process_mailboxes`` maps a pid to
``{"commands": [...], "ts": last poll time}``. A caller that sends no pid
uses the shared mailbox under the key None. A mailbox not polled for more
than ``PROCESS_SELFDESTROY_TIMEOUT`` seconds is discarded on the next send.
"""

import logging

from .constants import META_PROCESS_MAILBOXES, PROCESS_SELFDESTROY_TIMEOUT

__all__ = ["pending_commands", "send_command"]

log = logging.getLogger(__name__)


def _check_pid(pid):
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (int, str))):
        raise TypeError(f"invalid pid {pid!r}: expected the worker's process id (an int) or None")


def pending_commands(state, pid=None):
    """Return and clear the commands queued for ``pid``, creating its mailbox when missing."""
    _check_pid(pid)
    mailboxes = state.store.get_meta(META_PROCESS_MAILBOXES) or {}
    mailbox = mailboxes.get(pid)
    commands = list(mailbox["commands"]) if mailbox else []
    mailboxes[pid] = {"commands": [], "ts": state.now()}
    state.store.put_meta(META_PROCESS_MAILBOXES, mailboxes)
    return commands


def send_command(state, command, pid=None):
    """Queue ``command`` for ``pid``, or for every mailbox when ``pid`` is None.

    A list is queued element by element; any other value (Genropy sends a
    ``(name, kwargs)`` tuple) is one command. An explicit pid without a
    mailbox is ignored.
    """
    _check_pid(pid)
    mailboxes = state.store.get_meta(META_PROCESS_MAILBOXES) or {}
    now = state.now()
    for key in list(mailboxes):
        last_poll = mailboxes[key].get("ts")
        if last_poll is None or (now - last_poll).total_seconds() > PROCESS_SELFDESTROY_TIMEOUT:
            del mailboxes[key]
            log.debug("site %r: mailbox of process %r discarded: not polled for more than %d s",
                      state.sitename, key, PROCESS_SELFDESTROY_TIMEOUT)
    if pid is None:
        targets = list(mailboxes)
    elif pid in mailboxes:
        targets = [pid]
    else:
        log.debug("site %r: command for process %r without a mailbox ignored", state.sitename, pid)
        targets = []
    commands = list(command) if isinstance(command, list) else [command]
    for key in targets:
        mailboxes[key]["commands"].extend(commands)
    state.store.put_meta(META_PROCESS_MAILBOXES, mailboxes)
