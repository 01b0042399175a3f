"""Flower deployments: a SuperLink and SuperNodes as separate processes (or hosts), TLS and
SuperNode authentication, and the trial that runs one on this machine's loopback.

A *deployment folder* holds what the parties share out of band: ``config.yaml`` (the resolved
configuration), ``registry.json`` (every client's public identity key) and ``pki/`` (the CA
certificate everyone trusts; the private keys in it belong to their processes). Each client's
node keeps its own folder ``nodes/<id>/``: its identity key, ledger, state and metrics; the
server writes ``run/``. On real hosts each party gets only its own part (see the README).

- :func:`node_main` (``privsem node``): one client. Sets the client up alone
  (:func:`~privsem.runtime.inprocess.setup_node`), serves it from a party host, and runs
  ``flower-supernode`` with TLS and its authentication key, naming the host in its node config.
- :func:`server_main`: the ServerApp's main in a deployment (``flwr run`` of
  ``privsem/runtime/flower/app``). Sets the server up alone and runs
  :func:`~privsem.runtime.inprocess.serve_round` over the Grid.
- :func:`trial` (``privsem deploy trial``): makes the key material, starts every process with
  bounded time, kills one SuperNode mid-round, stops everything, and reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from privsem import bounded_json
from privsem.config import CLIENT_ID, RunConfig, dump_yaml, load_config
from privsem.errors import ConfigError, ProtocolAbort
from privsem.protocol.messages import Stage
from privsem.protocol.state import write_json
from privsem.rng import derive_seed
from privsem.runtime.flower.apps import FlowerTransport, discover, wait_for_nodes
from privsem.runtime.flower.pki import read_identity
from privsem.runtime.flower.relay import PartyHost
from privsem.runtime.parties import ClientEndpoint

APP_DIR = Path(__file__).resolve().parent / "app"


def deployment_id(folder: Path) -> str:
    """The id every party derives from the shared files: a node answers only deliveries of
    the deployment whose configuration and registry it holds."""
    h = hashlib.sha256(b"privsem/deployment/v1")
    for name in ("config.yaml", "registry.json"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:32]


MAX_REGISTRY_BYTES = 1024 * 1024
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


def _flwr_json(out: str) -> dict[str, Any]:
    """The JSON object a ``flwr ... --format json`` command printed (after any log lines)."""
    start = out.find("{")
    try:
        data = bounded_json.loads(out[start:] if start >= 0 else out, max_depth=32)
    except ValueError as e:
        raise ProtocolAbort(f"flwr printed no readable JSON ({e}): {out[-500:]}") from None
    if not isinstance(data, dict):
        raise ProtocolAbort(f"flwr printed {type(data).__name__}, not a JSON object: "
                            f"{out[-500:]}")
    return data


def read_registry(path: Path) -> dict[str, bytes]:
    """Client id -> public key (raw bytes) from a deployment's ``registry.json``; ConfigError
    naming the file and what is wrong with it (at most 1 MiB, a flat JSON object of
    client ids to hex keys)."""
    fix = "give a JSON object of client id -> hex public key, as `privsem deploy init` writes it"
    try:
        data = bounded_json.read_file(path, max_bytes=MAX_REGISTRY_BYTES, max_depth=1)
    except OSError as e:
        raise ConfigError(str(path), "…", f"cannot be read ({e.strerror or e}); {fix}") from None
    except ValueError as e:
        raise ConfigError(str(path), "…", f"{e}; {fix}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), type(data).__name__, fix)
    out: dict[str, bytes] = {}
    for k, v in data.items():
        if not CLIENT_ID.fullmatch(k):
            raise ConfigError(f"{path}: {k[:80]!r}", k[:80], "client ids are 1-63 letters, "
                              "digits, '_' or '-', starting with a letter or digit; " + fix)
        if not (isinstance(v, str) and 0 < len(v) <= 4096 and _HEX.fullmatch(v)):
            raise ConfigError(f"{path}: {k}", str(v)[:80], "the public key must be a non-empty "
                              "hex string of at most 4096 digits; " + fix)
        out[k] = bytes.fromhex(v)
    return out


def flower_env(home: Path) -> dict[str, str]:
    """The environment of a Flower process: its own FLWR_HOME, the virtual environment's
    executables first, nothing that reaches outside the machine."""
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API"):
        env.pop(name, None)  # these would open legacy servers on every interface
    return env


def _log(folder: Path) -> Callable[[str], None]:
    path = folder / "events.log"

    def log(text: str) -> None:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {text}\n")
    return log


# ------------------------------------------------------------------------------ a node

class NodeEndpoint:
    """A deployed client's endpoint: when a round ends for the client (done or aborted), it
    evaluates the client, writes its metrics row to its own folder and checkpoints it."""

    def __init__(self, client: Any, ledger: Any, folder: Path) -> None:
        self.inner = ClientEndpoint(client)
        self.client, self.ledger, self.folder = client, ledger, folder
        self.recorded: set[int] = set()

    def handle(self, kind: str, frame: bytes) -> Any:
        answer = self.inner.handle(kind, frame)
        if self.client.stage.stage in (Stage.DONE, Stage.ABORTED):
            self.record(self.client.log.round)
        return answer

    def record(self, rnd: int) -> None:
        from privsem.runtime.inprocess import client_fields

        if rnd in self.recorded:
            return
        self.recorded.add(rnd)
        cfg, t0 = self.client.cfg, time.perf_counter()
        scores = self.client.evaluate(max_new_tokens=cfg.evaluation.max_new_tokens,
                                      seed=derive_seed(cfg.seed, "eval", self.client.id, rnd)
                                      ) if cfg.evaluation.enabled else {}
        row = client_fields(self.client, self.ledger, rnd, scores, time.perf_counter() - t0)
        _append(self.folder / "metrics.jsonl", row)
        self.client.checkpoint(rnd)


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def node_main(deployment: Path, client_id: str, *, superlink: str, port: int) -> int:
    """Runs one client's node until its SuperNode exits or the process is told to stop."""
    from privsem.runtime.inprocess import setup_node

    cfg = load_config(str(deployment / "config.yaml"))
    folder = deployment / "nodes" / client_id
    log = _log(folder)
    client, ledger = setup_node(cfg, client_id, folder,
                                identity=read_identity(folder / "identity.key"),
                                registry=read_registry(deployment / "registry.json"),
                                progress=log, run=deployment_id(deployment))
    endpoint = NodeEndpoint(client, ledger, folder)
    if cfg.evaluation.enabled and cfg.evaluation.before_training:
        endpoint.record(0)
    with PartyHost(deployment_id(deployment), {client_id: endpoint}) as host:
        cmd = ["flower-supernode", "--superlink", superlink,
               "--root-certificates", str(deployment / "pki" / "privsem-ca.crt"),
               "--auth-supernode-private-key", str(deployment / "pki" / f"node-{client_id}"),
               "--node-config", f"privsem-party='{client_id}' privsem-host='{host.path}'",
               "--host", "127.0.0.1", "--port", str(port), "--max-retries", "5"]
        with (folder / "supernode.log").open("ab") as out:
            proc = subprocess.Popen(cmd, env=flower_env(folder / "flwr-home"), stdout=out,
                                    stderr=subprocess.STDOUT)

        def stop(signum: int, _frame: Any) -> None:
            proc.terminate()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log(f"node {client_id}: SuperNode pid {proc.pid}, host {host.path}")
        rc = proc.wait()
        log(f"node {client_id}: SuperNode exited with {rc}")
    return rc


