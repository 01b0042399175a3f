"""The analytic communication model (privsem.bench.comm): formula, reconstruction, validation."""

import dataclasses
import json
import math

import pytest

from privsem.bench import comm
from privsem.bench.comm import (
    GEMMA_3_270M,
    LLAMA_3_1,
    LLAMA_3_1_8B,
    LLAMA_3_1_70B,
    LLAMA_3_1_405B,
    LLAMA_3_1_405B_KV16,
    PAPER_RECONSTRUCTION,
    PAPER_RECONSTRUCTION_EMBEDDING_TWIN,
    SMOLLM2_135M,
    Architecture,
    PayloadAssumptions,
    lora_parameters,
    lora_payload_bytes,
    semantic_payload_bytes,
    text_payload_bytes,
)


def test_lora_count_matches_hand_computed_values():
    # README: "LoRA r=8 on q,v ... 460,800 parameters (SmolLM2); 368,640 (Gemma-3)".
    # SmolLM2: 30 layers * 8 * ((576 + 576) + (576 + 3*64)) = 30 * 8 * 1920.
    assert lora_parameters(SMOLLM2_135M, 8, "q,v") == 30 * 8 * 1920 == 460_800
    # Gemma-3: 18 layers * 8 * ((640 + 4*256) + (640 + 1*256)) = 18 * 8 * 2560.
    assert lora_parameters(GEMMA_3_270M, 8, "q,v") == 18 * 8 * 2560 == 368_640
    # 405B q,v: 126 * 16 * ((16384 + 16384) + (16384 + 8*128)).
    assert lora_parameters(LLAMA_3_1_405B, 16, "q,v") == 126 * 16 * 50_176 == 101_154_816
    # 8B all linears, per layer: q, o 8192 each; k, v 5120 each; gate, up, down 18432 each.
    assert lora_parameters(LLAMA_3_1_8B, 8, "all") == 32 * 8 * 81_920 == 20_971_520
    assert lora_parameters(LLAMA_3_1_8B, 8, "q,k,v,o") == 32 * 8 * 26_624
    # TESTING.md reference: Llama-2-7B rank 32 on q,v (OpenFedLLM default) is 16.8 M parameters.
    llama2_7b = Architecture("Llama-2-7B", hidden=4096, layers=32, heads=32, kv_heads=32,
                             head_dim=128, intermediate=11008, vocab=32000)
    assert lora_parameters(llama2_7b, 32, "q,v") == 16_777_216
    assert lora_payload_bytes(16_777_216, 4) == 67_108_864  # "67 MB fp32"


def test_target_sets_and_module_names_agree():
    for arch in (SMOLLM2_135M, LLAMA_3_1_70B):
        assert lora_parameters(arch, 4, "q,v") == lora_parameters(arch, 4, ("q_proj", "v_proj"))
        assert lora_parameters(arch, 4, "attention") == lora_parameters(arch, 4, "q,k,v,o")
        assert lora_parameters(arch, 4, "all") == lora_parameters(
            arch, 4, ["q", "k", "v", "o", "gate_proj", "up_proj", "down_proj"])
        assert lora_parameters(arch, 4, "all") == sum(
            lora_parameters(arch, 4, [m]) for m in comm.MODULES)


def test_payload_bytes():
    # README: the masked upload carries a 24 x 384 vector of 4-byte values; 39,100 B in all.
    assert semantic_payload_bytes(24) == 24 * 384 * 4 == 36_864
    assert semantic_payload_bytes(24, overhead_bytes=2_236) == 39_100
    assert semantic_payload_bytes(100, 1024, 2) == 204_800
    assert text_payload_bytes(100, 512) == 204_800
    assert lora_payload_bytes(460_800) == 1_843_200  # README: 1,800 KiB fp32


def test_llama_intermediate_sizes_follow_metas_formula():
    # meta-llama/llama-models sku_list.py gives ffn_dim_multiplier and multiple_of; the
    # reference model computes int(2 * 4 * dim / 3), times the multiplier, rounded up.
    def ffn(dim: int, multiplier: float, multiple_of: int) -> int:
        h = int(multiplier * int(2 * 4 * dim / 3))
        return multiple_of * math.ceil(h / multiple_of)

    assert ffn(4096, 1.3, 1024) == LLAMA_3_1_8B.intermediate
    assert ffn(8192, 1.3, 4096) == LLAMA_3_1_70B.intermediate
    assert ffn(16384, 1.2, 4096) == LLAMA_3_1_405B.intermediate
    for arch in LLAMA_3_1:
        assert arch.heads * arch.head_dim == arch.hidden and arch.kv_heads == 8


def test_paper_reconstruction_is_within_one_percent_of_1006():
    f = comm.paper_reconstruction_factor()
    assert abs(f / 1006 - 1) < 0.01
    assert f == 1008.0  # 51,609,600 * 4 B / (100 * 512 * 4 B): exactly 126 * 8
    assert PAPER_RECONSTRUCTION_EMBEDDING_TWIN.factor() == f
    assert PAPER_RECONSTRUCTION.architecture is LLAMA_3_1_405B_KV16
    # The same assumptions on today's 8-KV-head config: 987.8, 1.8% below the paper.
    published = dataclasses.replace(PAPER_RECONSTRUCTION, architecture=LLAMA_3_1_405B)
    assert published.factor() == pytest.approx(987.84, abs=0.01)
    assert "r=8 on q,v" in PAPER_RECONSTRUCTION.describe()


