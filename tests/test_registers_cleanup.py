"""Site register unit tests: cleanup configuration and eviction of stale items.

Every test runs three times: on the memory store, on a store that copies
every value in and out as a networked backend does, and on a Redis store.
"""

import logging
from datetime import timedelta

import pytest

from gnr_daemon.dispatch import dispatch
from gnr_daemon.errors import ConfigurationError
from gnr_daemon.registers.constants import META_CLEANUP_EVICTIONS


CONFIG = {"interval": 120, "page_max_age": 600, "guest_connection_max_age": 40,
          "connection_max_age": 7200}




def set_idle(register, clock, register_name, item_id, seconds):
    """Set the item's last refresh to ``seconds`` before now."""
    dispatch(register, "refresh", (item_id,),
             {"register_name": register_name,
              "refresh_ts": clock.now - timedelta(seconds=seconds)})


def build_site(register):
    register.setConfiguration(cleanup=dict(CONFIG))
    register.new_connection("cb", user="alice")
    register.new_page("pa", connection_id="cb", user="alice")
    register.new_page("pb", connection_id="cb", user="alice")
    register.new_connection("cg", user="guest_c9")
    register.new_page("pg", connection_id="cg", user="guest_c9")
    register.new_connection("ca", user="alice")
    register.new_connection("cd", user="bob")


def age_site(register, clock):
    set_idle(register, clock, "connection", "cb", 0)
    set_idle(register, clock, "page", "pa", 700)
    set_idle(register, clock, "page", "pb", 10)
    set_idle(register, clock, "connection", "cg", 10)
    set_idle(register, clock, "page", "pg", 60)
    set_idle(register, clock, "connection", "ca", 8000)
    # One day and ten seconds: seconds-only arithmetic would read 10 s.
    set_idle(register, clock, "connection", "cd", 86410)


# -- on-event cleanup


def test_claim_cleanup_gate(register):
    assert register.claim_cleanup(14400) is True
    assert register.claim_cleanup(14400) is False


def test_claim_cleanup_after_gap(register, clock):
    register.claim_cleanup(60)
    clock.advance(61)
    assert register.claim_cleanup(60) is True


def test_claim_cleanup_bad_gap(register):
    with pytest.raises(ValueError, match="invalid min_gap_seconds 'soon'"):
        register.claim_cleanup("soon")


def test_expire_pages(register, clock):
    build_site(register)
    age_site(register, clock)
    assert register.expire_pages("cb") == ["pa"]
    assert register.expire_pages("cg") == ["pg"]
    assert register.page("pb") is not None


def test_expire_connection(register, clock):
    build_site(register)
    age_site(register, clock)
    assert register.expire_connection("ca") is True
    assert register.user("alice") is not None
    assert register.expire_connection("cb") is False
    assert register.expire_connection("cg") is False
    assert register.expire_connection("cd") is True
    assert register.user("bob") is None
    assert register.expire_connection("nope") is False


def test_never_refreshed_uses_start(register, clock):
    register.setConfiguration(cleanup=dict(CONFIG))
    register.new_connection("c1", user="alice")
    clock.advance(7201)
    assert register.expire_connection("c1") is True


def test_page_idle_days(register, clock):
    build_site(register)
    set_idle(register, clock, "page", "pb", 86400 + 10)
    assert register.expire_pages("cb") == ["pb"]


# -- pull-all cleanup


def test_cleanup_before_interval(register, clock):
    build_site(register)
    age_site(register, clock)
    assert register.cleanup() == []
    assert register.page("pa") is not None


def test_cleanup_after_interval(register, clock):
    build_site(register)
    clock.advance(121)
    age_site(register, clock)
    assert sorted(register.cleanup()) == ["ca", "cd"]
    assert register.page("pa") is None
    assert register.page("pg") is None
    assert register.page("pb") is not None
    assert register.connection("cg") is not None
    assert register.user("alice") is not None
    assert register.user("bob") is None


def test_cleanup_gated_after_run(register, clock):
    build_site(register)
    clock.advance(121)
    register.cleanup()
    clock.advance(60)
    set_idle(register, clock, "page", "pb", 700)
    assert register.cleanup() == []
    assert register.page("pb") is not None


def test_cleanup_counts_evictions(register, clock):
    build_site(register)
    clock.advance(121)
    age_site(register, clock)
    register.cleanup()
    counts = register._state.store.get_meta(META_CLEANUP_EVICTIONS)
    assert counts == {"page": 2, "connection": 2, "user": 1}


def test_cleanup_logs_summary(register, clock, caplog):
    build_site(register)
    clock.advance(121)
    age_site(register, clock)
    with caplog.at_level(logging.DEBUG, logger="gnr_daemon.registers"):
        register.cleanup()
    info = [record for record in caplog.records if record.levelno == logging.INFO]
    assert len(info) == 1
    assert "evicted 2 page(s), 2 connection(s), 1 user(s)" in info[0].getMessage()
    debug = [record.getMessage() for record in caplog.records if record.levelno == logging.DEBUG]
    assert any("evicted page 'pa'" in message for message in debug)


def test_cleanup_quiet_when_nothing(register, clock, caplog):
    clock.advance(121)
    with caplog.at_level(logging.INFO, logger="gnr_daemon.registers"):
        assert register.cleanup() == []
    assert caplog.records == []


# -- configuration


def test_config_defaults(register, clock):
    register.new_connection("c1", user="alice")
    register.new_page("p1", connection_id="c1", user="alice")
    clock.advance(599)
    assert register.expire_pages("c1") == []
    clock.advance(2)
    assert register.expire_pages("c1") == ["p1"]


def test_config_string_values_cast(register, clock):
    register.setConfiguration(cleanup={"page_max_age": "30", "interval": ""})
    register.new_page("p1", connection_id="c1", user="alice")
    clock.advance(31)
    assert register.expire_pages("c1") == ["p1"]


def test_config_zero_honoured(register, clock):
    register.setConfiguration(cleanup={"interval": 0})
    register.new_connection("c1", user="alice")
    clock.advance(7201)
    assert register.cleanup() == ["c1"]


def test_config_non_integer(register, clock):
    register.setConfiguration(cleanup={"page_max_age": 30})
    with pytest.raises(ConfigurationError, match=r"page_max_age='ten'.*whole number"):
        register.setConfiguration(cleanup={"page_max_age": "ten"})
    register.new_page("p1", connection_id="c1", user="alice")
    clock.advance(31)
    assert register.expire_pages("c1") == ["p1"]


def test_config_negative(register):
    with pytest.raises(ConfigurationError, match="cannot be negative"):
        register.setConfiguration(cleanup={"interval": -1})


def test_config_not_dict(register):
    with pytest.raises(ConfigurationError, match="expected a dict"):
        register.setConfiguration(cleanup="page_max_age=30")


def test_config_unknown_key_warns(register, caplog):
    with caplog.at_level(logging.WARNING):
        register.setConfiguration(cleanup={"page_maxage": 30, "threshold": 5})
    assert "'page_maxage'" in caplog.text
    assert "threshold" not in caplog.text
