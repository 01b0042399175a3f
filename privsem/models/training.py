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
                 generator: torch.Generator, secure_mode: bool) -> TrainStats:
    """Runs exactly ``steps`` DP-SGD steps on the LoRA parameters of ``model``.

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
    try:
        for indices in sampler:
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
    finally:
        gsm.cleanup()  # removes Opacus' hooks and per-sample attributes from the parameters
        model.eval()
    return TrainStats(steps=steps, examples_seen=seen, empty_batches=empty,
                      mean_loss=sum(losses) / len(losses) if losses else math.nan)


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