def test_search_finds_the_reconstruction_and_no_exact_1006():
    fits = comm.search_reconstructions()
    assert PAPER_RECONSTRUCTION in fits and PAPER_RECONSTRUCTION_EMBEDDING_TWIN in fits
    assert all(abs(a.factor() / 1006 - 1) <= 0.01 for a in fits)
    assert not [a for a in fits if round(a.factor()) == 1006]  # as the module docstring says
    assert len(fits) == 137
    on_published = [a for a in fits if a.architecture is LLAMA_3_1_405B]
    assert len(on_published) == 32
    assert {(a.targets, round(a.factor(), 2)) for a in on_published} == {("all", 1014.72)}
    assert {round(a.factor(), 2) for a in fits if a.architecture is LLAMA_3_1_405B_KV16} == {
        1008.0}
    assert fits[0].factor() == 1008.0  # closest first


def test_factor_grows_with_rank_and_model_size_and_shrinks_with_prompts():
    rows = comm.table()
    assert len(rows) == 3 * 2 * 3 * 3
    by = {(r.model, r.targets, r.rank, r.prompts): r.factor for r in rows}
    names = [a.name for a in LLAMA_3_1]
    for ts in ("q,v", "all"):
        for p in (64, 256, 1024):
            for name in names:
                fs = [by[(name, ts, r, p)] for r in (8, 16, 64)]
                assert fs == sorted(fs) and len(set(fs)) == 3
            for r in (8, 16, 64):
                fs = [by[(name, ts, r, p)] for name in names]
                assert fs == sorted(fs) and len(set(fs)) == 3
        for name in names:
            for r in (8, 16, 64):
                fs = [by[(name, ts, r, p)] for p in (64, 256, 1024)]
                assert fs == sorted(fs, reverse=True) and len(set(fs)) == 3
    # The semantic side does not depend on the model: the factor is linear in LoRA bytes.
    r0 = rows[0]
    assert r0.factor == r0.lora_bytes / r0.semantic_bytes
    assert r0.semantic_bytes == semantic_payload_bytes(r0.prompts)


def test_markdown_and_summary():
    rows = comm.table()
    md = comm.format_markdown(rows).splitlines()
    assert len(md) == 2 + len(rows)
    assert md[0].startswith("| model | LoRA on | r |")
    assert "| Llama-3.1-8B | q,v | 8 | 3,407,872 | 13.0 MiB | 64 | 96.0 KiB | 139 |" in md
    s = json.loads(json.dumps(comm.summary()))
    assert s["reconstruction_factor"] == 1008.0 and s["paper_factor"] == 1006
    text = comm.format_summary(s)
    assert "1008.00" in text and "987.8" in text and md[0] in text


@pytest.mark.parametrize(("call", "bad"), [
    (lambda: lora_parameters(LLAMA_3_1_8B, 8, "qv"), "'qv'"),
    (lambda: lora_parameters(LLAMA_3_1_8B, 8, ["q_proj", "lm_head"]), "lm_head"),
    (lambda: lora_parameters(LLAMA_3_1_8B, 8, ["q", "q_proj"]), "q_proj"),
    (lambda: lora_parameters(LLAMA_3_1_8B, 8, []), "[]"),
    (lambda: lora_parameters(LLAMA_3_1_8B, 0, "q,v"), "rank: 0"),
    (lambda: lora_parameters(LLAMA_3_1_8B, True, "q,v"), "rank: True"),
    (lambda: semantic_payload_bytes(0), "prompts: 0"),
    (lambda: semantic_payload_bytes(10, dim=0), "dim: 0"),
    (lambda: semantic_payload_bytes(10, overhead_bytes=-1), "overhead_bytes: -1"),
    (lambda: text_payload_bytes(10, 0), "tokens_per_answer: 0"),
    (lambda: lora_payload_bytes(100, 0), "bytes_per_value: 0"),
    (lambda: PayloadAssumptions(LLAMA_3_1_8B, "q,v", 8, 4, 0, 384, 4), "prompts: 0"),
    (lambda: PayloadAssumptions(LLAMA_3_1_8B, "q,v", 8, 4, 10, 384, 4, lora_directions=3),
     "lora_directions: 3"),
    (lambda: Architecture("x", 0, 1, 1, 1, 1, 1, 1), "hidden: 0"),
    (lambda: comm.search_reconstructions(tolerance=2), "tolerance: 2"),
])
def test_bad_input_raises_value_error_naming_value_and_fix(call, bad):
    with pytest.raises(ValueError, match="use ") as err:
        call()
    assert bad in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "expected"), [("smollm2-135m-instruct", SMOLLM2_135M),
                                                ("gemma3-270m", GEMMA_3_270M)])
def test_formula_matches_peft_on_real_models(name, expected):
    from privsem.config import LoraConfig
    from privsem.models.loading import load_model
    from privsem.models.training import add_lora

    model = load_model(name).model
    arch = comm.architecture_from_config(model.config, expected.name)
    assert arch == expected  # the table's shapes are the loaded model's
    cfg = LoraConfig()  # privsem's defaults: r=8 on q_proj, v_proj
    peft_model = add_lora(model, rank=cfg.rank, alpha=cfg.alpha, targets=cfg.targets,
                          dropout=cfg.dropout)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == lora_parameters(arch, cfg.rank, cfg.targets)
    assert trainable == {"SmolLM2-135M": 460_800, "Gemma-3-270M": 368_640}[expected.name]
