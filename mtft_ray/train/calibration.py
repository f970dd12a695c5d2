"""Measured training rates, stored per machine kind, with a stated default where none exists.

``mtft-ray bench train`` (:func:`mtft_ray.train.bench.bench_train`) measures the images per
second of real multitask finetuning steps on one machine and saves a :class:`Calibration`:
one JSON file per (machine kind, backbone, image size, precision, strategy, workers) under
:func:`calibration_dir`. :func:`train_rate` is what cost estimates read: the measured rate, a
rate scaled from another image size of the same backbone on the same machine kind, or the
stated default, always with a one-line statement of where the figure came from.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> train_rate("cpu-2c", "tf_efficientnet_lite0", 64, directory=d)[0]  # nothing measured yet
    120.0
    >>> c = Calibration(machine_kind="cpu-2c", backbone="tf_efficientnet_lite0", image_size=64,
    ...                 precision="fp32", strategy="ddp", workers=0, images_per_s=150.0, peak_rss_mb=900.0,
    ...                 peak_gpu_mb=None, steps=30, measured_at="2026-12-01T10:00:00+00:00",
    ...                 mtft_ray_version="0.1.0", torch_version="2.14.1")
    >>> save_calibration(c, d).name
    'cpu-2c--tf_efficientnet_lite0--64px--fp32--ddp--w0.json'
    >>> train_rate("cpu-2c", "tf_efficientnet_lite0", 64, directory=d)
    (150.0, 'measured on cpu-2c 2026-12-01 (mtft-ray bench train)')
    >>> find_calibration("cpu-2c", "tf_efficientnet_lite0", 128, directory=d).images_per_s  # 4x the pixels
    37.5
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from mtft_ray.errors import MtftError
from mtft_ray.io import atomic_write_json

__all__ = [
    "DEFAULT_TRAIN_RATE_IMG_S",
    "DEFAULT_TRIAL_OVERHEAD_S",
    "Calibration",
    "calibration_dir",
    "default_precision",
    "find_calibration",
    "load_calibration",
    "machine_kind",
    "save_calibration",
    "train_rate",
    "trial_overhead",
]

# Stated defaults, used only where no calibration exists. Both were measured once on the
# 2-core CPU reference machine (cache warm): multitask finetuning of EfficientNet-Lite0 at
# 64 px ran at 120 img/s, and sweeps/subsets-glyphs.yaml took 24 s of wall time per trial,
# 8 s of it training, i.e. 16 s per trial beside training (Tune starting the trial, loading the
# cached store and features, validation and target evaluation).
DEFAULT_TRAIN_RATE_IMG_S = 120.0
DEFAULT_TRIAL_OVERHEAD_S = 16.0
_DEFAULT_SOURCE = "measured once on a 2-core CPU, EfficientNet-Lite0 64 px"
_BENCH_COMMAND = "mtft-ray bench train"
PRECISIONS = ("fp32", "bf16")
# measurements shipped with the package (`mtft-ray bench train --save` on the reference machines),
# used where this machine's own calibration folder holds none for the key
SHIPPED_DIR = Path(__file__).with_name("calibrations")


@dataclass(frozen=True)
class Calibration:
    """One measurement of multitask finetuning speed on one kind of machine.

    Attributes:
        machine_kind: :func:`machine_kind` of the machine measured (``cpu-2c``, ``gpu-h200-x1``).
        backbone: timm model name.
        image_size: image side in pixels (for a scaled calibration: the size asked for).
        precision: ``"fp32"`` or ``"bf16"`` (bf16 autocast, used on CUDA).
        strategy: training strategy measured (``"ddp"``: plain torch, one process or DDP).
        workers: Ray Train workers (0: in this process).
        images_per_s: finetuning images per second of one process.
        peak_rss_mb: the measuring process's peak resident memory (MiB, whole process lifetime).
        peak_gpu_mb: peak CUDA memory allocated by torch (MiB); ``None`` on CPU.
        steps: timed optimizer steps.
        measured_at: ISO 8601 time of the measurement (UTC).
        mtft_ray_version: mtft-ray version that measured it.
        torch_version: torch version that measured it.
        scaled_from: ``None`` for a measurement; else the image size actually measured, and
            ``images_per_s`` is scaled by pixel count (memory fields stay as measured).
    """

    machine_kind: str
    backbone: str
    image_size: int
    precision: str
    strategy: str
    workers: int
    images_per_s: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    steps: int
    measured_at: str
    mtft_ray_version: str
    torch_version: str
    scaled_from: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise MtftError(f"calibration precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def key(self) -> tuple[str, str, int, str, str, int]:
        """What one calibration file is for: (kind, backbone, image size, precision, strategy, workers)."""
        return (self.machine_kind, self.backbone, self.image_size, self.precision, self.strategy, self.workers)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict, where: str = "calibration") -> "Calibration":
        """The calibration in ``doc``; unknown keys are ignored (files from newer versions).

        Raises:
            MtftError: ``doc`` is not an object, or a field is missing or of the wrong type.
        """
        if not isinstance(doc, dict):
            raise MtftError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in doc and n != "scaled_from"]
        if missing:
            raise MtftError(f"{where}: missing {', '.join(missing)}; rerun `{_BENCH_COMMAND}`")
        try:
            return cls(
                machine_kind=str(doc["machine_kind"]), backbone=str(doc["backbone"]),
                image_size=int(doc["image_size"]), precision=str(doc["precision"]),
                strategy=str(doc["strategy"]), workers=int(doc["workers"]),
                images_per_s=float(doc["images_per_s"]), peak_rss_mb=float(doc["peak_rss_mb"]),
                peak_gpu_mb=None if doc["peak_gpu_mb"] is None else float(doc["peak_gpu_mb"]),
                steps=int(doc["steps"]), measured_at=str(doc["measured_at"]),
                mtft_ray_version=str(doc["mtft_ray_version"]), torch_version=str(doc["torch_version"]),
                scaled_from=None if doc.get("scaled_from") is None else int(doc["scaled_from"]))
        except (TypeError, ValueError) as e:
            raise MtftError(f"{where}: {e}") from None


def machine_kind(device: torch.device | str | None = None) -> str:
    """The kind of machine calibrations are stored for.

    Args:
        device: the device measured; ``None``: CUDA when available, else the CPU.

    Returns:
        ``gpu-<device name>-x<count>`` (``gpu-h200-x1``: name lower-cased, ``NVIDIA`` dropped,
        other characters to ``-``) or ``cpu-<os.cpu_count()>c`` (``cpu-2c``).
    """
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if use_cuda:
        name = re.sub(r"^nvidia[\s_-]*", "", torch.cuda.get_device_name(0).strip().lower())
        name = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"
        return f"gpu-{name}-x{torch.cuda.device_count()}"
    return f"cpu-{os.cpu_count() or 1}c"


def default_precision(kind: str) -> str:
    """The precision training uses on a machine kind: bf16 autocast on GPU, fp32 on CPU."""
    return "bf16" if kind.startswith("gpu-") else "fp32"


def calibration_dir() -> Path:
    """``$MTFT_RAY_CALIBRATIONS``, else ``<cache root>/calibrations``.

    The cache root is ``$MTFT_RAY_CACHE``, else ``~/.cache/mtft-ray`` (the rule of
    :func:`mtft_ray.data.load.cache_root` without a config).
    """
    explicit = os.environ.get("MTFT_RAY_CALIBRATIONS")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("MTFT_RAY_CACHE", "~/.cache/mtft-ray")).expanduser() / "calibrations"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part)


def _file_name(kind: str, backbone: str, image_size: int | str, precision: str, strategy: str, workers: int) -> str:
    return f"{_safe(kind)}--{_safe(backbone)}--{image_size}px--{precision}--{_safe(strategy)}--w{workers}.json"


def save_calibration(c: Calibration, directory: str | Path | None = None) -> Path:
    """Write ``c`` atomically as its key's one file (replacing an older one); returns the path.

    Raises:
        MtftError: ``c`` is a scaled calibration (only measurements are stored).
    """
    if c.scaled_from is not None:
        raise MtftError(f"not saving a calibration scaled from {c.scaled_from} px: only measurements are stored")
    path = Path(directory or calibration_dir()) / _file_name(*c.key)
    atomic_write_json(path, c.to_json())
    return path


def load_calibration(path: str | Path) -> Calibration:
    """The calibration in one file.

    Raises:
        MtftError: the file is not JSON or not a calibration (the message names the file).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MtftError(f"calibration file {path} is not JSON ({e.msg}, line {e.lineno}); delete it or rerun "
                        f"`{_BENCH_COMMAND}`") from None
    except OSError as e:
        raise MtftError(f"calibration file {path} cannot be read: {e.strerror}") from None
    return Calibration.from_json(doc, where=f"calibration file {path}")


