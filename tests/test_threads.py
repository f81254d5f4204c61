"""--threads: the fixed settings, and auto's choices on scripted step times (no real timing)."""

import pytest

from nanogpt import threads
from nanogpt.config import RunConfig
from nanogpt.errors import NanoGPTError


class Machine:
    """A fake clock and thread setter: a unit at ``n`` threads takes ``cost[n]`` seconds."""

    def __init__(self, cost):
        self.cost, self.now, self.count, self.sets = dict(cost), 0.0, None, []

    def set(self, n):
        self.count = n
        self.sets.append(n)

    def clock(self):
        return self.now

    def run(self, tuner, units, monkeypatch):
        """Run ``units`` units; each advances the fake clock and the timer by its cost."""
        used = []
        for _ in range(units):
            with _fake_timer(monkeypatch, self):
                with tuner.unit():
                    used.append(self.count)
        return used


class _fake_timer:
    def __init__(self, monkeypatch, machine):
        self.mp, self.m = monkeypatch, machine

    def __enter__(self):
        m = self.m
        times = iter([m.now, None])

        def perf_counter():
            t = next(times)
            if t is None:  # the unit's end: it took cost[count] seconds
                m.now += m.cost[m.count]
                return m.now
            return t

        self.mp.setattr(threads.time, "perf_counter", perf_counter)

    def __exit__(self, *exc):
        self.mp.undo()


def tuner_for(machine, counts=(2, 1), **kw):
    return threads.ThreadTuner(list(counts), "test", set_threads=machine.set, clock=machine.clock, **kw)


def test_candidates():
    assert threads.candidates(1) == [1]
    assert threads.candidates(2) == [2, 1]
    assert threads.candidates(4) == [4, 3, 2, 1]
    assert threads.candidates(16) == [16, 15, 8, 1]


def test_fixed_settings(monkeypatch):
    sets = []
    t = threads.make_tuner("3", "cpu", {}, default=lambda: 8, set_threads=sets.append)
    assert (t.counts, t.tuning, sets) == ([3], False, [3])  # applied at once
    assert t.describe() == "3 threads (asked for)"
    t = threads.make_tuner("auto", "cpu", {"OMP_NUM_THREADS": "1"}, default=lambda: 1)
    assert not t.tuning and "OMP_NUM_THREADS=1" in t.describe()
    assert threads.make_tuner("auto", "cuda", {}, default=lambda: 8).counts == [8]
    assert threads.make_tuner("auto", "cpu", {}, default=lambda: 1).counts == [1]
    assert threads.make_tuner("auto", "cpu", {}, default=lambda: 4).counts == [4, 3, 2, 1]


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", ""])
def test_bad_settings(bad):
    with pytest.raises(NanoGPTError, match="must be 'auto' or a positive number"):
        threads.make_tuner(bad)
    with pytest.raises(NanoGPTError, match="run.threads"):
        RunConfig(threads=bad)


def test_config_file_number_becomes_text():
    assert RunConfig(threads=2).threads == "2"


def test_fixed_count_is_never_changed(monkeypatch):
    m = Machine({3: 1.0})
    t = tuner_for(m, counts=[3])
    assert m.run(t, 50, monkeypatch) == [3] * 50
    assert m.sets == [3] and t.decisions == []


def test_idle_machine_keeps_all_threads(monkeypatch):
    m = Machine({2: 0.06, 1: 0.11})
    t = tuner_for(m)
    used = m.run(t, 8, monkeypatch)
    assert used == [1, 1, 1, 1, 2, 2, 2, 2]  # the first trial: discard + 3 at 1, then at 2
    assert t.decisions == [{"threads": 2, "ms": {1: 110.0, 2: 60.0}, "why": "first measurement", "changed": True}]
    assert m.run(t, 5, monkeypatch) == [2] * 5


