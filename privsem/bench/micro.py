"""Micro-benchmarks of privsem's hot paths, each compared side by side in one process.

1. **DP-SGD step** (:func:`dp_sgd_step`): one LoRA step as ``train_dp_sgd`` takes it (Opacus
   ``GradSampleModule`` + ``DPOptimizer`` over AdamW, mean of ``per_sample_loss``) against the
   non-private step of ``train_plain`` (same loss, AdamW), on the same model, adapter and batch.
   Goal: DP-SGD at most 1.3x the non-private step.
2. **Embedding throughput** (:func:`embedding_throughput`): ``Embedder.encode`` against
   ``SentenceTransformer.encode`` on the same model object, texts, batch size and normalisation.
   Goal: privsem at least 0.9x the raw texts per second.
3. **Generation** (:func:`generation_speed`): ``privsem.models.generation.generate`` with the
   LoRA-wrapped model (as a client generates its candidates): new tokens and prompts per second.
4. **Round phases** (:func:`round_phases`): seconds per round by phase (train_private,
   train_pseudo, generate, confidence, embed_release, aggregate, train_final, and evaluation)
   from a run folder's ``metrics.jsonl``, by client model, and each phase's share of the time.

Method as ``benchmarks/secagg.py``: absolute times drift between machines and runs, ratios
measured side by side do not. Compared variants are interleaved (the order rotated by one in
every repetition) after warm-up calls; every figure is the median and the minimum over
repetitions of ``time.perf_counter`` intervals; a ratio is the median over repetitions of the
ratio measured within one repetition (``*_of_medians`` and ``*_min`` are given too). Speed
goals are verdicts printed from one run (PASS/FAIL), never timed tests. Goals are judged on
real models only: for the random-init ``tiny-*`` models the fixed per-step costs dominate and
the verdict is ``n/a``.

Every function returns a JSON-able dict with a headline figure (``ratio`` for the two
comparisons, the paired median; ``tokens_per_second`` for generation); :func:`run_all` combines
them (``privsem bench``) and :func:`format_markdown` renders compact tables. Randomness comes from :mod:`privsem.rng` only.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from privsem import bounded_json

DEFAULT_MODEL = "smollm2-135m-instruct"
QUICK_MODEL = "tiny-llama"
GOAL_DP_MAX_RATIO = 1.3  # DP-SGD step / non-private step
GOAL_EMBED_MIN_RATIO = 0.9  # privsem texts/s / raw sentence-transformers texts/s
DEMO_TRAIN = ("demo:alice.train.jsonl", "demo:bob.train.jsonl", "demo:carol.train.jsonl")
DEMO_PROMPTS = "demo:prompts.jsonl"
PHASE_ORDER = ("train_private", "train_pseudo", "generate", "confidence", "embed_release",
               "aggregate", "train_final")
BATCHING_NOTE = ("fixed batch of the same B demo examples for both steps; privsem's DP-SGD "
                 "draws Poisson batches of expected size B (train_dp_sgd), fixed here so that "
                 "both steps see the same batch")


# ---------------------------------------------------------------------------- measurement


def interleaved(variants: Mapping[str, Callable[[], object]], reps: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each variant; in every repetition all variants run once, in an
    order rotated by one each time, so slow drift (frequency, other load) hits all alike."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def summary(ts: Sequence[float]) -> dict[str, float]:
    return {"median_s": statistics.median(ts), "min_s": min(ts), "reps": len(ts)}


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over repetitions of num/den measured in the same repetition."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def machine() -> dict[str, Any]:
    """The machine and library versions, for the JSON of any benchmark (no heavy imports)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    import torch

    return {
        "cpu_model": cpu, "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "python": platform.python_version(),
        **{pkg: version(pkg) for pkg in ("numpy", "torch", "transformers", "peft", "opacus",
                                         "sentence-transformers")},
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _check_reps(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not valid; use an integer >= 1")
    return value


def _check_model(name: str | None, quick: bool) -> str:
    from privsem.models.loading import BUILTINS

    if name is None:
        return QUICK_MODEL if quick else DEFAULT_MODEL
    if not isinstance(name, str) or not name:
        raise ValueError(f"model {name!r} is not valid; use a built-in name "
                         f"({', '.join(BUILTINS)}), a model directory or a .gguf file")
    if name in BUILTINS:
        return name
    p = Path(name).expanduser()
    if p.is_dir() or (p.suffix == ".gguf" and p.is_file()):
        return name
    raise ValueError(f"model {name!r} is neither a built-in name ({', '.join(BUILTINS)}) nor an "
                     "existing model directory or .gguf file; pass one of those, e.g. "
                     f"{QUICK_MODEL!r} for a quick check or {DEFAULT_MODEL!r}")


def _goal_applies(model: str) -> bool:
    from privsem.models.loading import TINY

    return model not in TINY


def _verdict(ok: bool, applies: bool) -> str:
    return ("PASS" if ok else "FAIL") if applies else "n/a"


class _Lora:
    """privsem's LoRA defaults (``privsem.config.LoraConfig``)."""

    def __init__(self) -> None:
        from privsem.config import LoraConfig

        cfg = LoraConfig()
        self.rank, self.alpha, self.targets, self.dropout = (cfg.rank, cfg.alpha, cfg.targets,
                                                             cfg.dropout)

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets),
                "dropout": self.dropout}


