"""What the report says, as blocks (:mod:`privsem.reports.document`) built from one
:class:`~privsem.reports.model.RunData`. Markdown and HTML render these same blocks, so both say
the same thing; the HTML adds the figures.

Rules for changing it: every number comes from ``RunData``; ε is the ledger's; section headings
that tests and readers rely on ("## Per client and round", "## Bytes per client per round, by
stage") keep their wording.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from privsem.reports.document import (
    Block,
    Bullets,
    Figure,
    Heading,
    Item,
    Paragraph,
    Table,
)
from privsem.reports.model import RunData, UnitSpend

DIM = 384  # sentence-embedding width (all-MiniLM-L6-v2)


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


def _eps(v: float) -> str:
    return "∞" if math.isinf(v) else f"{v:.3f}"


# ------------------------------------------------------------------------------- the summary

def summary(data: RunData) -> list[Block]:
    cfg = data.cfg
    done = max(data.metric_rounds, default=0)
    status = ("" if done >= cfg.rounds else
              f" **Unfinished: metrics cover {done} of {cfg.rounds} rounds.**")
    took = (f" Wall time {data.seconds:.0f} s." if data.seconds is not None else
            f" Client time recorded in the metrics: "
            f"{sum(r.seconds + r.eval_seconds for r in data.rows):.0f} s (training, generation, "
            "release and evaluation, summed over clients).")
    return [Heading(1, f"privsem run `{cfg.name}`"),
            Paragraph(f"{cfg.rounds} rounds, {len(cfg.clients)} clients, "
                      f"{len(data.prompt_ids)} public prompts, back-end "
                      f"`{cfg.aggregation.backend}`, consensus `{cfg.consensus.operator}`, "
                      f"selection `{cfg.consensus.selection}`.{took}{status}")]


def promises(data: RunData) -> list[Block]:
    """The configuration's guarantees in one paragraph for a reader who is not a specialist."""
    cfg = data.cfg
    rec, cli = data.spend["record"], data.spend["client"]
    after = f"after {data.last_round} of {cfg.rounds} rounds"
    s: list[str] = []
    if rec.enabled:
        s.append("**Single training examples.** Each client trains with DP-SGD, so everything "
                 "that comes out of its model (its answers, its uploads, the model itself) would "
                 "be almost as likely had any one of its training examples been left out or "
                 f"changed. The ledger accounts ε = {_eps(rec.worst())} {after} (largest "
                 f"over clients; budget {rec.budget:g}).")
    else:
        s.append("**Single training examples are not protected on their own**: DP-SGD is off, "
                 "so a client's model may memorise its data, and only the client-level noise "
                 "limits what its uploads reveal.")
    if cli.enabled:
        s.append("**Whole clients.** Everything one client uploads is clipped and noised before "
                 "it leaves, so the uploads would be almost as likely had that client not taken "
                 f"part at all: ε = {_eps(cli.worst())} accounted {after} (largest over "
                 f"clients; budget {cli.budget:g}).")
        if cfg.privacy.client.placement == "local" and cfg.aggregation.backend == "masked":
            s.append("Each client adds the full noise itself, so this holds even if the server "
                     "and the secure aggregation could not be trusted.")
        elif cfg.privacy.client.placement == "local" and cfg.aggregation.backend == "ckks":
            s.append("Each client adds the full noise itself, so this holds even if the "
                     "aggregator and the key holder colluded and decrypted single uploads.")
        elif cfg.privacy.client.placement == "local":
            s.append("Each client adds the full noise itself, so this holds against the server "
                     "too, which sees each noisy upload.")
        else:
            m = data.masking.min_survivors if data.masking else "the minimum number of"
            s.append(f"Each client adds only a share of the noise; the full noise is present "
                     f"only in the sum of at least {m} clients, so this relies on the secure "
                     "aggregation working.")
    else:
        s.append("**Whole clients are not protected**: uploads carry no noise.")
    n = len(cfg.clients)
    if cfg.aggregation.backend == "masked":
        mk = data.masking
        if mk is not None:
            s.append(f"**The server sees only a sum.** Each upload is hidden under random masks "
                     f"that cancel only when the uploads of the round's survivors (at least "
                     f"{mk.min_survivors} of {n} clients) are added, so the server learns their "
                     "noisy total, never one client's upload. This rests on cryptography and on "
                     f"fewer than {mk.threshold} of the {mk.degree + 1} holders of a client's "
                     "secret shares colluding with the server.")
        else:
            s.append("**The server sees only a sum** of the survivors' masked uploads, never one "
                     "client's upload.")
    elif cfg.aggregation.backend == "ckks":
        ck = data.ckks
        least = f"at least {ck.min_contributors} of {n}" if ck is not None else "enough"
        s.append("**The server sees only ciphertexts and their decrypted sum.** Each upload is "
                 "encrypted (CKKS, 128-bit security) under the public key of a separate key "
                 "holder; the server, acting as aggregator, adds the ciphertexts without being "
                 "able to decrypt them, and the key holder decrypts only the sum of "
                 f"{least} clients, once per round, with flooding noise. This rests on "
                 "cryptography (ring learning with errors) and on the aggregator and the key "
                 "holder not colluding.")
    else:
        s.append("**The server sees every upload**: with the `plaintext` back-end each client's "
                 "noisy upload reaches the server as it is; only the noise protects it.")
    worst = max(rec.worst() if rec.enabled else 0.0, cli.worst() if cli.enabled else 0.0)
    if math.isfinite(worst) and worst > 0:
        s.append(f"**Reading ε.** Smaller is stronger; ε of 1 or less is usually called strong. "
                 f"At ε = {worst:.2f} the odds of any conclusion about whether an example (or a "
                 f"client) was used can shift by at most a factor of e^{worst:.2f} ≈ "
                 f"{math.exp(worst):,.0f}, a loose bound that is common in machine-learning "
                 f"practice; δ = {max(rec.delta, cli.delta):g} is the small chance that even it "
                 "fails.")
    if cfg.privacy.randomness == "seeded":
        s.append("**Not a deployment setting**: the noise came from a seeded generator, "
                 "reproducible for simulation; `privacy.randomness: os` draws it from the "
                 "operating system.")
    hidden = "who took part in each round and who dropped out, the model names, the public " \
             "prompts and the consensus with its agreement per prompt"
    if cfg.consensus.selection == "shared":
        hidden += ", and the chosen pseudo-label texts"
    s.append(f"**Not hidden**: {hidden}.")
    return [Heading(2, "What this run promises", "promises"),
            Paragraph(" ".join(s), callout=True)]


