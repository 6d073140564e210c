"""voipclient: multi-channel push-to-talk voice with end-to-end encryption over a blind relay."""

import os

# numpy's OpenBLAS starts a thread per core when numpy is imported and splits every dot product
# of more than 10,000 elements between them. Nothing here gains from that, and beside a game on
# every core it is ruinous: the threads wait for each other at every call (a correlation of 2,001
# lags took 8x as long with two threads on an idle machine; beside a CPU hog, tests timed out in
# it). One thread, set before numpy loads (every entry point imports this package first); a user
# who set it keeps theirs.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
