"""Presets: one YAML file per experiment of the two papers, shipped as package data.

A preset is a partial config (missing fields take the schema's defaults). It may start
with ``extends: OTHER`` to inherit another preset and change a few fields (the method
variants of one experiment share everything else); mappings merge key by key, anything
else is replaced.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from .config import ExperimentConfig, from_dict

SUFFIX = ".yaml"


def _preset_dir() -> Path:
    return Path(str(resources.files("leanspike.experiments") / "presets"))


def preset_names() -> list[str]:
    return sorted(p.name[: -len(SUFFIX)] for p in _preset_dir().glob(f"*{SUFFIX}"))


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: nested mappings merge, other values replace."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path, label: str) -> dict[str, Any]:
    """A YAML mapping from ``path``; a one-line UserError when unreadable or malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{label}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{label}: {path} is not a UTF-8 text file (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{label}: {path} is not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{label}: {path} must hold a mapping of config fields, got {type(data).__name__}")
    return data


def _resolve(data: dict[str, Any], label: str, seen: tuple[str, ...]) -> dict[str, Any]:
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise UserError(f"{label}: extends must name a preset, got {parent!r}")
    if parent in seen:
        raise UserError(f"{label}: presets extend each other in a cycle ({' -> '.join(seen + (parent,))})")
    return merge(preset_dict(parent, seen), data)


def preset_dict(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The preset ``name`` as a plain dict, with ``extends`` resolved."""
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `leanspike presets` lists them"
        raise UserError(f"unknown preset {name!r}{hint}")
    data = read_yaml(_preset_dir() / f"{name}{SUFFIX}", f"preset {name}")
    data = _resolve(data, f"preset {name}", seen + (name,))
    data["name"] = name
    return data


def load_preset(name: str) -> ExperimentConfig:
    return from_dict(preset_dict(name), f"preset {name}: ")


def load_config_file(path: str) -> ExperimentConfig:
    """A user's own YAML config (may ``extends:`` a preset)."""
    label = f"--config {path}"
    data = _resolve(read_yaml(Path(path), label), label, ())
    return from_dict(data, f"{label}: ")


@dataclass(frozen=True)
class PresetInfo:
    name: str
    description: str
    dataset: str
    model: str
    method: str
    T: int
    epochs: int
    source: str


def describe_presets() -> list[PresetInfo]:
    out = []
    for name in preset_names():
        cfg = load_preset(name)
        method = cfg.method.name + (f" K={cfg.method.K}" if cfg.method.name == "sltt-k" else "")
        if cfg.method.name == "ttl":
            method += f" k={cfg.method.k} n={cfg.method.n}"
        out.append(PresetInfo(name, cfg.description, cfg.data.name, cfg.model.name, method, cfg.T, cfg.epochs,
                              cfg.source))
    return out