# ------------------------------------------------------------------------ per client and round

def per_client(data: RunData) -> list[Block]:
    rows = data.rows
    out: list[Block] = [
        Heading(2, "Per client and round", "per-client"),
        Paragraph("Round 0 is the model before any training. *sim* is the cosine similarity of "
                  "the greedy answer's embedding to the reference answer; *recall* the share of "
                  "answers that contain the fact asked for; *own* are held-out questions on the "
                  "client's own topics, *other* on topics only other clients hold. *agree* is "
                  "the mean debiased agreement ‖c_j‖ over prompts (at most 1 without noise) and "
                  "*noise* the per-entry noise std of the consensus. Bytes are the serialised "
                  "messages of the round. ε here is what the metrics recorded when the row was "
                  "written; the next section recomputes it from the ledger."),
        Table(("round", "client", "model", "sim own", "sim other", "recall own", "recall other",
               "NLL own", "NLL other", "agree", "noise", "KiB up", "KiB down", "ε record",
               "ε client", "train loss", "seconds"),
              tuple((str(r.round), r.client, r.model, _f(r.scores["own_similarity"]),
                     _f(r.scores["other_similarity"]), _f(r.scores["own_key_recall"], 2),
                     _f(r.scores["other_key_recall"], 2), _f(r.scores["own_nll"], 2),
                     _f(r.scores["other_nll"], 2), _f(r.mean_agreement),
                     _f(r.consensus_noise_std), _kb(r.bytes_up), _kb(r.bytes_down),
                     _f(r.epsilon_record, 2), _f(r.epsilon_client, 2), _f(r.train_loss, 3),
                     _f(r.seconds, 1)) for r in rows),
              numeric=(True, False, False, *([True] * 14)))]
    noisy = [r.consensus_noise_std for r in rows if r.consensus_noise_std]
    if noisy:
        worst = max(noisy)
        norm = worst * math.sqrt(DIM)
        if norm > 1.0:
            out.append(Paragraph(
                f"**Read the agreement with care.** The consensus carries noise of norm about "
                f"{norm:.1f} per prompt (std {worst:.3f} per entry × √{DIM}), against a signal of "
                "norm at most 1: at this cohort size and client-level ε the consensus, its "
                "agreement and the pseudo-label choices are dominated by noise. More clients "
                "(noise falls as 1/√n), fewer prompts, a larger ε or distributed noise under "
                "secure aggregation change that."))
    ups = [r for r in rows if r.round > 0 and r.bytes_up]
    lora = {r.client: r.lora_parameters for r in rows if r.lora_parameters}
    if ups and lora:
        up = max(r.bytes_up for r in ups)
        out.append(Paragraph(
            f"Traffic: at most {_kb(up)} KiB up per client per round. Parameter averaging of "
            "the same LoRA adapters would ship "
            + ", ".join(f"`{c}` {n:,} parameters ({n * 4 / 1024:.0f} KiB fp32)"
                        for c, n in lora.items()) + " per client per round."))
    return out


