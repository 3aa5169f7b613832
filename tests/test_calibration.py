"""Decision offsets fitted on validation examples (`eval.calibrate`, alter.evaluate.calibration)."""

from __future__ import annotations

import json
import math

import pytest

import alter
from alter.config import ConfigError
from alter.data.spec import TaskSpec
from alter.data.task import Example, Task
from alter.evaluate.calibration import fit_offsets
from alter.models.mta_model import decide
from alter.training import scoring
from alter.training.run import run_training
from tests.conftest import tiny


def _binary(probabilities_of_acceptable: list[float]) -> list[tuple[str, dict[str, float]]]:
    return [("acceptable", {"unacceptable": 1 - p, "acceptable": p}) for p in probabilities_of_acceptable]


def test_an_offset_moves_a_majority_only_decision_to_the_threshold_that_separates_the_labels(registry):
    """Every example leans `acceptable` (MCC 0), but the unacceptable ones lean less: an offset
    of the log-odds between the two groups separates them (MCC 1)."""
    cola = registry.get("cola")
    leaning = [0.55, 0.6, 0.62, 0.9, 0.92, 0.95, 0.97]
    labels = ["unacceptable"] * 3 + ["acceptable"] * 4
    examples = [Example("cola", {"sentence": str(i)}, label) for i, label in enumerate(labels)]
    offsets = fit_offsets(cola, _binary(leaning), examples)
    assert offsets[0] == 0
    decided = [decide(cola.spec.labels, probs, offsets) for _, probs in _binary(leaning)]
    assert decided == labels
    odds = [math.log(p / (1 - p)) for p in (0.62, 0.9)]  # the threshold falls between these log-odds
    assert odds[0] < -offsets[1] < odds[1]


def test_a_task_already_decided_at_its_best_gets_no_offset(registry):
    sst2 = registry.get("sst2")
    predictions = [("positive", {"negative": 0.2, "positive": 0.8}), ("negative", {"negative": 0.7, "positive": 0.3})]
    examples = [Example("sst2", {"sentence": "a"}, "positive"), Example("sst2", {"sentence": "b"}, "negative")]
    assert fit_offsets(sst2, predictions, examples) == [0.0, 0.0]


def test_three_labels_each_get_an_offset_when_the_model_never_picks_them():
    task = Task(TaskSpec(name="stance", kind="classification", inputs={"text": "text"}, target="label",
                         template="{text}", labels=["pro", "con", "neutral"]))
    # The model always prefers `pro`; `con` and `neutral` examples carry a little more of theirs.
    predictions = [{"pro": 0.5, "con": 0.3, "neutral": 0.2}] * 2 + [{"pro": 0.5, "con": 0.4, "neutral": 0.1}] * 2 + \
                  [{"pro": 0.5, "con": 0.15, "neutral": 0.35}] * 2
    references = ["pro"] * 2 + ["con"] * 2 + ["neutral"] * 2
    examples = [Example("stance", {"text": str(i)}, label) for i, label in enumerate(references)]
    offsets = fit_offsets(task, [("pro", probs) for probs in predictions], examples)
    assert [decide(task.spec.labels, probs, offsets) for probs in predictions] == references


def test_a_calibrated_run_saves_its_offsets_and_the_loaded_model_decides_with_them(tmp_path, monkeypatch):
    # The fit itself is tested above; here a fixed fit, so that there are offsets to carry.
    monkeypatch.setattr(scoring, "fit_offsets", lambda task, predictions, examples: [0.0, 0.25])
    config = tiny(tmp_path, "calibrated", "data.validation=8", "eval.calibrate=true", "eval.before_training=false")
    report = run_training(config)
    saved = json.loads((tmp_path / "calibrated/model/alter.json").read_text())
    assert saved["label_offsets"] == report["label_offsets"] == {"sst2": [0.0, 0.25]}
    assert "Decision offsets" in (tmp_path / "calibrated/report.md").read_text()
    model = alter.load(tmp_path / "calibrated/model")
    assert model.label_offsets == {"sst2": [0.0, 0.25]}
    model.label_offsets = {"sst2": [0.0, 1e6]}  # the offsets decide: `positive` whatever the text
    assert {label for label, _ in model.predict([{"task": "sst2", "inputs": {"sentence": s}}
                                                  for s in ("dull", "fine", "awful")])} == {"positive"}
    model.label_offsets = {"sst2": [1e6, 0.0]}
    assert model.predict([{"task": "sst2", "inputs": {"sentence": "fine"}}])[0][0] == "negative"


def test_calibrate_without_validation_examples_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="eval.calibrate fits decision offsets on the validation examples"):
        run_training(tiny(tmp_path, "no-validation", "eval.calibrate=true"))