def _load_lora_model(model: str, seed: int) -> tuple[Any, Any, str, str]:
    """(LoRA-wrapped model, tokenizer, prompt format, architecture), as a client builds them."""
    from privsem.models.loading import load_model
    from privsem.models.prompting import resolve_format
    from privsem.models.training import add_lora
    from privsem.rng import make_randomness

    rng = make_randomness("seeded", seed, "bench", "micro", model)
    loaded = load_model(model, seed=rng.seed_for("init") % 2**31)
    lora = _Lora()
    wrapped = add_lora(loaded.model, rank=lora.rank, alpha=lora.alpha, targets=lora.targets,
                       dropout=lora.dropout, seed=rng.seed_for("lora"))
    fmt = resolve_format(loaded.tokenizer, "auto")
    return wrapped, loaded.tokenizer, fmt, loaded.architecture


# ---------------------------------------------------------------------------- 1. DP-SGD step


def dp_sgd_step(model_name: str | None = None, quick: bool = False, *, batch_size: int = 8,
                reps: int | None = None, max_length: int = 128, noise_multiplier: float = 1.0,
                max_grad_norm: float = 1.0, learning_rate: float = 2e-3,
                secure_mode: bool = False, seed: int = 0) -> dict[str, Any]:
    """One DP-SGD LoRA step against one non-private step, same model, adapter and batch.

    The non-private step is ``train_plain``'s: zero_grad, forward, mean of ``per_sample_loss``,
    backward, AdamW step. The DP-SGD step is ``train_dp_sgd``'s: the same through a
    ``GradSampleModule`` (hooks mode, ``loss_reduction="mean"``) with a ``DPOptimizer`` over
    AdamW (per-sample clipping to ``max_grad_norm``, Gaussian noise). Each variant has its own
    copy of the LoRA model (Opacus' hooks sit on the modules, so one copy would slow both), built
    with its optimiser once, outside the timed loop; the one-off cost of building the Opacus
    wrappers, which ``train_dp_sgd`` pays once per round, is ``dp_setup_s``. Both sides also
    report how their step splits into forward+backward and the optimiser step.
    """
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from privsem.data import load_examples
    from privsem.models.training import encode_examples, per_sample_loss
    from privsem.rng import make_randomness

    model = _check_model(model_name, quick)
    reps = _check_reps("reps", reps if reps is not None else (5 if quick else 7))
    _check_reps("batch_size", batch_size)
    _check_reps("max_length", max_length)
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0.0):
        raise ValueError(f"noise_multiplier={noise_multiplier!r} is not valid; use a finite "
                         "number >= 0")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0.0):
        raise ValueError(f"max_grad_norm={max_grad_norm!r} is not valid; use a finite clip > 0")
    rng = make_randomness("seeded", seed, "bench", "micro", "dp_sgd")
    base, tok, fmt, arch = _load_lora_model(model, seed)
    pool = [ex for path in DEMO_TRAIN for ex in load_examples(path)]
    batch = [pool[i % len(pool)] for i in range(batch_size)]
    ids, att, lab = encode_examples(tok, fmt, batch, max_length).tensors  # (B, L) each
    lora = _Lora()

    def trainable(m: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in m.parameters() if p.requires_grad]

    plain_model = base
    dp_model = copy.deepcopy(base)  # identical weights, its own modules for Opacus' hooks
    plain_model.train()
    dp_model.train()
    plain_opt = torch.optim.AdamW(trainable(plain_model), lr=learning_rate, weight_decay=0.0)
    split: dict[str, list[tuple[float, float]]] = {"plain": [], "dp": []}
    with warnings.catch_warnings():
        # Opacus' full backward hooks warn once that the first module's inputs need no grad.
        warnings.simplefilter("ignore", UserWarning)
        t0 = time.perf_counter()
        gsm = GradSampleModule(dp_model, batch_first=True, loss_reduction="mean")
        dp_params = trainable(gsm)
        dp_opt = DPOptimizer(torch.optim.AdamW(dp_params, lr=learning_rate, weight_decay=0.0),
                             noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                             expected_batch_size=batch_size,
                             generator=rng.torch_generator("dp_sgd"), secure_mode=secure_mode)
        setup_s = time.perf_counter() - t0
        losses: list[float] = []

        def step(name: str, module: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
            t_a = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = per_sample_loss(module, ids, att, lab).mean()
            loss.backward()
            t_b = time.perf_counter()
            opt.step()
            losses.append(float(loss.detach()))  # as train_dp_sgd / train_plain do
            split[name].append((t_b - t_a, time.perf_counter() - t_b))

        warmup = 1
        try:
            times = interleaved({"plain": lambda: step("plain", plain_model, plain_opt),
                                 "dp": lambda: step("dp", gsm, dp_opt)}, reps, warmup=warmup)
        finally:
            gsm.cleanup()
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"dp_sgd_step: a non-finite loss on {model!r}; the measurement is "
                           "void (check the model and batch)")

    def side(name: str) -> dict[str, Any]:
        rows = split[name][warmup:]
        return {**summary(times[name]),
                "forward_backward_median_s": statistics.median(r[0] for r in rows),
                "optimizer_step_median_s": statistics.median(r[1] for r in rows)}

    ratio = paired_ratio(times["dp"], times["plain"])
    applies = _goal_applies(model)
    return {
        "benchmark": "dp_sgd_step", "model": model, "architecture": arch,
        "batch_size": batch_size, "seq_len": int(ids.shape[1]),
        "lora": {**lora.as_dict(),
                 "trainable_parameters": sum(p.numel() for p in dp_params),
                 "trainable_tensors": len(dp_params)},
        "noise_multiplier": noise_multiplier, "max_grad_norm": max_grad_norm,
        "secure_mode": secure_mode, "grad_sample_mode": "hooks", "batching": BATCHING_NOTE,
        "reps": reps, "warmup": warmup,
        "plain": side("plain"), "dp": side("dp"), "dp_setup_s": setup_s,
        "times_s": times,
        "ratio": ratio, "ratio_median_paired": ratio,
        "ratio_of_medians": statistics.median(times["dp"]) / statistics.median(times["plain"]),
        "ratio_min": min(times["dp"]) / min(times["plain"]),
        "goal": f"dp / plain <= {GOAL_DP_MAX_RATIO}", "goal_max_ratio": GOAL_DP_MAX_RATIO,
        "within_goal": ratio <= GOAL_DP_MAX_RATIO, "goal_applies": applies,
        "verdict": _verdict(ratio <= GOAL_DP_MAX_RATIO, applies),
    }


