"""The Flower runtime: privsem's round over Flower (DESIGN.md §4).

- :mod:`.apps`: the ClientApp (a relay), the server side of the round as a Transport over
  Flower's Grid, node discovery;
- :mod:`.relay`: the party host that keeps a node's privsem parties (model, ledger, secrets) in
  memory between Flower's per-message ClientApp runs;
- :mod:`.simulation`: Flower's simulation engine with many virtual SuperNodes, and the one
  function that turns a Flower run config into privsem's configuration.

Importing this package turns off what would reach outside the machine: Flower's telemetry and
update check, Ray's usage statistics, and Ray's choice of a non-loopback address for its own
processes.
"""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback only
