"""A run's evaluations: the model scored on the evaluation split and on the validation
examples, each kept in eval_<name>.json so that a resumed run does not evaluate again."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from alter.config import EvalConfig
from alter.data.task import Example, Task
from alter.evaluate.calibration import fit_offsets
from alter.evaluate.evaluator import evaluate, evaluate_with_predictions, main_score, predict_shared
from alter.evaluate.predictions import write_predictions
from alter.evaluate.ranks import Ranks
from alter.evaluate.resampling import score_interval
from alter.evaluate.trivial import not_above_trivial, trivial_main_scores
from alter.models.contract import TrainableModel
from alter.training.run_log import RunLog

log = logging.getLogger(__name__)


class Scorer:
    def __init__(self, model: TrainableModel, tasks: list[Task], out: Path, eval_sets: dict[str, list[Example]],
                 validation: dict[str, list[Example]], config: EvalConfig, ranks: Ranks, run_log: RunLog,
                 validation_trivial: dict[str, dict] | None = None):
        self.model, self.tasks, self.out, self.config, self.ranks = model, tasks, out, config, ranks
        self.eval_sets, self.run_log = eval_sets, run_log
        # Every task's validation examples choose checkpoints and stop tasks (an auxiliary task's
        # too, when it holds some); only the scored tasks' are reported, rebalanced and calibrated.
        self.selection = validation
        self.validation = {name: examples for name, examples in validation.items() if name in eval_sets}
        self.validation_trivial = validation_trivial or {}  # trivial_scores on the validation examples
        self.seconds: dict[str, float] = {}  # each evaluation's wall time

    def __call__(self, name: str, what: str, keep: bool = True, stage: str | None = None) -> dict[str, Any]:
        """{"metrics": on the evaluation split, "validation": on the held-out training examples
        (or None)}; per-example predictions in predictions_<name>.json. With `keep`, kept in
        eval_<name>.json (the main process decides: other machines of a run may not share
        its disk). `stage`: the stage the model has just finished (None: before training)."""
        path = self.out / f"eval_{name}.json"
        ranks = self.ranks
        kept = ranks.from_main(json.loads(path.read_text()) if keep and ranks.is_main and path.exists() else None)
        if kept is not None:
            kept = kept if "metrics" in kept else {"metrics": kept, "validation": None}  # older runs: metrics alone
            self.seconds[name] = kept.get("seconds", 0.0)
            return kept
        if ranks.is_main:
            log.info("evaluating %s on %s", what, {k: len(v) for k, v in self.eval_sets.items()})
        result = evaluate_with_predictions(self.model, self.eval_sets, self.config, ranks, what=f"eval {name}")
        held = evaluate_with_predictions(self.model, self.validation, self.config, ranks, what=f"validation {name}") \
            if self.validation and name != "before" else None
        scores = {"metrics": result.metrics, "validation": held.metrics if held else None,
                  # what "not clearly learned" reads: each main score's 95% interval over the examples
                  "intervals": {task: [round(end, 4) for end in score_interval([record])]
                                for task, record in result.records.items() if record["sources"]},
                  "seconds": round(result.seconds + (held.seconds if held else 0.0), 2)}
        self.seconds[name] = scores["seconds"]
        if ranks.is_main:
            path.write_text(json.dumps(scores, indent=2))
            write_predictions(self.out / f"predictions_{name}.json", result.records)
            self.run_log.scores(name, result.metrics, stage)
        return scores

    def selection_scores(self) -> dict[str, float]:
        """What `eval_every` keeps the best checkpoint (and early stopping stops) by: each
        task's main score (0-1) on the held-out training examples when the config holds some
        out (`data.validation`), else on the evaluation split."""
        results = evaluate(self.model, self.selection or self.eval_sets, self.config, self.ranks)
        return {task.name: main_score(task, results[task.name]) for task in self.tasks if task.name in results}

    def unlearned(self) -> dict[str, tuple[float, float]]:
        """The scored tasks whose main score on the validation examples is not above their
        trivial score there: {task: (score, trivial score)}, on 0-1 scales."""
        return not_above_trivial(self.tasks, evaluate(self.model, self.validation, self.config, self.ranks),
                                 self.validation_trivial)

    def validation_floors(self) -> dict[str, float]:
        """Each scored task's trivial main score (0-1) on the validation examples (those known)."""
        return trivial_main_scores(self.tasks, self.validation_trivial)

    def fit_label_offsets(self) -> dict[str, list[float]]:
        """Fit every classification task's decision offsets on its validation examples and set
        them on the model; {task: offsets} for the tasks whose offsets are not all zero."""
        self.model.label_offsets = {}
        tasks = [task for task in self.tasks if task.kind == "classification" and self.validation.get(task.name)]
        if not tasks:
            return {}
        everything = [example for task in tasks for example in self.validation[task.name]]
        predictions = predict_shared(self.model, everything, self.config, self.ranks, "calibration")
        offsets, start = {}, 0
        for task in tasks:
            examples = self.validation[task.name]
            fitted = fit_offsets(task, predictions[start: start + len(examples)], examples)
            start += len(examples)
            if any(fitted):
                offsets[task.name] = fitted
        self.model.label_offsets = offsets
        return offsets
