"""A finished run folder as the audits read it: configuration, rounds, ledger, client models.

The run-folder audits (:mod:`~privsem.audits.canary_audit`, :mod:`~privsem.audits.mia_audit`,
:mod:`~privsem.audits.inversion_audit`) share what is here: reading ``config.yaml`` and the last
completed round, rebuilding one client's model exactly as the run held it after a round (base
model + LoRA adapter from ``state/<client>/adapter-end-<r>.safetensors``), the record- and
client-level ε the ledger accounts up to a round, and writing results under ``RUN_DIR/audit/``.

Rules for changing it: audits only read the run folder (the ledger is opened read-only, its hash
chain verified); they write only under ``RUN_DIR/audit/`` and regenerate the report. Randomness
an audit needs of its own (exposure sampling, noise for the inversion curve) is a seeded
:class:`~privsem.rng.Randomness` under an ``("audit", ...)`` label: audits are measurements, not
releases, and are reproducible.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privsem.config import ClientConfig, RunConfig, load_config
from privsem.errors import DataError, PrivsemError
from privsem.privacy.analysis import epsilon
from privsem.privacy.ledger import Ledger, LedgerEntry
from privsem.protocol.state import ClientStore, read_json
from privsem.rng import make_randomness

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

AUDIT_DIR = "audit"


@dataclass(frozen=True)
class RunFolder:
    """A run folder opened for auditing."""

    path: Path
    cfg: RunConfig
    completed: int  # last completed round (0: none)
    resumes: int  # how many times the run was resumed

    @property
    def audit_dir(self) -> Path:
        d = self.path / AUDIT_DIR
        d.mkdir(parents=True, exist_ok=True)
        return d

    def client(self, client_id: str) -> ClientConfig:
        for c in self.cfg.clients:
            if c.id == client_id:
                return c
        raise DataError(str(self.path / "config.yaml"), None, f"no client {client_id!r}; the "
                        f"run's clients are {', '.join(c.id for c in self.cfg.clients)}")

    def state(self, client_id: str) -> Path:
        return self.path / "state" / client_id

    def round(self, requested: int | None) -> int:
        """``requested``, or the last completed round; it must be a completed round >= 1."""
        if self.completed < 1:
            raise DataError(str(self.path / "state" / "run.json"), None, "no round of this run "
                            "completed; there is no trained model to audit")
        r = self.completed if requested is None else requested
        if not 1 <= r <= self.completed:
            raise DataError(str(self.path), None, f"--round {r} is not a completed round; use a "
                            f"round in 1..{self.completed}")
        return r

    def ledger_entries(self) -> tuple[LedgerEntry, ...]:
        path = self.path / "ledger.jsonl"
        if not path.is_file():
            raise DataError(str(path), None, "missing; the accounted ε comes from the ledger")
        return Ledger(path, accountant=self.cfg.privacy.accountant).entries  # verifies the chain

    def accounted_epsilon(self, client_id: str, unit: str, up_to_round: int) -> float:
        """ε of ``client_id``'s ``unit`` from its ledger events of rounds 1..``up_to_round``, at
        the configured δ of that unit (inf when the unit's mechanism was off)."""
        dp = self.cfg.privacy.record if unit == "record" else self.cfg.privacy.client
        events = [e.dp_event() for e in self.ledger_entries()
                  if e.client == client_id and e.unit == unit and e.round <= up_to_round]
        return epsilon(events, delta=dp.delta, accountant=self.cfg.privacy.accountant)


def open_run(run_dir: str | Path) -> RunFolder:
    """Reads ``config.yaml`` and ``state/run.json``; DataError naming what is missing."""
    path = Path(run_dir)
    cfg_path = path / "config.yaml"
    if not cfg_path.is_file():
        raise DataError(str(cfg_path), None, "missing; give a run folder written by "
                        "`privsem run --out RUN_DIR`")
    cfg = load_config(str(cfg_path))
    progress = path / "state" / "run.json"
    try:
        state = read_json(progress)
        completed, resumes = int(state["completed"]), int(state["resumes"])
    except (PrivsemError, ValueError, KeyError, TypeError) as e:
        raise DataError(str(progress), None, f"cannot be read ({e!r}); it records the last "
                        "completed round") from None
    return RunFolder(path=path, cfg=cfg, completed=max(completed, 0), resumes=resumes)


def audited_adapters(run: RunFolder, rnd: int) -> tuple[str, ...]:
    """The checkpoints an audit of round ``rnd`` scores. Without routing, the adapter the
    client held at the end of that round. With ``consensus.route`` on, a client answers with
    two adapters: prompts near its own data (its private examples and anything phrased like
    them) with the adapter of training phase 1, which saw the private data and no label since,
    every other prompt with the end-of-round adapter, which saw both. An attacker may reach
    either, so both are scored and an audit reports the stronger attack (a statistical bound
    splits its confidence between them)."""
    # the configuration refuses a route without the mixed schedule, which keeps that adapter
    return ("trained-1", f"end-{rnd}") if run.cfg.consensus.routes else (f"end-{rnd}",)


def load_client_model(run: RunFolder, client_id: str, rnd: int, adapter: str | None = None
                      ) -> tuple[PeftModel, PreTrainedTokenizerBase, str]:
    """``client_id``'s model after round ``rnd``: its base model, loaded as the run loaded it,
    with the LoRA adapter checkpoint ``adapter`` (default: the first of
    :func:`audited_adapters`). Returns the model (eval mode;
    ``with model.disable_adapter():`` gives the base model), its tokenizer and its prompt
    format."""
    from privsem.models.loading import TINY, load_model
    from privsem.models.prompting import resolve_format
    from privsem.models.training import add_lora

    ccfg = run.client(client_id)
    tag = adapter if adapter is not None else audited_adapters(run, rnd)[0]
    _adapter_file(run, client_id, tag)  # fail before loading the model
    if ccfg.model.name in TINY and run.cfg.privacy.randomness != "seeded":
        raise DataError(ccfg.model.name, None, "a randomly initialised model of a run with "
                        "privacy.randomness: os cannot be rebuilt (its initial weights came from "
                        "OS entropy); audit runs of real models, or seeded simulations")
    # The same labels as the run's set-up (privsem.runtime.inprocess.setup) of the process
    # that wrote the adapter, so a seeded tiny model gets the same initial weights.
    labels: tuple[object, ...] = ("client", client_id, *(("resume", run.resumes)
                                                          if run.resumes else ()))
    seed = (make_randomness("seeded", run.cfg.seed, *labels).seed_for("init", client_id) % 2**31
            if ccfg.model.name in TINY else 0)  # real models load their weights from files
    loaded = load_model(ccfg.model.name, seed=seed)
    lora = ccfg.model.lora
    model = add_lora(loaded.model, rank=lora.rank, alpha=lora.alpha, targets=lora.targets,
                     dropout=lora.dropout)
    use_adapter(run, client_id, model, tag)
    model.eval()
    return model, loaded.tokenizer, resolve_format(loaded.tokenizer, ccfg.model.prompt_format)


def _adapter_file(run: RunFolder, client_id: str, tag: str) -> ClientStore:
    """The client's state store, once it is known to hold adapter ``tag``."""
    store = ClientStore(run.state(client_id))
    if not store.has_adapter(tag):
        raise DataError(str(store.root / f"adapter-{tag}.safetensors"), None,
                        f"missing; client {client_id} checkpointed no adapter {tag!r} (an "
                        "adapter the audit scores)")
    return store


def use_adapter(run: RunFolder, client_id: str, model: PeftModel, tag: str) -> None:
    """Loads ``client_id``'s adapter checkpoint ``tag`` into ``model`` (one from
    :func:`load_client_model`), in place: auditing a second adapter does not load the base
    model again."""
    _adapter_file(run, client_id, tag).load_adapter(model, tag)


def now() -> float:
    return time.perf_counter()


def elapsed(t0: float) -> float:
    """Seconds since ``t0`` (from :func:`now`), to the hundredth."""
    return float(f"{time.perf_counter() - t0:.2f}")


def json_number(v: float) -> float | str:
    """JSON has no infinity: ``inf`` is written as the string ``"inf"``."""
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def read_number(v: Any) -> float:
    if v in ("inf", "-inf"):
        return math.inf if v == "inf" else -math.inf
    return float(v)


def write_result(run: RunFolder, name: str, result: dict[str, Any]) -> Path:
    """Writes ``RUN_DIR/audit/<name>`` atomically (plain JSON, no NaN or infinity)."""
    from privsem.protocol.state import write_text_atomic

    path = run.audit_dir / name
    write_text_atomic(path, json.dumps(result, indent=1, allow_nan=False) + "\n")
    return path


def refresh_report(run: RunFolder) -> Path | None:
    """Regenerates report.md/html with the audit sections; a run folder the report cannot be
    written from (e.g. a damaged ledger) leaves the report as it was and says why."""
    from privsem.reports.write import write_reports

    try:
        md, _ = write_reports(run.path)
    except PrivsemError as e:
        print(f"note: report.md not regenerated: {e}", file=sys.stderr)
        return None
    return md
