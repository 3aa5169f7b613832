"""A saved model's folder: what it holds and how a wrong path is told apart from a bad folder.

    trained.safetensors   what training changed (experts, gates, adapters, heads; the backbone
                          when it was trained)
    alter.json            the model config, the tasks and how the weights were made
    README.md             the model card (`save_pretrained`); loading never reads it
    backbone/             the backbone itself, when it has no name to load it by
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "trained.safetensors"
META_FILE = "alter.json"
BACKBONE_FOLDER = "backbone"


def read_meta(directory: Path) -> dict[str, Any]:
    """The folder's `alter.json`; a missing path, or a run folder given instead of the model
    inside it, gets a message with the path to use."""
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint not found: {directory}")
    meta_path = directory / META_FILE
    if not meta_path.exists():
        inside = directory / "model" / META_FILE
        if inside.exists():
            raise FileNotFoundError(f"{directory} is a training run's folder; its model is {directory / 'model'}")
        raise FileNotFoundError(f"{directory} is not an alter checkpoint (no {META_FILE})")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta_path}: not valid JSON ({error.msg}, line {error.lineno})") from None


def point_at_backbone_beside(directory: Path) -> None:
    """Make the checkpoint in `directory` load the backbone saved in its `backbone/` folder."""
    meta_path = directory / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["backbone"] = meta["model"]["backbone"] = BACKBONE_FOLDER  # read relative to the folder
    meta_path.write_text(json.dumps(meta, indent=2))