# ---------------------------------------------------------------------------- 2. embeddings


def demo_answers(n: int) -> list[str]:
    """``n`` short answers: the demo federation's training replies, cycled."""
    from privsem.data import load_examples

    pool = [ex.response for path in DEMO_TRAIN for ex in load_examples(path)]
    return [pool[i % len(pool)] for i in range(n)]


def embedding_throughput(quick: bool = False, *, n_texts: int | None = None,
                         batch_size: int = 64, reps: int | None = None,
                         encoder: str = "all-MiniLM-L6-v2",
                         embedder: Any = None) -> dict[str, Any]:
    """``Embedder.encode`` against raw ``SentenceTransformer.encode`` on the same model object.

    Both encode the same texts with the same batch size, normalised, to numpy; ``ratio`` is
    privsem's texts per second over the raw texts per second. ``embedder`` may be an existing
    :class:`~privsem.models.embedder.Embedder` (its ``batch_size`` is then used).
    """
    import numpy as np

    from privsem.models.embedder import Embedder

    n = _check_reps("n_texts", n_texts if n_texts is not None else (128 if quick else 1024))
    reps = _check_reps("reps", reps if reps is not None else 5)
    if embedder is None:
        embedder = Embedder(encoder, batch_size=_check_reps("batch_size", batch_size))
    elif not isinstance(embedder, Embedder):
        raise ValueError(f"embedder={type(embedder).__name__} is not valid; pass a "
                         "privsem.models.embedder.Embedder or None")
    raw = embedder._model  # the very SentenceTransformer privsem's Embedder wraps
    bs = int(embedder.batch_size)
    texts = demo_answers(n)

    def raw_encode() -> np.ndarray:
        return np.asarray(raw.encode(texts, batch_size=bs, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False))

    times = interleaved({"privsem": lambda: embedder.encode(texts), "raw": raw_encode}, reps)
    diff = float(np.max(np.abs(embedder.encode(texts) - raw_encode())))
    tps = {k: [n / t for t in v] for k, v in times.items()}
    ratio = paired_ratio(times["raw"], times["privsem"])  # = paired privsem/raw texts per second
    return {
        "benchmark": "embedding_throughput", "encoder": embedder.name, "dim": embedder.dim,
        "texts": n, "distinct_texts": len(set(texts)), "batch_size": bs, "reps": reps,
        "privsem": {**summary(times["privsem"]),
                    "texts_per_s_median": statistics.median(tps["privsem"])},
        "raw": {**summary(times["raw"]), "texts_per_s_median": statistics.median(tps["raw"])},
        "times_s": times, "max_abs_diff": diff,
        "ratio": ratio, "ratio_median_paired": ratio,
        "ratio_of_medians": statistics.median(tps["privsem"]) / statistics.median(tps["raw"]),
        "goal": f"privsem / raw texts per second >= {GOAL_EMBED_MIN_RATIO}",
        "goal_min_ratio": GOAL_EMBED_MIN_RATIO, "within_goal": ratio >= GOAL_EMBED_MIN_RATIO,
        "goal_applies": True, "verdict": _verdict(ratio >= GOAL_EMBED_MIN_RATIO, True),
    }


