"""florence-watch: watch folders, describe images with Florence-2, index and tag them."""

import os

__version__ = "0.1.0"

# numpy's OpenBLAS, threaded, deadlocks when a process forks (exiftool starts) while another thread is
# inside a BLAS call: its fork handler stops the BLAS threads the call waits for (seen here: a query
# embedded by model/query_embed.py spinning forever). numpy's products here are small or memory-bound
# (a query's few tokens; 100,000 vectors times one), so one thread costs nothing. torch has its own.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