def find_calibration(kind: str, backbone: str, image_size: int, precision: str = "fp32", strategy: str = "ddp",
                     directory: str | Path | None = None, *, workers: int = 0) -> Calibration | None:
    """The calibration for exactly this key, else one scaled from another image size, else ``None``.

    A scaled calibration comes from the same machine kind, backbone, precision, strategy and
    workers at the measured image size nearest to ``image_size`` (by ratio, the larger on a
    tie); its rate is multiplied by ``(size_measured / image_size) ** 2`` and ``scaled_from``
    names the size measured.

    Raises:
        MtftError: a matching file that is not JSON, not a calibration, or holds another key.
    """
    directory = Path(directory or calibration_dir())
    want = (kind, backbone, image_size, precision, strategy, workers)
    exact = directory / _file_name(*want)
    if exact.is_file():
        return _checked(exact, want)
    prefix, suffix = _file_name(kind, backbone, "*", precision, strategy, workers).split("*px")
    others = []
    for path in sorted(directory.glob(f"{prefix}*px{suffix}")):
        size = path.name[len(prefix) : -len(suffix)].removesuffix("px")
        if size.isdigit():  # not another backbone whose name extends this one's
            others.append(_checked(path, (*want[:2], int(size), *want[3:])))
    if not others:
        return None
    near = min(others, key=lambda c: (abs(math.log(c.image_size / image_size)), -c.image_size))
    factor = (near.image_size / image_size) ** 2
    return dataclasses.replace(near, image_size=image_size, images_per_s=near.images_per_s * factor,
                               scaled_from=near.image_size)