# ------------------------------------------------------------------------------ the server

def server_main(grid: Any, context: Any) -> None:
    """The ServerApp's main in a deployment. Its run config names the deployment folder."""
    from safetensors.numpy import save_file

    from privsem.runtime.flower.simulation import from_run_config
    from privsem.runtime.inprocess import serve_round, server_fields, setup_server

    folder = Path(str(context.run_config.get("deployment", "")))
    if not (folder / "config.yaml").is_file():
        raise ConfigError("deployment", str(folder), "give the deployment folder in the run "
                          "config: flwr run ... -c \"deployment='/path'\"")
    cfg = from_run_config({"config": str(folder / "config.yaml")})
    registry = read_registry(folder / "registry.json")
    out = folder / "run"
    out.mkdir(exist_ok=True)
    log = _log(out)
    fc = cfg.flower
    run_id = deployment_id(folder)
    # the deployment's id is the run nonce of its rounds (every node derives it from the same
    # shared files); see docs/security.md for what it does and does not separate
    server = setup_server(cfg, registry=registry, progress=log, run=run_id)
    cohort = tuple(c.id for c in cfg.clients)
    nodes = wait_for_nodes(grid, len(cohort), timeout=fc.connect_timeout)
    where = discover(grid, nodes, cohort, run=run_id, timeout=fc.connect_timeout)
    log(f"server: nodes {where}")
    net = FlowerTransport(grid, where, run=run_id, timeout=fc.timeout,
                          spec_timeout=fc.spec_timeout, notice_timeout=fc.notice_timeout)
    for rnd in range(1, cfg.rounds + 1):
        write_json(out / "round.json", {"round": rnd, "started": time.time()})
        t0 = time.perf_counter()
        traffic = serve_round(server, cohort, rnd, net, log)
        for counts in traffic.values():
            counts["round_seconds"] = time.perf_counter() - t0
        for cid in cohort:
            _append(out / "metrics.jsonl", server_fields(server, cfg, cid, rnd, traffic[cid]))
        if server.result is not None:  # the server's own view: the noisy sum it released
            save_file({"total": server.result.total}, str(out / f"aggregate-{rnd}.safetensors"),
                      metadata={"contributors": json.dumps(server.result.contributors)})
        counted = server.result.contributors if server.result else ()
        log(f"server: round {rnd} done; counted {counted}; aborted {server.abort_reason}")
    write_json(out / "done.json", {"rounds": cfg.rounds, "finished": time.time()})


