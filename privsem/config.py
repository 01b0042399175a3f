"""Run configuration: frozen, keyword-only dataclasses, validated once where configuration enters.

Rules for changing it:
- Every component has its own frozen dataclass; :class:`RunConfig` composes them.
- ``__post_init__`` validates and raises :class:`~privsem.errors.ConfigError` naming the field,
  the bad value and the fix. :func:`build` prefixes the field with its full dotted path.
- Fields are keyword-only, so a noise multiplier and a clip can never be swapped by position.
- No field changes meaning between int and float: float fields accept ints (as floats), int
  fields reject floats, bools are never numbers.
- Configuration files are YAML or TOML. ``--set a.b.c=value`` overrides any field; the value is
  read as YAML (``3``, ``0.5``, ``true``, ``[q_proj, v_proj]``, ``null``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, TypeVar, Union

import yaml

from privsem.errors import ConfigError

PRESETS = ("demo", "smoke", "audit")
# A client id names files, folders and Flower node settings: short, ASCII, no path syntax.
CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
AGGREGATION_BACKENDS = ("masked", "ckks", "plaintext")
NOISE_PLACEMENTS = ("local", "distributed")
CONSENSUS_OPERATORS = ("mean", "medoid", "geometric_median", "trimmed_mean")
SELECTION_MODES = ("local", "shared")
TRAINING_SCHEDULES = ("mixed", "sequential")
NOMINATIONS = ("likeliest", "nearest")
ROUTES = ("none", "proximity")  # consensus.route
# ``consensus.confidence`` / ``consensus.route``: "auto" picks what the regime allows, resolved
# in RunConfig: proximity (confidence and routing) without record-level DP, ``gain`` and no
# routing with it (proximity reads the private prompts directly).
AUTO = "auto"
UNRESOLVED = ("'auto' is resolved when the whole run configuration is built (RunConfig); read "
              "this field from a RunConfig, or set a value")
CANARY_FORMATS = ("digits", "words")
# Secret length limits: at least 10^4 possible secrets (fewer could be guessed by chance), at
# most 2^53 (the exact sampler's range); words are drawn from a fixed 100-word vocabulary
# (privsem.audits.planting.WORDS).
CANARY_LENGTHS = {"digits": (4, 15), "words": (2, 7)}


def _check(cond: bool, name: str, value: object, fix: str) -> None:
    if not cond:
        raise ConfigError(name, value, fix)


def _number(value: object) -> TypeGuard[float]:
    """A finite int or float, not a bool (for fields that may also say ``auto``)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _positive(name: str, value: float) -> None:
    _check(value > 0 and math.isfinite(value), name, value, "use a finite number > 0")


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """LoRA adapter of one client's model (peft)."""

    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "rank", self.rank, "use an integer >= 1")
        _check(self.alpha >= 1, "alpha", self.alpha, "use an integer >= 1 (peft's lora_alpha)")
        _check(len(self.targets) > 0, "targets", self.targets, "name at least one module")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "use a value in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """One client's model: a built-in name, a Hugging Face directory or a GGUF file."""

    name: str
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_length: int = 128
    prompt_format: str = "auto"

    def __post_init__(self) -> None:
        _check(bool(self.name), "name", self.name,
               "name a built-in model (see `privsem models`), a model directory or a .gguf file")
        _check(self.max_length >= 16, "max_length", self.max_length, "use at least 16 tokens")
        _check(self.prompt_format in ("auto", "chat", "plain"), "prompt_format",
               self.prompt_format, "use 'auto', 'chat' or 'plain'")


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """One federation member: its model and its private data (never leaves the client)."""

    id: str
    model: ModelConfig
    train: str
    eval: str | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.id, str) and CLIENT_ID.fullmatch(self.id) is not None, "id",
               self.id if len(str(self.id)) <= 80 else f"{str(self.id)[:80]}…",
               "use 1 to 63 ASCII letters, digits, '-' and '_', starting with a letter or "
               "digit (it names files and folders)")
        _check(bool(self.train), "train", self.train, "give the path of a JSONL file")


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Local fine-tuning: private data (DP-SGD when record-level DP is on) and pseudo-labels.

    ``schedule``:
    - ``mixed`` (default): private data and the latest pseudo-labels are trained on *together*.
      ``rounds = R`` buys R consensus exchanges and R + 1 training phases: phase 1 (private data
      only, before round 1's candidates), then after each round r one phase that mixes private
      data with round r's labels, so every round's labels are trained on, the last round's
      included. The private-data budget is that of R rounds of ``epochs_per_round`` epochs (the
      same DP-SGD steps, and so the same σ at the same target, as local-only training):
      ``first_phase_share`` of it in phase 1, so that the first candidates come from a model
      that has learnt from its data, and the rest spread evenly over the other R phases (null:
      all R + 1 phases even; ``auto``, the default: 1 when the run routes, else 0.75; 1: all
      of it in phase 1, and the later phases train on labels only, ``pseudo_label_epochs``
      passes at ``pseudo_label_learning_rate``, touching no private data and charging nothing; without record-level DP, phase 1 is then
      exactly local-only training, and ``consensus.route`` answers a client's own topics with
      that adapter). ``final_phase_share`` (with ``first_phase_share``) keeps
      that share of the budget for the last phase, after the last round's labels, so a client
      ends on its private data and the labels together; the phases between share what is left
      (nothing, when the two shares add up to 1: they train on labels only). Each private
      step is paired with ``pseudo_label_ratio`` pseudo-labelled examples per private example:
      in one batch and one loss without DP; as a separate, non-private step after each DP-SGD
      step with DP (the labels are post-processing of DP releases and cost nothing). A phase
      makes at least ``pseudo_label_epochs`` passes over its labels: where its private steps are too few for
      that, it adds label-only steps, spread evenly among the private ones.
    - ``sequential`` (the earlier schedule, kept for the ablation): per round, private training
      first, then ``pseudo_label_epochs`` epochs on the *previous* round's labels; the last
      round's labels are never trained on.
    """

    batch_size: int = 8
    epochs_per_round: float = 1.0
    learning_rate: float = 2e-3
    schedule: str = "mixed"
    # ``auto`` (the three below, and ``consensus.accept_margin`` / ``own_answer``): the label
    # recipe of the regime (:data:`LABEL_RECIPES`), resolved in RunConfig.
    first_phase_share: float | str | None = AUTO
    final_phase_share: float | None = None
    pseudo_label_ratio: float = 1.0
    pseudo_label_epochs: int | str = AUTO
    pseudo_label_learning_rate: float | str = AUTO
    pseudo_label_batch_size: int = 8

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "use an integer >= 1")
        _positive("epochs_per_round", self.epochs_per_round)
        _positive("learning_rate", self.learning_rate)
        _check(self.schedule in TRAINING_SCHEDULES, "schedule", self.schedule,
               f"use one of {', '.join(TRAINING_SCHEDULES)}")
        first = self.first_phase_share
        _check(first is None or first == AUTO or (_number(first) and 0 < first <= 1),
               "first_phase_share", first,
               "use a fraction in (0, 1], null to spread the budget evenly, or auto")
        if self.final_phase_share is not None:
            _check(math.isfinite(self.final_phase_share) and 0 < self.final_phase_share < 1
                   and (first == AUTO or (_number(first)
                                          and first + self.final_phase_share <= 1 + 1e-9)),
                   "final_phase_share", self.final_phase_share,
                   "use a fraction in (0, 1) with first_phase_share set and the two adding up "
                   "to at most 1 (auto resolves to 1 with routing, 0.75 without), or null")
        _check(math.isfinite(self.pseudo_label_ratio) and self.pseudo_label_ratio >= 0,
               "pseudo_label_ratio", self.pseudo_label_ratio,
               "use a finite number >= 0 (0 trains on private data only)")
        epochs, rate = self.pseudo_label_epochs, self.pseudo_label_learning_rate
        _check(epochs == AUTO or (isinstance(epochs, int) and not isinstance(epochs, bool)
                                  and epochs >= 0),
               "pseudo_label_epochs", epochs,
               "use an integer >= 0 (0 turns pseudo-label fine-tuning off), or auto")
        _check(rate == AUTO or (_number(rate) and 0 < rate),
               "pseudo_label_learning_rate", rate, "use a finite number > 0, or auto")
        _check(self.pseudo_label_batch_size >= 1, "pseudo_label_batch_size",
               self.pseudo_label_batch_size, "use an integer >= 1")

    def phases(self, rounds: int) -> int:
        """Training phases of a run of ``rounds`` rounds (see ``schedule``)."""
        return rounds + 1 if self.schedule == "mixed" else rounds


@dataclass(frozen=True, kw_only=True)
class DpTarget:
    """A unit's (ε, δ) target over the whole planned run, and the budget the ledger enforces.

    The noise is calibrated from ``epsilon``/``delta``; ``budget`` is what the ledger lets the
    client spend (default: ``epsilon``). ``enabled: false`` turns the mechanism off, and the
    unit then makes no claim.
    """

    enabled: bool = True
    epsilon: float = 8.0
    delta: float = 1e-5
    budget: float | None = None

    def __post_init__(self) -> None:
        _positive("epsilon", self.epsilon)
        _check(0 < self.delta < 1, "delta", self.delta, "use a value in (0, 1), e.g. 1e-5")
        if self.budget is not None:
            _positive("budget", self.budget)

    @property
    def budget_epsilon(self) -> float:
        return self.epsilon if self.budget is None else self.budget


@dataclass(frozen=True, kw_only=True)
class RecordPrivacyConfig(DpTarget):
    """Record-level DP: DP-SGD (Poisson sampling, per-sample clipping to ``max_grad_norm``,
    Gaussian noise; Opacus)."""

    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("max_grad_norm", self.max_grad_norm)


@dataclass(frozen=True, kw_only=True)
class ClientPrivacyConfig(DpTarget):
    """Client-level DP: one joint clip of the (prompts × dim) matrix, Gaussian noise per round.

    ``clip`` bounds the Frobenius norm of the matrix; ``None`` means sqrt(prompts), which never
    shrinks a matrix of unit rows. ``placement`` is where the noise is added: ``local`` (each
    client the full noise; holds even if aggregation is broken) or ``distributed`` (each client
    a share, so that the sum of at least ``aggregation.masked.min_survivors`` survivors carries
    the full noise; needs the masked back-end and relies on it).
    """

    clip: float | None = None
    placement: str = "local"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip is not None:
            _positive("clip", self.clip)
        _check(self.placement in NOISE_PLACEMENTS, "placement", self.placement,
               f"use one of {', '.join(NOISE_PLACEMENTS)}")


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    record: RecordPrivacyConfig = field(default_factory=RecordPrivacyConfig)
    client: ClientPrivacyConfig = field(default_factory=ClientPrivacyConfig)
    accountant: str = "rdp"
    randomness: str = "os"

    def __post_init__(self) -> None:
        _check(self.accountant in ("rdp", "pld"), "accountant", self.accountant,
               "use 'rdp' or 'pld'")
        _check(self.randomness in ("os", "seeded"), "randomness", self.randomness,
               "use 'os' (OS entropy, for deployments) or 'seeded' (reproducible simulations)")


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    candidates: int = 4
    max_new_tokens: int = 48
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = 16
    # the first candidate is the greedy answer (the model's likeliest), the others sampled
    greedy_first: bool = True

    def __post_init__(self) -> None:
        _check(self.candidates >= 1, "candidates", self.candidates, "use an integer >= 1")
        _check(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens,
               "use an integer >= 1")
        _positive("temperature", self.temperature)
        _check(0 < self.top_p <= 1, "top_p", self.top_p, "use a value in (0, 1]")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "use an integer >= 1")


@dataclass(frozen=True, kw_only=True)
class EmbeddingConfig:
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = 64

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "use an integer >= 1")


@dataclass(frozen=True, kw_only=True)
class MaskedConfig:
    """Pairwise-masked secure aggregation (Bonawitz et al. 2017; SecAgg+ graph, Bell et al. 2020).

    ``modulus_bits``: sums are computed mod 2^b; the fixed-point scale is the largest power of
    two for which the sum of the cohort can never wrap. ``graph``: ``harary`` (each client masks
    with about 3·log2(n) neighbours) or ``complete``. ``threshold``: the fraction of a client's
    share holders needed to unmask (above 1/2, the security floor). ``min_survivors``: the
    fraction of the cohort that must remain at every stage, else the round aborts; with
    distributed noise, the number of noise shares the sum always carries. ``consistency_check``:
    the signed round that stops a server from showing clients different survivor sets.
    """

    modulus_bits: int = 32
    graph: str = "harary"
    threshold: float = 0.6
    min_survivors: float = 0.6
    consistency_check: bool = True

    def __post_init__(self) -> None:
        _check(16 <= self.modulus_bits <= 64, "modulus_bits", self.modulus_bits,
               "use an integer in [16, 64] (32 suits up to thousands of clients)")
        _check(self.graph in ("harary", "complete"), "graph", self.graph,
               "use 'harary' (SecAgg+, about 3·log2(n) neighbours) or 'complete'")
        _check(0.5 < self.threshold < 1, "threshold", self.threshold,
               "use a fraction in (0.5, 1): at most half is below the security floor (the server could unmask a client)")
        _check(0 < self.min_survivors <= 1, "min_survivors", self.min_survivors,
               "use a fraction of the cohort in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class CkksConfig:
    """CKKS encrypted aggregation (TenSEAL) with a separate key holder (DESIGN.md §3).

    ``poly_modulus_degree`` and ``coeff_mod_bit_sizes``: the ring and modulus chain, checked
    against the 128-bit security table; ``scale_bits``: the encoding scale 2^s;
    ``flood_std`` and ``grid_bits``: the key holder's flooding noise and rounding grid before
    release; ``min_contributors``: the fraction of the cohort (at least 2 clients) whose uploads
    the aggregate must hold, else the key holder refuses; ``value_bound_sigmas``: a client's
    noised entries are clamped to clip · (1 + value_bound_sigmas · z) before encryption
    (post-processing), which bounds the sum below the first prime.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40
    flood_std: float = 2.0 ** -20
    grid_bits: int = 16
    min_contributors: float = 0.6
    value_bound_sigmas: float = 8.0

    def __post_init__(self) -> None:
        # The ring, chain, scale and grid are checked together by CkksParams at run start.
        _positive("flood_std", self.flood_std)
        _check(0 < self.min_contributors <= 1, "min_contributors", self.min_contributors,
               "use a fraction of the cohort in (0, 1]")
        _check(math.isfinite(self.value_bound_sigmas) and self.value_bound_sigmas >= 4,
               "value_bound_sigmas", self.value_bound_sigmas,
               "use a number >= 4 (fewer clamps ordinary noise draws)")


@dataclass(frozen=True, kw_only=True)
class AggregationConfig:
    """``masked`` (default: the server learns only the survivors' sum), ``ckks`` (clients
    encrypt under a key holder's public key; the aggregator adds ciphertexts, the key holder
    decrypts only the sum) or ``plaintext`` (the server sees every client's noisy matrix;
    baselines and trusted servers)."""

    backend: str = "masked"
    masked: MaskedConfig = field(default_factory=MaskedConfig)
    ckks: CkksConfig = field(default_factory=CkksConfig)

    def __post_init__(self) -> None:
        _check(self.backend in AGGREGATION_BACKENDS, "backend", self.backend,
               f"use one of {', '.join(AGGREGATION_BACKENDS)}")

    def settings(self) -> MaskedConfig | CkksConfig | None:
        """The section of the chosen back-end (None where it has none)."""
        return getattr(self, self.backend, None)


@dataclass(frozen=True, kw_only=True)
class ConsensusConfig:
    """How the server turns the aggregate into consensus points and how pseudo-labels are chosen.

    ``operator`` other than ``mean`` needs individual vectors, so only the plaintext back-end
    offers it. ``selection``: ``local`` (each client picks among its own candidates; no text
    leaves a client) or ``shared`` (nominated texts go to the server; allowed only with DP-SGD on
    or ``server_trusted_with_texts``).
    """

    operator: str = "mean"
    selection: str = "local"
    agreement_threshold: float = 0.0
    trim_fraction: float = 0.2
    server_trusted_with_texts: bool = False
    # Expertise (privsem.confidence): each client weighs its answer to prompt j by a confidence
    # w_j ∈ [0, 1] from its own model, raised to ``confidence_power``; the upload carries the
    # rows w·e and the column w, and the server forms Σ w·e / Σ w. ``none``: the plain mean.
    # ``auto``: ``proximity`` without record-level DP, ``gain`` with it.
    confidence: str = AUTO
    confidence_power: float = 4.0
    # ``proximity``: the largest cosine similarity of the public prompt to a private prompt,
    # mapped from [proximity_low, proximity_high] onto [0, 1] (refused with record-level DP)
    proximity_low: float = 0.4
    proximity_high: float = 0.7
    # Prompts whose mean confidence over the contributors (noisy under client-level DP) is
    # below ``min_weight`` get no pseudo-label: nobody knows the answer. 0: no such gate.
    min_weight: float = 0.0
    # Label acceptance: where a client's own confidence is at least ``accept_confidence`` and at
    # least ``accept_share`` of the federation's Σw on the prompt (None: 1/contributors, i.e. at
    # least the federation's mean confidence: it is among those who know), and its model finds
    # the label more than ``accept_margin`` nats per token less likely than its own candidates,
    # it refuses the label (``accept_margin: null``: it refuses every label where it knows, and
    # keeps its own answer). ``accept_labels: false`` trains on every label.
    accept_labels: bool = True
    accept_confidence: float = 0.2
    accept_share: float | None = None
    accept_margin: float | str | None = AUTO
    # Where a client refuses a label, it trains on its own answer instead (``own_answer``: the
    # greedy candidate with ``generation.greedy_first``, else its likeliest candidate): it
    # rehearses what it knows on the public phrasing, reading no private example.
    # ``auto`` (both): the label recipe of the regime (:data:`LABEL_RECIPES`).
    own_answer: bool | str = AUTO
    # Shared selection: which of its candidates a client nominates: ``likeliest`` (the one its
    # own model finds most likely) or ``nearest`` (the one nearest the consensus point).
    nominate: str = "likeliest"
    # How a client answers (its public candidates and held-out questions). ``proximity``: a
    # prompt whose proximity to the client's own private prompts (the ramp above, before the
    # power) is at least ``route_threshold`` is answered by the adapter of training phase 1
    # (private data only), every other prompt by the current adapter (labels trained in): what
    # the federation teaches never overwrites what the client's own data taught it. Reads the
    # private prompts, so refused with record-level DP; needs the ``mixed`` schedule. ``auto``:
    # ``proximity`` where both hold (no record-level DP, the mixed schedule), else ``none``.
    route: str = AUTO
    route_threshold: float = 0.5

    @property
    def routes(self) -> bool:
        """Whether a client answers its own topics with its phase-1 adapter (``route``, once
        RunConfig has resolved ``auto``)."""
        if self.route == AUTO:
            raise ConfigError("consensus.route", AUTO, UNRESOLVED)
        return self.route != "none"

    def __post_init__(self) -> None:
        from privsem.confidence import CONFIDENCES

        _check(self.confidence in (AUTO, *CONFIDENCES), "confidence", self.confidence,
               f"use one of {', '.join((AUTO, *CONFIDENCES))}")
        _positive("confidence_power", self.confidence_power)
        _check(math.isfinite(self.proximity_low) and math.isfinite(self.proximity_high)
               and 0 <= self.proximity_low < self.proximity_high <= 1, "proximity_low",
               (self.proximity_low, self.proximity_high),
               "use 0 <= proximity_low < proximity_high <= 1 (cosine similarities)")
        _check(math.isfinite(self.min_weight) and 0 <= self.min_weight <= 1, "min_weight",
               self.min_weight, "use a value in [0, 1] (0: every prompt gets a label)")
        _check(math.isfinite(self.accept_confidence) and 0 <= self.accept_confidence <= 1,
               "accept_confidence", self.accept_confidence, "use a value in [0, 1]")
        _check(self.accept_share is None or (math.isfinite(self.accept_share)
                                             and 0 < self.accept_share <= 1), "accept_share",
               self.accept_share, "use a share of the federation's confidence in (0, 1], or "
               "null for the federation's mean")
        margin = self.accept_margin
        _check(margin is None or margin == AUTO or (_number(margin) and margin >= 0),
               "accept_margin", margin, "use a finite number of nats per token >= 0, null to "
               "refuse every label where the client knows, or auto")
        _check(isinstance(self.own_answer, bool) or self.own_answer == AUTO, "own_answer",
               self.own_answer, "use true, false or auto")
        _check(self.route in (AUTO, *ROUTES), "route", self.route,
               f"use one of {', '.join((AUTO, *ROUTES))}")
        _check(math.isfinite(self.route_threshold) and 0 < self.route_threshold <= 1,
               "route_threshold", self.route_threshold,
               "use a value in (0, 1] on the proximity ramp")
        _check(self.nominate in NOMINATIONS, "nominate", self.nominate,
               f"use one of {', '.join(NOMINATIONS)}")
        _check(self.operator in CONSENSUS_OPERATORS, "operator", self.operator,
               f"use one of {', '.join(CONSENSUS_OPERATORS)}")
        _check(self.selection in SELECTION_MODES, "selection", self.selection,
               f"use one of {', '.join(SELECTION_MODES)}")
        _check(math.isfinite(self.agreement_threshold) and self.agreement_threshold >= 0,
               "agreement_threshold", self.agreement_threshold, "use a finite value >= 0")
        _check(0 <= self.trim_fraction < 0.5, "trim_fraction", self.trim_fraction,
               "use a value in [0, 0.5)")


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    enabled: bool = True
    before_training: bool = True
    max_new_tokens: int = 48
    max_questions: int | None = None

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens,
               "use an integer >= 1")
        if self.max_questions is not None:
            _check(self.max_questions >= 1, "max_questions", self.max_questions,
                   "use an integer >= 1 or null for all")


