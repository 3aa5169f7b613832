"""`alter.load`: the one way to load any saved system, whatever its architecture."""

from __future__ import annotations

from pathlib import Path

from alter.config import InferenceConfig
from alter.models.bilstm import BiLSTMModel
from alter.models.contract import TrainableModel
from alter.models.mta_model import MTAModel
from alter.models.quantized import Quantize
from alter.models.saved import read_saved

ARCHITECTURES = {"transformer": MTAModel, "bilstm": BiLSTMModel}  # as alter.json names them


def load(directory: str | Path, quantize: Quantize = InferenceConfig().quantize) -> TrainableModel:
    """The system saved in `directory` by its `save` (an MTAModel: MTA, the shared LoRA, full
    fine-tuning, the encoder; or the Bi-LSTM), in eval mode, its pretrained weights computing
    as `quantize` says (`InferenceConfig`). A missing folder, a run's folder given for the
    model inside it, or an unknown architecture is an error that says so."""
    directory = Path(directory)
    saved = read_saved(directory)
    if saved.architecture not in ARCHITECTURES:
        raise ValueError(f"{directory}: unknown architecture '{saved.architecture}' "
                         f"(known: {', '.join(ARCHITECTURES)})")
    model = ARCHITECTURES[saved.architecture].from_saved(saved, directory)
    model.set_inference(quantize)
    return model