# ------------------------------------------------------------------------------------ privacy

def _spend_rows(s: UnitSpend, last: int) -> list[tuple[str, ...]]:
    rows = []
    for c, series in s.by_client.items():
        left = s.left(c) if math.isfinite(s.budget) else math.inf
        rows.append((c, s.unit, *(_eps(series[r]) for r in range(1, last + 1)),
                     "none (DP off)" if math.isinf(s.budget) else f"{s.budget:g}",
                     "–" if math.isinf(left) else f"{left:.3f}"))
    return rows


def _delta_caption(data: RunData) -> str:
    rd, cd = data.spend["record"].delta, data.spend["client"].delta
    return f"ε at δ = {rd:g}." if rd == cd else f"ε at δ = {rd:g} (record), {cd:g} (client)."


def spent(data: RunData) -> list[Block]:
    cfg = data.cfg
    acc = cfg.privacy.accountant.upper()
    n = len(data.ledger)
    head = f", head `{data.ledger_head[:16]}…`" if data.ledger_head else ""
    out: list[Block] = [
        Heading(2, "Privacy: what was spent", "spent"),
        Paragraph(f"From `ledger.jsonl`: {n} entries, hash chain and keyed head verified"
                  f"{head}. ε after each round is recomputed here from the ledger's `dp_accounting` events of each "
                  f"client and unit ({acc} accountant), not copied from the metrics. The ledger "
                  "charges every release before it leaves the client.")]
    last = data.last_round
    if last >= 1:
        out.append(Table(
            ("client", "unit", *(f"ε after round {r}" for r in range(1, last + 1)), "budget",
             "left"),
            tuple(_spend_rows(data.spend["record"], last) + _spend_rows(data.spend["client"],
                                                                        last)),
            numeric=(False, False, *([True] * (last + 2))),
            caption=_delta_caption(data)))
    else:
        out.append(Paragraph("No round ran: nothing was released and nothing was spent."))
    out.append(Figure("epsilon", "ε spent per client after each round, per unit, from the "
                      "ledger; the dashed red line is the budget. Clients that spent alike "
                      "overlap (later clients are drawn thinner).",
                      "ε spent per client per round, record and client level, with the budget"))
    out.append(Figure("budget", "The budget of each client and unit: the coloured part is "
                      "spent, the grey part is left.", "privacy budget left per client"))
    if data.notes:
        out.append(Bullets(tuple(Item(t) for t in data.notes)))
    return out


