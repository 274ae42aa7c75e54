import os
import sys

# Paddle pins one thread unless told otherwise; the tests use the machine's two cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
