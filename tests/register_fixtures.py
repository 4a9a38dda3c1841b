"""Fixtures shared by the site register unit tests (loaded as a pytest plugin).

``store`` runs a test on each store of ``STORE_PARAMS``: the memory store, a
store that copies every value in and out as a networked backend does, and
Redis. ``clock`` is a controllable clock; ``register`` a SiteRegister named
``demo`` on that store and clock. A test module may define its own fixture
of the same name to replace one of these.
"""

from datetime import datetime, timedelta

import pytest

from gnr_daemon.registers import SiteRegister

from redis_fixtures import STORE_PARAMS, make_store


class Clock:
    """Controllable replacement for datetime.now."""

    def __init__(self):
        self.now = datetime(2024, 5, 1, 12, 0, 0)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=STORE_PARAMS)
def store(request):
    return make_store(request)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def register(store, clock):
    return SiteRegister("demo", store.site_store("demo"), clock=clock)
