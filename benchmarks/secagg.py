"""Benchmark of the masked secure-aggregation back-end (privsem.aggregation.masked).

Three parts, each a comparison measured in this one process (absolute times drift between
machines and runs, ratios measured side by side do not; TESTING.md, "Reference figures"):

1. Client masking (copy of the encoded words + self mask + k pairwise masks through one
   :class:`MaskExpander`, as ``MaskedClient`` does it) against the raw AES-256-CTR keystream of
   the same number of bytes from ``cryptography``. Project goal: masking ≤ 2× keystream for
   vectors of at least 10^5 entries. Also the X25519 agreement + HKDF cost per neighbour.
2. privsem's mask expansion against Flower's SecAgg+ ``pseudo_rand_gen`` on identical keys and
   lengths, and a check of Flower's 32-bit key fold (flwrlabs/flower#7522; TESTING.md T15).
3. Full in-process masked rounds (the approach of ``tests/aggregation_harness.py``) for growing
   cohorts, with 10% of clients going silent after their masked upload: client and server time,
   bytes per client, and how they grow with n.

Compared variants are interleaved (rotated order in every repetition) to cancel drift; every
figure is the median and the minimum over repetitions of ``time.perf_counter`` intervals.

Usage: ``python benchmarks/secagg.py [--quick] [--out benchmarks/results/secagg.json]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privsem.aggregation import ClientContext, NoisePlan, get_backend, run_exchanges
from privsem.aggregation.masked.crypto import (
    Identity,
    KeyPair,
    MaskExpander,
    derive_key,
    verify,
)
from privsem.aggregation.masked.encoding import harary_degree
from privsem.bench.micro import interleaved, paired_ratio, summary
from privsem.config import MaskedConfig
from privsem.protocol.messages import RoundSpec
from privsem.protocol.session import session_id
from privsem.rng import SeededRandomness

GOAL_RATIO = 2.0  # masking / keystream, for vectors of at least GOAL_MIN_LENGTH entries
GOAL_MIN_LENGTH = 10**5
EMBEDDING_LENGTH = 64 * 384  # prompts × dim of the default round
DROP_STAGE = "consistency"  # uploaded the masked input, silent afterwards (TESTING.md T3)
COMPLETE_BUDGET_S = 300.0  # skip a complete-graph cohort whose rounds would take longer


# ---------------------------------------------------------------------------- measurement


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags: list[str] = []
    try:
        text = Path("/proc/cpuinfo").read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith("flags"))
        flags = sorted({"aes", "vaes", "avx2", "avx512f", "sha_ni"} & set(line.split()))
    except (OSError, StopIteration):
        pass
    from cryptography.hazmat.backends.openssl.backend import backend

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu_model": model, "cpu_flags": flags, "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "cryptography": version("cryptography"),
        "openssl": backend.openssl_version_text(), "flwr": version("flwr"),
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": list(os.getloadavg()),
    }


# ---------------------------------------------------------------------------- part 1


def raw_keystream(keys: list[bytes], zeros: bytes) -> None:
    """The fairest raw baseline: one AES-256-CTR pass per key over a preallocated zero buffer."""
    for key in keys:
        Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(zeros)


def client_masking(words: np.ndarray, keys: list[bytes], signs: list[int]) -> np.ndarray:
    """The client's masking step as ``MaskedClient._on_delivery`` runs it (keys given)."""
    ex = MaskExpander(words.size, 32)
    y = words.copy()
    for key, sign in zip(keys, signs):
        ex.add(y, key, sign)
    ex.reduce(y)
    return y


