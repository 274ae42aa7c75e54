"""Progress and log lines: a tqdm bar on a terminal, plain log lines elsewhere; the "adkit"
logger every module writes to."""
import logging
import sys

log = logging.getLogger("adkit")


def progress(iterable=None, total=None, initial=0, desc=""):
    """A tqdm bar on a terminal; elsewhere (logs, pipes, CI) plain log lines every
    PLAIN_PROGRESS_SECONDS instead of carriage-return bars."""
    if not sys.stderr.isatty():
        return PlainProgress(iterable, total, initial, desc)
    from tqdm import tqdm

    return tqdm(iterable, total=total, initial=initial, desc=desc, file=sys.stderr,
                mininterval=1.0, dynamic_ncols=True, leave=False)


PLAIN_PROGRESS_SECONDS = 30.0
PLAIN_FIRST_SECONDS = 5.0  # a phase says what it is doing once it has run this long


class PlainProgress:
    """The part of tqdm's interface the code uses, as occasional log lines."""

    def __init__(self, iterable, total, initial, desc):
        import time

        self.iterable, self.total, self.n, self.desc = iterable, total, initial, desc
        self.postfix = ""
        self._clock = time.monotonic
        self._start, self._start_n = self._clock(), initial
        # the first line comes after PLAIN_FIRST_SECONDS, then one every PLAIN_PROGRESS_SECONDS:
        # a 40 s phase (EfficientAD's calibration) is not silent, a 2 s one stays quiet
        self._last = self._clock() - PLAIN_PROGRESS_SECONDS + min(PLAIN_FIRST_SECONDS, PLAIN_PROGRESS_SECONDS)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n=1):
        self.n += n
        if self._clock() - self._last >= PLAIN_PROGRESS_SECONDS:
            self._last = self._clock()
            total = f"/{self.total}" if self.total else ""
            log.info("%s %d%s%s%s", self.desc, self.n, total, self._time_left(),
                     f" ({self.postfix})" if self.postfix else "")

    def _time_left(self):
        """", about 3 min left" from the rate so far, when the total is known."""
        done = self.n - self._start_n
        if not self.total or done <= 0:
            return ""
        seconds = (self.total - self.n) * (self._clock() - self._start) / done
        return f", about {seconds:.0f} s left" if seconds < 120 else f", about {seconds / 60:.0f} min left"

    def set_postfix(self, refresh=True, **values):
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self):
        pass
