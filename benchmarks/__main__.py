"""`python -m benchmarks` runs every benchmark (today: libproc's)."""

import sys

from benchmarks.bench_libproc import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
