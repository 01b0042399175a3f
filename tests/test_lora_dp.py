"""DP-SGD on LoRA adapters (T22 liveness, T20 empty batches, T19 sampling, T21 clipping and
noise)."""

import math
from typing import ClassVar

import numpy as np
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


# ---------------------------------------------------------------------------------------------
# T19: sampling mode. Batches are Poisson-sampled at q = B/N inside train_dp_sgd; a loader of
# any other kind is refused, and the plan's q is B over the N actually trained on.


class _RecordingAdamW(torch.optim.AdamW):
    """AdamW that keeps the gradient it is handed at each step (what DP-SGD produced)."""

    seen: ClassVar[list] = []

    def step(self, closure=None):
        _RecordingAdamW.seen.append([p.grad.detach().clone() for g in self.param_groups
                                     for p in g["params"]])
        return super().step(closure)


@pytest.fixture
def recorded(monkeypatch):
    _RecordingAdamW.seen = []
    monkeypatch.setattr(torch.optim, "AdamW", _RecordingAdamW)
    return _RecordingAdamW.seen


def _dp(model, data, **kw):
    args = {"steps": 1, "sample_rate": 1.0, "noise_multiplier": 0.0, "max_grad_norm": 1.0,
            "learning_rate": 1e-2, "generator": torch.Generator().manual_seed(0),
            "secure_mode": False}
    args.update(kw)
    return train_dp_sgd(model, data, **args)


def test_T19_loaders_and_bad_rates_are_refused():
    from torch.utils.data import DataLoader, WeightedRandomSampler

    model, data = _setup("tiny-llama")
    loaders = [DataLoader(data, batch_size=4, shuffle=True),
               DataLoader(data, batch_size=4, shuffle=False),
               DataLoader(data, batch_size=4,
                          sampler=WeightedRandomSampler([1.0] * len(data), len(data)))]
    for loader in loaders:
        with pytest.raises(TypeError, match="Poisson"):
            _dp(model, loader)
    for q in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="sample_rate"):
            _dp(model, data, sample_rate=q)
    with pytest.raises(ValueError, match="max_grad_norm"):
        _dp(model, data, max_grad_norm=float("inf"))
    with pytest.raises(ValueError, match="steps"):
        _dp(model, data, steps=0)


def test_T19_batches_are_poisson_at_the_given_rate(monkeypatch):
    from privsem.models import training

    made = []

    class Spy(training.UniformWithReplacementSampler):
        def __init__(self, **kw):
            made.append(kw)
            super().__init__(**kw)

        def __iter__(self):
            for batch in super().__iter__():
                sizes.append(len(batch))
                yield batch

    sizes: list[int] = []
    monkeypatch.setattr(training, "UniformWithReplacementSampler", Spy)
    model, data = _setup("tiny-llama")
    n, q, steps = len(data), 0.25, 60
    stats = _dp(model, data, steps=steps, sample_rate=q, noise_multiplier=1.0)
    assert made == [{"num_samples": n, "sample_rate": q, "generator": made[0]["generator"],
                     "steps": steps}]
    assert len(sizes) == steps and sum(sizes) == stats.examples_seen
    # Poisson sampling: batch sizes ~ Binomial(16, ¼), mean 4, sd √3; a shuffled or fixed-size
    # loader gives one size. The mean of 60 has sd 0.22; 4 sd of slack.
    assert len(set(sizes)) > 2
    assert abs(np.mean(sizes) - q * n) < 4 * math.sqrt(n * q * (1 - q) / steps)
    assert stats.empty_batches == sizes.count(0)


