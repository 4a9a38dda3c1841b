"""Two daemons on one Redis, driven at once by 50 workers that alternate between them.

Both daemons run ``python -m gnr_daemon start`` with the same store URL.
Every worker creates a connection and pages, pings, pushes datachanges onto
another worker's page and takes a shared lock, switching daemon on every
call. At the end both daemons must show the same state, every pushed
datachange must have been delivered exactly once, and the lock must never
have had two holders.
"""

import threading
import time
from collections import Counter

import pytest

from gnr_daemon import DaemonClient

from conftest import TEST_KEY, clean_environment

pytestmark = pytest.mark.timeout(180)

WORKERS = 50
ROUNDS = 6
USERS = 10


def start_daemon(start_daemon_process, tmp_path, name, store_url):
    env = clean_environment(tmp_path, GNR_DAEMON_HMAC_KEY=TEST_KEY)
    return start_daemon_process("-H", "127.0.0.1", "-P", "0", "--store", store_url,
                                "--state-dir", str(tmp_path / name), env=env)


def delivered_values(envelope):
    """Return the values of the ``sc_<n>`` nodes of a ping envelope's dataChanges."""
    if envelope is False:
        raise AssertionError("the page is unknown to the daemon")
    changes = envelope.getItem("dataChanges")
    return [] if changes is None else list(changes.values())


class Run:
    """Shared bookkeeping of the workers, guarded by one lock."""

    def __init__(self, sites):
        self.sites = sites
        self.lock = threading.Lock()
        self.pushed = []
        self.delivered = []
        self.errors = []
        self.holders = set()
        self.double_holds = []
        self.grants = 0

    def site(self, number):
        return self.sites[number % len(self.sites)]

    def collect(self, number, page_id):
        values = delivered_values(self.site(number).handle_ping(page_id=page_id))
        with self.lock:
            self.delivered.extend(values)

    def take_lock(self, number, worker):
        pages = self.site(number)
        reason = f"host:worker-{worker}"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if pages.lock_item("shared", reason=reason, register_name="page"):
                with self.lock:
                    if self.holders:
                        self.double_holds.append((reason, set(self.holders)))
                    self.holders.add(reason)
                    self.grants += 1
                time.sleep(0.002)
                with self.lock:
                    self.holders.discard(reason)
                pages.unlock_item("shared", reason=reason, register_name="page")
                return
            time.sleep(0.005)

    def worker(self, worker):
        try:
            connection_id = f"c{worker}"
            user = f"user{worker % USERS}"
            page_id = f"p{worker}"
            target = f"p{(worker + 1) % WORKERS}"
            self.site(worker).new_connection(connection_id, user=user)
            self.site(worker + 1).new_page(page_id, connection_id=connection_id, user=user)
            self.site(worker).new_page(f"{page_id}b", connection_id=connection_id, user=user)
            for round_number in range(ROUNDS):
                call = worker + round_number
                value = (worker, round_number)
                # The target page may not exist yet; a change for an unknown
                # page is dropped, so only pushes onto existing pages count.
                if self.site(call).page(target) is not None:
                    self.site(call + 1).set_datachange(target, f"push.{worker}.{round_number}",
                                                       value=value, register_name="page")
                    with self.lock:
                        self.pushed.append(value)
                self.collect(call, page_id)
                self.take_lock(call, worker)
                self.site(call + 1).refresh(page_id, last_user_ts=None)
        except Exception as error:  # reported by the test
            with self.lock:
                self.errors.append((worker, repr(error)))


def snapshot(site):
    def by_id(items):
        return sorted(items, key=lambda item: item["register_item_id"])

    return {
        "counters": site.counters(),
        "users": by_id(site.users()),
        "connections": by_id(site.connections()),
        "pages": by_id(site.pages()),
        "user_connections": {user: site.user_connection_keys(user)
                             for user in (f"user{n}" for n in range(USERS))},
        "lock": site.lock_item("probe", reason="probe", register_name="page"),
    }


def test_two_daemons_one_state(redis_server_factory, start_daemon_process, tmp_path):
    redis_server = redis_server_factory()
    url = redis_server.url(prefix="two:")
    daemons = [start_daemon(start_daemon_process, tmp_path, name, url) for name in ("a", "b")]
    clients = [DaemonClient(host="127.0.0.1", port=daemon.port, hmac_key=TEST_KEY, timeout=30,
                            pool_size=WORKERS, use_environment=False, use_config_file=False)
               for daemon in daemons]
    try:
        for client in clients:
            client.addSiteRegister("demo")
        run = Run([client.site("demo") for client in clients])
        threads = [threading.Thread(target=run.worker, args=(number,))
                   for number in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
        assert run.errors == []

        # Drain: every page is pinged until it has nothing left, on both daemons.
        for number in range(WORKERS):
            run.collect(number, f"p{number}")
            run.collect(number + 1, f"p{number}")

        counts = Counter(run.delivered)
        assert len(run.pushed) > WORKERS
        assert sorted(counts) == sorted(run.pushed)
        assert [value for value, count in counts.items() if count > 1] == []
        assert run.double_holds == []
        assert run.grants >= WORKERS

        first, second = (snapshot(client.site("demo")) for client in clients)
        second["lock"] = first["lock"] = None
        assert first == second
        assert first["counters"] == {"users": USERS, "connections": WORKERS,
                                     "pages": 2 * WORKERS}
        for client in clients:
            health = client.status()["store_health"]
            assert health["ok"] is True
            assert health["gave_up"] == 0
    finally:
        for client in clients:
            client.close()
