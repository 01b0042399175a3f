"""DP-SGD on LoRA adapters (T22 liveness, T20 empty batches)."""

import pytest
import torch
from opacus import GradSampleModule

from privsem.data import load_examples
from privsem.models.loading import load_model
from privsem.models.prompting import resolve_format
from privsem.models.training import add_lora, encode_examples, per_sample_loss, train_dp_sgd


def _setup(name):
    lm = load_model(name, seed=3)
    model = add_lora(lm.model, rank=4, alpha=8, targets=("q_proj", "v_proj"), dropout=0.0)
    data = encode_examples(lm.tokenizer, resolve_format(lm.tokenizer, "auto"),
                           load_examples("demo:alice.train.jsonl")[:16], 64)
    return model, data


def _check_liveness(model, data):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # every trainable parameter gets one per-sample gradient per example of the batch
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    B = 5
    ids, att, lab = (t[:B] for t in data.tensors)
    per_sample_loss(gsm, ids, att, lab).mean().backward()
    trainable = [p for p in gsm.parameters() if p.requires_grad]
    assert trainable and all(p.grad_sample.shape[0] == B for p in trainable)
    gsm.cleanup()
    model.zero_grad(set_to_none=True)
    stats = train_dp_sgd(model, data, steps=1, sample_rate=0.5, noise_multiplier=1.0,
                         max_grad_norm=1.0, learning_rate=1e-2,
                         generator=torch.Generator().manual_seed(0), secure_mode=False)
    assert stats.steps == 1
    delta_lora = max(float((p - before[n]).abs().max()) for n, p in model.named_parameters()
                     if "lora_" in n)
    assert delta_lora > 0
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, before[n]), f"base weight {n} changed"
    # Opacus' hooks and per-sample attributes are gone afterwards
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_T22_lora_liveness_tiny(name):
    _check_liveness(*_setup(name))


@pytest.mark.slow
def test_T22_lora_liveness_smollm2():
    _check_liveness(*_setup("smollm2-135m-instruct"))


def test_T20_empty_poisson_batches_still_add_noise():
    model, data = _setup("tiny-llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    stats = train_dp_sgd(model, data, steps=4, sample_rate=1e-6, noise_multiplier=1.0,
                         max_grad_norm=1.0, learning_rate=1e-2,
                         generator=torch.Generator().manual_seed(0), secure_mode=False)
    assert stats.empty_batches == 4 and stats.examples_seen == 0
    moved = [n for n, p in model.named_parameters() if "lora_" in n
             and not torch.equal(p, before[n])]
    assert moved, "an empty batch must still take a noisy step"
