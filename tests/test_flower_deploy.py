"""Flower deployments on this machine's loopback: the trial end to end with a killed SuperNode,
and the transport refusals of T40. Every process is started by the test's code with a limit
and stopped by it."""

import datetime as dt
import json
import subprocess
import time

import numpy as np
import psutil
import pytest
from safetensors import safe_open

from privsem.config import load_config
from privsem.privacy.ledger import Ledger
from privsem.protocol.server import Server
from privsem.runtime.flower.deploy import Trial, flower_env, prepare, trial
from privsem.runtime.flower.pki import issue_server_cert, make_ca, make_node_key
from privsem.runtime.inprocess import run

pytestmark = pytest.mark.slow


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def _leftovers(folder):
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if p.info["status"] != psutil.STATUS_ZOMBIE
            and any(str(folder) in a for a in (p.info["cmdline"] or []))]


def test_deployment_trial_survives_a_killed_supernode(tmp_path, monkeypatch):
    cfg = load_config(preset="smoke", overrides=[
        "rounds=2", "max_prompts=3", "evaluation.max_questions=1", "flower.timeout=45",
        "flower.spec_timeout=90"])
    # the same configuration in one process first, for T42
    seen = {}
    close = Server.close_uploads

    def spy(self):
        out = close(self)
        if self.result is not None:
            seen[self.spec.round] = (self.result.contributors, self.result.total.copy())
        return out

    monkeypatch.setattr(Server, "close_uploads", spy)
    whole = run(cfg, tmp_path / "inprocess", show_progress=False)
    folder = tmp_path / "deploy"
    summary = trial(cfg, folder, kill="carol", kill_round=2, limit=900)
    assert summary["status"] == "finished:completed", summary
    assert summary["killed"]["client"] == "carol"
    assert not _leftovers(folder)  # everything was stopped
    rows = {(r["round"], r["client"]): r for r in _rows(folder / "run" / "metrics.jsonl")}
    assert all(rows[1, c]["counted"] for c in ("alice", "bob", "carol"))
    assert rows[2, "alice"]["counted"] and rows[2, "bob"]["counted"]
    assert not rows[2, "carol"]["counted"] and rows[2, "carol"]["left_round"]
    assert rows[2, "alice"]["contributors"] == 2 and rows[2, "alice"]["round_aborted"] is None
    assert all(r["wire_bytes_up"] > r["bytes_up"] for r in rows.values() if r["counted"])
    for c in ("alice", "bob", "carol"):
        node = folder / "nodes" / c
        ledger = Ledger(node / "ledger.jsonl")  # the chain and its head verify
        assert {e.client for e in ledger.entries} == {c}
        charged = {e.round for e in ledger.entries if e.mechanism.startswith("embedding")}
        released = {int(p.stem.split("-")[1]) for p in (node / "state").glob("release-*")}
        assert released <= charged  # nothing left a node before its ledger was charged
        assert (node / "identity.key").stat().st_mode & 0o077 == 0
    assert {r["round"] for r in _rows(folder / "nodes" / "alice" / "metrics.jsonl")} == {0, 1, 2}
    # the report joins the server's view with each node's rows and ledger
    report = (folder / "report.md").read_text()
    assert "round 2: sum over 2 survivors (alice, bob)" in report
    assert "`carol` round 2: the ledger accounts" in report  # her node wrote no row
    # T42 across processes: round 1 (nobody killed yet) gives the in-process aggregate bit for
    # bit, and each node's round-1 ledger entries are the in-process run's for that client
    deployed = safe_open(str(folder / "run" / "aggregate-1.safetensors"), "numpy")
    assert tuple(json.loads(deployed.metadata()["contributors"])) == seen[1][0]
    assert np.array_equal(deployed.get_tensor("total"), seen[1][1])
    volatile = ("time", "hash", "prev", "seq")

    def entries(path, client):
        return [{k: v for k, v in e.items() if k not in volatile} for e in _rows(path)
                if e["client"] == client and e["round"] == 1]

    for c in ("alice", "bob", "carol"):
        assert entries(folder / "nodes" / c / "ledger.jsonl", c) == entries(
            whole / "ledger.jsonl", c)


def _supernode(t, name, *, ca, key=None, insecure=False, port):
    cmd = ["flower-supernode", "--superlink", f"127.0.0.1:{t.port}", "--host", "127.0.0.1",
           "--port", str(port), "--max-retries", "2", "--max-wait-time", "20",
           "--node-config", f"privsem-party='{name}'"]
    cmd += ["--insecure"] if insecure else ["--root-certificates", str(ca)]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    return t.start(name, cmd)


def _refused(t, proc, name, timeout=60):
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    log = (t.folder / "logs" / f"{name}.log").read_text(errors="replace")
    return rc != 0 and "SuperNode ID" not in log


def test_T40_transport_refusals(tmp_path):
    cfg = load_config(preset="smoke")
    folder = tmp_path / "t40"
    paths = prepare(cfg, folder)
    pki = folder / "pki"
    other_ca = make_ca(pki, name="other-ca")
    expired = issue_server_cert(pki, (paths["ca"], paths["ca_key"]), name="expired", days=1,
                                start=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    wrong_name = issue_server_cert(pki, (paths["ca"], paths["ca_key"]), name="wrongname",
                                   hosts=("example.invalid",))
    make_node_key(pki, "mallory")
    t = Trial(folder, limit=600)
    try:
        t.superlink(paths["cert"], paths["key"], paths["ca"])
        t.register(pki / "node-alice.pub")
        cases = {
            "wrong-ca": {"ca": other_ca[0], "key": pki / "node-alice"},
            "unregistered-key": {"ca": paths["ca"], "key": pki / "node-mallory"},
            "no-key": {"ca": paths["ca"], "key": None},
            "plaintext": {"ca": None, "key": None, "insecure": True},
            "plaintext-with-key": {"ca": None, "key": pki / "node-alice", "insecure": True},
        }
        for i, (name, kw) in enumerate(cases.items()):
            proc = _supernode(t, name, port=9420 + i, **kw)
            assert _refused(t, proc, name), f"{name} was not refused"
        # the registered key with the right CA is let in (the positive control)
        ok = _supernode(t, "alice-ok", ca=paths["ca"], key=pki / "node-alice", port=9430)
        log = folder / "logs" / "alice-ok.log"
        end = time.monotonic() + 60
        while "SuperNode ID" not in log.read_text(errors="replace") and time.monotonic() < end:
            assert ok.poll() is None, log.read_text(errors="replace")[-2000:]
            time.sleep(0.5)
        assert "SuperNode ID" in log.read_text(errors="replace")
    finally:
        t.close()
    # A SuperLink serving an expired certificate, or one for another host name: refused by
    # the node that checks it.
    for name, (crt, key) in (("expired", expired), ("wrong-name", wrong_name)):
        t = Trial(folder, port=9401 if name == "expired" else 9402, limit=300)
        try:
            t.start("superlink", [
                "flower-superlink", "--ssl-ca-certfile", str(paths["ca"]), "--ssl-certfile",
                str(crt), "--ssl-keyfile", str(key), "--enable-supernode-auth",
                "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                "--port", str(t.port)], home=folder / "flwr-home" / f"link-{name}")
            time.sleep(3)
            proc = _supernode(t, f"node-vs-{name}", ca=paths["ca"], key=pki / "node-alice",
                              port=9440 if name == "expired" else 9441)
            assert _refused(t, proc, f"node-vs-{name}"), f"{name} certificate was accepted"
        finally:
            t.close()
    assert not _leftovers(folder)
    assert "FLWR_HOME" in flower_env(folder / "x")