# ---------------------------------------------------------------------------- 3. generation


class _CountingModel:
    """Passes ``generate`` through to the model and counts the new tokens of every sequence:
    the positions up to and including its first end-of-sequence token (what follows is
    padding), all positions if it never ended."""

    def __init__(self, model: Any, eos_ids: set[int]) -> None:
        self.model, self.eos_ids = model, eos_ids
        self.new_tokens = self.slots = self.sequences = 0

    def eval(self) -> _CountingModel:
        self.model.eval()
        return self

    def generate(self, *, input_ids: Any, **kwargs: Any) -> Any:
        import torch

        out = self.model.generate(input_ids=input_ids, **kwargs)
        new = out[:, input_ids.shape[1]:]  # (rows, steps)
        rows, steps = int(new.shape[0]), int(new.shape[1])
        self.sequences += rows
        self.slots += rows * steps
        if steps:
            is_eos = torch.zeros_like(new, dtype=torch.bool)
            for e in self.eos_ids:
                is_eos |= new == e
            ended = is_eos.any(dim=1)
            first = torch.where(ended, is_eos.int().argmax(dim=1) + 1,
                                torch.full_like(ended, steps, dtype=torch.long))
            self.new_tokens += int(first.sum())
        return out


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                  tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def generation_speed(model_name: str | None = None, quick: bool = False, *,
                     prompts: int | None = None, k: int | None = None,
                     max_new_tokens: int | None = None, batch_size: int = 16,
                     reps: int | None = None, seed: int = 0) -> dict[str, Any]:
    """``generate`` of ``k`` sampled candidates for ``prompts`` demo prompts with the
    LoRA-wrapped model, at the default temperature and top-p of ``GenerationConfig``.

    New tokens are counted from the token ids ``model.generate`` returns (up to and including
    each sequence's end-of-sequence token); ``token_slots`` counts every position the batch
    stepped through (rows × steps), padding after an early end included.
    """
    from privsem.config import GenerationConfig
    from privsem.data import load_prompts
    from privsem.models.generation import generate
    from privsem.rng import make_randomness

    g = GenerationConfig()
    model = _check_model(model_name, quick)
    n = _check_reps("prompts", prompts if prompts is not None else (4 if quick else 16))
    k = _check_reps("k", k if k is not None else (2 if quick else g.candidates))
    new = _check_reps("max_new_tokens", max_new_tokens if max_new_tokens is not None
                      else (8 if quick else g.max_new_tokens))
    _check_reps("batch_size", batch_size)
    reps = _check_reps("reps", reps if reps is not None else 3)
    lm, tok, fmt, arch = _load_lora_model(model, seed)
    pool = load_prompts(DEMO_PROMPTS)
    convs = [(("user", pool[i % len(pool)].text),) for i in range(n)]
    counter = _CountingModel(lm, _eos_ids(lm, tok))
    gen_seed = make_randomness("seeded", seed, "bench", "micro", "generate").seed_for("sample")

    def run(conversations: Sequence[Any], max_new: int) -> None:
        generate(counter, tok, fmt, conversations, k=k, max_new_tokens=max_new,
                 temperature=g.temperature, top_p=g.top_p, batch_size=batch_size,
                 seed=gen_seed)

    run(convs[:1], min(new, 4))  # warm-up
    times: list[float] = []
    tokens: list[int] = []
    slots: list[int] = []
    for _ in range(reps):
        counter.new_tokens = counter.slots = counter.sequences = 0
        t0 = time.perf_counter()
        run(convs, new)
        times.append(time.perf_counter() - t0)
        tokens.append(counter.new_tokens)
        slots.append(counter.slots)
    tok_s = [a / t for a, t in zip(tokens, times, strict=True)]
    return {
        "benchmark": "generation_speed", "model": model, "architecture": arch,
        "prompts": n, "k": k, "sequences": n * k, "max_new_tokens": new,
        "batch_size": batch_size, "temperature": g.temperature, "top_p": g.top_p,
        "prompt_format": fmt, "reps": reps, "seconds": summary(times), "times_s": times,
        "new_tokens": tokens, "token_slots": slots,
        "tokens_per_second": statistics.median(tok_s),  # headline: tokens_per_s_median
        "tokens_per_s_median": statistics.median(tok_s), "tokens_per_s_best": max(tok_s),
        "slots_per_s_median": statistics.median(s / t for s, t in zip(slots, times)),
        "prompts_per_s_median": n / statistics.median(times),
        "mean_new_tokens_per_sequence": statistics.mean(tokens) / (n * k),
    }