def _checked(path: Path, want: tuple) -> Calibration:
    c = load_calibration(path)
    if c.key != want:
        raise MtftError(f"calibration file {path} holds a calibration for {c.key}, not {want}: its name and "
                        f"content disagree; delete it or rerun `{_BENCH_COMMAND}`")
    return c


def train_rate(kind: str, backbone: str, image_size: int, precision: str | None = None, strategy: str = "ddp",
               directory: str | Path | None = None, *, workers: int = 0) -> tuple[float, str]:
    """Images per second of multitask finetuning on a machine kind, and where the figure came from.

    Args:
        precision: ``None``: :func:`default_precision` of the kind (what training would use).

    Returns:
        ``(images_per_s, statement)``: the statement is one line, e.g. ``measured on cpu-2c
        2026-12-01 (mtft-ray bench train)``, or names the stated default and the command that
        replaces it.
    """
    precision = precision or default_precision(kind)
    dirs = [Path(directory)] if directory else [calibration_dir(), SHIPPED_DIR]  # this machine's own first
    found = (find_calibration(kind, backbone, image_size, precision, strategy, d, workers=workers) for d in dirs)
    c = next((c for c in found if c is not None), None)
    if c is None:
        return DEFAULT_TRAIN_RATE_IMG_S, (
            f"no calibration for {kind}/{backbone}/{image_size} px: stated default {DEFAULT_TRAIN_RATE_IMG_S:g} img/s "
            f"({_DEFAULT_SOURCE}); run `{_BENCH_COMMAND}` on this machine kind")
    measured = f"measured on {c.machine_kind} {c.measured_at[:10]} ({_BENCH_COMMAND})"
    if c.scaled_from is not None:
        return c.images_per_s, f"scaled by pixel count from {c.scaled_from} px to {image_size} px, {measured}"
    return c.images_per_s, measured


def trial_overhead(kind: str) -> tuple[float, str]:
    """Seconds per trial beside training, and where the figure came from.

    No command measures it per machine kind yet, so this is always the stated default.
    """
    return DEFAULT_TRIAL_OVERHEAD_S, (
        f"stated default {DEFAULT_TRIAL_OVERHEAD_S:g} s per trial beside training ({_DEFAULT_SOURCE}, "
        f"sweeps/subsets-glyphs.yaml); not measured for {kind}")