# ------------------------------------------------------------------------------ processes

def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_tree(procs: list[Any], *, grace: float = 10.0) -> None:
    """SIGTERM to every process in ``procs`` (psutil processes), SIGKILL after ``grace``."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


def kill_tree(pid: int) -> None:
    """SIGKILL to ``pid`` and every process below it, at once (a node that crashes)."""
    import psutil

    procs = _descendants(pid)
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def configure(cfg: RunConfig) -> RunConfig:
    """Keeps what a deployment needs of ``cfg``: masked (or plaintext) aggregation, checked
    here before any process starts."""
    from privsem.aggregation import get_backend

    if get_backend(cfg.aggregation.backend).has_helpers:
        raise ConfigError("aggregation.backend", cfg.aggregation.backend,
                          "deployments with a helper party (the ckks key holder) are not built "
                          "yet; use masked")
    return cfg


def _check_flower_tools() -> None:
    for tool in ("flower-superlink", "flower-supernode", "flwr"):
        if not (Path(sys.executable).parent / tool).exists():
            raise ProtocolAbort(f"{tool} is not installed beside {sys.executable}; install "
                                "privsem's dependencies (flwr[simulation]==1.42.0)")


def dump_config(cfg: RunConfig, folder: Path) -> None:
    (folder / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")


# ------------------------------------------------------------------------------ the trial

def prepare(cfg: RunConfig, folder: Path,
            hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, Path]:
    """Writes a deployment folder for ``cfg``: configuration, identities and registry, CA,
    SuperLink certificate (for ``hosts``, the names the nodes reach it by), one SuperNode key
    per client. Returns the paths the processes need."""
    from privsem.runtime.flower.pki import (
        issue_server_cert,
        make_ca,
        make_node_key,
        write_identity,
    )

    configure(cfg)
    folder.mkdir(parents=True, exist_ok=False)
    pki = folder / "pki"
    pki.mkdir()
    dump_config(cfg, folder)
    registry = {}
    for c in cfg.clients:
        (folder / "nodes" / c.id).mkdir(parents=True)
        registry[c.id] = write_identity(folder / "nodes" / c.id / "identity.key").hex()
        make_node_key(pki, c.id)
    (folder / "registry.json").write_text(json.dumps(registry, indent=1), encoding="utf-8")
    ca = make_ca(pki)
    crt, key = issue_server_cert(pki, ca, hosts=hosts)
    return {"ca": ca[0], "ca_key": ca[1], "cert": crt, "key": key}


class Trial:
    """The processes of one deployment on this machine, each started here with a limit and
    stopped here (:meth:`close`)."""

    def __init__(self, folder: Path, *, port: int = 9400, node_port: int = 9410,
                 limit: float = 1800.0) -> None:
        self.folder, self.port, self.node_port = folder, port, node_port
        self.deadline = time.monotonic() + limit
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log = _log(folder)
        (folder / "logs").mkdir(exist_ok=True)
        self.cli_home = folder / "flwr-cli"

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ProtocolAbort("deployment trial: out of time")
        return left

    def start(self, name: str, cmd: list[str], *, home: Path | None = None) -> subprocess.Popen[bytes]:
        with (self.folder / "logs" / f"{name}.log").open("ab") as out:
            env = flower_env(home or self.folder / "flwr-home" / name)
            p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.procs[name] = p
        self.log(f"started {name} (pid {p.pid}): {' '.join(cmd)}")
        return p

    def superlink(self, cert: Path, key: Path, ca: Path) -> None:
        self.start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert),
            "--ssl-keyfile", str(key), "--enable-supernode-auth",
            "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
            "--port", str(self.port)])
        self.wait_healthy(ca)
        self.cli_home.mkdir(exist_ok=True)
        (self.cli_home / "config.toml").write_text(
            '[superlink]\ndefault = "privsem"\n\n[superlink.privsem]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{ca.resolve()}"\n',
            encoding="utf-8")

    def wait_healthy(self, ca: Path, timeout: float = 60.0) -> None:
        import ssl
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(ca))
        end = time.monotonic() + min(timeout, self.remaining())
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/health",
                                            context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.procs["superlink"].poll() is not None:
                break
            time.sleep(0.5)
        raise ProtocolAbort("deployment trial: the SuperLink did not become healthy; see "
                            f"{self.folder / 'logs' / 'superlink.log'}")

    def flwr(self, *args: str, timeout: float = 120.0) -> str:
        r = subprocess.run(["flwr", *args], env=flower_env(self.cli_home), capture_output=True,
                           text=True, timeout=min(timeout, self.remaining()), check=False)
        if r.returncode != 0:
            raise ProtocolAbort(f"flwr {' '.join(args)} failed ({r.returncode}): "
                                f"{(r.stdout + r.stderr)[-2000:]}")
        return r.stdout

    def register(self, pub: Path) -> None:
        self.flwr("supernode", "register", str(pub), "privsem", "--format", "json")

    def node(self, client_id: str, index: int) -> None:
        self.start(f"node-{client_id}", [
            sys.executable, "-m", "privsem", "node", str(self.folder), "--client", client_id,
            "--superlink", f"127.0.0.1:{self.port}", "--port", str(self.node_port + index)])

    def submit(self) -> str:
        out = self.flwr("run", str(APP_DIR), "privsem", "--format", "json",
                        "-c", f"deployment='{self.folder.resolve()}'")
        data = _flwr_json(out)
        run_id = str(data.get("run-id") or data.get("run_id") or "")
        if not run_id:
            raise ProtocolAbort(f"flwr run gave no run id: {out[-500:]}")
        self.log(f"submitted run {run_id}")
        return run_id

    def status(self, run_id: str) -> str:
        out = self.flwr("ls", "privsem", "--run-id", run_id, "--format", "json")
        runs = _flwr_json(out).get("runs") or []
        return str(runs[0].get("status", "")) if isinstance(runs, list) and runs and isinstance(
            runs[0], dict) else ""

    def close(self) -> None:
        """Stops every process this trial started and everything below it (Flower starts
        its SuperExec in a session of its own), SIGKILL after 10 s."""
        procs = [p for proc in self.procs.values() for p in _descendants(proc.pid)]
        stop_tree(procs)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log("all processes stopped")


def trial(cfg: RunConfig, folder: Path, *, kill: str | None = None, kill_round: int = 2,
          limit: float = 1800.0) -> dict[str, Any]:
    """The deployment trial on loopback: a SuperLink with TLS and SuperNode authentication,
    one node process per client, the run submitted with ``flwr run``; ``kill`` names a client
    whose node (SuperNode and all) is killed with SIGKILL once it has trained in round
    ``kill_round``. Every process is stopped before this returns. Returns a summary."""
    _check_flower_tools()
    paths = prepare(cfg, folder)
    t = Trial(folder, limit=limit)
    summary: dict[str, Any] = {"folder": str(folder), "killed": None}
    started = time.monotonic()
    try:
        t.superlink(paths["cert"], paths["key"], paths["ca"])
        for i, c in enumerate(cfg.clients):
            t.register(folder / "pki" / f"node-{c.id}.pub")
            t.node(c.id, i)
        run_id = t.submit()
        summary["run_id"] = run_id
        status = ""
        while not status.startswith("finished"):
            t.remaining()
            if kill and summary["killed"] is None and (
                    folder / "nodes" / kill / "state" / f"round-{kill_round}.json").exists():
                kill_tree(t.procs[f"node-{kill}"].pid)
                summary["killed"] = {"client": kill, "round": kill_round,
                                     "after_s": round(time.monotonic() - started, 1)}
                t.log(f"killed node {kill} in round {kill_round}")
            time.sleep(1.0)
            status = t.status(run_id)
        summary["status"] = status
        summary["seconds"] = round(time.monotonic() - started, 1)
    finally:
        t.close()
    write_json(folder / "trial.json", summary)
    if (folder / "run" / "metrics.jsonl").is_file():  # on loopback every part is here
        from privsem.reports.write import write_reports

        write_reports(folder, seconds=summary.get("seconds"))
    return summary