# ---------------------------------------------------------------------------- 4. round phases


def _stats(xs: Sequence[float]) -> dict[str, float]:
    return {"mean_s": statistics.fmean(xs), "min_s": min(xs), "max_s": max(xs),
            "total_s": math.fsum(xs)}


def round_phases(run_dir: str | Path) -> dict[str, Any]:
    """Per-phase seconds per round of a run folder's ``metrics.jsonl``.

    Each row of a round ≥ 1 is one client's round: ``phase_seconds`` (train_private,
    train_pseudo, generate, confidence, embed_release, aggregate, train_final; milliseconds
    resolution), ``seconds`` (their unrounded sum) and ``eval_seconds``. A phase a row lacks
    took no time that round (0).
    Returns mean/min/max per phase by client model, the total per phase, and each phase's
    share of the round time (``share``) and of round plus evaluation time (``share_with_eval``).
    """
    folder = Path(run_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {str(folder)!r} does not exist; pass the --out "
                                "folder of a finished `privsem run`")
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {str(folder)!r} holds no run metrics; pass "
                                "the --out folder of a finished `privsem run`")
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = bounded_json.loads(line, max_depth=32, allow_nonfinite=True)
        except ValueError:
            raise ValueError(f"{path}:{n}: not a JSON line; the metrics file is damaged "
                             "(rerun, or resume the run to repair it)") from None
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise ValueError(  # noqa: TRY004 (a damaged file is a bad value, not a bad type)
                f"{path}:{n}: a row without an integer 'round'; the metrics file is not "
                "privsem's")
        if row["round"] > 0:
            if not isinstance(row.get("phase_seconds"), dict):
                raise ValueError(f"{path}:{n}: round {row['round']} has no 'phase_seconds'; "
                                 "the metrics file is not privsem's")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no completed training round (only rows of round 0 or none); "
                         "run at least one round (rounds >= 1) first")
    seen = {p for r in rows for p in r["phase_seconds"]}
    phases = [p for p in PHASE_ORDER if p in seen] + sorted(seen - set(PHASE_ORDER))

    def phase_values(rs: list[dict[str, Any]], phase: str) -> list[float]:
        return [float(r["phase_seconds"].get(phase, 0.0)) for r in rs]

    by_model: dict[str, Any] = {}
    for model in sorted({str(r.get("model", "unknown")) for r in rows}):
        rs = [r for r in rows if str(r.get("model", "unknown")) == model]
        by_model[model] = {
            "clients": sorted({str(r.get("client")) for r in rs}), "rows": len(rs),
            "phases": {p: _stats(phase_values(rs, p)) for p in phases},
            "round": _stats([float(r.get("seconds", 0.0)) for r in rs]),
            "eval": _stats([float(r.get("eval_seconds") or 0.0) for r in rs]),
        }
    totals = {p: math.fsum(phase_values(rows, p)) for p in phases}
    phase_total = math.fsum(totals.values())
    eval_total = math.fsum(float(r.get("eval_seconds") or 0.0) for r in rows)
    with_eval = phase_total + eval_total
    return {
        "benchmark": "round_phases", "run_dir": str(folder),
        "rounds": sorted({int(r["round"]) for r in rows}),
        "clients": sorted({str(r.get("client")) for r in rows}), "rows": len(rows),
        "phases": phases, "by_model": by_model, "totals_s": totals,
        "phase_total_s": phase_total,
        "rows_seconds_total_s": math.fsum(float(r.get("seconds", 0.0)) for r in rows),
        "eval_total_s": eval_total,
        "share": {p: (v / phase_total if phase_total > 0 else 0.0) for p, v in totals.items()},
        "share_with_eval": {**{p: (v / with_eval if with_eval > 0 else 0.0)
                               for p, v in totals.items()},
                            "eval": eval_total / with_eval if with_eval > 0 else 0.0},
        "note": "a client's seconds per round; the server's aggregation time is not in these "
                "rows",
    }


