#!/usr/bin/env python3
"""The main job: a private federated round trip on real LLMs (the `demo` preset).

    python3 scripts/demo.py [extra privsem-run arguments]

Writes its run folder to runs/demo unless `--out` is given.
"""

import sys

from _env import run

# Without --out the run goes to runs/demo, or runs/demo-2, ... when that already holds a run.
sys.exit(run(["-m", "privsem", "run", "--preset", "demo", *sys.argv[1:]]))
