"""Whether a config may resume the run already in an output folder.

A run resumes from the checkpoints in its folder; a different model, data or stage plan would
load weights of another shape or replay another data order (and fail deep inside torch, or
worse, silently mix two runs). The folder's `config.yaml` says what started it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from alter.config import Config, ConfigError, parse_config

log = logging.getLogger(__name__)

# What a resumed run must share with the run that wrote the folder. Evaluation, device and
# distributed settings may change between pieces of one run.
SAME_RUN_KEYS = ("seed", "model", "data")


def differences(old: Any, new: Any, path: str) -> list[str]:
    """`key: old -> new` for every leaf where two config trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(old.keys() | new.keys())
                for change in differences(old.get(key), new.get(key), f"{path}.{key}")]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def _what_the_run_used(config: dict[str, Any]) -> dict[str, Any]:
    """A config dump without settings that cannot have shaped the run: those of a disabled MTA
    module (a baseline's `model.mta` after the base's MTA design changed)."""
    mta = config["model"].get("mta") or {}
    if mta.get("enabled") is False:
        config = {**config, "model": {**config["model"], "mta": {"enabled": False}}}
    return config


def resume_conflict(out: Path, config: Config) -> str | None:
    """Why `config` cannot continue the run in `out`, or None (no run there, or the same)."""
    saved_path = out / "config.yaml"
    if not saved_path.exists() or not (out / "stages").exists():
        return None  # nothing trained there yet
    try:
        saved = parse_config(yaml.safe_load(saved_path.read_text()) or {}, str(saved_path))
    except (ConfigError, yaml.YAMLError) as error:
        log.warning("cannot compare with the config of the run in %s (%s); resuming it as is", out, error)
        return None
    old, new = _what_the_run_used(saved.model_dump(mode="json")), _what_the_run_used(config.model_dump(mode="json"))
    changes = [change for key in SAME_RUN_KEYS for change in differences(old[key], new[key], key)]
    # Stages may be added after the finished ones, not changed.
    kept = new["stages"][: len(old["stages"])]
    changes += [change for index, (before, after) in enumerate(zip(old["stages"], kept))
                for change in differences(before, after, f"stages.{index}")]
    if len(kept) < len(old["stages"]):
        changes.append(f"stages: {len(old['stages'])} -> {len(new['stages'])}")
    if not changes:
        return None
    shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
    return (f"{out} holds a run of another config ({shown}); a run resumes only with the config that "
            f"started it: choose another output_dir (--set output_dir=...) or delete {out}")