def smoke_run(out: str | Path, model: str | None = None) -> Path:
    """Runs the ``smoke`` preset (3 clients, 2 rounds, 6 prompts) into ``out``; with ``model``
    every client uses that model instead of the preset's tiny ones."""
    from privsem.config import load_config
    from privsem.runtime.inprocess import run

    overrides = [] if model is None else [f"clients.{i}.model.name={model}" for i in range(3)]
    cfg = load_config(preset="smoke", overrides=overrides)
    return run(cfg, out, show_progress=False)


# ---------------------------------------------------------------------------- all of them


RUN_ALL_OPTIONS = ("dp_sgd_step", "embedding_throughput", "generation_speed")


def run_all(quick: bool = False, models: Sequence[str] | None = None, *,
            run_dir: str | Path | None = None, embedder: Any = None,
            options: Mapping[str, Mapping[str, Any]] | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every micro-benchmark in one process. ``models`` default to ``tiny-llama`` (quick) or
    ``smollm2-135m-instruct``; round phases come from ``run_dir`` if given, else from a
    ``smoke`` federation run here in a temporary folder with ``models[0]`` for every client
    (quick: the preset's own tiny models). ``options`` maps a function name
    (``dp_sgd_step``, ``embedding_throughput``, ``generation_speed``) to keyword arguments that
    replace its defaults, e.g. ``{"embedding_throughput": {"n_texts": 256}}``.

    Keys: ``machine``, ``dp_sgd_step``, ``embedding``, ``generation`` and ``round_phases``
    (the first model's results), ``more_models`` (the same for every further model),
    ``failures`` (goals missed) and ``wall_s``."""
    say = progress or (lambda _msg: None)
    opts = {name: dict(kw) for name, kw in (options or {}).items()}
    unknown = sorted(set(opts) - set(RUN_ALL_OPTIONS))
    if unknown:
        raise ValueError(f"run_all: options for {unknown} are not known; use "
                         f"{', '.join(RUN_ALL_OPTIONS)}")
    chosen = [_check_model(m, quick) for m in models] if models else [_check_model(None, quick)]
    t_start = time.perf_counter()
    info = machine()
    out: dict[str, Any] = {"benchmark": "micro", "mode": "quick" if quick else "full",
                           "machine": info, "models": chosen,
                           "method": "time.perf_counter; compared variants interleaved with a "
                                     "rotated order per repetition after warm-up; median and "
                                     "min over repetitions; ratios are medians of ratios "
                                     "paired within a repetition"}
    dp_runs = []
    for m in chosen:
        say(f"micro: DP-SGD step vs non-private step ({m})")
        dp_runs.append(dp_sgd_step(m, quick, **opts.get("dp_sgd_step", {})))
    say("micro: embedding throughput vs raw sentence-transformers")
    out["embedding"] = embedding_throughput(quick, embedder=embedder,
                                            **opts.get("embedding_throughput", {}))
    gen_runs = []
    for m in chosen:
        say(f"micro: generation speed ({m})")
        gen_runs.append(generation_speed(m, quick, **opts.get("generation_speed", {})))
    # the first model's results are the headline; further models follow under more_models
    out["dp_sgd_step"], out["generation"] = dp_runs[0], gen_runs[0]
    out["more_models"] = [{"model": m, "dp_sgd_step": d, "generation": g}
                          for m, d, g in zip(chosen[1:], dp_runs[1:], gen_runs[1:], strict=True)]
    if run_dir is not None:
        out["round_phases"] = round_phases(run_dir)
        out["round_phases"]["source"] = f"run folder {run_dir}"
    else:
        model = None if quick else chosen[0]
        say(f"micro: smoke federation for round phases ({model or 'preset models'})")
        with tempfile.TemporaryDirectory(prefix="privsem-micro-") as tmp:
            t0 = time.perf_counter()
            smoke_run(Path(tmp) / "run", model)
            wall = time.perf_counter() - t0
            out["round_phases"] = round_phases(Path(tmp) / "run")
        out["round_phases"]["source"] = ("smoke preset (3 clients, 2 rounds, 6 prompts), "
                                         f"models: {model or 'tiny-llama, tiny-gemma3'}; "
                                         "temporary folder")
        out["round_phases"]["run_wall_s"] = wall
    failures = [f"{r['benchmark']} {r.get('model', r.get('encoder'))}"
                for r in [*dp_runs, out["embedding"]] if r["verdict"] == "FAIL"]
    out["failures"] = failures
    info["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out["wall_s"] = time.perf_counter() - t_start
    return out


# ---------------------------------------------------------------------------- markdown


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _md_dp(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = [(f"**DP-SGD LoRA step vs non-private step** (goal ≤ {GOAL_DP_MAX_RATIO}x; "
           f"{rows[0]['batching'] if rows else BATCHING_NOTE})"), ""]
    out += _table(
        ["model", "B×L", "LoRA params", "plain ms (min)", "DP ms (min)", "fwd+bwd plain/DP",
         "opt step plain/DP", "DP setup ms", "ratio", "(of medians)", "verdict"],
        [[r["model"], f"{r['batch_size']}×{r['seq_len']}",
          f"{r['lora']['trainable_parameters']:,}",
          f"{_ms(r['plain']['median_s'])} ({_ms(r['plain']['min_s'])})",
          f"{_ms(r['dp']['median_s'])} ({_ms(r['dp']['min_s'])})",
          (f"{_ms(r['plain']['forward_backward_median_s'])} / "
          f"{_ms(r['dp']['forward_backward_median_s'])}"),
          (f"{_ms(r['plain']['optimizer_step_median_s'])} / "
          f"{_ms(r['dp']['optimizer_step_median_s'])}"),
          _ms(r["dp_setup_s"]), f"{r['ratio_median_paired']:.3f}",
          f"{r['ratio_of_medians']:.3f}", r["verdict"]] for r in rows])
    return out


def _md_embed(r: Mapping[str, Any]) -> list[str]:
    out = [(f"**Embedding throughput** ({r['encoder']}, {r['texts']} texts, batch "
           f"{r['batch_size']}; goal ≥ {GOAL_EMBED_MIN_RATIO}x raw; max |diff| "
           f"{r['max_abs_diff']:.1e})"), ""]
    out += _table(["privsem texts/s", "raw texts/s", "ratio", "(of medians)", "verdict"],
                  [[f"{r['privsem']['texts_per_s_median']:.1f}",
                    f"{r['raw']['texts_per_s_median']:.1f}", f"{r['ratio_median_paired']:.3f}",
                    f"{r['ratio_of_medians']:.3f}", r["verdict"]]])
    return out


def _md_gen(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = ["**Generation** (privsem generate, LoRA model, sampled)", ""]
    out += _table(
        ["model", "prompts×k", "max new", "s (min)", "new tokens", "tokens/s", "slots/s",
         "prompts/s"],
        [[r["model"], f"{r['prompts']}×{r['k']}", str(r["max_new_tokens"]),
          f"{r['seconds']['median_s']:.2f} ({r['seconds']['min_s']:.2f})",
          str(int(statistics.median(r["new_tokens"]))), f"{r['tokens_per_s_median']:.1f}",
          f"{r['slots_per_s_median']:.1f}", f"{r['prompts_per_s_median']:.2f}"]
         for r in rows])
    return out


def _md_phases(r: Mapping[str, Any]) -> list[str]:
    phases = list(r["phases"])
    src = r.get("source", r["run_dir"])
    out = [(f"**Round time by phase** (s per client round, mean [min–max]; {src}; rounds "
           f"{r['rounds']})"), ""]
    rows = []
    for model, m in r["by_model"].items():
        rows.append([model, str(m["rows"]),
                     *(f"{m['phases'][p]['mean_s']:.2f} [{m['phases'][p]['min_s']:.2f}–"
                       f"{m['phases'][p]['max_s']:.2f}]" for p in phases),
                     f"{m['round']['mean_s']:.2f}", f"{m['eval']['mean_s']:.2f}"])
    rows.append(["share of round", "", *(f"{r['share'][p]:.0%}" for p in phases), "100%", ""])
    out += _table(["model", "rows", *phases, "round", "eval"], rows)
    return out


def format_markdown(result: Mapping[str, Any]) -> str:
    """Compact tables of :func:`run_all`'s result, or of one function's result."""
    kind = result.get("benchmark")
    parts: list[str] = []
    if kind == "micro":
        m = result["machine"]
        parts += [(f"Micro-benchmarks ({result['mode']}) on {m['cpu_model']}, "
                  f"{m['usable_cores']} cores, torch {m['torch']} ({m['torch_threads']} "
                  f"threads), opacus {m['opacus']}; load average "
                  f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'] or [])} at start,"
                  f" {', '.join(f'{x:.2f}' for x in m.get('load_average_at_end') or [])} at "
                  f"end; {result['wall_s']:.0f} s."), ""]
        more = result.get("more_models") or []
        parts += _md_dp([result["dp_sgd_step"], *(x["dp_sgd_step"] for x in more)]) + [""]
        parts += _md_embed(result["embedding"]) + [""]
        parts += _md_gen([result["generation"], *(x["generation"] for x in more)]) + [""]
        parts += _md_phases(result["round_phases"])
        fails = result.get("failures") or []
        parts += ["", f"Goals: {len(fails)} FAIL" + (f" ({', '.join(fails)})" if fails else "")]
    elif kind == "dp_sgd_step":
        parts += _md_dp([result])
    elif kind == "embedding_throughput":
        parts += _md_embed(result)
    elif kind == "generation_speed":
        parts += _md_gen([result])
    elif kind == "round_phases":
        parts += _md_phases(result)
    else:
        raise ValueError(f"format_markdown: result of benchmark {kind!r} is not known; pass "
                         "what run_all or one of the micro functions returned")
    return "\n".join(parts) + "\n"
