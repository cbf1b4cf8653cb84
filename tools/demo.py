"""``make demo``: the whole pipeline on real data (``DEMO_FAST=1``: a shortened run)."""

import sys

from launcher.demo import main

if __name__ == "__main__":
    sys.exit(main())
