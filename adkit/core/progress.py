"""Progress and log lines: a tqdm bar on a terminal, plain log lines elsewhere; the "adkit"
logger every module writes to."""
import logging
import sys

log = logging.getLogger("adkit")


def progress(iterable=None, total=None, initial=0, desc="", unit=""):
    """A tqdm bar on a terminal; elsewhere (logs, pipes, CI) plain log lines every
    PLAIN_PROGRESS_SECONDS instead of carriage-return bars. ``desc`` says what the phase does
    in a user's words ("choosing the memory bank"), ``unit`` what it counts ("patches"); both
    show the time left when the total is known."""
    if not sys.stderr.isatty():
        return PlainProgress(iterable, total, initial, desc, unit)
    from tqdm import tqdm

    return tqdm(iterable, total=total, initial=initial, desc=desc, file=sys.stderr,
                mininterval=1.0, dynamic_ncols=True, leave=False, unit=f" {unit}" if unit else "it")


PLAIN_PROGRESS_SECONDS = 30.0
PLAIN_FIRST_SECONDS = 5.0  # a phase says what it is doing once it has run this long


RATE_WINDOW_SECONDS = 10.0  # the time left comes from the rate over about the last this long


class PlainProgress:
    """The part of tqdm's interface the code uses, as occasional log lines:
    "choosing the memory bank: 2500/5529 patches, about 40 s left"."""

    def __init__(self, iterable, total, initial, desc, unit=""):
        import collections
        import time

        self.iterable, self.total, self.n, self.desc, self.unit = iterable, total, initial, desc, unit
        self.postfix = ""
        self._clock = time.monotonic
        self._samples = collections.deque([(self._clock(), initial)])  # (time, n), ~1 s apart
        # the first line comes after PLAIN_FIRST_SECONDS, then one every PLAIN_PROGRESS_SECONDS:
        # a 40 s phase (EfficientAD's calibration) is not silent, a 2 s one stays quiet
        self._last = self._clock() - PLAIN_PROGRESS_SECONDS + min(PLAIN_FIRST_SECONDS, PLAIN_PROGRESS_SECONDS)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n=1):
        self.n += n
        now = self._clock()
        self._remember(now)
        if now - self._last >= PLAIN_PROGRESS_SECONDS:
            self._last = now
            total = f"/{self.total}" if self.total else ""
            unit = f" {self.unit}" if self.unit else ""
            log.info("%s: %d%s%s%s%s", self.desc, self.n, total, unit, self._time_left(now),
                     f" ({self.postfix})" if self.postfix else "")

    def _remember(self, now):
        """Keeps (time, n) about every second, back to the newest one RATE_WINDOW_SECONDS old."""
        if now - self._samples[-1][0] >= 1.0:
            self._samples.append((now, self.n))
        while len(self._samples) > 1 and now - self._samples[1][0] >= RATE_WINDOW_SECONDS:
            self._samples.popleft()

    def _time_left(self, now):
        """", about 3 min left" at the rate of the last RATE_WINDOW_SECONDS: a phase that
        speeds up or slows down (a coreset's first choices are its slowest) is judged by how
        it goes now, not by its start."""
        since, done_before = self._samples[0]
        done = self.n - done_before
        if not self.total or done <= 0:
            return ""
        seconds = (self.total - self.n) * (now - since) / done
        return f", about {seconds:.0f} s left" if seconds < 120 else f", about {seconds / 60:.0f} min left"

    def set_postfix(self, refresh=True, **values):
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self):
        pass


LONG_PHASE_SECONDS = 30.0  # a phase expected to take longer says how long when it starts


def duration_text(seconds):
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class RateProbe:
    """Seconds per item of a long phase, from its first items: ``update(n)`` after each batch
    returns the rate once, when ``measure`` items past the first ``skip`` are done (the first
    items pay for building kernels and are not counted), and None otherwise."""

    def __init__(self, skip, measure):
        import time

        self._clock = time.perf_counter
        self.skip, self.measure = skip, measure
        self.done, self._start, self._reported = 0, None, False

    def update(self, n=1):
        self.done += n
        if self._reported or self.done < self.skip:
            return None
        if self._start is None:
            self._start, self._start_done = self._clock(), self.done
            return None
        counted = self.done - self._start_done
        if counted < self.measure:
            return None
        self._reported = True
        return (self._clock() - self._start) / counted
