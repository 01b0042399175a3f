"""Embedding-inversion audit of one client's uploads (TESTING.md T44):
``privsem audit inversion RUN_DIR --client C``.

What could the server read from one of this client's uploads? Each round the client uploads its
(P × 384) answer matrix (row j: the normalised mean embedding of its k candidate answers to
public prompt j), jointly clipped, with noise added (:mod:`privsem.audits.inversion` describes
the attacks). For every round the client uploaded in, this audit:

1. reads the upload exactly as it left the client (``state/<client>/release-<r>.safetensors``,
   cached before sending; for the masked back-end the fixed-point words with their discrete
   Gaussian noise, decoded here with the scale the ledger recorded) and the client's candidate
   answers (``state/<client>/candidates-<r>.json``, client-local);
2. recomputes the clean clipped matrix from those answers, and checks that the upload minus it
   has the noise std the ledger recorded (so the audit attacks the real release);
3. runs the nearest-neighbour inversion on the upload at the noise actually used, against a
   pool of texts the attacker is granted: the answers of *every* client to the round's prompts
   (this client's included: the worst case, the pool holds the truth), every pseudo-label of
   the run and the public prompts. The true text of row j is the client's candidate nearest the
   clean row. Reported: top-1 accuracy (exact text), the share of rows where the retrieved text
   is any of the client's k answers, and token-F1, each next to chance;
4. trains the bag-of-words inverter on the pool minus this client's own answers (the attacker
   does not hold them) with noise of the same std, and scores it on the upload;
5. repeats 3 and 4 on the clean matrix with fresh noise over a range of noise levels (the curve),
   which shows at what noise the answers become readable.

Who could mount this: with the ``plaintext`` back-end the server sees each upload as it is. With
``masked`` the server never sees one upload, only the noisy sum over the survivors; the audit
then measures the worst case in which secure aggregation is broken and only the client's own
(local) noise protects it. With ``placement: distributed`` one upload carries only a share of
the noise, so that worst case is weaker still; the audit measures the noise the upload carried.

T44 verdict per round: at the noise used, the nearest-neighbour token-F1 and the inverter's
token-F1 stay within ``margin`` (default 0.1) of chance. Outputs
``RUN_DIR/audit/inversion-<client>.json`` and ``inversion-<client>.png``, and the report's
audit section.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privsem.audits.folder import (
    RunFolder,
    elapsed,
    now,
    open_run,
    refresh_report,
    write_result,
)
from privsem.audits.inversion import (
    InverterConfig,
    evaluate_inverter,
    inverter_curve,
    nearest_neighbour_inversion,
    nn_inversion_curve,
    train_bow_inverter,
)
from privsem.confidence import upload_dim
from privsem.errors import DataError
from privsem.rng import SeededRandomness

CURVE_STDS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
EMPTY = "(empty answer)"  # what the client embeds for a blank answer (protocol.client)


def result_name(client: str) -> str:
    return f"inversion-{client}.json"


def plot_name(client: str) -> str:
    return f"inversion-{client}.png"


def decode_words(words: np.ndarray, modulus_bits: int) -> np.ndarray:
    """Signed integers from fixed-point words mod 2^b (the masked back-end's encoding,
    :func:`privsem.aggregation.masked.encoding.encode_matrix`)."""
    v = np.asarray(words).astype(np.uint64)
    if modulus_bits == 64:
        return v.view(np.int64).copy()
    v &= np.uint64((1 << modulus_bits) - 1)
    half = 1 << (modulus_bits - 1)
    signed = v.astype(np.int64)
    neg = signed >= half
    signed[neg] -= half  # two steps of 2^(b-1): 2^b itself may not fit in int64 (b = 63)
    signed[neg] -= half
    return signed


@dataclass(frozen=True)
class Upload:
    round: int
    matrix: np.ndarray  # (P, d) float64, as the server would decode it
    noise_std: float  # per entry, as the ledger recorded it
    clip: float
    detail: dict[str, Any]


def read_upload(run: RunFolder, client: str, rnd: int, prompts: int, dim: int) -> Upload | None:
    """The client's release of round ``rnd`` as a float matrix, or None if it made none."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = run.state(client) / f"release-{rnd}.safetensors"
    if not path.is_file():
        return None
    entries = [e for e in run.ledger_entries() if e.client == client and e.round == rnd
               and e.unit == "client" and e.mechanism != "noise_present"]
    if not entries:
        raise DataError(str(run.path / "ledger.jsonl"), None, f"no client-level release of "
                        f"{client} in round {rnd}, although {path.name} exists")
    d = dict(entries[-1].detail)
    try:
        raw = load_file(str(path))["release"]
    except (OSError, KeyError, SafetensorError) as e:
        raise DataError(str(path), None, f"cannot be read ({e!r})") from None
    if "scale" in d:  # masked: fixed-point words with the discrete Gaussian noise
        bits = run.cfg.aggregation.masked.modulus_bits
        matrix = decode_words(raw, bits).astype(np.float64) / float(d["scale"])
        std = float(d["sigma_integer"]) / float(d["scale"])
    else:
        matrix = np.asarray(raw, dtype=np.float64)
        std = float(d["noise_std"])
    width = upload_dim(dim, run.cfg.consensus.confidence)
    if matrix.size != prompts * width:
        raise DataError(str(path), None, f"holds {matrix.size} values, expected {prompts} × "
                        f"{width}")
    return Upload(round=rnd, matrix=matrix.reshape(prompts, width), noise_std=std,
                  clip=float(d["clip"]), detail=d)


