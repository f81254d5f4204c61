"""How many CPU threads to compute with: a fixed count, or one that follows the machine's load.

When another process holds one of the cores, torch's OpenMP threads wait for the slowest of
them at every parallel region, so two threads on a busy 2-core machine can be several times
slower than one. ``auto`` therefore times the work itself: it runs a few steps at each
candidate count (all cores, one fewer, half, one), keeps the fastest (a switch needs a clear
gain), and checks again periodically and as soon as the steps get markedly slower. A fixed
count (``--threads N``, or ``OMP_NUM_THREADS`` in the environment) is never changed. The thread
count changes results at the 1e-5 level, so bit-exact reproduction needs a fixed count.

No torch at import: the count is applied through a setter (``torch.set_num_threads`` by default).
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from nanogpt.config import THREADS_HELP, check_threads  # noqa: F401  (THREADS_HELP: for the commands' flags)

def candidates(maximum: int) -> list[int]:
    """The counts ``auto`` tries, most first: all, one fewer (another process on one core), half, one."""
    return sorted({maximum, max(1, maximum - 1), max(1, maximum // 2), 1}, reverse=True)


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


class ThreadTuner:
    """Chooses the thread count of each unit of repeated work (a training step, a batch, a token).

    Wrap each unit in ``with tuner.unit():``. With one candidate it only sets the count once.
    With several it runs a trial: ``discard`` unit(s) then ``trial_units`` timed units at each
    candidate (the first after a change pays for waking the threads), keeps the fastest median,
    and schedules the next trial ``interval`` seconds later: below the most threads the interval
    doubles (up to ``max_interval``) while the choice holds and starts again from ``base_interval``
    when it changes; at the most threads it is ``max_interval``. A trial also starts early when
    the median of the last units is ``slowdown`` times the median the last decision saw (unless
    the count is already the fewest: fewer cannot help), and a count whose timed unit takes
    ``give_up`` times the best median known (the current count's just before the trial, the
    other counts' in it), or whose discarded unit takes twice that, is not timed further. Another count replaces the current one only when its
    median is ``margin`` (10%) lower: on an idle machine a noisy trial can show one thread a few
    percent ahead of two, while a busy core makes the difference 1.5x and more.
    """

    def __init__(self, counts: list[int], reason: str, set_threads: Callable[[int], None] = _set_torch_threads,
                 clock: Callable[[], float] = time.monotonic, base_interval: float = 15.0,
                 max_interval: float = 120.0, trial_units: int = 3, discard: int = 1, slowdown: float = 1.5,
                 give_up: float = 2.0, margin: float = 0.1) -> None:
        self.counts, self.reason = counts, reason
        self.current = counts[0]
        self._set, self._clock = set_threads, clock
        self.base_interval, self.max_interval, self.interval = base_interval, max_interval, base_interval
        self.trial_units, self.discard, self.slowdown, self.give_up = trial_units, discard, slowdown, give_up
        self.margin = margin
        self._plan: list[tuple[int, bool]] = []  # (count, timed) for the units of a trial in progress
        self._trial: dict[int, list[float]] = {}
        self._recent: deque[float] = deque(maxlen=5)
        self._baseline: float | None = None  # the current count's median at the last decision
        self._reference: float | None = None  # ... and just before the trial in progress
        self._next_check = 0.0  # the first unit starts the first trial
        self._applied: int | None = None
        self._why = ""
        self.decisions: list[dict] = []  # every decision: {"threads", "ms": {count: median ms}, "why"}
        self.on_decision: Callable[[dict], None] | None = None

    @property
    def tuning(self) -> bool:
        return len(self.counts) > 1

    def describe(self) -> str:
        """One line for the device description: the count and why."""
        if not self.tuning:
            return f"{self.current} thread{'s' if self.current != 1 else ''} ({self.reason})"
        return f"threads auto ({self.reason}; trying {'/'.join(map(str, self.counts))})"

    def apply(self, count: int | None = None) -> "ThreadTuner":
        """Set ``count`` (default: the current choice) unless it is already set."""
        count = self.current if count is None else count
        if count != self._applied:
            self._set(count)
            self._applied = count
        return self

    @contextmanager
    def unit(self) -> Iterator[None]:
        """Run one unit of work at the chosen count and time it."""
        count, timed = self._next_unit()
        self.apply(count)
        t0 = time.perf_counter()
        yield
        self._record(count, timed, time.perf_counter() - t0)

    def _next_unit(self) -> tuple[int, bool]:
        if not self.tuning:
            return self.current, False
        if not self._plan:
            why = self._why_check()
            if why:
                self._start_trial(why)
        if self._plan:
            return self._plan.pop(0)
        return self.current, True

    def _why_check(self) -> str | None:
        if self._clock() >= self._next_check:
            return "periodic check" if self.decisions else "first measurement"
        recent = self._recent
        if (self._baseline is not None and self.current != self.counts[-1] and len(recent) == recent.maxlen
                and statistics.median(recent) > self.slowdown * self._baseline):
            return "the steps got slower"
        return None

    def _start_trial(self, why: str) -> None:
        self._why = why
        self._reference = statistics.median(self._recent) if self._recent else self._baseline
        # the current count last, so that the work goes on at it after the trial without a switch
        order = [c for c in self.counts if c != self.current] + [self.current]
        self._plan = [(c, i >= self.discard) for c in order for i in range(self.discard + self.trial_units)]
        self._trial = {c: [] for c in self.counts}

    def _record(self, count: int, timed: bool, seconds: float) -> None:
        if not self.tuning:
            return
        if self._trial:
            # a discarded unit (waking the threads) counts only when it is hopeless even so
            limit = self.give_up * self._best_so_far(count) * (1 if timed else 2)
            if timed or seconds > limit:
                self._trial[count].append(seconds)
            if seconds > limit:
                self._plan = [unit for unit in self._plan if unit[0] != count]  # clearly slower: no more of it
            if not self._plan:
                self._decide()
        elif count == self.current and timed:
            self._recent.append(seconds)

    def _best_so_far(self, count: int) -> float:
        """The fastest median known besides ``count``'s: the current count's before the trial, the other counts' in it."""
        known = [statistics.median(ts) for c, ts in self._trial.items() if c != count and ts]
        if self._reference and count != self.current:
            known.append(self._reference)
        return min(known, default=float("inf"))

    def _decide(self) -> None:
        medians = {c: statistics.median(ts) for c, ts in self._trial.items() if ts}
        best = min(medians, key=lambda c: (medians[c], -c))
        if self.current in medians and medians[best] > (1 - self.margin) * medians[self.current]:
            best = self.current  # not clearly faster: keep the count (no switch on noise)
        changed = best != self.current or not self.decisions
        if best == self.counts[0]:
            # at the most threads, load that arrives shows as slower steps (the early check above), so a
            # periodic check is only insurance: rare, since each costs slower steps at the other counts
            self.interval = self.max_interval
        else:  # fewer threads: look for the load leaving, soon after a change, then less and less often
            self.interval = self.base_interval if changed else min(self.max_interval, 2 * self.interval)
        self.current, self._baseline = best, medians[best]
        self._trial, self._next_check = {}, self._clock() + self.interval
        self._recent.clear()
        decision = {"threads": best, "ms": {c: round(m * 1000, 2) for c, m in medians.items()}, "why": self._why,
                    "changed": changed}
        self.decisions.append(decision)
        if self.on_decision is not None:
            self.on_decision(decision)


def describe_decision(decision: dict) -> str:
    """'threads: 1 (auto, periodic check: 106.1 ms per step at 1, 250.6 at 2)'."""
    times = ", ".join(f"{ms:.1f} at {c}" if i else f"{ms:.1f} ms per step at {c}"
                      for i, (c, ms) in enumerate(sorted(decision["ms"].items(), key=lambda kv: kv[1])))
    return f"threads: {decision['threads']} (auto, {decision['why']}: {times})"


def say_changes(say: Callable[[str], None]) -> Callable[[dict], None]:
    """An ``on_decision`` for the commands: ``say`` the decisions that set or change the count."""

    def on_decision(decision: dict) -> None:
        if decision["changed"]:
            say(describe_decision(decision))

    return on_decision


def make_tuner(setting: str, device_type: str = "cpu", environ: dict[str, str] | None = None,
               default: Callable[[], int] = _torch_threads, **kwargs) -> ThreadTuner:
    """The tuner for a ``--threads`` setting: fixed for a number, for OMP_NUM_THREADS, off the CPU or on one core."""
    check_threads(setting)
    environ = os.environ if environ is None else environ
    if setting != "auto":
        return ThreadTuner([int(setting)], "asked for", **kwargs).apply()
    maximum = default()
    if device_type != "cpu":
        return ThreadTuner([maximum], f"torch's default; the model runs on {device_type}", **kwargs)
    if environ.get("OMP_NUM_THREADS"):
        return ThreadTuner([maximum], f"OMP_NUM_THREADS={environ['OMP_NUM_THREADS']} in the environment", **kwargs)
    if maximum == 1:
        return ThreadTuner([1], "one core", **kwargs)
    return ThreadTuner(candidates(maximum), f"{maximum} cores", **kwargs)
