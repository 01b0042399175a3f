"""Flower's simulation engine running privsem's round: many virtual SuperNodes on one machine.

The federation is set up as for the in-process runtime (:func:`privsem.runtime.inprocess.
open_run`: the same clients, server, ledger and run folder) and its parties are hosted by one
:class:`~privsem.runtime.flower.relay.PartyHost`. Flower's simulation engine then runs the
ServerApp, whose round loop is :meth:`~privsem.runtime.inprocess.Session.rounds` with a
:class:`~privsem.runtime.flower.apps.FlowerTransport`, against one virtual SuperNode per party;
every frame of the round travels as a Flower message to a ClientApp in a simulation actor,
which relays it to the host. Compared with the in-process runtime only the transport differs,
so the same seed and configuration give the same aggregate and ledger (T42).

Faults (``flower.dropout``, ``flower.hang``): each round a seeded share of the clients goes
silent at one of ``flower.dropout_stages`` (the node crashes: no answer to any later message of
that round), or hangs there (the server waits ``flower.timeout`` and goes on without it).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from privsem.config import RunConfig, apply_override, build, preset_data, read_config_file
from privsem.errors import ConfigError
from privsem.rng import derive_seed
from privsem.runtime.flower.apps import (
    FlowerTransport,
    discover,
    make_client_app,
    make_server_app,
    wait_for_nodes,
)
from privsem.runtime.flower.relay import PartyHost
from privsem.runtime.inprocess import open_run

_PROTOCOL_KINDS = ("spec", "aggregate", "consensus", "labels")


def from_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """The one place a Flower run config becomes privsem's configuration.

    ``config`` (a YAML or TOML file) or ``preset`` gives the base (default: ``smoke``);
    ``clients`` (an integer) scales the federation to that many clients; every other key is a
    dotted field path and its value, as ``privsem run --set`` takes them (Flower's run config
    values are already typed)."""
    items = dict(run_config)
    path, preset = items.pop("config", None), items.pop("preset", None)
    clients = items.pop("clients", None)
    if path is not None and preset is not None:
        raise ConfigError("preset", preset, "give either config or preset, not both")
    if path is not None and not isinstance(path, str):
        raise ConfigError("config", path, "give the path of a configuration file")
    data = read_config_file(path) if path is not None else preset_data(str(preset or "smoke"))
    if clients is not None:
        data = with_clients(data, clients)
    for key in sorted(items):
        parts = str(key).split(".")
        if not all(parts):
            raise ConfigError(str(key), items[key], "name a field as a dotted path, e.g. "
                                                    "privacy.client.epsilon")
        apply_override(data, parts, items[key])
    return build(RunConfig, data)


def with_clients(data: dict[str, Any], n: Any) -> dict[str, Any]:
    """``data`` with its clients list grown (or cut) to ``n``: client i is a copy of the
    configured client i mod k, with the id ``<id>-<i>`` (its model and data files shared)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError("clients", n, "give an integer >= 2")
    base = data.get("clients")
    if not isinstance(base, list) or not base or not all(isinstance(c, dict) for c in base):
        raise ConfigError("clients", base, "the base configuration must list clients")
    width = len(str(n - 1))
    grown = [dict(base[i % len(base)], id=f"{base[i % len(base)].get('id', 'client')}-"
                                          f"{i:0{width}d}") for i in range(n)]
    return dict(data, clients=grown)


class SilentClients:
    """The simulation's faults: each round, ``dropout`` (crash) and ``hang`` shares of the
    clients stop answering at a stage drawn from ``stages``, for the rest of the round. Seeded
    by the run's seed and the round, so a run is repeatable."""

    def __init__(self, cfg: RunConfig) -> None:
        self.clients = [c.id for c in cfg.clients]
        self.cfg, self.seed = cfg.flower, cfg.seed
        self.round_of: dict[str, int] = {}  # party -> round of the last spec it was sent
        self.plans: dict[int, dict[str, tuple[str, str]]] = {}  # round -> client -> (stage, how)
        self.silent: set[tuple[int, str]] = set()

    def plan(self, rnd: int) -> dict[str, tuple[str, str]]:
        """Round ``rnd``'s silent clients: client -> (stage, "drop" | "hang")."""
        if rnd not in self.plans:
            rng = np.random.default_rng(derive_seed(self.seed, "flower-faults", rnd))
            n = len(self.clients)
            drops, hangs = math.floor(self.cfg.dropout * n), math.floor(self.cfg.hang * n)
            chosen = [self.clients[i] for i in rng.permutation(n)[:drops + hangs]]
            stages = self.cfg.dropout_stages
            self.plans[rnd] = {c: (stages[int(rng.integers(len(stages)))],
                                   "drop" if i < drops else "hang")
                               for i, c in enumerate(chosen)}
        return self.plans[rnd]

    def __call__(self, party: str, kind: str, stage: str) -> str | None:
        if kind not in _PROTOCOL_KINDS:
            return None  # notices reach a node that comes back
        if kind == "spec":
            self.round_of[party] = self.round_of.get(party, 0) + 1
        rnd = self.round_of.get(party, 0)
        planned = self.plan(rnd).get(party)
        if planned is None:
            return None
        if (rnd, party) in self.silent or planned[0] == stage:
            self.silent.add((rnd, party))
            return planned[1]
        return None


def simulate(cfg: RunConfig, out: str | Path, *, show_progress: bool = True,
             resume: bool = False, backend_config: Mapping[str, Any] | None = None) -> Path:
    """Runs the federation on Flower's simulation engine and writes the run folder."""
    from flwr.simulation import run_simulation

    session = open_run(cfg, out, show_progress=show_progress, resume=resume)
    parties = session.parties
    run_id = secrets.token_hex(8)
    faults = SilentClients(cfg) if cfg.flower.dropout or cfg.flower.hang else None
    fc = cfg.flower
    with PartyHost(run_id, session.fed.endpoints, faults=faults,
                   # a hung node answers nothing until the server has given up on it
                   hang_seconds=lambda kind: (fc.spec_timeout if kind == "spec" else fc.timeout)
                   + fc.notice_timeout) as host:
        def main(grid: Any, context: Any) -> None:
            nodes = wait_for_nodes(grid, len(parties), timeout=fc.connect_timeout)
            where = discover(grid, nodes, parties, run=run_id, timeout=fc.connect_timeout)
            session.rounds(FlowerTransport(grid, where, run=run_id, timeout=fc.timeout,
                                           spec_timeout=fc.spec_timeout,
                                           notice_timeout=fc.notice_timeout,
                                           group=lambda: str(session.completed + 1)))

        cpus = cfg.threads or os.cpu_count() or 1
        run_simulation(make_server_app(main), make_client_app(parties=parties, host=host.path),
                       num_supernodes=len(parties),
                       backend_config=dict(backend_config or {
                           "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                           "init_args": {"num_cpus": cpus, "num_gpus": 0,
                                         "include_dashboard": False}}))
    if faults is not None:  # what the simulation did to the clients, for the reader
        (session.fed.out / "flower-faults.json").write_text(json.dumps(
            {r: {c: list(v) for c, v in p.items()} for r, p in sorted(faults.plans.items())},
            indent=1), encoding="utf-8")
    return session.finish()
