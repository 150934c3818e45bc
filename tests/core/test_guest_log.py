"""pyvmm.guest_log: the one rate limiter for guest-error lines (per kind, overall, per VM lifetime)."""

import logging

import pytest

from pyvmm import guest_log


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    c = Clock()
    guest_log.reset(c)
    return c


def warnings(caplog, name=None):
    return [r for r in caplog.records if r.levelno == logging.WARNING and (name is None or r.name == name)]


def test_a_kind_gets_its_burst_then_one_line_per_interval(clock, caplog):
    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("t.a")
    for i in range(100):
        guest_log.guest_error(logger, "bad thing %d", i)
    loud = warnings(caplog)
    assert [r.getMessage() for r in loud[:4]] == [f"bad thing {i}" for i in range(4)]
    assert len(loud) == 5 and "rate-limited from now on" in loud[4].getMessage()
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 95  # -vv still shows each
    caplog.clear()
    clock.now += guest_log.GuestErrorLog.interval
    guest_log.guest_error(logger, "bad thing %d", 100)
    assert [r.getMessage() for r in warnings(caplog)] == ["bad thing 100 (95 more like this since the last report)"]
    guest_log.guest_error(logger, "bad thing %d", 101)
    assert len(warnings(caplog)) == 1


def test_kinds_are_code_sites_not_values(clock, caplog):
    a, b = logging.getLogger("t.a"), logging.getLogger("t.b")
    for i in range(20):
        guest_log.guest_error(a, "x %d", i)
        guest_log.guest_error(a, "y %d", i)
        guest_log.guest_error(b, "x %d", i)
    assert len(warnings(caplog)) == 15  # three kinds, five lines each


def test_all_kinds_together_are_capped(clock, caplog):
    logger = logging.getLogger("t.many")
    for kind in range(100):
        for _ in range(3):
            guest_log.guest_error(logger, f"kind {kind}")
    assert len(warnings(caplog)) == guest_log.GuestErrorLog.total_burst
    clock.now += guest_log.GuestErrorLog.total_interval
    guest_log.guest_error(logger, "kind 99")
    assert len(warnings(caplog)) == guest_log.GuestErrorLog.total_burst + 1


def test_summary_counts_the_whole_lifetime(clock, caplog):
    logger = logging.getLogger("t.sum")
    assert guest_log.GUEST_ERRORS.summary() is None
    for _ in range(30):
        guest_log.guest_error(logger, "ring broken on %s", "q0")
    guest_log.guest_error(logger, "other")
    text = guest_log.GUEST_ERRORS.summary()
    assert text.startswith("31 guest errors in this VM's lifetime, 25 of them logged at DEBUG only")
    assert "30 x t.sum: 'ring broken on %s'" in text and "1 x t.sum: 'other'" in text
    caplog.clear()
    guest_log.log_summary()
    assert len(warnings(caplog)) == 1


def test_summary_without_held_back_lines_is_info(clock, caplog):
    caplog.set_level(logging.INFO)
    guest_log.guest_error(logging.getLogger("t.one"), "once")
    caplog.clear()
    guest_log.log_summary()
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_reset_starts_a_new_lifetime(clock, caplog):
    logger = logging.getLogger("t.r")
    for _ in range(10):
        guest_log.guest_error(logger, "again")
    guest_log.reset(clock)
    assert guest_log.GUEST_ERRORS.reported == 0
    caplog.clear()
    guest_log.guest_error(logger, "again")
    assert len(warnings(caplog)) == 1


def test_a_bare_percent_in_a_message_without_args_is_kept(clock, caplog):
    logger = logging.getLogger("t.pct")
    for _ in range(6):
        guest_log.guest_error(logger, "volume 100% refused")
    clock.now += guest_log.GuestErrorLog.interval
    guest_log.guest_error(logger, "volume 100% refused")
    messages = [r.getMessage() for r in warnings(caplog)]
    assert messages[4] == "volume 100% refused (reports like this are rate-limited from now on; -vv shows all)"
    assert messages[5] == "volume 100% refused (1 more like this since the last report)"
