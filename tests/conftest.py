import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from adkit.runtime import set_cpu_threads  # noqa: E402

# Paddle pins one thread unless told otherwise; the tests use the machine's two cores.
set_cpu_threads(int(os.environ.get("TEST_CPU_THREADS", "2")))
