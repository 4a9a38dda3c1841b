"""Site maintenance mode: a site-wide flag with an optional list of allowed users.

The state is the meta value ``maintenance`` (``{"status": True,
"allowed_users": [...] or None}``, absent when maintenance is off). It is not
part of the dump, so a restored site starts out of maintenance.
"""

from .constants import FORCED_MAINTENANCE_USER, META_MAINTENANCE

__all__ = ["set_maintenance", "is_in_maintenance", "allowed_users"]


def set_maintenance(state, status, allowed_users=None):
    """Turn maintenance off when ``status is False``; any other value turns it on."""
    if status is False:
        state.store.delete_meta(META_MAINTENANCE)
        return
    if allowed_users is not None:
        if isinstance(allowed_users, str) or not isinstance(
            allowed_users, (list, tuple, set, frozenset)
        ):
            raise TypeError(f"invalid allowed_users {allowed_users!r}: expected a list of "
                            "user names or None")
        allowed_users = list(allowed_users)
    state.store.put_meta(META_MAINTENANCE, {"status": True, "allowed_users": allowed_users})


def is_in_maintenance(state, user=None):
    """Return whether ``user`` is locked out by maintenance.

    The result is False when maintenance is off or for the user ``*forced*``.
    It is True for an empty user or when there is no allowed list. Otherwise
    it is True when ``user`` is missing from the allowed list.
    """
    maintenance = state.store.get_meta(META_MAINTENANCE)
    if not maintenance or user == FORCED_MAINTENANCE_USER:
        return False
    allowed = maintenance.get("allowed_users")
    if not user or not allowed:
        return True
    return user not in allowed


def allowed_users(state):
    """Return a copy of the allowed users list, or None."""
    maintenance = state.store.get_meta(META_MAINTENANCE)
    if not maintenance or maintenance.get("allowed_users") is None:
        return None
    return list(maintenance["allowed_users"])