def test_T19_plan_rate_is_B_over_the_N_trained_on():
    from privsem.config import load_config
    from privsem.privacy.plan import make_plan

    sizes = {"alice": 61, "bob": 48, "carol": 5}
    seq = load_config(preset="smoke", overrides=["training.schedule=sequential"])
    plan = make_plan(seq, sizes, prompts=6)
    for cid, n in sizes.items():
        p = plan.clients[cid]
        assert p.examples == n and p.sample_rate == pytest.approx(min(1.0, 8 / n))
        assert p.steps_per_round == math.ceil(seq.training.epochs_per_round * n / 8)
        ev = p.round_event()  # the ledger's event: Poisson sampling at exactly that rate
        assert ev.event.sampling_probability == pytest.approx(p.sample_rate)
        assert ev.count == p.steps_per_round
    # mixed with the ¾ split: the same private budget over R + 1 phases, most of it in phase 1
    cfg = load_config(preset="smoke", overrides=["training.first_phase_share=0.75"])
    mixed = make_plan(cfg, sizes, prompts=6)
    R = cfg.rounds
    for cid, n in sizes.items():
        p = mixed.clients[cid]
        budget = R * math.ceil(cfg.training.epochs_per_round * n / 8)
        assert len(p.phase_steps) == R + 1
        assert p.phase_steps[0] == max(1, round(budget * cfg.training.first_phase_share))
        assert budget <= sum(p.phase_steps) <= budget + R  # each later phase rounded up
        for phase in range(1, R + 2):
            ev = p.round_event(phase)
            assert ev.event.sampling_probability == pytest.approx(p.sample_rate)
            assert ev.count == p.steps(phase)
        with pytest.raises(ValueError, match="no training phase"):
            p.steps(R + 2)
    # share 1 (the routed runs' default; under record-level DP ``auto`` gives the ¾ split
    # above): the whole budget in phase 1, the later phases without DP-SGD
    assert load_config(preset="smoke").training.first_phase_share == 0.75
    default = make_plan(load_config(preset="smoke", overrides=["training.first_phase_share=1"]),
                        sizes, prompts=6)
    for cid, n in sizes.items():
        p = default.clients[cid]
        budget = R * math.ceil(cfg.training.epochs_per_round * n / 8)
        assert p.phase_steps == (budget,) + (0,) * R
        assert p.round_event(1).count == budget


def test_T19_client_refuses_data_its_plan_was_not_made_for(tmp_path):
    from privsem.config import load_config
    from privsem.errors import ProtocolAbort
    from privsem.runtime.inprocess import setup

    cfg = load_config(preset="smoke", overrides=["max_prompts=2", "threads=1"])
    fed = setup(cfg, tmp_path / "run", lambda _: None)
    alice = fed.clients["alice"]
    plan = fed.plan.clients["alice"]
    assert len(alice._private_t) == plan.examples == 48
    alice._private_t = encode_examples(alice.tokenizer, alice.fmt,
                                       load_examples("demo:alice.train.jsonl")[:40], 96)
    with pytest.raises(ProtocolAbort, match="privacy plan was made for 48"):
        alice._train_private(1, plan)
    assert not (tmp_path / "run" / "ledger.jsonl").exists()  # refused before any charge


# ---------------------------------------------------------------------------------------------
# T21: clipping and noise, through train_dp_sgd's real Opacus path (σ=0 / huge C / q=1 make the
# DP gradient comparable with per-sample gradients computed here by plain autograd).


