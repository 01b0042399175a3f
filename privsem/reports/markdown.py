"""``RUN_DIR/report.md``: one table per client and round (scores, agreement, bytes, ε), then the
privacy plan and what each party saw. Everything is read back from the run folder's files, so
the report shows what was written, not what was intended."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from privsem.config import RunConfig
from privsem.privacy.plan import PrivacyPlan


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        return f"{v:.{nd}f}"
    return str(v)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f}"


def write_report(out: Path, cfg: RunConfig, plan: PrivacyPlan, *, seconds: float) -> Path:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    ledger = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()
              if line] if (out / "ledger.jsonl").exists() else []
    L: list[str] = []
    L.append(f"# privsem run `{cfg.name}`\n")
    L.append(f"{cfg.rounds} rounds, {len(cfg.clients)} clients, {plan.prompts} public prompts, "
             f"back-end `{cfg.aggregation.backend}`, consensus `{cfg.consensus.operator}`, "
             f"selection `{cfg.consensus.selection}`. Wall time {seconds:.0f} s.\n")
    L.append("## Per client and round\n")
    L.append("Round 0 is the model before any training. *sim* is the cosine similarity of the "
             "greedy answer's embedding to the reference answer; *recall* the share of answers "
             "that contain the fact asked for; *own* are held-out questions on the client's own "
             "topics, *other* on topics only other clients hold. *agree* is the mean debiased "
             "agreement ‖c_j‖ over prompts (at most 1 without noise) and *noise* the per-entry "
             "noise std of the consensus. Bytes are the serialised messages of the round.\n")
    L.append("| round | client | model | sim own | sim other | recall own | recall other "
             "| NLL own | NLL other | agree | noise | KiB up | KiB down | ε record | ε client "
             "| train loss | seconds |")
    L.append("|" + "---|" * 17)
    for r in rows:
        L.append("| " + " | ".join([
            str(r["round"]), r["client"], r["model"], _f(r.get("own_similarity")),
            _f(r.get("other_similarity")), _f(r.get("own_key_recall"), 2),
            _f(r.get("other_key_recall"), 2), _f(r.get("own_nll"), 2), _f(r.get("other_nll"), 2),
            _f(r.get("mean_agreement")), _f(r.get("consensus_noise_std")), _kb(r["bytes_up"]), _kb(r["bytes_down"]),
            _f(r["epsilon_record"], 2), _f(r["epsilon_client"], 2), _f(r.get("train_loss"), 3),
            _f(r["seconds"], 1)]) + " |")
    L.append("")
    noisy = [r for r in rows if r.get("consensus_noise_std")]
    if noisy:
        dim = 384
        worst = max(r["consensus_noise_std"] for r in noisy)
        norm = worst * math.sqrt(dim)
        if norm > 1.0:
            L.append(f"**Read the agreement with care.** The consensus carries noise of norm about "
                     f"{norm:.1f} per prompt (std {worst:.3f} per entry × √{dim}), against a "
                     "signal of norm at most 1: at this cohort size and client-level ε the "
                     "consensus, its agreement and the pseudo-label choices are dominated by "
                     "noise. More clients (noise falls as 1/√n), fewer prompts, a larger ε or "
                     "distributed noise under secure aggregation change that.\n")
    ups = [r for r in rows if r["round"] > 0 and r["bytes_up"]]
    lora_known = any(r.get("lora_parameters") for r in rows)
    if ups and lora_known:
        lora = {r["client"]: r.get("lora_parameters") for r in rows if r.get("lora_parameters")}
        up = max(r["bytes_up"] for r in ups)
        L.append(f"Traffic: at most {_kb(up)} KiB up per client per round. Parameter averaging "
                 "of the same LoRA adapters would ship "
                 + ", ".join(f"`{c}` {n:,} parameters ({n * 4 / 1024:.0f} KiB fp32)"
                             for c, n in lora.items()) + " per client per round.\n")
    L.append("## Privacy\n")
    rp, cp = cfg.privacy.record, cfg.privacy.client
    if rp.enabled:
        L.append(f"- **Record level** (one training example of one client): DP-SGD with Poisson "
                 f"sampling, clip {rp.max_grad_norm}, target ε={rp.epsilon} at δ={rp.delta} "
                 f"over {cfg.rounds} rounds ({cfg.privacy.accountant.upper()} accountant).")
        for cp_ in plan.clients.values():
            L.append(f"  - `{cp_.client}`: N={cp_.examples}, q={cp_.sample_rate:.4f}, "
                     f"{cp_.steps_per_round} steps a round, σ={cp_.noise_multiplier:.4f}")
    else:
        L.append("- **Record level**: DP-SGD is OFF. Private data is used without record-level "
                 "protection beyond the client-level release.")
    masked = [e["detail"] for e in ledger if e.get("mechanism") == "embedding_discrete_gaussian"]
    if cp.enabled and masked:
        d = masked[-1]
        L.append(f"- **Client level** (everything one client contributes): joint clip C="
                 f"{plan.clip:.4f} on the ({plan.prompts} × d) matrix, fixed-point scale "
                 f"{d['scale']:.0f}, then a **discrete Gaussian** on the integer lattice "
                 f"(multiplier z={plan.embedding_noise_multiplier:.4f} on the integer "
                 f"sensitivity {d['sensitivity_integer']:.4g}; σ={d['sigma_integer']:.4g} per "
                 f"entry per client, {d['noise_shares']} share(s) make the full noise), "
                 f"placement `{cp.placement}`, accounted in zCDP (ρ={d['rho']:.4f} per round), "
                 f"target ε={cp.epsilon} at δ={cp.delta} over {cfg.rounds} rounds.")
    elif cp.enabled:
        L.append(f"- **Client level** (everything one client contributes): joint clip C="
                 f"{plan.clip:.4f} on the ({plan.prompts} × d) matrix, Gaussian noise z="
                 f"{plan.embedding_noise_multiplier:.4f} (std {plan.embedding_noise_std:.4f} per "
                 f"entry), placement `{cp.placement}`, target ε={cp.epsilon} at δ={cp.delta} "
                 f"over {cfg.rounds} rounds.")
    else:
        L.append("- **Client level**: embedding noise is OFF; the server sees exact embeddings.")
    if cfg.privacy.randomness == "seeded":
        L.append("- Noise is drawn from a **seeded** generator: reproducible for simulation, "
                 "not a deployment setting (use `privacy.randomness: os`).")
    L.append("- Accounted ε per client and unit is the ledger's (`ledger.jsonl`), which charges "
             "each release before it happens.\n")
    refused = [e for r in rows for e in r.get("status", []) if "refused" in e or "withheld" in e]
    if refused:
        L.append("Refusals:\n")
        L.extend(f"- {e}" for e in refused)
        L.append("")
    L.append("## What each party saw\n")
    shared = cfg.consensus.selection == "shared"
    if cfg.aggregation.backend == "plaintext":
        L.append("- **Server** (`plaintext` back-end): every contributing client's clipped and "
                 "noised embedding matrix, the sum, and the consensus"
                 + (" plus the nominated texts (shared selection)." if shared else "."))
    elif cfg.aggregation.backend == "masked":
        m = cfg.aggregation.masked
        L.append(
            "- **Server** (`masked` back-end, pairwise masking with Shamir recovery, "
            f"{m.modulus_bits}-bit modulus, `{m.graph}` graph"
            + (", signed consistency round" if m.consistency_check else "") + "): each "
            "client's per-round X25519 public keys and signature, share ciphertexts it cannot "
            "open (ChaCha20-Poly1305 between clients), each client's masked vector (uniform "
            f"mod 2^{m.modulus_bits}, alone indistinguishable from random), signatures over "
            "the survivor list, and at unmasking one share per peer: of each survivor's "
            "self-mask seed or of each dropped client's mask key, never both. From these it "
            "learns **only the noisy sum over the survivors**, never one client's matrix"
            + ("; then the nominated texts (shared selection)." if shared else "."))
        per_round: dict[int, dict[str, Any]] = {}
        for r in rows:
            if r["round"] > 0:
                pr = per_round.setdefault(r["round"], {"counted": [], "dropped": set(),
                                                       "aborted": r.get("round_aborted")})
                if r.get("counted"):
                    pr["counted"].append(r["client"])
                pr["dropped"].update(r.get("dropped") or [])
        for rnd, pr in sorted(per_round.items()):
            if pr["aborted"]:
                L.append(f"  - round {rnd}: **aborted**, no aggregate released "
                         f"({pr['aborted']})")
            else:
                L.append(f"  - round {rnd}: sum over {len(pr['counted'])} survivors "
                         f"({', '.join(pr['counted'])}); dropped: "
                         f"{', '.join(sorted(pr['dropped'])) or 'none'}")
    L.append("- **Other clients**: the consensus points and agreement per prompt"
             + (" and the chosen pseudo-label texts." if cfg.consensus.selection == "shared"
                else "; pseudo-labels were chosen locally, so no text left any client."))
    L.append(f"- Ledger entries: {len(ledger)}.\n")
    staged = [r for r in rows if r["round"] > 0 and r.get("bytes_by_stage")]
    if staged:
        stages = list(dict.fromkeys(k for r in staged for k in r["bytes_by_stage"]))
        L.append("## Bytes per client per round, by stage\n")
        L.append("Up / down, in bytes of serialised messages.\n")
        L.append("| round | client | " + " | ".join(stages) + " |")
        L.append("|" + "---|" * (len(stages) + 2))
        for r in staged:
            b = r["bytes_by_stage"]
            L.append(f"| {r['round']} | {r['client']} | " + " | ".join(
                f"{b[k]['up']:,} / {b[k]['down']:,}" if k in b else "–" for k in stages) + " |")
        L.append("")
    p = out / "report.md"
    p.write_text("\n".join(L) + "\n", encoding="utf-8")
    return p