def mechanisms(data: RunData) -> list[Block]:
    cfg = data.cfg
    rp, cp = cfg.privacy.record, cfg.privacy.client
    items: list[Item] = []
    if rp.enabled:
        applied = data.dpsgd()
        kids = []
        for c in data.clients:
            d = applied.get(c)
            n = f"N={data.examples[c]}, " if data.examples and c in data.examples else ""
            if d is None:
                kids.append(f"`{c}`: {n}no DP-SGD round was charged")
            else:
                kids.append(f"`{c}`: {n}q={d['sample_rate']:.4f}, {d['steps']} steps a round, "
                            f"σ={d['noise_multiplier']:.4f}")
        items.append(Item(
            f"**Record level** (one training example of one client): DP-SGD with Poisson "
            f"sampling, clip {rp.max_grad_norm}, target ε={rp.epsilon} at δ={rp.delta} over "
            f"{cfg.rounds} rounds ({cfg.privacy.accountant.upper()} accountant). As applied, "
            "from the ledger:", tuple(kids)))
    else:
        items.append(Item("**Record level**: DP-SGD is OFF. Private data is used without "
                          "record-level protection beyond the client-level release."))
    release = data.client_release()
    mech, rel = release if release is not None else ("", {})
    P = len(data.prompt_ids)
    if cp.enabled and mech == "embedding_discrete_gaussian":
        items.append(Item(
            f"**Client level** (everything one client contributes): joint clip C="
            f"{rel['clip']:.4f} on the ({P} × d) matrix, fixed-point scale {rel['scale']:.0f}, "
            f"then a **discrete Gaussian** on the integer lattice (multiplier z="
            f"{rel['noise_multiplier']:.4f} on the integer sensitivity "
            f"{rel['sensitivity_integer']:.4g}; σ={rel['sigma_integer']:.4g} per entry per "
            f"client, {rel['noise_shares']} share(s) make the full noise), placement "
            f"`{cp.placement}`, accounted in zCDP (ρ={rel['rho']:.4f} per round), target "
            f"ε={cp.epsilon} at δ={cp.delta} over {cfg.rounds} rounds."))
    elif cp.enabled and release is not None:
        items.append(Item(
            f"**Client level** (everything one client contributes): joint clip C="
            f"{rel['clip']:.4f} on the ({P} × d) matrix, Gaussian noise z="
            f"{rel['noise_multiplier']:.4f} (std {rel['noise_std']:.4f} per entry), placement "
            f"`{cp.placement}`, target ε={cp.epsilon} at δ={cp.delta} over {cfg.rounds} "
            "rounds."))
    elif cp.enabled:
        items.append(Item(f"**Client level**: target ε={cp.epsilon} at δ={cp.delta} over "
                          f"{cfg.rounds} rounds; no client-level release was charged."))
    else:
        items.append(Item("**Client level**: embedding noise is OFF; the server sees exact "
                          "embeddings."))
    if cfg.privacy.randomness == "seeded":
        items.append(Item("Noise is drawn from a **seeded** generator: reproducible for "
                          "simulation, not a deployment setting (use `privacy.randomness: os`)."))
    items.append(Item("Accounted ε per client and unit is the ledger's (`ledger.jsonl`), which "
                      "charges each release before it happens."))
    out: list[Block] = [Heading(2, "Privacy: mechanisms and targets", "mechanisms"),
                        Bullets(tuple(items))]
    refused = [e for r in data.rows for e in r.status if "refused" in e or "withheld" in e]
    if refused:
        out.append(Paragraph("Refusals:"))
        out.append(Bullets(tuple(Item(e) for e in refused)))
    return out


# ----------------------------------------------------------------------------- who saw what

