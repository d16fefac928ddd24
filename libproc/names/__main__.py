"""`python -m libproc.names`: see libproc.names.cli."""

import sys

from libproc.names.cli import main

if __name__ == "__main__":
    sys.exit(main())
