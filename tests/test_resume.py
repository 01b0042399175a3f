"""T28: a run killed with SIGKILL at any point, then resumed, never under-counts and never
releases a second, freshly noised copy of a round's upload.

Each case runs the smoke federation in a child process that kills itself (SIGKILL, no cleanup,
no flushing) at one point of round 2, then resumes it with ``privsem run --resume`` in another
process, and compares the ledger with that of an uninterrupted run of the same configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from privsem.privacy.ledger import Ledger

ARGS = ["--preset", "smoke", "--quiet", "--set", "evaluation.enabled=false"]
VICTIM = "alice"
ROUND = 2

# The child patches one function to SIGKILL itself at the named point; nothing else changes.
CRASH = textwrap.dedent("""
    import os, signal, sys
    point, victim, rnd = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    import privsem.privacy.ledger as L
    import privsem.protocol.client as C
    import privsem.protocol.server as S
    import privsem.protocol.state as ST

    if point == "after_release_charge":      # charged, noise not yet drawn
        charge = L.Ledger.charge
        def patched(self, **kw):
            e = charge(self, **kw)
            if (kw["client"], kw["round"], kw["unit"]) == (victim, rnd, "client") and \\
                    kw["mechanism"].startswith("embedding"):
                die()
            return e
        L.Ledger.charge = patched
    elif point == "after_release_cached":    # noised and cached, not yet sent
        save = ST.ClientStore.save_release
        def patched(self, r, *a, **kw):
            save(self, r, *a, **kw)
            if self.root.name == victim and r == rnd:
                die()
        ST.ClientStore.save_release = patched
    elif point == "in_dp_sgd":               # charged, training under way
        train = C.train_dp_sgd
        def patched(model, *a, **kw):
            if C._crash_round[0] == rnd and C._crash_client[0] == victim:
                die()
            return train(model, *a, **kw)
        C._crash_round, C._crash_client = [0], [""]
        orig = C.Client._train_private
        def tp(self, r, plan, **kw):
            C._crash_round[0], C._crash_client[0] = r, self.id
            return orig(self, r, plan, **kw)
        C.Client._train_private = tp
        C.train_dp_sgd = patched
    elif point == "server_after_uploads":    # every client uploaded; consensus not yet formed
        close = S.Server.close_uploads
        def patched(self):
            if self.spec is not None and self.spec.round == rnd:
                die()
            return close(self)
        S.Server.close_uploads = patched
    else:
        raise SystemExit(f"unknown crash point {point}")

    from privsem.cli import main
    sys.exit(main(["run", *sys.argv[4:]]))
