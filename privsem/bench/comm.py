"""Analytic communication model: LoRA payload versus semantic payload per client per round.

Formula (one client, one round, one direction):

    LoRA bytes     = b_w * r * L * sum over targeted linears m of (d_in(m) + d_out(m))
    semantic bytes = P * d * b_e (+ a fixed protocol overhead, 0 unless given)
    factor         = LoRA bytes / semantic bytes

LoRA of rank r on a linear d_in -> d_out adds A (r x d_in) and B (d_out x r), i.e.
r * (d_in + d_out) parameters; L is the number of decoder layers, b_w the bytes per adapter
value. Per layer of a Llama/Gemma decoder: q: hidden -> heads*head_dim; k, v: hidden ->
kv_heads*head_dim; o: heads*head_dim -> hidden; gate, up: hidden -> intermediate; down:
intermediate -> hidden. Target sets: "q,v"; "q,k,v,o" ("attention"); "all" (attention + MLP,
peft's "all-linear", which leaves out lm_head). Embeddings, norms and lm_head carry no adapter.
The semantic payload is the (P prompts x d) matrix privsem ships, d = 384 (all-MiniLM-L6-v2),
b_e = 4 (float32). The semantic side does not depend on the model, so the factor grows linearly
with r and with the model's size and falls as 1/P. privsem's README measures 39,100 B per
client per round for P = 24 under the ``masked`` back-end: 24 * 384 * 4 = 36,864 B of values
plus 2,236 B of keys, shares, signature and framing (``overhead_bytes``).

The seed paper's claim, "analytically by a factor of 1006 for Llama3.1-405B", comes without its
assumptions. What follows is our reconstruction, not the paper's statement.

:func:`search_reconstructions` scans a grid of plausible choices (targets q,v / q,k,v,o / all;
r in 4..64; adapter fp32 or bf16; P in 100..1024; the payload as P x d embeddings with d in
384..4096 at fp32 or fp16, or as P answers of T tokens at 4 bytes per token; LoRA counted once
or up + down) on two configurations of Llama-3.1-405B. It finds 137 fits within 1% and none
that rounds to 1006. In the conditions below LoRA is counted once; up + down doubles the left side.

- With the published config (8 KV heads: Meta's llama-models sku_list and today's
  config.json), the only fits are 32 with LoRA on all seven linears, a factor of 1014.72
  (+0.87%) whenever P*d*b_e = 38,400 * r * b_w, e.g. r = 8 fp32 against 100 x 3072 or
  200 x 1536 fp32. LoRA on q,v gives 1029.0 (+2.3%, outside 1%) whenever
  P*d*b_e = 6,144 * r * b_w, e.g. r = 16 against privsem's own 256 x 384 fp32.
- With 16 KV heads (the 405B config.json as first published in July 2024, still used by
  litgpt; the KV-cache table of Hugging Face's Llama 3.1 launch post implies it), 105 fits give
  exactly 1008.0 (+0.20%): LoRA on q,v whenever P*u*b_e = 6,400 * r * b_w, u = d or T
  (55 fits), on q,k,v,o whenever it is 12,800 * r * b_w (50 fits). All are equally close.

We take the member that matches the paper's protocol (clients send their generated answers;
the server embeds them) and common defaults: LoRA r = 8 on q,v (peft's and privsem's default),
fp32 adapter, against P = 100 public prompts answered with at most T = 512 tokens sent as 4-byte
token ids, the same 4 bytes per value on both sides, upload only. That gives 1008.0, not 1006
(:data:`PAPER_RECONSTRUCTION`). Its embedding twin (r = 16 against P = 100 x d = 1024 fp32)
gives the same number. The same assumptions with 8 KV heads give 987.8. Rounding to exactly 1006
takes choices we consider unnatural: in a wider scan (any subset of the seven linears, A or B
alone, r up to 256, P up to 10,000) only odd subsets such as q,k,gate, or B alone, at P = 5,000
or 10,000; or a non-round budget (all linears r = 8 against 807 x 384 gives 1005.9); or 2 extra
values per prompt on the twin (1006.0). We do not claim that any of these is what the paper did.

Architecture sources: Llama-3.1 from meta-llama/llama-models ``models/llama3_1/api/sku_list.py``
(dim, layers, heads, n_kv_heads = 8 for every 405B SKU, vocab 128,256; intermediate from
``ffn_dim_multiplier`` and ``multiple_of``) and copies of the Hugging Face config.json files;
SmolLM2-135M and Gemma-3-270M from the configs of the models privsem loads.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from privsem.errors import ConfigError

MODULES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
TARGET_SETS: dict[str, tuple[str, ...]] = {
    "q,v": ("q", "v"),
    "q,k,v,o": ("q", "k", "v", "o"),
    "all": MODULES,
}
_ALIASES = {"attention": "q,k,v,o", "all-linear": "all"}
PAPER_FACTOR = 1006  # "analytically by a factor of 1006 for Llama3.1-405B" (seed paper abstract)


@dataclass(frozen=True)
class Architecture:
    """The shapes of a decoder-only transformer that LoRA sizes depend on."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    def __post_init__(self) -> None:
        for field in ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate",
                      "vocab"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Architecture({self.name!r}).{field}", value,
                                  "use an integer >= 1")

    def projections(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each linear of one decoder layer, by short module name."""
        q_out = self.heads * self.head_dim
        kv_out = self.kv_heads * self.head_dim
        return {"q": (self.hidden, q_out), "k": (self.hidden, kv_out),
                "v": (self.hidden, kv_out), "o": (q_out, self.hidden),
                "gate": (self.hidden, self.intermediate), "up": (self.hidden, self.intermediate),
                "down": (self.intermediate, self.hidden)}


LLAMA_3_1_8B = Architecture("Llama-3.1-8B", hidden=4096, layers=32, heads=32, kv_heads=8,
                            head_dim=128, intermediate=14336, vocab=128256)
LLAMA_3_1_70B = Architecture("Llama-3.1-70B", hidden=8192, layers=80, heads=64, kv_heads=8,
                             head_dim=128, intermediate=28672, vocab=128256)
LLAMA_3_1_405B = Architecture("Llama-3.1-405B", hidden=16384, layers=126, heads=128, kv_heads=8,
                              head_dim=128, intermediate=53248, vocab=128256)
# The 405B config.json as first published (July 2024) listed 16 KV heads; litgpt still does.
LLAMA_3_1_405B_KV16 = Architecture("Llama-3.1-405B (16 KV heads)", hidden=16384, layers=126,
                                   heads=128, kv_heads=16, head_dim=128, intermediate=53248,
                                   vocab=128256)
SMOLLM2_135M = Architecture("SmolLM2-135M", hidden=576, layers=30, heads=9, kv_heads=3,
                            head_dim=64, intermediate=1536, vocab=49152)
GEMMA_3_270M = Architecture("Gemma-3-270M", hidden=640, layers=18, heads=4, kv_heads=1,
                            head_dim=256, intermediate=2048, vocab=262144)
LLAMA_3_1: tuple[Architecture, ...] = (LLAMA_3_1_8B, LLAMA_3_1_70B, LLAMA_3_1_405B)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    LLAMA_3_1_8B, LLAMA_3_1_70B, LLAMA_3_1_405B, LLAMA_3_1_405B_KV16, SMOLLM2_135M,
    GEMMA_3_270M)}


def architecture_from_config(config: Any, name: str | None = None) -> Architecture:
    """The :class:`Architecture` of a Hugging Face model config (``model.config``)."""
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    kv = getattr(config, "num_key_value_heads", None)
    head_dim = getattr(config, "head_dim", None)
    return Architecture(
        name if name is not None else str(getattr(config, "model_type", "model")),
        hidden=hidden, layers=int(config.num_hidden_layers), heads=heads,
        kv_heads=int(kv) if kv is not None else heads,
        head_dim=int(head_dim) if head_dim is not None else hidden // heads,
        intermediate=int(config.intermediate_size), vocab=int(config.vocab_size))


def resolve_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    """Short module names of a target set name ("q,v", "q,k,v,o", "attention", "all") or of a
    list of module names (short, or peft's ``q_proj`` ... ``down_proj``)."""
    fix = ("use 'q,v', 'q,k,v,o' (or 'attention'), 'all', or a list of module names from "
           f"{', '.join(MODULES)} (peft's q_proj ... down_proj)")
    if isinstance(targets, str):
        key = _ALIASES.get(targets, targets)
        if key not in TARGET_SETS:
            raise ConfigError("targets", targets, fix)
        return TARGET_SETS[key]
    names = [t.removesuffix("_proj") if isinstance(t, str) else t for t in targets]
    if not names or any(n not in MODULES for n in names) or len(set(names)) != len(names):
        raise ConfigError("targets", targets, fix + ", each at most once")
    return tuple(names)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, value, f"use an integer >= {minimum}")


def lora_parameters(arch: Architecture, rank: int, targets: str | Sequence[str] = "q,v") -> int:
    """Exact number of LoRA parameters: rank * layers * sum of (d_in + d_out) over targets."""
    _check_int("rank", rank, 1)
    proj = arch.projections()
    return rank * arch.layers * sum(sum(proj[m]) for m in resolve_targets(targets))


def lora_payload_bytes(params: int, bytes_per_value: int = 4) -> int:
    """Bytes of one adapter upload: params * bytes_per_value (4 fp32, 2 bf16)."""
    _check_int("params", params, 1)
    _check_int("bytes_per_value", bytes_per_value, 1)
    return params * bytes_per_value


def semantic_payload_bytes(prompts: int, dim: int = 384, bytes_per_value: int = 4,
                           overhead_bytes: int = 0) -> int:
    """Bytes of one (prompts x dim) upload: prompts * dim * bytes_per_value + overhead_bytes."""
    _check_int("prompts", prompts, 1)
    _check_int("dim", dim, 1)
    _check_int("bytes_per_value", bytes_per_value, 1)
    _check_int("overhead_bytes", overhead_bytes, 0)
    return prompts * dim * bytes_per_value + overhead_bytes


def text_payload_bytes(prompts: int, tokens_per_answer: int, bytes_per_token: int = 4) -> int:
    """Bytes of sending the answers themselves: prompts * tokens_per_answer * bytes_per_token
    (4: an int32 token id, or about four UTF-8 characters of English per token)."""
    _check_int("tokens_per_answer", tokens_per_answer, 1)
    return semantic_payload_bytes(prompts, tokens_per_answer, bytes_per_token)


@dataclass(frozen=True)
class PayloadAssumptions:
    """Every choice behind one LoRA-versus-semantic factor.

    ``values_per_prompt`` is the embedding width d, or the answer length T in tokens when
    ``semantic_unit`` says so; ``*_directions`` is 1 for the upload only, 2 for up + down.
    """

    architecture: Architecture
    targets: str
    rank: int
    lora_bytes_per_value: int
    prompts: int
    values_per_prompt: int
    semantic_bytes_per_value: int
    semantic_unit: str = "embedding dims"
    lora_directions: int = 1
    semantic_directions: int = 1

    def __post_init__(self) -> None:
        resolve_targets(self.targets)
        _check_int("rank", self.rank, 1)
        _check_int("prompts", self.prompts, 1)
        for name in ("lora_bytes_per_value", "values_per_prompt", "semantic_bytes_per_value"):
            _check_int(name, getattr(self, name), 1)
        for name in ("lora_directions", "semantic_directions"):
            value = getattr(self, name)
            if value not in (1, 2):
                raise ConfigError(name, value, "use 1 (upload only) or 2 (up + down)")

    def lora_parameters(self) -> int:
        return lora_parameters(self.architecture, self.rank, self.targets)

    def lora_bytes(self) -> int:
        return self.lora_directions * lora_payload_bytes(self.lora_parameters(),
                                                         self.lora_bytes_per_value)

    def semantic_bytes(self) -> int:
        return self.semantic_directions * semantic_payload_bytes(
            self.prompts, self.values_per_prompt, self.semantic_bytes_per_value)

    def factor(self) -> float:
        return self.lora_bytes() / self.semantic_bytes()

    def describe(self) -> str:
        """One line naming every assumption and the factor."""
        dirs = {1: "upload", 2: "up + down"}
        return (f"{self.architecture.name}, LoRA r={self.rank} on {self.targets} "
                f"({self.lora_parameters():,} params x {self.lora_bytes_per_value} B, "
                f"{dirs[self.lora_directions]}) vs {self.prompts} prompts x "
                f"{self.values_per_prompt} {self.semantic_unit} x "
                f"{self.semantic_bytes_per_value} B ({dirs[self.semantic_directions]}): "
                f"factor {self.factor():.2f}")


# Our reconstruction of the seed paper's 1006 (not stated by the paper; see the module docstring).
PAPER_RECONSTRUCTION = PayloadAssumptions(
    architecture=LLAMA_3_1_405B_KV16, targets="q,v", rank=8, lora_bytes_per_value=4,
    prompts=100, values_per_prompt=512, semantic_bytes_per_value=4, semantic_unit="answer tokens")
# The same factor with a (P x d) embedding payload, the shape privsem ships.
PAPER_RECONSTRUCTION_EMBEDDING_TWIN = PayloadAssumptions(
    architecture=LLAMA_3_1_405B_KV16, targets="q,v", rank=16, lora_bytes_per_value=4,
    prompts=100, values_per_prompt=1024, semantic_bytes_per_value=4)


def paper_reconstruction_factor() -> float:
    """The factor under :data:`PAPER_RECONSTRUCTION` (1008.0; the paper says 1006)."""
    return PAPER_RECONSTRUCTION.factor()


# The grid :func:`search_reconstructions` scans by default: (unit, values per prompt, bytes).
SEARCH_PAYLOADS: tuple[tuple[str, int, int], ...] = (
    *(("embedding dims", d, b) for d in (384, 768, 1024, 1536, 3072, 4096) for b in (4, 2)),
    *(("answer tokens", t, 4) for t in (64, 128, 256, 512, 1024)),
)
SEARCH_PROMPTS: tuple[int, ...] = (100, 128, 200, 256, 500, 512, 1000, 1024)


def search_reconstructions(
        target: float = PAPER_FACTOR, tolerance: float = 0.01, *,
        architectures: Sequence[Architecture] = (LLAMA_3_1_405B, LLAMA_3_1_405B_KV16),
        target_sets: Sequence[str] = ("q,v", "q,k,v,o", "all"),
        ranks: Sequence[int] = (4, 8, 16, 32, 64), lora_bytes: Sequence[int] = (4, 2),
        prompts: Sequence[int] = SEARCH_PROMPTS,
        payloads: Sequence[tuple[str, int, int]] = SEARCH_PAYLOADS,
        lora_directions: Sequence[int] = (1, 2)) -> list[PayloadAssumptions]:
    """Every combination of the grid whose factor is within ``tolerance`` (relative) of
    ``target``, closest first. The semantic side is always counted in one direction."""
    if not (isinstance(target, (int, float)) and target > 0):
        raise ConfigError("target", target, "use a factor > 0")
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
        raise ConfigError("tolerance", tolerance, "use a relative tolerance in [0, 1)")
    fits = []
    for arch, ts, r, wb, p, (unit, u, eb), ld in itertools.product(
            architectures, target_sets, ranks, lora_bytes, prompts, payloads, lora_directions):
        a = PayloadAssumptions(arch, ts, r, wb, p, u, eb, unit, lora_directions=ld)
        if abs(a.factor() / target - 1.0) <= tolerance:
            fits.append(a)
    return sorted(fits, key=lambda a: (abs(a.factor() - target), a.describe()))


@dataclass(frozen=True)
class Row:
    """One line of :func:`table`."""

    model: str
    targets: str
    rank: int
    lora_params: int
    lora_bytes: int
    prompts: int
    semantic_bytes: int
    factor: float


def table(models: Iterable[Architecture] = LLAMA_3_1, *, ranks: Sequence[int] = (8, 16, 64),
          target_sets: Sequence[str] = ("q,v", "all"), prompts: Sequence[int] = (64, 256, 1024),
          dim: int = 384, semantic_bytes_per_value: int = 4, lora_bytes_per_value: int = 4,
          overhead_bytes: int = 0) -> list[Row]:
    """LoRA versus semantic bytes per client per round (upload), one row per combination."""
    rows = []
    for arch in models:
        for ts in target_sets:
            for r in ranks:
                params = lora_parameters(arch, r, ts)
                lb = lora_payload_bytes(params, lora_bytes_per_value)
                for p in prompts:
                    sb = semantic_payload_bytes(p, dim, semantic_bytes_per_value, overhead_bytes)
                    rows.append(Row(arch.name, ts, r, params, lb, p, sb, lb / sb))
    return rows


def _human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


def _factor(f: float) -> str:
    return f"{f:,.0f}" if f >= 100 else f"{f:.1f}"


def format_markdown(rows: Sequence[Row]) -> str:
    """A compact markdown table of :func:`table` rows."""
    lines = ["| model | LoRA on | r | LoRA params | LoRA bytes | prompts | semantic bytes | factor |",
             "|---|---|--:|--:|--:|--:|--:|--:|"]
    for x in rows:
        lines.append(f"| {x.model} | {x.targets} | {x.rank} | {x.lora_params:,} | "
                     f"{_human_bytes(x.lora_bytes)} | {x.prompts:,} | "
                     f"{_human_bytes(x.semantic_bytes)} | {_factor(x.factor)} |")
    return "\n".join(lines)


FORMULA = ("factor = (b_w * r * L * sum over targeted linears of (d_in + d_out)) / "
           "(P * d * b_e + overhead)")


def summary() -> dict[str, Any]:
    """JSON-ready summary for ``privsem bench``: formula, default table, reconstruction."""
    rows = table()
    return {
        "formula": FORMULA,
        "assumptions": {"dim": 384, "semantic_bytes_per_value": 4, "lora_bytes_per_value": 4,
                        "overhead_bytes": 0, "direction": "client upload, one round"},
        "rows": [vars(r) for r in rows],
        "paper_factor": PAPER_FACTOR,
        "reconstruction": PAPER_RECONSTRUCTION.describe(),
        "reconstruction_factor": paper_reconstruction_factor(),
        "reconstruction_twin": PAPER_RECONSTRUCTION_EMBEDDING_TWIN.describe(),
        "published_config_same_assumptions": PayloadAssumptions(
            LLAMA_3_1_405B, "q,v", 8, 4, 100, 512, 4, "answer tokens").factor(),
    }


def format_summary(s: dict[str, Any]) -> str:
    """Markdown of :func:`summary` (a dict, possibly read back from JSON)."""
    a = s["assumptions"]
    head = (f"`{s['formula']}`, per client per round, upload; semantic payload P x {a['dim']} "
            f"at {a['semantic_bytes_per_value']} B, adapter at {a['lora_bytes_per_value']} B "
            "per value.")
    tail = (f"Seed paper: a factor of {s['paper_factor']} for Llama-3.1-405B, assumptions not "
            f"stated. Our reconstruction: {s['reconstruction']}; equally, "
            f"{s['reconstruction_twin']}. With the published 8-KV-head config the same "
            f"assumptions give {s['published_config_same_assumptions']:.1f}.")
    return "\n".join([head, "", format_markdown([Row(**r) for r in s["rows"]]), "", tail])