def _per_sample_grads(model, data):
    """(N, P): the gradient of each example's loss w.r.t. the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    ids, att, lab = data.tensors
    rows = []
    for i in range(len(data)):
        model.zero_grad(set_to_none=True)
        per_sample_loss(model, ids[i:i + 1], att[i:i + 1], lab[i:i + 1]).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in params]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def _trained_lora():
    """A tiny model whose LoRA B is non-zero (one plain step), so every parameter has a
    gradient."""
    from privsem.models.training import train_plain

    model, data = _setup("tiny-llama")
    train_plain(model, data, epochs=1, batch_size=16, learning_rate=1e-2,
                generator=torch.Generator().manual_seed(1))
    model.train()
    return model, data


def test_T21_sigma_zero_and_no_clip_is_vanilla_sgd_gradient(recorded):
    model, data = _trained_lora()
    recorded.clear()  # the plain step that made lora_B non-zero
    vanilla = _per_sample_grads(model, data).mean(0)  # the full-batch mean gradient
    _dp(model, data, sample_rate=1.0, noise_multiplier=0.0, max_grad_norm=1e9)
    (step,) = recorded
    torch.testing.assert_close(_flat(step), vanilla, rtol=1e-4, atol=1e-7)


def test_T21_every_per_sample_gradient_is_clipped_to_C(recorded):
    model, data = _trained_lora()
    recorded.clear()  # the plain step that made lora_B non-zero
    g = _per_sample_grads(model, data)  # (N, P)
    norms = g.norm(dim=1)
    C = float(norms[norms > 0].min()) / 10  # every example is clipped (a reply cut off by
    # max_length has no label and a zero gradient)
    _dp(model, data, sample_rate=1.0, noise_multiplier=0.0, max_grad_norm=C)
    (step,) = recorded
    got = _flat(step)
    # Opacus: each g_i scaled by C / (‖g_i‖ + 1e-6), then the sum divided by B = N
    want = (g * (C / (norms + 1e-6))[:, None]).mean(0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)
    assert float(got.norm()) <= C * (1 + 1e-6)  # a mean of vectors of norm <= C


def test_T21_noise_std_is_sigma_C_over_B(recorded):
    model, data = _trained_lora()
    recorded.clear()  # the plain step that made lora_B non-zero
    sigma, C = 1.5, 0.5
    B = len(data)  # q = 1: the expected batch is N
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _dp(model, data, noise_multiplier=sigma, max_grad_norm=C,
        generator=torch.Generator().manual_seed(1))
    model.load_state_dict(state)
    _dp(model, data, noise_multiplier=sigma, max_grad_norm=C,
        generator=torch.Generator().manual_seed(2))
    a, b = (_flat(s) for s in recorded)
    # same batch, same clipped sum: the difference is (noise₁ − noise₂)/B, std √2·σC/B
    diff = (a - b).double()
    want = math.sqrt(2) * sigma * C / B
    print(f"noise std {float(diff.std()) / math.sqrt(2):.5f}, σC/B {sigma * C / B:.5f}, "
          f"{diff.numel()} entries")
    assert float(diff.std()) == pytest.approx(want, rel=0.15)
    assert abs(float(diff.mean())) < 4 * want / math.sqrt(diff.numel())


def test_spread_places_every_event():
    from privsem.models.training import spread

    for count, slots in ((0, 3), (3, 3), (5, 3), (7, 2), (2, 5)):
        out = spread(count, slots)
        assert len(out) == slots and sum(out) == count and max(out) - min(out) <= 1


def _lora(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_mixed_training_interleaves_labels_without_touching_the_dp_steps(monkeypatch):
    """With pseudo-labels mixed in, DP-SGD still runs exactly the planned Poisson-sampled steps
    (the sampler is asked for the same steps; the stats say so), the label steps run besides
    them (the weights differ from a run without labels), and no-DP co-training runs
    max(private, label) steps with every private batch trained on."""
    from privsem.models.training import PublicMix, train_mixed

    model, data = _setup("tiny-llama")
    labels = encode_examples(load_model("tiny-llama", seed=3).tokenizer, "plain",
                             load_examples("demo:bob.train.jsonl")[:6], 64)
    start = _lora(model)
    plain = _dp(model, data, steps=3, sample_rate=0.5, noise_multiplier=1.0)
    without = _lora(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(start[n])
    mixed = _dp(model, data, steps=3, sample_rate=0.5, noise_multiplier=1.0,
                public=PublicMix(labels, 4, 1e-2, steps=5))
    assert mixed.steps == plain.steps == 3
    assert mixed.examples_seen == plain.examples_seen  # the same Poisson batches
    assert any(not torch.equal(_lora(model)[n], without[n]) for n in without)

    stats = train_mixed(model, data, PublicMix(labels, 4, 1e-2, steps=5), steps=3,
                        batch_size=4, learning_rate=1e-2,
                        generator=torch.Generator().manual_seed(1))
    assert stats.steps == 5 and stats.examples_seen == 3 * 4
    stats = train_mixed(model, data, PublicMix(None, 4, 1e-2), steps=3, batch_size=4,
                        learning_rate=1e-2, generator=torch.Generator().manual_seed(1))
    assert stats.steps == 3 and stats.examples_seen == 12


def test_phase_split_keeps_the_budget_and_the_final_share():
    from privsem.config import load_config
    from privsem.errors import ConfigError
    from privsem.privacy.plan import phase_split

    assert phase_split(24, 4, 0.75, 0.25) == (18, 0, 0, 6)  # labels only in between
    assert phase_split(24, 4, 0.5, 0.25) == (12, 3, 3, 6)
    assert phase_split(12, 2, 0.75, 0.25) == (9, 3)
    assert phase_split(24, 4, 1.0) == (24, 0, 0, 0)
    for total in (1, 5, 24, 61):
        for first, final in ((0.75, 0.25), (0.5, 0.5), (0.6, 0.2)):
            split = phase_split(total, 4, first, final)
            assert total <= sum(split) <= total + 2 and min(split) >= 0
            if first + final == 1:
                assert sum(split) == total and split[1:3] == (0, 0)
    three_quarters = ["training.first_phase_share=0.75"]
    cfg = load_config(preset="smoke", overrides=[*three_quarters, "training.final_phase_share=0.25"])
    assert cfg.training.final_phase_share == 0.25
    for bad in ([*three_quarters, "training.final_phase_share=0.5"],  # 0.75 + 0.5 > 1
                # routed (no record-level DP), auto resolves the first share to 1: no room
                ["privacy.record.enabled=false", "training.final_phase_share=0.25"],
                ["training.final_phase_share=0.2", "training.first_phase_share=null"],
                ["training.final_phase_share=1.5"]):
        with pytest.raises(ConfigError, match="final_phase_share"):
            load_config(preset="smoke", overrides=bad)