def parties(data: RunData) -> list[Block]:
    cfg = data.cfg
    shared = cfg.consensus.selection == "shared"
    texts_server = " plus the nominated texts (shared selection)" if shared else ""
    if cfg.aggregation.backend == "masked":
        m = cfg.aggregation.masked
        mk = data.masking
        roster = (f"its {mk.degree} neighbours'" if mk is not None else "its neighbours'")
        holders = (f"; fewer than {mk.threshold} of the {mk.degree + 1} holders learn nothing"
                   if mk is not None else "")
        server_saw = (
            f"`masked` back-end, pairwise masking with Shamir recovery, {m.modulus_bits}-bit "
            f"modulus, `{m.graph}` graph" + (", signed consistency round" if m.consistency_check
                                              else "") +
            ": each client's per-round X25519 public keys and signature, share ciphertexts it "
            "cannot open (ChaCha20-Poly1305 between clients), each client's masked vector "
            f"(uniform mod 2^{m.modulus_bits}, alone indistinguishable from random), signatures "
            "over the survivor list, and at unmasking one share per peer: of each survivor's "
            "self-mask seed or of each dropped client's mask key, never both. From these it "
            "learns **only the noisy sum over the survivors**, never one client's matrix"
            + ("; then the nominated texts (shared selection)." if shared else "."))
        server_hidden = ("any one client's matrix, noisy or not; private training data; model "
                         "weights" + ("" if shared else "; any generated text"))
        others_saw = (f"Each client: {roster} public keys and signatures, the encrypted Shamir "
                      "shares they addressed to it (one share of each neighbour's secrets, "
                      "useless below the threshold), the survivor list, the consensus points "
                      "and agreement per prompt"
                      + (" and the chosen pseudo-label texts." if shared else
                         "; pseudo-labels were chosen locally, so no text left any client."))
        key_holder = ("**None in this back-end**: no party holds a key that decrypts uploads. "
                      "Each client's mask secrets are split by Shamir sharing among itself and "
                      f"its neighbours{holders}.")
    elif cfg.aggregation.backend == "ckks":
        c, ck = cfg.aggregation.ckks, data.ckks
        digest = next((str(r.aggregation["context_digest"]) for r in data.rows
                       if r.aggregation.get("context_digest")), None)
        ctx = (f"the key holder's public context (SHA-256 {digest[:16]}…, bound into every "
               "round's session id; no secret key)" if digest else
               "the key holder's public context (no secret key)")
        least = str(ck.min_contributors) if ck is not None else "the minimum number of"
        server_saw = (
            f"`ckks` back-end (TenSEAL CKKS, N = {c.poly_modulus_degree}, primes "
            f"{list(c.coeff_mod_bit_sizes)} bits, scale 2^{c.scale_bits}, 128-bit security), "
            f"acting as the aggregator: {ctx}; each client's upload as ciphertexts, which it "
            "checked against that context and added without decrypting; and from the key "
            "holder the decrypted sum over the contributors, with flooding noise of std "
            f"{c.flood_std:.2g} and rounded to multiples of 2^-{c.grid_bits}. It learns **only "
            "the noisy sum over the survivors**, never one client's matrix, and never held a "
            "secret key" + ("; then the nominated texts (shared selection)." if shared else "."))
        server_hidden = ("any one client's matrix, noisy or not; the secret key; private "
                         "training data; model weights" + ("" if shared else
                                                           "; any generated text"))
        others_saw = ("the key holder's public context, the consensus points and agreement "
                      "per prompt" + (" and the chosen pseudo-label texts." if shared else
                                      "; pseudo-labels were chosen locally, so no text left "
                                      "any client."))
        key_holder = (
            "**`key-holder`, a party separate from the server**: it made the run's CKKS keys and "
            "**alone held the secret key**; the clients and the aggregator held only the public "
            "context. Each round it received one encrypted sum and the list of its "
            f"contributors, refused any sum of fewer than {least} cohort members or whose "
            "count slot disagreed with that list, decrypted it once (a second request for the "
            "round is refused), and released it with flooding noise, rounded.")
        sizes = [b["request"] for r in data.rows
                 if isinstance(b := r.aggregate_detail.get("bytes"), dict) and "request" in b]
        if sizes:
            key_holder += (f" The encrypted sum it received was {_kb(max(sizes))} KiB per "
                           "round.")
    else:
        server_saw = ("`plaintext` back-end: every contributing client's clipped and noised "
                      f"embedding matrix, the sum, and the consensus{texts_server}.")
        server_hidden = ("the matrices before noise; private training data; model weights"
                         + ("" if shared else "; any generated text"))
        others_saw = ("the consensus points and agreement per prompt"
                      + (" and the chosen pseudo-label texts." if shared else
                         "; pseudo-labels were chosen locally, so no text left any client."))
        key_holder = ("**None in this back-end**: uploads are not encrypted; the server reads "
                      "each noisy matrix.")
    key_holder_hidden = ("each client's ciphertexts and matrix; private training data; model "
                         "weights; any text" if cfg.aggregation.backend == "ckks" else "–")
    others_hidden = ("other clients' uploads, models and private data"
                     + ("" if shared else "; any generated text"))
    out: list[Block] = [
        Heading(2, "What each party saw", "parties"),
        Table(("party", "what it saw", "what stays hidden from it"), (
            ("**Server**", server_saw, server_hidden),
            ("**Other clients**", others_saw, others_hidden),
            ("**Key holder**", key_holder, key_holder_hidden)))]
    if cfg.aggregation.backend in ("masked", "ckks") and data.outcomes:
        items = []
        for o in data.outcomes:
            if o.aborted:
                items.append(Item(f"round {o.round}: **aborted**, no aggregate released "
                                  f"({o.aborted})"))
            else:
                items.append(Item(f"round {o.round}: sum over {len(o.counted)} survivors "
                                  f"({', '.join(o.counted)}); dropped: "
                                  f"{', '.join(o.dropped) or 'none'}"))
        out.append(Paragraph("What the server's sum covered, round by round:"))
        out.append(Bullets(tuple(items)))
    out.append(Paragraph(f"Ledger entries: {len(data.ledger)}."))
    return out