def _read_texts(path: Path) -> Any:
    from privsem.protocol.state import read_json

    return read_json(path)


def _dedupe(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(t for t in texts if t.strip()))


def audit_round(run: RunFolder, client: str, rnd: int, embedder: Any, *, margin: float,
                seed: int, inverter: InverterConfig) -> dict[str, Any] | None:
    from privsem.confidence import weighted_rows
    from privsem.data import load_prompts
    from privsem.privacy.embedding import joint_clip

    cand_path = run.state(client) / f"candidates-{rnd}.json"
    prompts = load_prompts(run.cfg.prompts, run.cfg.max_prompts)
    upload = read_upload(run, client, rnd, len(prompts), embedder.dim)
    if upload is None:
        return None
    if not cand_path.is_file():
        raise DataError(str(cand_path), None, "missing: the client's candidate answers of this "
                        "round were not kept (run folders written before the inversion audit "
                        "existed); run the federation again to audit its uploads")
    cands: list[list[str]] = [[str(t) for t in row] for row in _read_texts(cand_path)]
    k = len(cands[0])
    flat = [t if t.strip() else EMPTY for row in cands for t in row]
    emb = embedder.encode(flat).astype(np.float64).reshape(len(prompts), k, -1)  # (P, k, d)
    mean = emb.mean(axis=1)
    rows = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)  # (P, d)
    d = rows.shape[1]
    if upload.matrix.shape[1] == d + 1:
        # a weighted upload [w·e, w]: rebuild it from the confidences the client kept; the
        # attack works on what it sees of the embeddings, the rows w·e (plus noise)
        conf_path = run.state(client) / f"confidence-{rnd}.json"
        if not conf_path.is_file():
            raise DataError(str(conf_path), None, "missing: the client's confidences of this "
                            "round were not kept; run the federation again to audit its uploads")
        w = np.asarray([float(x) for x in _read_texts(conf_path)], dtype=np.float64)
        full, _ = joint_clip(weighted_rows(rows, w), upload.clip)
        residual = upload.matrix - full
        clean = full[:, :d]
        upload = dataclasses.replace(upload, matrix=upload.matrix[:, :d])
    else:
        clean, _ = joint_clip(rows, upload.clip)
        residual = upload.matrix - clean
    # the client's candidate nearest its (clean) row: the best text an attacker can recover
    nearest = np.argmax(np.einsum("pkd,pd->pk", emb, clean), axis=1)  # (P,)
    true = [flat[j * k + int(nearest[j])] for j in range(len(prompts))]
    own = set(flat)
    others: list[str] = []
    for c in run.cfg.clients:
        p = run.state(c.id) / f"candidates-{rnd}.json"
        if c.id != client and p.is_file():
            others.extend(str(t) if str(t).strip() else EMPTY
                          for row in _read_texts(p) for t in row)
    labels = [str(x.get("response", "")) for c in run.cfg.clients
              for p in sorted(run.state(c.id).glob("labels-*.json")) for x in _read_texts(p)]
    public = [p.text for p in prompts]
    pool = _dedupe([*flat, *others, *labels, *public])
    pool_emb = embedder.encode(pool).astype(np.float64)  # (N, d)
    nn = nearest_neighbour_inversion(upload.matrix, true, pool_emb, pool,
                                     noise_std=upload.noise_std)
    any_own = float(np.mean([pool[i] in set(flat[j * k:(j + 1) * k])
                             for j, i in enumerate(nn.retrieved)]))
    stds = sorted({*CURVE_STDS, upload.noise_std})
    rng = SeededRandomness(seed, "audit", "inversion", client, rnd)
    curve = nn_inversion_curve(clean, true, pool_emb, pool, stds, rng)
    corpus = [t for t in _dedupe([*others, *labels, *public]) if t not in own]
    inv_at: dict[str, Any] | None = None
    inv_curve: list[dict[str, Any]] = []
    if len(corpus) >= 2:
        corpus_emb = embedder.encode(corpus).astype(np.float64)
        trained = train_bow_inverter(corpus_emb, corpus, noise_std=upload.noise_std,
                                     randomness=rng, config=inverter)
        inv_at = evaluate_inverter(trained, upload.matrix, true).to_json()
        inv_curve = [r.to_json() for r in inverter_curve(corpus_emb, corpus, clean, true, stds,
                                                         rng, inverter)]
    f1_ok = nn.mean_token_f1 <= nn.chance_token_f1 + margin
    inv_ok = inv_at is None or inv_at["mean_token_f1"] <= inv_at["chance_token_f1"] + margin
    return {
        "round": rnd, "prompts": len(prompts), "candidates_per_prompt": k,
        "noise_std": upload.noise_std, "clip": upload.clip,
        "residual_std": float(residual.std()),
        "clean_norm": float(np.linalg.norm(clean)),
        "release": {key: upload.detail.get(key) for key in (
            "noise_multiplier", "clip_factor", "scale", "sigma_integer", "placement",
            "noise_shares", "noise_std") if key in upload.detail},
        "pool_size": len(pool), "inverter_corpus": len(corpus),
        "nearest_neighbour": {**nn.to_json(), "any_own_answer": any_own},
        "inverter": inv_at,
        "curve": {"noise_std": stds, "nearest_neighbour": [c.to_json() for c in curve],
                  "inverter": inv_curve},
        "at_chance": bool(f1_ok and inv_ok), "margin": margin}