@dataclass(frozen=True, kw_only=True)
class CanaryConfig:
    """Canaries planted in one client's private data for the privacy audit (DESIGN.md §6).

    At set-up the run draws ``count`` canaries (random secrets of ``length`` digits or words)
    and includes each in ``client``'s training data independently with probability ½. The full
    list, with that inclusion secret, goes to ``RUN_DIR/audit/canaries.json``, for the auditor
    only: the protocol never sends it anywhere, and in a deployment the auditor keeps the file
    away from the server.
    """

    client: str
    count: int = 64
    format: str = "digits"
    length: int = 6

    def __post_init__(self) -> None:
        _check(2 <= self.count <= 10_000, "count", self.count,
               "use an integer in [2, 10000] (the one-run audit needs several canaries; 64 or "
               "more give a useful bound)")
        _check(self.format in CANARY_FORMATS, "format", self.format,
               f"use one of {', '.join(CANARY_FORMATS)}")
        lo, hi = CANARY_LENGTHS.get(self.format, (1, 1))
        _check(lo <= self.length <= hi, "length", self.length,
               f"use an integer in [{lo}, {hi}] for {self.format} secrets (at least 10^4 "
               "possible secrets, at most 2^53)")


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Privacy audits prepared at set-up. ``canaries: null`` (the default) plants none."""

    canaries: CanaryConfig | None = None


@dataclass(frozen=True, kw_only=True)
class FlowerConfig:
    """The Flower runtime (privsem.runtime.flower): how long the server waits, and, in
    simulation only, the clients that go silent each round."""

    spec_timeout: float = 3600.0  # seconds the server waits for the spec's answers (clients
    # train, generate and release in between)
    timeout: float = 600.0  # seconds it waits for the answers of every later stage (T41)
    notice_timeout: float = 5.0  # seconds it waits for a notice (abort, note) to be taken
    connect_timeout: float = 300.0  # seconds it waits for every party's node to connect
    dropout: float = 0.0  # simulation: fraction of clients that go silent each round
    dropout_stages: tuple[str, ...] = ("spec", "share", "input", "unmask")
    hang: float = 0.0  # simulation: fraction of clients that hang (answer nothing) each round

    def __post_init__(self) -> None:
        for name in ("spec_timeout", "timeout", "notice_timeout", "connect_timeout"):
            v = getattr(self, name)
            _check(math.isfinite(v) and v > 0, name, v,
                   "use a finite number of seconds > 0; a server never waits forever")
        for name in ("dropout", "hang"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, name, v, "use a fraction in [0, 1)")
        _check(self.dropout + self.hang < 1.0, "dropout", self.dropout,
               "dropout + hang must leave some clients: keep their sum below 1")
        _check(len(self.dropout_stages) >= 1, "dropout_stages", self.dropout_stages,
               "name at least one stage (spec, consensus, or a back-end stage such as input)")


# The label recipe ``auto`` resolves to (training.first_phase_share, pseudo_label_epochs,
# pseudo_label_learning_rate; consensus.accept_margin, own_answer), by whether the run routes.
# Routed: the client answers its own topics with its phase-1 adapter, so the labels may be
# trained hard (8 passes) without overwriting them. Not routed (always under record-level DP):
# the labels reach the same adapter that answers the client's own topics, so the recipe stays
# gentle (the earlier default): with 8 passes over a noisy consensus, the DP demo's clients
# ended round 2 0.01-0.05 lower in own-topic similarity (one seed; docs/expertise.md).
LABEL_RECIPES: dict[bool, dict[str, dict[str, Any]]] = {
    True: {"training": {"first_phase_share": 1.0, "pseudo_label_epochs": 8,
                        "pseudo_label_learning_rate": 2e-3},
           "consensus": {"accept_margin": None, "own_answer": True}},
    False: {"training": {"first_phase_share": 0.75, "pseudo_label_epochs": 2,
                         "pseudo_label_learning_rate": 1e-3},
            "consensus": {"accept_margin": 0.5, "own_answer": False}},
}

V = TypeVar("V")


def resolved(value: V | str, name: str) -> V:
    """``value`` of a field that may say ``auto``, once RunConfig has resolved it."""
    if isinstance(value, str):
        raise ConfigError(name, value, UNRESOLVED)
    return value


def _resolve_auto(c: ConsensusConfig, t: TrainingConfig, *,
                  record_dp: bool) -> tuple[ConsensusConfig, TrainingConfig]:
    """``auto`` settings: proximity confidence and routing where the regime allows reading the
    private prompts (no record-level DP; routing also needs the mixed schedule's phase-1
    adapter), then the label recipe of :data:`LABEL_RECIPES` for whether the run routes."""
    confidence, route = c.confidence, c.route
    if confidence == AUTO:
        confidence = "gain" if record_dp else "proximity"
    if route == AUTO:
        route = "proximity" if not record_dp and t.schedule == "mixed" else "none"
    recipe = LABEL_RECIPES[route != "none"]  # (c.routes, once resolved)
    c = dataclasses.replace(c, confidence=confidence, route=route, **{
        k: v for k, v in recipe["consensus"].items() if getattr(c, k) == AUTO})
    auto = {k: v for k, v in recipe["training"].items() if getattr(t, k) == AUTO}
    if auto:
        try:
            t = dataclasses.replace(t, **auto)
        except ConfigError as e:
            raise ConfigError(f"training.{e.field}", e.value, e.fix) from None
    return c, t


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A whole federation run, resolved. Written to ``RUN_DIR/config.yaml``."""

    name: str = "run"
    seed: int = 0
    rounds: int = 2
    clients: tuple[ClientConfig, ...]
    prompts: str
    max_prompts: int | None = None
    threads: int | None = None
    training: TrainingConfig = field(default_factory=TrainingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    # Threat models this configuration claims to defend (ids of threat_models/catalogue.yaml);
    # `privsem run` refuses to start when one does not hold (privsem.threats).
    threat_models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, "rounds", self.rounds, "use an integer >= 1")
        _check(len(self.clients) >= 2, "clients", len(self.clients),
               "a federation needs at least 2 clients")
        ids = [c.id for c in self.clients]
        _check(len(set(ids)) == len(ids), "clients", ids, "give every client a distinct id")
        if self.max_prompts is not None:
            _check(self.max_prompts >= 1, "max_prompts", self.max_prompts,
                   "use an integer >= 1 or null for all")
        if self.threads is not None:
            _check(self.threads >= 1, "threads", self.threads, "use an integer >= 1 or null")
        if self.aggregation.backend in ("masked", "ckks"):
            _check(len(self.clients) >= 3, "aggregation.backend", self.aggregation.backend,
                   "secure aggregation needs at least 3 clients (with 2, the sum reveals the "
                   "other's input); add a client or use the plaintext back-end")
        if self.privacy.client.placement == "distributed":
            _check(self.aggregation.backend == "masked", "privacy.client.placement",
                   self.privacy.client.placement,
                   "distributed noise is only private under secure aggregation: use "
                   "aggregation.backend: masked, or placement: local")
            _check(self.privacy.client.enabled, "privacy.client.placement",
                   self.privacy.client.placement, "distributed placement needs privacy.client "
                   "enabled")
        c, t = _resolve_auto(self.consensus, self.training,
                             record_dp=self.privacy.record.enabled)
        object.__setattr__(self, "consensus", c)  # resolved: RUN_DIR/config.yaml says which
        object.__setattr__(self, "training", t)
        if c.operator != "mean":
            _check(self.aggregation.backend == "plaintext", "consensus.operator", c.operator,
                   "operators other than 'mean' need individual vectors: use the plaintext "
                   "back-end or operator 'mean'")
            _check(c.operator == "medoid" or c.confidence == "none", "consensus.operator",
                   c.operator, "of the plaintext operators only 'medoid' takes confidence "
                   "weights: use operator 'mean' or 'medoid', or consensus.confidence: none")
        if self.privacy.record.enabled:
            from privsem.confidence import DATA_CONFIDENCES

            _check(c.confidence not in DATA_CONFIDENCES, "consensus.confidence", c.confidence,
                   "this measure reads the private prompts directly, so with record-level DP "
                   "(privacy.record) the model's releases would no longer be post-processing of "
                   "DP-SGD: use 'gain' (or 'likelihood', 'self_agreement', 'none'), or turn "
                   "record-level DP off")
        if c.routes:
            _check(not self.privacy.record.enabled, "consensus.route", c.route,
                   "routing reads the private prompts at answer time, so the client's answers "
                   "would no longer be post-processing of DP-SGD: use route 'none' with "
                   "record-level DP (privacy.record)")
            _check(self.training.schedule == "mixed", "consensus.route", c.route,
                   "routing answers with the adapter of phase 1 (private data only), which only "
                   "the 'mixed' schedule keeps: set training.schedule: mixed or route: none")
        if c.selection == "shared":
            _check(self.privacy.record.enabled or c.server_trusted_with_texts,
                   "consensus.selection", c.selection,
                   "shared selection sends texts to the server: turn on privacy.record (DP-SGD) "
                   "or set consensus.server_trusted_with_texts: true")
        canaries = self.audit.canaries
        if canaries is not None:
            _check(canaries.client in ids, "audit.canaries.client", canaries.client,
                   f"name one of the clients: {', '.join(ids)}")


