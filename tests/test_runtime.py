"""adkit.core.runtime: freed memory is reused without page faults (each case in a fresh process, since
the malloc settings last for the whole process)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# malloc, write and free a 64 MB block twice, as Paddle's CPU allocator does with a tensor on
# every run (numpy would ask for huge pages, which hides the faults); print the page faults of
# the second round.
SCRIPT = """
import ctypes, resource, sys
sys.path.insert(0, {root!r})
from adkit.core.runtime import keep_freed_memory
if {keep}:
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def touch_and_free(size=64 * 1024 * 1024):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
touch_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_and_free()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def second_round_faults(keep):
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(root=ROOT, keep=keep)],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_blocks_are_reused_without_page_faults():
    pages = 64 * 1024 * 1024 // 4096
    # glibc's default returns a 64 MB block to the OS on free: every page faults in again
    assert second_round_faults(keep=False) > pages // 2
    assert second_round_faults(keep=True) < pages // 20


def test_a_log_line_on_a_terminal_does_not_stick_to_the_progress_bar():
    """tqdm draws its bar without a newline; a warning written straight after it would continue
    the bar's line. Through BarSafeHandler the bar is cleared first and drawn again after."""
    import io
    import logging

    from tqdm import tqdm

    from adkit.core.runtime import BarSafeHandler

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for handler_class, glued in ((logging.StreamHandler, True), (BarSafeHandler, False)):
        terminal = Terminal()
        logger = logging.getLogger(f"bar_test_{handler_class.__name__}")
        logger.propagate = False
        logger.addHandler(handler_class(terminal))
        bar = tqdm(total=10, file=terminal, desc="toy train", mininterval=0)
        bar.update(3)
        logger.warning("stopping after this step")
        bar.close()
        before = terminal.getvalue().split("stopping after this step")[0]
        last_line = before.split("\n")[-1].split("\r")[-1]
        assert (last_line.strip() != "") is glued, repr(before[-80:])


def test_the_log_handler_follows_stderr_when_it_is_swapped_and_closed(monkeypatch):
    """Logging set up once writes to the stderr of the moment: a test harness (or a caller) that
    replaced stderr and closed the old stream must not make every later log line raise."""
    import io
    import logging

    from adkit.core.runtime import BarSafeHandler

    first, second = io.StringIO(), io.StringIO()
    logger = logging.getLogger("stderr_follow_test")
    logger.propagate = False
    handler = BarSafeHandler()
    logger.addHandler(handler)
    try:
        monkeypatch.setattr(sys, "stderr", first)
        logger.warning("one")
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logger.warning("two")
    finally:
        logger.removeHandler(handler)
    assert second.getvalue() == "two\n"
