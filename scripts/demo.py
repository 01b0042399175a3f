#!/usr/bin/env python3
"""The main job: a private federated round trip on real LLMs (the `demo` preset).

    python3 scripts/demo.py [extra privsem-run arguments]

Writes its run folder to runs/demo unless `--out` is given.
"""

import sys

from _env import run

args = sys.argv[1:]
if "--out" not in args:
    args = ["--out", "runs/demo", *args]
sys.exit(run(["-m", "privsem", "run", "--preset", "demo", *args]))
