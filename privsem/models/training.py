"""Local fine-tuning: LoRA adapters (peft), DP-SGD on private data (Opacus), plain fine-tuning on
pseudo-labels (post-processing: costs no privacy).

DP-SGD (Abadi et al. 2016) as Opacus implements it: Poisson sampling at rate q = B/N
(``UniformWithReplacementSampler``; batches vary in size and may be empty), per-sample gradients
of the LoRA parameters (``GradSampleModule`` hooks), per-sample clipping to C and Gaussian noise
σ·C on the sum (``DPOptimizer``), divided by the expected batch size B. An empty batch still
takes a noisy step (its per-sample gradients are an empty tensor), so the step count the ledger
charged is the step count run. The loss of one sample is its mean token cross-entropy over the
reply; the batch loss is the mean of per-sample losses (``loss_reduction="mean"``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch.utils.data import TensorDataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from privsem.data import Example
from privsem.models.prompting import ensure_pad_token, prompt_ids, response_ids


def add_lora(model: PreTrainedModel, *, rank: int, alpha: int, targets: Sequence[str],
             dropout: float, seed: int = 0) -> PeftModel:
    """Wraps ``model`` with LoRA adapters. peft initialises lora_A from torch's global RNG, so
    the initialisation runs inside a forked RNG state seeded with ``seed`` (reproducible, and
    the caller's RNG state is untouched)."""
    cfg = PeftLoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                         lora_dropout=dropout, bias="none", task_type="CAUSAL_LM")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed & ((1 << 63) - 1))
            return get_peft_model(model, cfg)
    except ValueError as e:
        raise ValueError(f"LoRA targets {list(targets)} do not match modules of "
                         f"{type(model).__name__} ({e}); set model.lora.targets") from None


def encode_examples(tokenizer: PreTrainedTokenizerBase, fmt: str, examples: Sequence[Example],
                    max_length: int) -> TensorDataset:
    """Fixed-length (right-padded) tensors: input_ids, attention_mask, labels (prompt = -100)."""
    ensure_pad_token(tokenizer)
    rows = []
    for ex in examples:
        p = prompt_ids(tokenizer, fmt, ex.messages)
        r = response_ids(tokenizer, fmt, ex.response)
        ids = (p + r)[:max_length]
        labels = ([-100] * len(p) + r)[:max_length]
        rows.append((ids, labels))
    length = max(len(ids) for ids, _ in rows)
    pad = int(tokenizer.pad_token_id)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    labels_t = torch.full((len(rows), length), -100, dtype=torch.long)
    for i, (ids, labels) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels_t[i, : len(labels)] = torch.tensor(labels)
    return TensorDataset(input_ids, attention, labels_t)


