#!/usr/bin/env python3
"""The test suite, slow tests (real models) included:

    python3 scripts/test.py [pytest arguments]
"""

import sys

from _env import run

sys.exit(run(["-m", "pytest", *sys.argv[1:]]))
