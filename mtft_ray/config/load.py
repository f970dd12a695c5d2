"""Load, override, validate, hash and save experiment configs.

Example:
    >>> cfg = load_config(None, ["finetune.lr=1e-4", "eval.shots=[1]"])
    >>> cfg.finetune.lr, cfg.eval.shots
    (0.0001, [1])
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mtft_ray.config.schema import ExperimentConfig, format_validation_error
from mtft_ray.errors import MtftError
from mtft_ray.io import atomic_write_text

_SCI = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 1e10, 1.5e3: YAML 1.1 reads them as text


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"finetune.lr=1e-4"`` → ``(["finetune", "lr"], 1e-4)``; the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise MtftError(f"override {item!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise MtftError(f"override {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if isinstance(value, str) and _SCI.fullmatch(value):
        value = float(value)
    return key.strip().split("."), value


def set_dotted(raw: dict, key: str | list[str], value: Any) -> dict:
    """Set one dotted key (``"finetune.lr"``) in a nested dict, creating sections; returns ``raw``.

    Raises:
        MtftError: a parent of the key holds a value, not a section.
    """
    path = key.split(".") if isinstance(key, str) else key
    node = raw
    for part in path[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise MtftError(f"{'.'.join(path)}: {part!r} is not a section")
        node = node[part]
    node[path[-1]] = value
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set dotted ``key=value`` overrides in a nested dict (creating sections as needed); returns ``raw``."""
    for item in overrides:
        path, value = parse_override(item)
        try:
            set_dotted(raw, path, value)
        except MtftError as e:
            raise MtftError(f"override {item!r}: {str(e).split(': ', 1)[1]}") from None
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MtftError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise MtftError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise MtftError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                        f"save the config as UTF-8") from None
    except OSError as e:
        raise MtftError(f"{path}: cannot be read: {e.strerror or e}") from None
    if not isinstance(raw, dict):
        raise MtftError(f"{path}: the top level must be a mapping of sections")
    return raw


def validate(model: type[BaseModel], raw: dict, where: str) -> BaseModel:
    """Validate ``raw`` against ``model``; errors name each bad key with its dotted path."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise MtftError(f"{where}: {format_validation_error(e)}") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """The experiment config from a YAML file (``None``: the built-in default) plus overrides."""
    raw = read_yaml(path) if path else {}
    apply_overrides(raw, overrides or [])
    where = str(path) if path else "default config"
    if overrides:
        where += f" (with overrides {' '.join(overrides)})"
    return validate(ExperimentConfig, raw, where)


def config_hash(cfg: BaseModel) -> str:
    """A short, stable hash of the resolved config (key order does not matter)."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def save_resolved(cfg: BaseModel, out_dir: str | Path) -> str:
    """Write ``config.yaml`` (every default filled in) and return the config hash."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digest = config_hash(cfg)
    text = f"# resolved config, hash {digest}\n" + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    atomic_write_text(out / "config.yaml", text)
    return digest