def bench_masking(lengths: list[int], degrees: list[int], reps_for: Callable[[int], int],
                  rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    for length in lengths:
        words = rng.integers(0, 2**32, length, dtype=np.uint32)  # encoded input, mod 2^32
        zeros = bytes(length * 4)
        reused = MaskExpander(length, 32)
        for k in degrees:
            keys = [os.urandom(32) for _ in range(k + 1)]  # self mask + k pairwise
            signs = [1] + [1 if i % 2 else -1 for i in range(k)]

            def masking_reused(keys: list[bytes] = keys, signs: list[int] = signs,
                               words: np.ndarray = words, ex: MaskExpander = reused) -> None:
                y = words.copy()
                for key, sign in zip(keys, signs):
                    ex.add(y, key, sign)
                ex.reduce(y)

            t = interleaved({
                "masking": lambda keys=keys, signs=signs, words=words:
                    client_masking(words, keys, signs),
                "masking_reused_expander": masking_reused,
                "keystream": lambda keys=keys, zeros=zeros: raw_keystream(keys, zeros),
            }, reps_for(length))
            nbytes = (k + 1) * length * 4
            ratio = paired_ratio(t["masking"], t["keystream"])
            applies = length >= GOAL_MIN_LENGTH
            rows.append({
                "length": length, "k": k, "keystream_bytes": nbytes,
                "masking": summary(t["masking"]),
                "masking_reused_expander": summary(t["masking_reused_expander"]),
                "keystream": summary(t["keystream"]),
                "keystream_GBps_best": nbytes / min(t["keystream"]) / 1e9,
                "ratio_median_paired": ratio,
                "ratio_min": min(t["masking"]) / min(t["keystream"]),
                "ratio_reused_expander_median_paired":
                    paired_ratio(t["masking_reused_expander"], t["keystream"]),
                "within_2x": ratio <= GOAL_RATIO,
                "goal_applies": applies,
                "verdict": ("PASS" if ratio <= GOAL_RATIO else "FAIL") if applies else "n/a",
            })
    return rows


def bench_key_agreement(reps: int) -> dict[str, Any]:
    """One neighbour's X25519 agreement + HKDF-SHA256 (what ``_pair_key`` does per peer)."""
    me, peer = KeyPair(), KeyPair()
    sid = "0" * 64
    inner = 200

    def agree_derive() -> None:
        for _ in range(inner):
            shared = me.agree(peer.public, peer="c001")
            derive_key(shared, session_id=sid, label="pair-mask", parties=("c000", "c001"))

    def agree_only() -> None:
        for _ in range(inner):
            me.agree(peer.public, peer="c001")

    ident = Identity()
    text = b"\0" * 300  # about a keys transcript
    sig = ident.sign(text)

    def verify_only() -> None:
        for _ in range(inner):
            verify(ident.public, sig, text)

    t = interleaved({"agree+derive": agree_derive, "agree": agree_only,
                     "verify": verify_only}, reps)
    per = {name: [x / inner for x in ts] for name, ts in t.items()}
    return {
        "agree_plus_derive_per_neighbour": summary(per["agree+derive"]),
        "agree_only_per_neighbour": summary(per["agree"]),
        "ed25519_verify": summary(per["verify"]),
        "ed25519_note": "a client verifies every roster entry's key signature (n) and, with "
                        "the consistency check, every signer of the survivor list (about n): "
                        "a per-client term linear in n whatever the graph",
        "calls_per_timing": inner,
        "note": "MaskedClient does per neighbour about 4 X25519 agreements (share key, mask-key "
                "check, share opening, pair key) and 3 HKDF derivations, plus a "
                "ChaCha20-Poly1305 seal and open (client.py).",
    }


# ---------------------------------------------------------------------------- part 2


def fold32(key: bytes) -> int:
    """The 32-bit XOR fold Flower's ``pseudo_rand_gen`` seeds numpy's RandomState with."""
    out = 0
    for i in range(0, len(key), 4):
        out ^= int.from_bytes(key[i:i + 4], "little")
    return out


def bench_flower(lengths: list[int], reps: int) -> dict[str, Any]:
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    rows = []
    for length in lengths:
        key = os.urandom(32)
        t = interleaved({
            "flower": lambda length=length, key=key: pseudo_rand_gen(key, 2**32, [(length,)]),
            "privsem": lambda length=length, key=key: MaskExpander(length, 32).mask(key),
        }, reps)
        f_out = pseudo_rand_gen(key, 2**32, [(length,)])[0]
        rows.append({
            "length": length, "modulus": "2^32",
            "flower": summary(t["flower"]), "privsem": summary(t["privsem"]),
            "ratio_flower_over_privsem_median_paired": paired_ratio(t["flower"], t["privsem"]),
            "ratio_flower_over_privsem_min": min(t["flower"]) / min(t["privsem"]),
            "flower_output_dtype": str(f_out.dtype),
        })
    # Two different keys with the same 32-bit fold: XOR one word pattern into two words.
    length = EMBEDDING_LENGTH
    k1 = bytearray(os.urandom(32))
    k2 = bytearray(k1)
    delta = os.urandom(4)
    for w in (0, 1):
        for b in range(4):
            k2[4 * w + b] ^= delta[b]
    key1, key2 = bytes(k1), bytes(k2)
    fl1 = pseudo_rand_gen(key1, 2**32, [(length,)])[0]
    fl2 = pseudo_rand_gen(key2, 2**32, [(length,)])[0]
    pv1 = MaskExpander(length, 32).mask(key1)
    pv2 = MaskExpander(length, 32).mask(key2)
    fold = {
        "keys_differ": key1 != key2, "folds_equal": fold32(key1) == fold32(key2),
        "flower_masks_identical": bool(np.array_equal(fl1, fl2)),
        "privsem_masks_differ": not bool(np.array_equal(pv1, pv2)),
        "privsem_equal_entries_fraction": float(np.mean(pv1 == pv2)),
        "length": length,
        "note": "Flower folds the 32-byte key to 32 bits and seeds numpy RandomState, so keys "
                "with equal folds give the same mask, and its randint(0, num_range - 1) never "
                "yields num_range - 1 (output in [0, 2^32 - 2]); privsem keys AES-256-CTR with "
                "the full key (flwrlabs/flower#7522, TESTING.md T15).",
    }
    return {"rows": rows, "fold_check": fold}


# ---------------------------------------------------------------------------- part 3


class TimedCollector:
    """Wraps a ServerAggregator for run_exchanges and times every call, per stage."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds: dict[str, float] = {}

    @property
    def stage(self) -> str:
        return str(self.inner.stage)

    def _add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def receive(self, client: str, payload: bytes) -> None:
        stage, t0 = self.inner.stage, time.perf_counter()
        try:
            self.inner.receive(client, payload)
        finally:
            self._add(f"receive:{stage}", time.perf_counter() - t0)

    def next_requests(self) -> dict[str, bytes]:
        stage, t0 = self.inner.stage, time.perf_counter()
        try:
            return self.inner.next_requests()
        finally:
            self._add(f"close:{stage}", time.perf_counter() - t0)


@dataclass
class RoundRun:
    n: int
    graph: str
    degree: int
    threshold: int
    wall_s: float
    client_s: dict[str, float]  # client -> seconds in start() + respond()
    client_stage_s: dict[str, dict[str, float]]  # stage -> client -> seconds
    client_init_s: float  # mean seconds to build a client (key pairs, self-mask seed)
    server_s: float
    server_stage_s: dict[str, float]
    up: dict[str, int] = field(default_factory=dict)
    down: dict[str, int] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    exact: bool | None = None
    contributors: int = 0


def grid_inputs(cohort: tuple[str, ...], prompts: int, dim: int, clip: float,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs on the grid k/2^10 (exact on the fixed-point grid, whose scale is a power of two
    ≥ 2^10 here), Frobenius norm within the clip (as tests/aggregation_harness.py)."""
    out = {}
    for c in cohort:
        x = rng.uniform(-0.5, 0.5, (prompts, dim))  # (prompts, dim)
        x *= min(1.0, 0.999 * clip / np.linalg.norm(x))
        out[c] = np.round(x * 2**10) / 2**10
    return out


def masked_round(*, n: int, graph: str, prompts: int, dim: int, noise_multiplier: float,
                 drop_fraction: float, seed: int, clip: float = 2.0) -> RoundRun:
    """One full masked round in process: n clients, one server, the drops at DROP_STAGE."""
    be = get_backend("masked")
    ids = tuple(f"c{i:03d}" for i in range(n))
    params = be.round_params(NoisePlan(noise_multiplier=noise_multiplier, clip=clip),
                             cohort_size=n, length=prompts * dim,
                             settings=MaskedConfig(graph=graph))
    full = {"aggregation": params}
    spec = RoundSpec(round=1, session_id=session_id(1, ids, "h", full), cohort=ids,
                     prompt_ids=tuple(f"p{i}" for i in range(prompts)), prompt_set_hash="h",
                     dim=dim, params=full)
    identities = {c: Identity() for c in ids}
    registry = {c: i.public for c, i in identities.items()}
    t0 = time.perf_counter()
    clients = {c: be.client(ClientContext(spec=spec, client_id=c,
                                          randomness=SeededRandomness(seed, c),
                                          identity=identities[c], registry=registry))
               for c in ids}
    init_s = (time.perf_counter() - t0) / n
    server = TimedCollector(be.server(spec, registry))
    rng = np.random.default_rng(seed)
    inputs = grid_inputs(ids, prompts, dim, clip, rng)
    dropped = frozenset(rng.choice(ids, size=round(drop_fraction * n), replace=False).tolist())

    client_s = dict.fromkeys(ids, 0.0)
    stage_s: dict[str, dict[str, float]] = {}

    def charge(c: str, stage: str, seconds: float) -> None:
        client_s[c] += seconds
        per = stage_s.setdefault(stage, {})
        per[c] = per.get(c, 0.0) + seconds

    def timed_respond(c: str) -> Callable[[bytes], bytes | None]:
        respond = clients[c].respond

        def call(request: bytes) -> bytes | None:
            stage, t1 = server.stage, time.perf_counter()
            try:
                return respond(request)
            finally:
                charge(c, stage, time.perf_counter() - t1)
        return call

    up, down = dict.fromkeys(ids, 0), dict.fromkeys(ids, 0)

    def traffic(c: str, stage: str, direction: str, nbytes: int) -> None:
        (up if direction == "up" else down)[c] += nbytes

    wall0 = time.perf_counter()
    first = {}
    for c in ids:
        t1 = time.perf_counter()
        first[c] = clients[c].start(inputs[c])
        charge(c, "advertise(start)", time.perf_counter() - t1)
    aborted = run_exchanges(server, {c: timed_respond(c) for c in ids}, first,
                            drop=lambda c, stage: c in dropped and stage == DROP_STAGE,
                            traffic=traffic)
    t1 = time.perf_counter()
    result = server.inner.finish()
    server._add("finish", time.perf_counter() - t1)
    wall = time.perf_counter() - wall0
    honest_aborts = {c: why for c, why in aborted.items() if c not in dropped}
    if honest_aborts:  # run_exchanges may also list the simulated dropouts
        raise RuntimeError(f"clients aborted in an honest round: {honest_aborts}")
    p = server.inner.p
    exact = None
    if noise_multiplier == 0:
        want = sum(np.rint(inputs[c] * p.scale).astype(np.int64) for c in result.contributors)
        got = np.rint(result.total * p.scale).astype(np.int64)
        exact = bool(np.array_equal(got, want)) and set(result.contributors) == set(ids)
    return RoundRun(n=n, graph=graph, degree=p.degree, threshold=p.threshold, wall_s=wall,
                    client_s=client_s, client_stage_s=stage_s, client_init_s=init_s,
                    server_s=sum(server.seconds.values()), server_stage_s=dict(server.seconds),
                    up=up, down=down, dropped=tuple(sorted(dropped)), exact=exact,
                    contributors=len(result.contributors))


def scale_row(runs: list[RoundRun], exact: bool, prompts: int, dim: int) -> dict[str, Any]:
    r0 = runs[0]
    completing = [c for c in r0.client_s if c not in r0.dropped]

    def med(f: Callable[[RoundRun], float]) -> dict[str, float]:
        return summary([f(r) for r in runs])

    stages = sorted({s for r in runs for s in r.client_stage_s})
    server_stages = sorted({s for r in runs for s in r.server_stage_s})
    up = statistics.mean(r0.up[c] for c in completing)
    down = statistics.mean(r0.down[c] for c in completing)
    return {
        "n": r0.n, "graph": r0.graph, "k": r0.degree, "t": r0.threshold,
        "dropped_after_upload": len(r0.dropped), "contributors": r0.contributors,
        "round_wall": med(lambda r: r.wall_s),
        "client_mean_all": med(lambda r: statistics.mean(r.client_s.values())),
        "client_mean_completing": med(
            lambda r: statistics.mean(r.client_s[c] for c in completing)),
        "client_stage_mean_completing": {
            s: statistics.median(statistics.mean(r.client_stage_s.get(s, {}).get(c, 0.0)
                                                 for c in completing) for r in runs)
            for s in stages},
        "client_init_mean_s": statistics.median(r.client_init_s for r in runs),
        "server": med(lambda r: r.server_s),
        "server_stage_median_s": {s: statistics.median(r.server_stage_s.get(s, 0.0)
                                                       for r in runs) for s in server_stages},
        "bytes_up_per_client": up, "bytes_down_per_client": down,
        "bytes_up_all_mean": statistics.mean(r0.up.values()),
        "bytes_down_all_mean": statistics.mean(r0.down.values()),
        "bytes_overhead_per_client": up + down - prompts * dim * 4,
        "upload_over_plain_vector": up / (prompts * dim * 4),
        "exact_with_noise_0": exact,
    }


def growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios of per-client cost between successive n, against log2 and linear growth."""
    by_n = {r["n"]: r for r in rows}
    ns = sorted(by_n)
    out = []
    for a, b in itertools.pairwise(ns):
        ra, rb = by_n[a], by_n[b]
        log_ratio, lin_ratio = math.log2(b) / math.log2(a), b / a
        entry: dict[str, Any] = {"from_n": a, "to_n": b, "log2_ratio": log_ratio,
                                 "linear_ratio": lin_ratio, "k_ratio": rb["k"] / ra["k"]}
        for name, get in (
                ("client_time", lambda r: r["client_mean_completing"]["median_s"]),
                ("bytes_up", lambda r: r["bytes_up_per_client"]),
                ("bytes_down", lambda r: r["bytes_down_per_client"]),
                ("bytes_total", lambda r: r["bytes_up_per_client"] + r["bytes_down_per_client"]),
                ("bytes_overhead", lambda r: r["bytes_overhead_per_client"]),
                ("server_time", lambda r: r["server"]["median_s"])):
            ratio = get(rb) / get(ra)
            entry[name] = {
                "ratio": ratio,
                "exponent": math.log(ratio) / math.log(lin_ratio),  # cost ∝ n^exponent
                "closer_to": "log2" if abs(math.log(ratio / log_ratio)) <
                abs(math.log(ratio / lin_ratio)) else "linear"}
        out.append(entry)
    return out


def bench_scale(ns: list[int], complete_ns: list[int], reps_for: Callable[[int], int],
                prompts: int, dim: int) -> dict[str, Any]:
    results: dict[str, Any] = {"rows": [], "growth": {}, "skipped": []}
    for graph, sizes in (("harary", ns), ("complete", complete_ns)):
        rows = []
        last_wall: tuple[int, float, float] | None = None
        for n in sizes:
            if graph == "complete" and last_wall is not None:
                prev_n, prev_clients, prev_server = last_wall
                # All clients together do O(n²) work (n peers each); the server recombines n
                # secrets from t ≈ 0.6·n shares by Lagrange interpolation, O(n³).
                g = n / prev_n
                per_round = prev_clients * g ** 2 + prev_server * g ** 3
                predicted = per_round * (reps_for(n) + 1)
                if predicted > COMPLETE_BUDGET_S:
                    note = (f"complete graph at n={n} skipped: predicted {predicted:.0f} s for "
                            f"{reps_for(n) + 1} rounds ({per_round:.0f} s each, from n={prev_n})"
                            f", above the {COMPLETE_BUDGET_S:.0f} s budget")
                    results["skipped"].append(note)
                    print("  " + note, flush=True)
                    continue
            print(f"  graph={graph} n={n} ...", end="", flush=True)
            t0 = time.perf_counter()
            runs = [masked_round(n=n, graph=graph, prompts=prompts, dim=dim,
                                 noise_multiplier=1.0, drop_fraction=0.1, seed=rep)
                    for rep in range(reps_for(n))]
            check = masked_round(n=n, graph=graph, prompts=prompts, dim=dim,
                                 noise_multiplier=0.0, drop_fraction=0.1, seed=1000)
            row = scale_row(runs, bool(check.exact), prompts, dim)
            rows.append(row)
            last_wall = (n, row["round_wall"]["median_s"] - row["server"]["median_s"],
                         row["server"]["median_s"])
            print(f" {time.perf_counter() - t0:.1f} s", flush=True)
        results["rows"].extend(rows)
        results["growth"][graph] = growth(rows)
    return results


# ---------------------------------------------------------------------------- printing


def us(s: float) -> str:
    return f"{s * 1e6:9.1f}"


def ms(s: float) -> str:
    return f"{s * 1e3:8.2f}"


def print_masking(rows: list[dict[str, Any]], ka: dict[str, Any]) -> None:
    print("\n[1] Client masking vs raw AES-256-CTR keystream (same bytes); goal ≤ "
          f"{GOAL_RATIO:g}x for length ≥ {GOAL_MIN_LENGTH:.0e}")
    print(f"{'length':>8} {'k':>3} {'mask med ms':>11} {'mask min':>9} {'reuse med':>9} "
          f"{'ks med ms':>9} {'ks min':>8} {'ks GB/s':>7} {'ratio':>6} {'r(min)':>6} "
          f"{'r reuse':>7}  verdict")
    for r in rows:
        print(f"{r['length']:>8} {r['k']:>3} {ms(r['masking']['median_s']):>11} "
              f"{ms(r['masking']['min_s']):>9} {ms(r['masking_reused_expander']['median_s']):>9} "
              f"{ms(r['keystream']['median_s']):>9} {ms(r['keystream']['min_s']):>8} "
              f"{r['keystream_GBps_best']:7.2f} {r['ratio_median_paired']:6.2f} "
              f"{r['ratio_min']:6.2f} {r['ratio_reused_expander_median_paired']:7.2f}  "
              f"{r['verdict']}")
    a, b = ka["agree_plus_derive_per_neighbour"], ka["agree_only_per_neighbour"]
    v = ka["ed25519_verify"]
    print(f"X25519 agree + HKDF per neighbour: median {us(a['median_s']).strip()} µs, min "
          f"{us(a['min_s']).strip()} µs (agree alone: median {us(b['median_s']).strip()} µs); "
          f"Ed25519 verify: median {us(v['median_s']).strip()} µs, min "
          f"{us(v['min_s']).strip()} µs")


def print_flower(res: dict[str, Any]) -> None:
    print("\n[2] Mask expansion, same 32-byte key and length, modulus 2^32")
    print(f"{'length':>8} {'flower med ms':>13} {'flower min':>10} {'privsem med':>11} "
          f"{'privsem min':>11} {'flower/privsem':>14} {'(min)':>6}")
    for r in res["rows"]:
        print(f"{r['length']:>8} {ms(r['flower']['median_s']):>13} "
              f"{ms(r['flower']['min_s']):>10} {ms(r['privsem']['median_s']):>11} "
              f"{ms(r['privsem']['min_s']):>11} "
              f"{r['ratio_flower_over_privsem_median_paired']:14.2f} "
              f"{r['ratio_flower_over_privsem_min']:6.2f}")
    f = res["fold_check"]
    print(f"equal 32-bit fold, different keys: flower masks identical={f['flower_masks_identical']}"
          f", privsem masks differ={f['privsem_masks_differ']}")


def print_scale(res: dict[str, Any]) -> None:
    print(f"\n[3] Full masked rounds (prompts×dim as configured, z=1, 10% drop at {DROP_STAGE});"
          " client = mean over clients that completed")
    print(f"{'graph':>8} {'n':>4} {'k':>4} {'t':>4} {'drop':>4} {'round s':>8} "
          f"{'client ms':>9} {'(min)':>8} {'server ms':>9} {'(min)':>8} {'up KiB':>8} "
          f"{'down KiB':>9} {'ovh KiB':>8} {'up/plain':>8} exact")
    for r in res["rows"]:
        print(f"{r['graph']:>8} {r['n']:>4} {r['k']:>4} {r['t']:>4} "
              f"{r['dropped_after_upload']:>4} {r['round_wall']['median_s']:8.2f} "
              f"{ms(r['client_mean_completing']['median_s']):>9} "
              f"{ms(r['client_mean_completing']['min_s']):>8} "
              f"{ms(r['server']['median_s']):>9} {ms(r['server']['min_s']):>8} "
              f"{r['bytes_up_per_client'] / 1024:8.1f} {r['bytes_down_per_client'] / 1024:9.1f} "
              f"{r['bytes_overhead_per_client'] / 1024:8.1f} "
              f"{r['upload_over_plain_vector']:8.3f} {r['exact_with_noise_0']}")
    print("client time per stage (ms, mean over completing clients, median over reps; a stage "
          "is the server stage collecting the reply: share = roster checks, signature "
          "verification, Shamir split, sealing; input = opening shares and masking; unmask = "
          "survivor-list signature checks and shares):")
    for r in res["rows"]:
        parts = ", ".join(f"{s}={v * 1e3:.2f}" for s, v in
                          r["client_stage_mean_completing"].items())
        print(f"  {r['graph']:>8} n={r['n']:<4} {parts}")
    print("growth of per-client cost (ratio; log2 growth would give the log2 ratio, linear the "
          "linear ratio):")
    for graph, entries in res["growth"].items():
        for e in entries:
            ct, bt = e["client_time"], e["bytes_total"]
            ot = e["bytes_overhead"]
            print(f"  {graph:>8} n {e['from_n']}→{e['to_n']}: k x{e['k_ratio']:.2f}, client time "
                  f"x{ct['ratio']:.2f} (n^{ct['exponent']:.2f}, closer to {ct['closer_to']}), "
                  f"bytes x{bt['ratio']:.2f} (n^{bt['exponent']:.2f}, {bt['closer_to']}), "
                  f"bytes beyond the vector x{ot['ratio']:.2f} (n^{ot['exponent']:.2f}, "
                  f"{ot['closer_to']}), server x{e['server_time']['ratio']:.2f}; log2 "
                  f"{e['log2_ratio']:.2f}, linear {e['linear_ratio']:.2f}")
    for note in res["skipped"]:
        print("  " + note)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="n = 8, 16 and fewer repetitions (under a minute)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/secagg.json"))
    args = ap.parse_args(argv)
    wall0 = time.perf_counter()
    info = machine()
    print(f"privsem secagg benchmark ({'quick' if args.quick else 'full'}) on "
          f"{info['cpu_model']}, {info['usable_cores']} cores, Python {info['python']}, numpy "
          f"{info['numpy']}, cryptography {info['cryptography']} ({info['openssl']}), flwr "
          f"{info['flwr']}; load {info['load_average_at_start'][0]:.2f}")
    rng = np.random.default_rng(0)
    prompts, dim = 64, 384
    if args.quick:
        def reps_mask(length: int) -> int:
            return 5
        reps_ka, reps_flower = 5, 5
        ns, complete_ns = [8, 16], [8, 16]

        def reps_round(n: int) -> int:
            return 2
    else:
        def reps_mask(length: int) -> int:
            return 21 if length <= GOAL_MIN_LENGTH else 11
        reps_ka, reps_flower = 15, 15
        ns, complete_ns = [16, 64, 256], [16, 64, 256]

        def reps_round(n: int) -> int:
            return 5 if n <= 16 else 3

    lengths = [EMBEDDING_LENGTH, 10**5, 10**6]
    masking = bench_masking(lengths, [1, 8, 24], reps_mask, rng)
    ka = bench_key_agreement(reps_ka)
    print_masking(masking, ka)
    flower = bench_flower([EMBEDDING_LENGTH, 10**5], reps_flower)
    print_flower(flower)
    scale = bench_scale(ns, complete_ns, reps_round, prompts, dim)
    print_scale(scale)

    failures = [r for r in masking if r["verdict"] == "FAIL"]
    wall = time.perf_counter() - wall0
    info["load_average_at_end"] = list(os.getloadavg())
    out = {
        "benchmark": "secagg", "mode": "quick" if args.quick else "full",
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": info, "wall_s": wall, "wall_note": "from main(), after imports",
        "method": "time.perf_counter; compared variants interleaved with a rotated order per "
                  "repetition; median and min over repetitions; ratios are medians of ratios "
                  "paired within a repetition unless named *_min",
        "masking_vs_keystream": {
            "goal": f"masking / keystream <= {GOAL_RATIO} for length >= {GOAL_MIN_LENGTH}",
            "masking_step": "new MaskExpander(length, 32), copy of the encoded uint32 words, "
                            "ex.add for the self mask and k pairwise masks, ex.reduce "
                            "(as MaskedClient._on_delivery)",
            "keystream_baseline": "per key Cipher(AES(key32), CTR(0)).encryptor().update(zeros) "
                                  "over a preallocated zero buffer of length*4 bytes",
            "rows": masking, "failures": len(failures), "key_agreement": ka,
            "harary_degree_reference": {n: harary_degree(n) for n in (16, 64, 256, 1024)},
        },
        "flower_vs_privsem": flower,
        "scale": {"prompts": prompts, "dim": dim, "noise_multiplier": 1.0,
                  "drop_fraction": 0.1, "drop_stage": DROP_STAGE,
                  "settings": "MaskedConfig() defaults, graph as in each row",
                  "exactness_check": "one extra round per row with noise_multiplier=0: the "
                                     "decoded sum equals the integer sum of the contributors' "
                                     "inputs and every client (drops after upload included) "
                                     "is a contributor",
                  **scale},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nmasking goal: {len(failures)} FAIL of "
          f"{sum(r['goal_applies'] for r in masking)} rows with length ≥ {GOAL_MIN_LENGTH:.0e}")
    print(f"wrote {args.out} ({wall:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