""")


def _env() -> dict[str, str]:
    root = Path(__file__).resolve().parent.parent
    return dict(os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false")


def _privsem(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "privsem", *args], capture_output=True, check=False,
                          text=True, env=_env(), timeout=600)


def _counts(run: Path) -> dict[tuple[str, int, str], int]:
    out: dict[tuple[str, int, str], int] = {}
    for e in Ledger(run / "ledger.jsonl").entries:
        if e.mechanism == "noise_present":  # a zero-cost note, written once per attempt
            continue
        key = (e.client, e.round, e.mechanism)
        out[key] = out.get(key, 0) + 1
    return out


# The default spends the whole private budget in round 1, so round 2 trains on labels only; a
# crash inside round 2's DP-SGD needs private steps there: the ¾ split keeps a quarter of them.
SPLIT = ["--set", "training.first_phase_share=0.75"]


def _args(point: str) -> list[str]:
    return [*ARGS, *SPLIT] if point == "in_dp_sgd" else ARGS


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    runs = {}
    for name, args in (("default", ARGS), ("split", [*ARGS, *SPLIT])):
        out = tmp_path_factory.mktemp(f"clean-{name}") / "run"
        r = _privsem("run", *args, "--out", str(out))
        assert r.returncode == 0, r.stderr
        runs[name] = out
    return runs


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_release_charge", "after_release_cached", "in_dp_sgd",
                                   "server_after_uploads"])
def test_T28_sigkill_then_resume_never_undercounts_nor_redraws(point, tmp_path, clean_runs):
    clean_run = clean_runs["split" if point == "in_dp_sgd" else "default"]
    args = _args(point)
    out = tmp_path / "run"
    crashed = subprocess.run([sys.executable, "-c", CRASH, point, VICTIM, str(ROUND), *args,
                              "--out", str(out)], capture_output=True, check=False, text=True,
                             env=_env(),
                             timeout=600)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    state = json.loads((out / "state" / "run.json").read_text())
    assert state == {"completed": ROUND - 1, "resumes": 0}
    spent_at_crash = {k: v for k, v in _counts(out).items()}
    release = out / "state" / VICTIM / f"release-{ROUND}.safetensors"
    cached = _sha(release) if release.exists() else None
    if point in ("after_release_cached", "server_after_uploads"):
        assert cached is not None
    if point in ("after_release_charge", "in_dp_sgd"):
        assert cached is None

    # A plain `privsem run` into the folder is refused; nothing in it is touched.
    again = _privsem("run", *args, "--out", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = _privsem("run", "--resume", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    counts = _counts(out)
    # Never under-counts: every charge made before the crash is still there ...
    assert all(counts.get(k, 0) >= v for k, v in spent_at_crash.items())
    # ... and the resumed run charged exactly what an uninterrupted run charges: a retry
    # reuses the charge of a release that never left, and resends one that may have.
    assert counts == _counts(clean_run)
    eps = Ledger(out / "ledger.jsonl")
    ref = Ledger(clean_run / "ledger.jsonl")
    for c in ("alice", "bob", "carol"):
        for unit in ("record", "client"):
            assert eps.spent(c, unit, delta=1e-5) == pytest.approx(ref.spent(c, unit, delta=1e-5))

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["round"], r["client"]) for r in rows) == sorted(
        (r, c) for r in range(1, ROUND + 1) for c in ("alice", "bob", "carol"))
    status = {r["client"]: " | ".join(r["status"]) for r in rows if r["round"] == ROUND}
    if cached is not None:
        # The release that may have left was resent, bit for bit: the file was not redrawn.
        assert _sha(release) == cached
        assert "resent the cached release" in status[VICTIM]
    if point == "after_release_charge":
        assert "releasing under ledger entry" in status[VICTIM]
    if point == "in_dp_sgd":
        assert "retraining under ledger entry" in status[VICTIM]
    if point == "server_after_uploads":
        for c in ("alice", "bob", "carol"):
            assert "resent the cached release" in status[c]
            assert "DP-SGD result of this round loaded from its checkpoint" in status[c]
    assert json.loads((out / "state" / "run.json").read_text()) == {"completed": ROUND,
                                                                    "resumes": 1}
    assert (out / "report.md").exists()


def test_T28_resume_refuses_a_rolled_back_ledger_even_with_its_head(tmp_path, clean_runs):
    """T29 across files: a ledger and its head rolled back together still contradict the
    clients' journals, which name the entries they charged."""
    clean_run = clean_runs["default"]
    import shutil

    out = tmp_path / "run"
    shutil.copytree(clean_run, out)
    led = Ledger(out / "ledger.jsonl")
    keep = [e for e in led.entries if e.round < ROUND]
    lines = (out / "ledger.jsonl").read_text().splitlines(keepends=True)[:len(keep)]
    (out / "ledger.jsonl").write_text("".join(lines))
    last = keep[-1]
    # rolled back by someone holding the ledger's key: the head verifies, the journals do not
    from privsem.privacy.ledger import head_mac

    key = bytes.fromhex((out / "ledger.jsonl.key").read_text())
    (out / "ledger.jsonl.head").write_text(json.dumps({
        "seq": last.seq, "hash": last.hash, "mac": head_mac(key, last.seq, last.hash)}))
    (out / "state" / "run.json").write_text(json.dumps({"completed": ROUND - 1, "resumes": 0}))
    r = _privsem("run", "--resume", str(out), "--quiet")
    assert r.returncode == 2
    assert "does not hold: the ledger was rolled back" in r.stderr
    assert (out / "ledger.jsonl").read_text() == "".join(lines)  # never reset, never rewritten


def test_a_finished_run_folder_is_never_overwritten(tmp_path, clean_runs):
    clean_run = clean_runs["default"]
    import shutil

    out = tmp_path / "run"
    shutil.copytree(clean_run, out)
    before = {p.name: _sha(p) for p in out.iterdir() if p.is_file()}
    r = _privsem("run", *ARGS, "--out", str(out))
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert {p.name: _sha(p) for p in out.iterdir() if p.is_file()} == before