def _who_sees(run: RunFolder) -> str:
    cfg = run.cfg
    if cfg.aggregation.backend == "plaintext":
        return ("plaintext back-end: the server sees each upload as it is; this audit is what "
                "the server itself could do.")
    base = ("masked back-end: the server never sees one client's upload, only the noisy sum "
            "over the round's survivors. This audit attacks one upload anyway: it measures the "
            "worst case in which secure aggregation is broken and only the client's own noise "
            "protects it")
    if cfg.privacy.client.placement == "distributed":
        return base + (" (with distributed noise one upload carries only its share of the "
                       "noise, so that worst case is weak by design).")
    return base + " (local noise: each upload carries the full client-level noise)."


def _plot(path: Path, rounds: list[dict[str, Any]], client: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for r in rounds:
        c = r["curve"]
        x = c["noise_std"]
        nn = c["nearest_neighbour"]
        ax1.plot(x, [p["top1_accuracy"] for p in nn], marker="o", label=f"round {r['round']}")
        ax2.plot(x, [p["mean_token_f1"] for p in nn], marker="o",
                 label=f"NN, round {r['round']}")
        if c["inverter"]:
            ax2.plot(x, [p["mean_token_f1"] for p in c["inverter"]], marker="s",
                     linestyle=":", label=f"inverter, round {r['round']}")
        for ax in (ax1, ax2):
            ax.axvline(r["noise_std"], color="red", linestyle="--", linewidth=0.8)
    last = rounds[-1]
    ax1.axhline(last["nearest_neighbour"]["chance_top1"], color="grey", linestyle=":",
                label="chance")
    ax2.axhline(last["nearest_neighbour"]["chance_token_f1"], color="grey", linestyle=":",
                label="chance (NN)")
    for ax, title in ((ax1, "nearest-neighbour top-1"), (ax2, "token-F1")):
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlim(0.0, 2.0 * max(max(r["curve"]["noise_std"]) for r in rounds))
        ax.set_xlabel("noise std per entry (red: as uploaded)")
        ax.set_title(f"{client}: {title}")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path)
    return path


