"""The benchmark's tasks and baselines (issue 8): the data they make, FedAvg's averaging, and
each method on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from privsem.bench.baselines import (
    adapter_blob,
    average_adapters,
    fedavg_exchange,
    run_method,
)
from privsem.bench.suite import QUICK, cell_config, methods_for, summarise
from privsem.bench.tasks import write_instructions, write_knowledge, write_task
from privsem.errors import ProtocolAbort
from privsem.privacy.ledger import Ledger
from privsem.runtime.inprocess import setup

CLIENTS = ("alice", "bob", "carol")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def _texts(path: Path) -> str:
    return path.read_text("utf-8")


# ---------------------------------------------------------------------------------------------
# tasks


def test_knowledge_facts_overlap_and_unseen_facts_are_really_unseen(tmp_path: Path) -> None:
    files = write_knowledge(tmp_path, CLIENTS, entities_per_topic=4, holders=2)
    prompts = _rows(files.prompts)
    assert len(prompts) == 24  # 3 topics x 4 entities x 2 facts, every fact public
    held_by: dict[str, int] = {}
    for c in CLIENTS:
        train = _texts(files.train[c])
        ev = _rows(files.eval[c])
        own = [r for r in ev if r["scope"] == "own"]
        other = [r for r in ev if r["scope"] == "other"]
        assert len(own) == 16 and len(other) == 8
        for r in own:  # the fact is in training, the question's phrasing is not
            assert r["output"] in train and r["instruction"] not in train
        for r in other:  # never seen: neither the answer nor its key
            assert r["output"] not in train and r["key"] not in train
        for r in own:
            held_by[r["output"]] = held_by.get(r["output"], 0) + 1
    assert len(held_by) == 24 and set(held_by.values()) == {2}
    # every fact's public phrasing differs from training and evaluation phrasings
    everything = "".join(_texts(files.train[c]) + _texts(files.eval[c]) for c in CLIENTS)
    assert not any(p["prompt"] in everything for p in prompts)


def test_instruction_task_holds_out_entities_and_is_deterministic(tmp_path: Path) -> None:
    a = write_instructions(tmp_path / "a", CLIENTS, train_per_client=6, eval_per_scope=4,
                           public_per_topic=3)
    b = write_instructions(tmp_path / "b", CLIENTS, train_per_client=6, eval_per_scope=4,
                           public_per_topic=3)
    for c in CLIENTS:
        assert _texts(a.train[c]) == _texts(b.train[c])
        assert _texts(a.eval[c]) == _texts(b.eval[c])
        train = _texts(a.train[c])
        ev = _rows(a.eval[c])
        topics = {r["topic"] for r in ev if r["scope"] == "own"}
        assert len(topics) == 1
        assert all(r["topic"] not in topics for r in ev if r["scope"] == "other")
        for r in ev:  # held-out entities: the reference appears in no training file
            assert all(r["output"] not in _texts(a.train[x]) for x in CLIENTS)
        assert len(_rows(a.train[c])) == 12 and len(ev) == 8
        assert train
    prompts = _rows(a.prompts)
    assert len(prompts) == 9 and len({p["id"] for p in prompts}) == 9


@pytest.mark.parametrize("kwargs, needle", [
    ({"holders": 3}, "holders=3"), ({"holders": 0}, "holders=0"),
    ({"entities_per_topic": 0}, "entities_per_topic=0")])
def test_knowledge_task_refuses_bad_sizes(tmp_path: Path, kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        write_knowledge(tmp_path, CLIENTS, **kwargs)


def test_unknown_task_and_too_few_clients_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task 'poetry' is not known"):
        write_task("poetry", tmp_path, CLIENTS, quick=True)
    with pytest.raises(ValueError, match="at least 2 distinct"):
        write_instructions(tmp_path, ["alice"])
    with pytest.raises(ValueError, match="distinct"):
        write_instructions(tmp_path, ["alice", "alice"])


# ---------------------------------------------------------------------------------------------
# FedAvg's server step


def _blob(**tensors: torch.Tensor) -> bytes:
    return save_tensors({k: v.contiguous() for k, v in tensors.items()})


def test_average_adapters_is_the_elementwise_mean() -> None:
    g = torch.Generator().manual_seed(1)
    ups = {c: {"a": torch.randn(4, 3, generator=g), "b": torch.randn(2, generator=g)}
           for c in CLIENTS}
    ref = {"a": torch.Size([4, 3]), "b": torch.Size([2])}
    avg = load_tensors(average_adapters({c: _blob(**t) for c, t in ups.items()}, ref))
    for k in ("a", "b"):
        want = sum(ups[c][k].double() for c in CLIENTS) / 3
        torch.testing.assert_close(avg[k].double(), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad, needle", [
    (b"not safetensors", "not a safetensors file"),
    (_blob(a=torch.zeros(4, 3)), "does not match"),                      # a tensor missing
    (_blob(a=torch.zeros(3, 4), b=torch.zeros(2)), "does not match"),     # wrong shape
    (_blob(a=torch.zeros(4, 3), b=torch.zeros(2), c=torch.zeros(1)), "does not match"),
    (_blob(a=torch.full((4, 3), math.nan), b=torch.zeros(2)), "not finite"),
])
def test_average_adapters_refuses_bad_uploads(bad: bytes, needle: str) -> None:
    ref = {"a": torch.Size([4, 3]), "b": torch.Size([2])}
    good = _blob(a=torch.zeros(4, 3), b=torch.zeros(2))
    with pytest.raises(ProtocolAbort, match=f"mallory.*{needle}|{needle}"):
        average_adapters({"alice": good, "mallory": bad}, ref)


# ---------------------------------------------------------------------------------------------
# the methods, on tiny models


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory: pytest.TempPathFactory):
    return write_task("knowledge", tmp_path_factory.mktemp("knowledge"), CLIENTS, quick=True)


def test_fedavg_exchange_leaves_every_client_with_the_mean(knowledge, tmp_path: Path) -> None:
    cfg = cell_config(knowledge, "homogeneous", "dp", "fedavg", QUICK)
    fed = setup(cfg, tmp_path, lambda s: None)
    for rnd, c in enumerate(fed.clients.values()):
        c.train_locally(1)
        assert rnd >= 0
    before = {cid: load_tensors(adapter_blob(c)) for cid, c in fed.clients.items()}
    assert not torch.equal(next(iter(before["alice"].values())),
                           next(iter(before["bob"].values())))  # DP-SGD moved them apart
    traffic = fedavg_exchange(fed.clients)
    after = {cid: load_tensors(adapter_blob(c)) for cid, c in fed.clients.items()}
    lora = next(iter(fed.clients.values())).lora_parameters
    for cid in CLIENTS:
        # the upload is the adapter: 4 bytes a parameter plus the safetensors header
        assert lora * 4 < traffic[cid]["up"] < lora * 4 + 64 * 1024
        assert traffic[cid]["down"] == traffic["alice"]["down"]
        for name, t in after[cid].items():
            want = sum(before[x][name].double() for x in CLIENTS) / 3
            torch.testing.assert_close(t.double(), want, atol=1e-6, rtol=0)


def test_fedavg_refuses_a_heterogeneous_federation(knowledge, tmp_path: Path) -> None:
    cfg = cell_config(knowledge, "heterogeneous", "dp", "fedavg", QUICK)
    with pytest.raises(ValueError, match="one architecture"):
        run_method("fedavg", cfg, tmp_path, lambda s: None)
    assert "fedavg" not in methods_for("heterogeneous", "dp")
    assert "fedavg" in methods_for("homogeneous", "none")
    assert "semantic+client" not in methods_for("homogeneous", "none")


def test_local_and_centralised_charge_the_same_record_level_target(knowledge,
                                                                   tmp_path: Path) -> None:
    local = run_method("local", cell_config(knowledge, "homogeneous", "dp", "local", QUICK),
                       tmp_path / "local", lambda s: None)
    central = run_method("centralised",
                         cell_config(knowledge, "heterogeneous", "dp", "centralised", QUICK),
                         tmp_path / "central", lambda s: None)
    for run in (local, central):
        assert len(run.rounds) == QUICK.rounds
        for cid in CLIENTS:
            eps = run.epsilon[cid]
            assert eps["client"] is None  # no client-level mechanism at all
            assert 0 < eps["record"] <= 8.0 + 1e-6
            assert {"own_key_recall", "other_key_recall", "own_rouge_l",
                    "other_similarity", "own_nll"} <= set(run.scores[cid])
    assert all(t["up"] == 0 and t["down"] == 0 for r in local.rounds
               for t in r["traffic"].values())
    # centralised: one pooled model per architecture, charged as one client each
    ledger = Ledger(tmp_path / "central" / "ledger.jsonl")
    charged = {e.client for e in ledger.entries}
    assert charged == {"pooled-0", "pooled-1"}
    pooled_n = sum(len(_rows(knowledge.train[c])) for c in CLIENTS)
    sizes = {e.detail["sample_rate"] for e in ledger.entries}
    assert sizes == {8 / pooled_n}
    # its traffic is the raw data, once
    assert central.rounds[0]["traffic"]["bob"]["up"] == knowledge.train["bob"].stat().st_size
    assert central.rounds[1]["traffic"]["bob"]["up"] == 0


def test_semantic_variants_differ_only_in_client_level_noise(knowledge, tmp_path: Path) -> None:
    a = cell_config(knowledge, "heterogeneous", "dp", "semantic", QUICK)
    b = cell_config(knowledge, "heterogeneous", "dp", "semantic+client", QUICK)
    assert not a.privacy.client.enabled and b.privacy.client.enabled
    assert a.privacy.record == b.privacy.record and a.clients == b.clients
    assert a.consensus.selection == "shared"
    run = run_method("semantic", b, tmp_path, lambda s: None)
    s = summarise("knowledge", {"scores": run.scores, "rounds": run.rounds,
                                "epsilon": run.epsilon})
    assert s["bytes_up_per_client_round"] > 24 * 4 * QUICK.rounds  # a real masked upload
    assert all(r["contributors"] == 3 and r["aborted"] is None for r in run.rounds)
    assert 0 < s["epsilon_client"] <= 8.0 + 1e-6
    none = cell_config(knowledge, "homogeneous", "none", "semantic", QUICK)
    assert not none.privacy.record.enabled and none.consensus.server_trusted_with_texts


def test_a_baselines_inputs_and_results_ignore_semantic_only_settings(tmp_path: Path) -> None:
    """SEMANTIC_ONLY is left out of a baseline's stored inputs, so tuning semantic consensus
    keeps a grid's baselines; that is only honest if the baseline really ignores those settings:
    local-only trained under two different semantic settings gives the same answers."""
    from dataclasses import replace

    from privsem.bench.baselines import run_local
    from privsem.bench.suite import method_inputs

    files = write_task("knowledge", tmp_path / "data", CLIENTS, quick=True)
    cfg = cell_config(files, "homogeneous", "none", "local", QUICK)
    # share 1 (what a routed run resolves to): the phase-1-as-local-only branch, the one most
    # apt to leak into a baseline
    cfg = replace(cfg, training=replace(cfg.training, first_phase_share=1.0))
    other = replace(cfg, consensus=replace(cfg.consensus, accept_share=0.9, confidence="none",
                                           nominate="nearest"),
                    generation=replace(cfg.generation, candidates=3, greedy_first=False),
                    training=replace(cfg.training, pseudo_label_epochs=5,
                                     first_phase_share=0.5, pseudo_label_learning_rate=5e-3,
                                     pseudo_label_batch_size=3))
    assert method_inputs(cfg, "local") == method_inputs(other, "local")
    assert method_inputs(cfg, "semantic") != method_inputs(other, "semantic")
    a = run_local(cfg, tmp_path / "a")
    b = run_local(other, tmp_path / "b")
    assert a.questions == b.questions
