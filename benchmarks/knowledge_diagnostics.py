"""Per-prompt diagnostics of a semantic-consensus run of the bench's knowledge task.

    python benchmarks/knowledge_diagnostics.py RUN_DIR [--adapters]

``RUN_DIR`` is a method's run folder of ``privsem bench`` (for example
``SCRATCH/runs/knowledge/homogeneous/none/semantic``), whose clients kept their state. For each
round it prints, from the stored candidates and confidences (no model is loaded):

- how many of the holders' greedy answers to the public prompts contain the fact's key, and how
  many holders had the key among any candidate (what consensus can carry at best);
- the non-holders' candidates that contain the key (what they learnt from earlier labels);
- how well the client's confidence separates the facts it holds from those it lacks: the mean
  confidence of each, the share of each the default acceptance gate (the federation's mean)
  marks as known, and the AUC.

``--adapters`` also loads each saved adapter (``adapter-trained-R``: after the private part of
phase R) and prints the greedy answers' key recall on the client's own and others' evaluation
questions and on the public prompts, held and not held (about a minute per adapter on 2 cores).

Which client holds which fact is the bench's rule (``privsem.bench.tasks.write_knowledge``: fact
i is held by clients i, i+1, ... mod n); the run must use the bench's knowledge task with its
default 4 entities per topic and 2 holders.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from privsem.bench.tasks import knowledge_facts
from privsem.config import load_config

HOLDERS = 2
ENTITIES_PER_TOPIC = 4


def _holds(k: int, i: int, n: int) -> bool:
    return (k - i) % n < HOLDERS


def _rounds(run: Path, client: str) -> list[int]:
    out = []
    for p in (run / "state" / client).glob("candidates-*.json"):
        tag = p.stem.split("-", 1)[1]
        if tag.isdigit():
            out.append(int(tag))
    return sorted(out)


def candidates_and_confidence(run: Path, clients: list[str]) -> None:
    facts = knowledge_facts(ENTITIES_PER_TOPIC)
    n = len(clients)
    for r in _rounds(run, clients[0]):
        greedy = anyc = held_total = learnt = 0
        weights = []
        for k, c in enumerate(clients):
            cands = json.loads((run / "state" / c / f"candidates-{r}.json").read_text())
            if len(cands) != len(facts):
                sys.exit(f"{run}: client {c} has {len(cands)} prompts, the knowledge task "
                         f"{len(facts)}; is this a run of the bench's knowledge task?")
            for i, f in enumerate(facts):
                hit = [f.key.lower() in t.lower() for t in cands[i]]
                if _holds(k, i, n):
                    held_total += 1
                    greedy += hit[0]
                    anyc += any(hit)
                else:
                    learnt += any(hit)
            conf = run / "state" / c / f"confidence-{r}.json"
            weights.append(json.loads(conf.read_text()) if conf.exists() else None)
        line = (f"round {r}: holders' greedy answer right {greedy}/{held_total}, any candidate "
                f"right {anyc}/{held_total}; non-holders' candidates right "
                f"{learnt}/{len(facts) * n - held_total}")
        if all(w is not None for w in weights):
            W = np.asarray(weights, dtype=np.float64)
            held = np.array([[_holds(k, i, n) for i in range(len(facts))] for k in range(n)])
            knows = W >= W.sum(axis=0) / n
            auc = float(np.mean(W[held][:, None] > W[~held][None, :])
                        + 0.5 * np.mean(W[held][:, None] == W[~held][None, :]))
            line += (f" | confidence held {W[held].mean():.3f}, lacked {W[~held].mean():.3f}; "
                     f"gate marks {knows[held].mean():.0%} of held and {knows[~held].mean():.0%}"
                     f" of lacked facts as known; AUC {auc:.2f}")
        print(line, flush=True)


def adapters(run: Path) -> None:
    import torch

    from privsem.models.generation import generate
    from privsem.models.loading import load_model
    from privsem.models.prompting import resolve_format
    from privsem.models.training import add_lora
    from privsem.protocol.state import ClientStore

    cfg = load_config(str(run / "config.yaml"))
    facts = knowledge_facts(ENTITIES_PER_TOPIC)
    n = len(cfg.clients)
    prompts = [json.loads(line) for line in Path(cfg.prompts).read_text().splitlines() if line]
    torch.manual_seed(0)
    for k, cc in enumerate(cfg.clients):
        evals = [json.loads(line) for line in Path(cc.eval).read_text().splitlines() if line]
        loaded = load_model(cc.model.name, seed=0)
        lora = cc.model.lora
        model = add_lora(loaded.model, rank=lora.rank, alpha=lora.alpha, targets=lora.targets,
                         dropout=lora.dropout)
        fmt = resolve_format(loaded.tokenizer, cc.model.prompt_format)
        store = ClientStore(run / "state" / cc.id)
        tags = sorted(p.stem.removeprefix("adapter-") for p in store.root.glob("adapter-*"))
        for tag in tags:
            store.load_adapter(model, tag)
            model.eval()
            convs = ([(("user", e["instruction"]),) for e in evals]
                     + [(("user", p["prompt"]),) for p in prompts])
            answers = [a[0] for a in generate(model, loaded.tokenizer, fmt, convs, k=1,
                                              max_new_tokens=24, temperature=1.0, top_p=1.0,
                                              batch_size=16, seed=0, sample=False)]
            ev, pub = answers[:len(evals)], answers[len(evals):]

            def right(rows: list[tuple[str, str]]) -> str:
                return f"{sum(key.lower() in a.lower() for key, a in rows)}/{len(rows)}"

            own = [(e["key"], a) for e, a in zip(evals, ev, strict=True) if e["scope"] == "own"]
            other = [(e["key"], a) for e, a in zip(evals, ev, strict=True)
                     if e["scope"] == "other"]
            held = [(f.key, pub[i]) for i, f in enumerate(facts) if _holds(k, i, n)]
            lacked = [(f.key, pub[i]) for i, f in enumerate(facts) if not _holds(k, i, n)]
            print(f"{cc.id} {tag}: eval own {right(own)}, others' {right(other)} | public "
                  f"prompts held {right(held)}, lacked {right(lacked)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a method's run folder of privsem bench")
    ap.add_argument("--adapters", action="store_true",
                    help="also score every saved adapter (loads the models)")
    args = ap.parse_args()
    if not (args.run / "config.yaml").is_file():
        sys.exit(f"{args.run}: no config.yaml; give a method's run folder, e.g. "
                 "SCRATCH/runs/knowledge/homogeneous/none/semantic")
    clients = [c.id for c in load_config(str(args.run / "config.yaml")).clients]
    candidates_and_confidence(args.run, clients)
    if args.adapters:
        adapters(args.run)


if __name__ == "__main__":
    main()