@dataclass(frozen=True)
class InversionAudit:
    result: dict[str, Any]
    path: Path


def run_inversion_audit(run_dir: str | Path, client: str, *, round: int | None = None,
                        margin: float = 0.1, seed: int = 0, report: bool = True,
                        inverter: InverterConfig | None = None) -> InversionAudit:
    from privsem.models.embedder import Embedder

    t0 = now()
    run = open_run(run_dir)
    run.client(client)
    last = run.round(round)
    rounds = [last] if round is not None else list(range(1, last + 1))
    embedder = Embedder(run.cfg.embedding.model, batch_size=run.cfg.embedding.batch_size)
    cfg_inv = inverter or InverterConfig(hidden=128, epochs=30)
    per_round = [r for r in (audit_round(run, client, rnd, embedder, margin=margin, seed=seed,
                                         inverter=cfg_inv) for rnd in rounds) if r is not None]
    if not per_round:
        raise DataError(str(run.state(client)), None, f"client {client} uploaded nothing in "
                        f"rounds {rounds}; there is no release to audit")
    cp = run.cfg.privacy.client
    result: dict[str, Any] = {
        "audit": "inversion", "run": run.cfg.name, "client": client,
        "backend": run.cfg.aggregation.backend, "placement": cp.placement,
        "client_dp_enabled": cp.enabled, "who_could_attack": _who_sees(run),
        "rounds": per_round, "at_chance": all(r["at_chance"] for r in per_round),
        "margin": margin, "seconds": elapsed(t0)}
    _plot(run.audit_dir / plot_name(client), per_round, client)
    path = write_result(run, result_name(client), result)
    if report:
        refresh_report(run)
    return InversionAudit(result=result, path=path)


def summary_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"inversion audit of client {r['client']}'s uploads (run {r['run']})",
             f"  {r['who_could_attack']}"]
    for x in r["rounds"]:
        nn, inv = x["nearest_neighbour"], x["inverter"]
        lines.append(
            f"  round {x['round']}: noise std {x['noise_std']:.4g} per entry (measured "
            f"{x['residual_std']:.4g}); NN top-1 {nn['top1_accuracy']:.3f} (chance "
            f"{nn['chance_top1']:.3f}, pool {nn['pool_size']}), any own answer "
            f"{nn['any_own_answer']:.3f}, token-F1 {nn['mean_token_f1']:.3f} (chance "
            f"{nn['chance_token_f1']:.3f})"
            + ("" if inv is None else f"; inverter F1 {inv['mean_token_f1']:.3f} (chance "
                                      f"{inv['chance_token_f1']:.3f})")
            + f"; {'at chance' if x['at_chance'] else 'ABOVE CHANCE'}")
        c = x["curve"]
        lines.append("    curve (std: NN top-1/F1): " + ", ".join(
            f"{s:g}: {p['top1_accuracy']:.2f}/{p['mean_token_f1']:.2f}"
            for s, p in zip(c["noise_std"], c["nearest_neighbour"], strict=True)))
    return lines




def run_from_args(args: argparse.Namespace) -> int:
    audit = run_inversion_audit(args.run_dir, args.client, round=args.round,
                                margin=args.margin, seed=args.seed, report=not args.no_report)
    print("\n".join(summary_lines(audit.result)))
    print(f"  written: {audit.path} (+ {plot_name(args.client)})")
    return 0