def per_sample_loss(model: torch.nn.Module, input_ids: torch.Tensor, attention: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy of each sample's labelled positions. Shape (B,)."""
    logits = model(input_ids=input_ids, attention_mask=attention).logits  # (B, L, V)
    tgt = labels[:, 1:]  # (B, L-1)
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tgt, ignore_index=-100,
                         reduction="none")  # (B, L-1)
    mask = (tgt != -100).to(ce.dtype)
    return (ce * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@dataclass(frozen=True)
class TrainStats:
    steps: int
    examples_seen: int
    empty_batches: int
    mean_loss: float  # mean per-sample loss over non-empty batches; nan if none


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def train_dp_sgd(model: PeftModel, data: TensorDataset, *, steps: int, sample_rate: float,
                 noise_multiplier: float, max_grad_norm: float, learning_rate: float,
                 generator: torch.Generator, secure_mode: bool,
                 public: PublicMix | None = None) -> TrainStats:
    """Runs exactly ``steps`` DP-SGD steps on the LoRA parameters of ``model``.

    With ``public`` (pseudo-labels: post-processing of DP releases, so training on them costs
    no privacy), every DP-SGD step is followed by one ordinary step on a batch of the public
    examples, through the same weights with Opacus' per-sample hooks off and an optimizer of
    its own; the DP-SGD steps, their sampling and their noise are exactly those accounted.

    ``data`` is the dataset itself: batches are always drawn here by Poisson sampling at
    ``sample_rate`` (q = B/N of the privacy plan, N = ``len(data)``), the sampling the ledger's
    ``PoissonSampledDpEvent`` accounts. A DataLoader or sampler (shuffling, fixed-size batches,
    ``WeightedRandomSampler``) is refused: its batches would not match that accounting (T19).
    ``max_grad_norm`` must be finite (Opacus' noise std is σ·C; with σ = 0 a C of ∞ would give
    NaN); a very large C is the unclipped case.
    """
    if not isinstance(data, TensorDataset):
        raise TypeError(f"train_dp_sgd: data is a {type(data).__name__}; pass the TensorDataset "
                        "itself (encode_examples). DP-SGD draws its own Poisson-sampled batches "
                        "at q = B/N, the sampling the ledger accounts; a DataLoader or sampler "
                        "(shuffle, fixed-size batches, WeightedRandomSampler) would not match "
                        "that accounting")
    n = len(data)
    if n < 1:
        raise ValueError("train_dp_sgd: data is empty; there is nothing to train on")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"train_dp_sgd: steps={steps!r} is not valid; use an integer >= 1")
    if not (isinstance(sample_rate, (int, float)) and 0.0 < sample_rate <= 1.0):
        raise ValueError(f"train_dp_sgd: sample_rate={sample_rate!r} is not valid; use the "
                         "plan's q = B/N in (0, 1]")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0.0):
        raise ValueError(f"train_dp_sgd: noise_multiplier={noise_multiplier!r} is not valid; "
                         "use a finite number >= 0 (the plan's σ)")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0.0):
        raise ValueError(f"train_dp_sgd: max_grad_norm={max_grad_norm!r} is not valid; use a "
                         "finite clip C > 0 (a very large C means no clipping)")
    expected_batch = max(1, round(sample_rate * n))
    model.train()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    params = _trainable(gsm)
    opt = DPOptimizer(torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0),
                      noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                      expected_batch_size=expected_batch, generator=generator,
                      secure_mode=secure_mode)
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=sample_rate,
                                            generator=generator, steps=steps)
    ids_all, att_all, lab_all = data.tensors
    losses: list[float] = []
    seen = empty = 0
    pub = _PublicStream(public, generator) if public is not None and public.active else None
    pub_opt = (torch.optim.AdamW(params, lr=public.learning_rate, weight_decay=0.0)
               if pub is not None and public is not None else None)
    after = spread(max(steps, public.steps if public is not None else 0), steps)
    try:
        for step, indices in enumerate(sampler):
            idx = torch.as_tensor(indices, dtype=torch.long)
            opt.zero_grad(set_to_none=True)
            if idx.numel() == 0:
                # Poisson sampling drew no example: the step still adds noise (an empty batch
                # is a valid outcome of the sampled mechanism the ledger charged).
                empty += 1
                for p in params:
                    p.grad_sample = torch.zeros(  # type: ignore[attr-defined]
                        (0, *p.shape), dtype=p.dtype)
            else:
                loss = per_sample_loss(gsm, ids_all[idx], att_all[idx], lab_all[idx]).mean()
                loss.backward()
                losses.append(float(loss.detach()))
                seen += int(idx.numel())
            opt.step()
            if pub is not None and pub_opt is not None:
                opt.zero_grad(set_to_none=True)
                gsm.disable_hooks()
                try:
                    for _ in range(after[step]):
                        pub_opt.zero_grad(set_to_none=True)
                        pids, patt, plab = pub.batch()
                        per_sample_loss(gsm, pids, patt, plab).mean().backward()
                        pub_opt.step()
                    pub_opt.zero_grad(set_to_none=True)
                finally:
                    gsm.enable_hooks()
    finally:
        gsm.cleanup()  # removes Opacus' hooks and per-sample attributes from the parameters
        model.eval()
    return TrainStats(steps=steps, examples_seen=seen, empty_batches=empty,
                      mean_loss=sum(losses) / len(losses) if losses else math.nan)


@dataclass(frozen=True)
class PublicMix:
    """Pseudo-labelled examples to mix into private training: batches of ``per_step`` of them,
    drawn in reshuffled passes over ``data``, ``steps`` batches in the phase (at least one per
    private step: fewer are raised to that), spread evenly among the private steps."""

    data: TensorDataset | None
    per_step: int
    learning_rate: float
    steps: int = 0

    @property
    def active(self) -> bool:
        return self.data is not None and len(self.data) > 0 and self.per_step > 0