# ------------------------------------------------------------------------ utility, agreement

def utility(data: RunData) -> list[Block]:
    if not any(v is not None for r in data.rows for v in r.scores.values()):
        return [Heading(2, "Utility per round", "utility"),
                Paragraph("No held-out scores: evaluation was off in this run.")]
    return [Heading(2, "Utility per round", "utility"),
            Paragraph("Held-out scores of each client's model after each round (round 0: "
                      "before training), the numbers of the per-client table above. Solid "
                      "lines: questions on the client's own topics; dashed: topics only other "
                      "clients hold."),
            Figure("utility", "Held-out answer similarity, reference NLL and key recall per "
                   "client and round.", "utility per client and round")]


def _agreement_noise(data: RunData) -> str:
    noise = max((o.noise_std or 0.0 for o in data.outcomes), default=0.0)
    if noise * math.sqrt(DIM) <= 1.0:
        return ""
    return (f" Here the consensus carries noise of norm about {noise * math.sqrt(DIM):.1f} per "
            "prompt, so these values are mostly noise: the debiasing removes the noise's "
            "expected size, not the noise, and values above 1 cannot come from the answers "
            "alone.")


def agreement(data: RunData) -> list[Block]:
    out: list[Block] = [Heading(2, "Agreement per prompt", "agreement")]
    rounds = [o for o in data.outcomes if o.agreement is not None]
    if not data.outcomes:
        out.append(Paragraph("No round has finished, so no consensus was formed."))
        return out
    if not rounds:
        out.append(Paragraph("This run folder does not record agreement per prompt (written "
                             "before metrics.jsonl carried it); the mean per round is in the "
                             "per-client table."))
        return out
    thr = data.cfg.consensus.agreement_threshold
    out.append(Paragraph(
        "The debiased agreement a_j = ‖c_j‖ of the consensus for each public prompt: about 1 "
        "when every client's answers embed alike, about 0 when they point in unrelated "
        "directions or when the noise drowns them. "
        + (f"Prompts below {thr:g} got no pseudo-label." if thr > 0 else
           "The label threshold is 0, so every prompt got a pseudo-label.")
        + _agreement_noise(data)))
    out.append(Figure("agreement", "Agreement per public prompt, one bar per round.",
                      "agreement per prompt and round"))
    P = len(rounds[0].agreement or ())
    ids = data.prompt_ids if len(data.prompt_ids) == P else tuple(str(j + 1) for j in range(P))
    out.append(Table(("prompt", *(f"round {o.round}" for o in rounds)),
                     tuple((ids[j], *(_f((o.agreement or ())[j]) for o in rounds))
                           for j in range(P)),
                     numeric=(False, *([True] * len(rounds)))))
    return out


def traffic(data: RunData) -> list[Block]:
    staged = [r for r in data.rows if r.round > 0 and r.bytes_by_stage]
    if not staged:
        return []
    stages = list(dict.fromkeys(k for r in staged for k in r.bytes_by_stage))
    out: list[Block] = [
        Heading(2, "Bytes per client per round, by stage", "bytes"),
        Figure("bytes", "KiB of serialised messages each client sent and received per round.",
               "bytes up and down per client and round"),
        Paragraph("Up / down, in bytes of serialised messages."),
        Table(("round", "client", *stages),
              tuple((str(r.round), r.client, *(
                  f"{r.bytes_by_stage[k].up:,} / {r.bytes_by_stage[k].down:,}"
                  if k in r.bytes_by_stage else "–" for k in stages)) for r in staged),
              numeric=(True, False, *([True] * len(stages))))]
    return out


def build(data: RunData, figures: Collection[str]) -> list[Block]:
    """The whole report, in reading order; figures not in ``figures`` (no data) are left out."""
    blocks = [*summary(data), *promises(data), *per_client(data), *spent(data), *parties(data),
              *mechanisms(data), *utility(data), *agreement(data), *traffic(data)]
    return [b for b in blocks if not isinstance(b, Figure) or b.key in figures]


def footer(data: RunData) -> str:
    return (f"Written by privsem from the run folder `{data.run_dir.name}`: config.yaml, metrics.jsonl "
            f"({len(data.rows)} rows), ledger.jsonl ({len(data.ledger)} entries, hash chain "
            "verified).")