def test_busy_machine_picks_one_thread_and_follows_the_load(monkeypatch):
    m = Machine({2: 0.5, 1: 0.12})  # another process holds a core
    t = tuner_for(m, base_interval=15.0)
    m.run(t, 8, monkeypatch)
    assert t.current == 1 and t.decisions[-1]["changed"]
    assert "auto, first measurement: 120.0 ms per step at 1, 500.0 at 2" in threads.describe_decision(t.decisions[-1])
    # 1 thread until the periodic check 15 s later, which tries 2 threads for one unit only (even
    # its discarded unit takes over four times as long), then measures 1 thread again
    decided_at = 4 * 0.12 + 0.5  # the first trial: 4 units at 1 thread, 1 (hopeless) at 2
    start = m.now
    used = m.run(t, 140, monkeypatch)
    first = used.index(2)
    assert decided_at + 15 - 1e-9 <= start + first * 0.12 <= decided_at + 15 + 0.12 + 1e-9
    assert used[first:first + 2] == [2, 1] and used.count(2) == 1
    assert t.decisions[1]["why"] == "periodic check" and t.decisions[1]["threads"] == 1
    assert len(t.decisions[1]["ms"]) == 2 and not t.decisions[1]["changed"]
    assert t.interval == 30.0  # the choice held: the next check waits twice as long
    # the load leaves: at the next periodic check, 2 threads win again
    m.cost = {2: 0.06, 1: 0.11}
    m.run(t, 30 * 10 + 20, monkeypatch)
    assert t.current == 2 and t.decisions[-1]["changed"]
    assert t.interval == 120.0  # back at the most threads: the slowdown check watches for load, periodic checks are rare


def test_idle_machine_is_checked_rarely(monkeypatch):
    m = Machine({2: 0.06, 1: 0.11})
    t = tuner_for(m, base_interval=15.0, max_interval=120.0)
    used = m.run(t, int(250 / 0.06), monkeypatch)  # ~250 s of work
    assert [d["why"] for d in t.decisions] == ["first measurement", "periodic check", "periodic check"]
    assert used.count(1) == 3 * 4  # three trials of one discarded and three timed units at 1 thread


@pytest.mark.parametrize("one_thread, expected", [(0.095, 2), (0.085, 1)])
def test_only_a_clearly_faster_count_replaces_the_current_one(monkeypatch, one_thread, expected):
    m = Machine({2: 0.1, 1: one_thread})  # 1 thread 5% / 15% faster than 2
    t = tuner_for(m)
    m.run(t, 8, monkeypatch)
    assert t.current == expected and t.decisions[-1]["threads"] == expected
    assert t.decisions[-1]["ms"] == {1: one_thread * 1000, 2: 100.0}


def test_slowdown_starts_a_check_early(monkeypatch):
    m = Machine({2: 0.06, 1: 0.11})
    t = tuner_for(m, base_interval=1000.0)
    m.run(t, 20, monkeypatch)
    assert len(t.decisions) == 1 and t.current == 2
    m.cost = {2: 0.5, 1: 0.12}  # load arrives
    m.run(t, 5 + 8, monkeypatch)  # 5 slow units fill the window, then a trial
    assert t.decisions[-1]["why"] == "the steps got slower" and t.current == 1
    # at the fewest threads, a slowdown starts no trial (fewer cannot help)
    m.cost = {2: 0.9, 1: 0.3}
    m.run(t, 50, monkeypatch)
    assert len(t.decisions) == 2


def test_interval_is_bounded(monkeypatch):
    m = Machine({2: 1.0, 1: 2.0})
    t = tuner_for(m, base_interval=10.0, max_interval=40.0)
    m.run(t, 400, monkeypatch)
    assert t.interval == 40.0 and all(d["threads"] == 2 for d in t.decisions)
    assert len(t.decisions) >= 8  # checks at ~10, 30, 70, 110, ... seconds kept coming


def test_first_trial_gives_up_on_a_hopeless_count(monkeypatch):
    """Without any earlier measurement, a count over twice as slow as one already timed is dropped."""
    m = Machine({2: 0.3, 1: 0.1})
    t = tuner_for(m)
    used = m.run(t, 7, monkeypatch)
    assert used == [1, 1, 1, 1, 2, 2, 1]  # 2 threads: the discarded unit and one timed, not three
    assert t.decisions[0]["threads"] == 1 and t.decisions[0]["ms"] == {1: 100.0, 2: 300.0}


def test_a_hopeless_discarded_unit_ends_that_count_s_trial(monkeypatch):
    """On a badly overloaded machine even the discarded unit shows it: one slow unit, not two."""
    m = Machine({2: 5.0, 1: 0.1})
    t = tuner_for(m)
    used = m.run(t, 6, monkeypatch)
    assert used == [1, 1, 1, 1, 2, 1]
    assert t.decisions[0] == {"threads": 1, "ms": {1: 100.0, 2: 5000.0}, "why": "first measurement", "changed": True}
