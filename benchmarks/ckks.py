"""Benchmark of the CKKS core (privsem.aggregation.ckks) against TenSEAL itself and against
the masked back-end on the same round.

For 16, 64 and 256 prompts of 384 entries (N = 8192, primes 60/40/40/60, scale 2^40), with a
cohort of 8 clients, measured in this one process with the variants interleaved (the helpers
of benchmarks/secagg.py):

1. Client encryption of one upload: privsem's ``encrypt_upload`` (checks, packing with the
   count slot, encryption, serialisation) against TenSEAL's own ``ckks_vector`` +
   ``serialize`` on the same chunks. Goal (the CKKS issue): within 1.5×.
2. Aggregator: receiving the 8 uploads (parse and validate each ciphertext) and adding them,
   against TenSEAL's ``ckks_vector_from`` + ``add_`` on the same bytes.
3. Key holder: ``decrypt_aggregate`` (parse, validate, decrypt, count-slot check, flooding,
   rounding) against TenSEAL's ``ckks_vector_from`` + ``decrypt`` of the same sum.
4. Bytes per client per round (the ciphertexts up; the public context down once) and, on the
   same round (8 clients, no dropouts), the masked back-end's client time and bytes up.

Usage: ``python benchmarks/ckks.py [--quick] [--out benchmarks/results/ckks.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from secagg import interleaved, machine, masked_round, paired_ratio, summary

from privsem.aggregation.ckks import he
from privsem.aggregation.ckks.keyholder import KeyHolder
from privsem.aggregation.ckks.params import CkksParams
from privsem.rng import SeededRandomness

GOAL_RATIO = 1.5
DIM = 384
COHORT = 8


def bench_prompts(prompts: int, reps: int) -> dict[str, Any]:
    cohort = tuple(f"c{i:03d}" for i in range(COHORT))
    p = CkksParams(prompts=prompts, dim=DIM, cohort_size=COHORT, value_bound=64.0)
    kh = KeyHolder(p, SeededRandomness(0, "bench key holder"), cohort)
    pub = he.load_public_context(kh.public_context(), p, kh.public_digest)
    top = he.top_parms_id(pub)
    rng = np.random.default_rng(prompts)
    xs = [rng.uniform(-1.0, 1.0, (prompts, DIM)) for _ in cohort]
    flat = np.concatenate([xs[0].reshape(-1), [1.0]])
    chunks, lo = [], 0
    for n in p.chunks:
        chunks.append(flat[lo:lo + n].tolist())
        lo += n

    enc = interleaved({
        "privsem": lambda: he.encrypt_upload(pub, xs[0], p),
        "tenseal": lambda: [ts.ckks_vector(pub, c).serialize() for c in chunks],
    }, reps)
    uploads = [he.encrypt_upload(pub, x, p) for x in xs]

    def privsem_aggregate() -> tuple[bytes, ...]:
        return he.add_uploads([he.load_upload(pub, u, p, top) for u in uploads])

    def tenseal_aggregate() -> list[bytes]:
        acc = [ts.ckks_vector_from(pub, b) for b in uploads[0]]
        for u in uploads[1:]:
            for a, b in zip(acc, u, strict=True):
                a.add_(ts.ckks_vector_from(pub, b))
        return [a.serialize() for a in acc]

    agg = interleaved({"privsem": privsem_aggregate, "tenseal": tenseal_aggregate}, reps)
    total = privsem_aggregate()
    rounds = iter(range(1, 10**6))
    secret = kh._ctx  # the benchmark measures the key holder's work, in its own process

    dec = interleaved({
        "privsem": lambda: kh.decrypt_aggregate(round=next(rounds), ciphertexts=total,
                                                contributors=cohort),
        "tenseal": lambda: [ts.ckks_vector_from(secret, b).decrypt() for b in total],
    }, reps)
    out = kh.decrypt_aggregate(round=0, ciphertexts=total, contributors=cohort)
    err = float(np.max(np.abs(out - sum(xs))))

    masked = [masked_round(n=COHORT, graph="harary", prompts=prompts, dim=DIM,
                           noise_multiplier=0.0, drop_fraction=0.0, seed=s)
              for s in range(max(2, reps // 2))]
    masked_client_s = statistics.median(statistics.mean(r.client_s.values()) for r in masked)
    masked_up = statistics.mean(masked[0].up.values())
    up_bytes = sum(len(b) for b in uploads[0])
    ckks_client_s = statistics.median(enc["privsem"])
    return {
        "prompts": prompts, "dim": DIM, "cohort": COHORT, "ciphertexts_per_upload": len(p.chunks),
        "slots_used": list(p.chunks),
        "encrypt": {k: summary(v) for k, v in enc.items()},
        "encrypt_ratio_privsem_over_tenseal": paired_ratio(enc["privsem"], enc["tenseal"]),
        "aggregate_8_uploads": {k: summary(v) for k, v in agg.items()},
        "aggregate_ratio_privsem_over_tenseal": paired_ratio(agg["privsem"], agg["tenseal"]),
        "decrypt": {k: summary(v) for k, v in dec.items()},
        "decrypt_ratio_privsem_over_tenseal": paired_ratio(dec["privsem"], dec["tenseal"]),
        "bytes_up_per_client": up_bytes,
        "public_context_bytes_down": len(kh.public_context()),
        "max_abs_error_vs_plaintext_sum": err, "tolerance": p.tolerance(COHORT),
        "masked_same_round": {"client_s_median": masked_client_s,
                              "bytes_up_per_client": masked_up,
                              "server_s_median": statistics.median(r.server_s
                                                                   for r in masked)},
        "ckks_over_masked": {"bytes_up": up_bytes / masked_up,
                             "client_time": ckks_client_s / masked_client_s},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 prompts only, few repetitions")
    ap.add_argument("--out", default="benchmarks/results/ckks.json")
    args = ap.parse_args(argv)
    plan = [(16, 3)] if args.quick else [(16, 12), (64, 6), (256, 4)]
    rows = []
    for prompts, reps in plan:
        row = bench_prompts(prompts, reps)
        rows.append(row)
        e, a, d = row["encrypt"], row["aggregate_8_uploads"], row["decrypt"]
        print(f"{prompts:>4} prompts: {row['ciphertexts_per_upload']} ciphertexts, "
              f"{row['bytes_up_per_client'] / 1024:,.0f} KiB up "
              f"(masked {row['masked_same_round']['bytes_up_per_client'] / 1024:,.0f} KiB, "
              f"×{row['ckks_over_masked']['bytes_up']:.1f})")
        print(f"      encrypt {e['privsem']['median_s'] * 1e3:.1f} ms vs TenSEAL "
              f"{e['tenseal']['median_s'] * 1e3:.1f} ms: "
              f"{row['encrypt_ratio_privsem_over_tenseal']:.2f}× "
              f"(goal ≤ {GOAL_RATIO}×); masked client "
              f"{row['masked_same_round']['client_s_median'] * 1e3:.1f} ms "
              f"(ckks ×{row['ckks_over_masked']['client_time']:.1f})")
        print(f"      aggregate 8: {a['privsem']['median_s'] * 1e3:.1f} ms vs "
              f"{a['tenseal']['median_s'] * 1e3:.1f} ms "
              f"({row['aggregate_ratio_privsem_over_tenseal']:.2f}×); decrypt "
              f"{d['privsem']['median_s'] * 1e3:.1f} ms vs {d['tenseal']['median_s'] * 1e3:.1f}"
              f" ms ({row['decrypt_ratio_privsem_over_tenseal']:.2f}×); max error "
              f"{row['max_abs_error_vs_plaintext_sum']:.2e} ≤ {row['tolerance']:.2e}")
    result = {"machine": machine(), "tenseal": ts.__version__, "goal_ratio": GOAL_RATIO,
              "rows": rows, "goal_met": all(r["encrypt_ratio_privsem_over_tenseal"] <= GOAL_RATIO
                                           for r in rows)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