class _PublicStream:
    """Endless batches of a dataset, each pass in a fresh order from ``generator``."""

    def __init__(self, mix: PublicMix, generator: torch.Generator, salt: bytes = b"public"
                 ) -> None:
        if mix.data is None:
            raise ValueError("public mix without data")
        self.tensors, self.n, self.k = mix.data.tensors, len(mix.data), mix.per_step
        # a stream of its own, seeded from a digest of the caller's generator state without
        # drawing from it, so that these batches never shift DP-SGD's Poisson sampling
        state = generator.get_state().numpy().tobytes()
        seed = int.from_bytes(hashlib.sha256(b"privsem/stream/" + salt + state).digest()[:8],
                              "little") >> 1
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(self.n, generator=self.gen)
        self.pos = 0


    def batch(self) -> tuple[torch.Tensor, ...]:
        idx: list[torch.Tensor] = []
        need = self.k
        while need > 0:
            if self.pos >= self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            take = self.order[self.pos:self.pos + need]
            idx.append(take)
            self.pos += len(take)
            need -= len(take)
        i = torch.cat(idx)
        return tuple(t[i] for t in self.tensors)


def spread(count: int, slots: int) -> list[int]:
    """``count`` events over ``slots`` slots, as evenly as whole numbers allow (sum = count)."""
    return [(i + 1) * count // slots - i * count // slots for i in range(slots)]


def train_mixed(model: PeftModel, private: TensorDataset, public: PublicMix, *, steps: int,
                batch_size: int, learning_rate: float, generator: torch.Generator) -> TrainStats:
    """Non-private co-training: ``steps`` private batches of ``batch_size`` examples (reshuffled
    passes over ``private``) and ``max(steps, public.steps)`` batches of ``public.per_step``
    pseudo-labelled examples, spread evenly over as many optimizer steps as the larger of the
    two; a step holding both trains on them together (one loss: the mean per-sample loss over
    the joint batch; one optimizer). For runs without record-level DP; with it,
    :func:`train_dp_sgd` interleaves."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"train_mixed: steps={steps!r} is not valid; use an integer >= 1")
    if len(private) < 1:
        raise ValueError("train_mixed: private data is empty; there is nothing to train on")
    model.train()
    opt = torch.optim.AdamW(_trainable(model), lr=learning_rate, weight_decay=0.0)
    priv = _PublicStream(PublicMix(private, min(batch_size, len(private)), learning_rate),
                         generator, salt=b"private")
    pub = _PublicStream(public, generator) if public.active else None
    total = max(steps, public.steps) if pub is not None else steps
    priv_due, pub_due = spread(steps, total), spread(total, total)
    losses: list[float] = []
    seen = 0
    for t in range(total):
        parts = ([priv.batch()] if priv_due[t] else []) + (
            [pub.batch()] if pub is not None and pub_due[t] else [])
        width = max(p[0].shape[1] for p in parts)
        ids, att, lab = (torch.cat([_pad_to(p[i], width, fill) for p in parts])
                         for i, fill in ((0, 0), (1, 0), (2, -100)))
        opt.zero_grad(set_to_none=True)
        loss = per_sample_loss(model, ids, att, lab).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        seen += int(parts[0][0].shape[0]) if priv_due[t] else 0
    model.eval()
    return TrainStats(steps=total, examples_seen=seen, empty_batches=0,
                      mean_loss=sum(losses) / len(losses) if losses else math.nan)


def _pad_to(t: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """Right-pads a (B, L) tensor to (B, width) with ``fill``."""
    if t.shape[1] == width:
        return t
    return F.pad(t, (0, width - t.shape[1]), value=fill)


def train_plain(model: PeftModel, data: TensorDataset, *, epochs: int, batch_size: int,
                learning_rate: float, generator: torch.Generator) -> TrainStats:
    """Non-private fine-tuning (for pseudo-labels, which are post-processing of DP releases)."""
    model.train()
    opt = torch.optim.AdamW(_trainable(model), lr=learning_rate, weight_decay=0.0)
    ids_all, att_all, lab_all = data.tensors
    losses: list[float] = []
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = per_sample_loss(model, ids_all[idx], att_all[idx], lab_all[idx]).mean()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            steps += 1
    model.eval()
    return TrainStats(steps=steps, examples_seen=len(data) * epochs, empty_batches=0,
                      mean_loss=sum(losses) / len(losses) if losses else math.nan)


@torch.no_grad()
def mean_reference_loss(model: torch.nn.Module, data: TensorDataset, batch_size: int = 16
                        ) -> list[float]:
    """Per-example mean token NLL of the references (teacher forced), for evaluation."""
    ids_all, att_all, lab_all = data.tensors
    out: list[float] = []
    for s in range(0, len(data), batch_size):
        out.extend(per_sample_loss(model, ids_all[s:s + batch_size], att_all[s:s + batch_size],
                                   lab_all[s:s + batch_size]).tolist())
    return out