# ---------------------------------------------------------------------------------------------
# Building from plain data, with full field paths in errors.

T = TypeVar("T")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if isinstance(value, str) and str in args:
            return value  # a word such as ``auto``: the dataclass checks which it allows
        others = [a for a in args if a is not str]
        return _convert(others[0] if others else str, value, path)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(path, value, "give a mapping of fields")
        return build(tp, value, path)  # type: ignore[arg-type]
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(path, value, "give a list")
        return tuple(_convert(item_tp, v, f"{path}.{i}") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "use true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, value, "use an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "use a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "use a string")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def build(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Builds the dataclass ``cls`` from ``data``, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    prefix = f"{path}." if path else ""
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", data[unknown[0]],
                          f"unknown field; known fields are: {', '.join(sorted(names))}")
    kwargs = {k: _convert(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e.field}", e.value, e.fix) from None
    except TypeError:
        missing = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{prefix}{missing[0]}", None, "this field is required") from None
        raise


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain data (lists, not tuples) for YAML/JSON output."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v
    return conv(cfg)  # type: ignore[no-any-return]


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError("--set", item, "write overrides as key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError("--set", item, "write overrides as key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(key, raw, f"the value is not valid YAML ({e})") from None
    return parts, value


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(where, part, f"use an index below {len(node)}")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError(where, node, "this field has no sub-fields")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(".".join(parts), last, f"use an index below {len(node)}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(".".join(parts[:-1]), node, "this field has no sub-fields")


MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_DEPTH = 24
MAX_CONFIG_NODES = 100_000


def _shape_problem(data: Any) -> str | None:
    """Why a parsed configuration is not one (None if it is): nested deeper than
    MAX_CONFIG_DEPTH, or more than MAX_CONFIG_NODES values (YAML aliases can make a small file
    expand without bound)."""
    stack, seen = [(data, 0)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            return f"it expands to more than {MAX_CONFIG_NODES} values"
        if depth > MAX_CONFIG_DEPTH:
            return f"it nests deeper than {MAX_CONFIG_DEPTH} levels"
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return None


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("CONFIG", str(p), "give the path of an existing .yaml, .yml or .toml file")
    if p.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError("CONFIG", str(p), "use a .yaml, .yml or .toml file")
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError("CONFIG", str(p), f"{size} bytes; a configuration is at most "
                              f"{MAX_CONFIG_BYTES} (data belongs in JSONL files it names)")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("CONFIG", str(p), f"not UTF-8 (byte {e.start}); save the file as "
                          "UTF-8") from None
    except OSError as e:
        raise ConfigError("CONFIG", str(p), f"cannot be read ({e.strerror})") from None
    try:
        if p.suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise ConfigError("CONFIG", str(p), f"the file does not parse: {e}") from None
    except RecursionError:
        raise ConfigError("CONFIG", str(p), "the file nests too deeply to be a "
                          "configuration") from None
    problem = _shape_problem(data)
    if problem:
        raise ConfigError("CONFIG", str(p), f"not a configuration: {problem}")
    if not isinstance(data, dict):
        raise ConfigError("CONFIG", str(p), "the file must hold a mapping of fields")
    base = p.parent.resolve()
    # Relative data paths are relative to the configuration file.
    for c in data.get("clients", []) or []:
        if isinstance(c, dict):
            for key in ("train", "eval"):
                if isinstance(c.get(key), str):
                    c[key] = _resolve_relative(c[key], base)
    if isinstance(data.get("prompts"), str):
        data["prompts"] = _resolve_relative(data["prompts"], base)
    return data


def _resolve_relative(value: str, base: Path) -> str:
    if value.startswith("demo:") or Path(value).is_absolute():
        return value
    return str(base / value)


def preset_data(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError("--preset", name, f"use one of {', '.join(PRESETS)}")
    text = (Path(__file__).resolve().parent / "presets" / f"{name}.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError("--preset", name, "the preset file is damaged; reinstall privsem")
    return data


def load_config(path: str | None = None, *, preset: str | None = None,
                overrides: Sequence[str] = ()) -> RunConfig:
    """The one place configuration enters: file or preset, then ``--set`` overrides."""
    if path is not None and preset is not None:
        raise ConfigError("--preset", preset, "give either a CONFIG file or --preset, not both")
    data = read_config_file(path) if path is not None else preset_data(preset or "demo")
    for item in overrides:
        parts, value = parse_override(item)
        apply_override(data, parts, value)
    return build(RunConfig, data)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
