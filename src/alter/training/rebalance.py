"""Dynamic task adjustment: a stage's batches drawn by task rates that can change mid-stage.

A fixed mixture gives every task its share of the steps whatever it has learned. With a
`rebalance` setting the stage checks, every so many steps, which scored tasks are not yet
above their trivial score on the validation examples, raises their rates and draws the rest
of the stage from the new ones (the seed paper's "dynamic task adjustment").

The plan stays a function of the seed: from step `start` on, the batches depend only on the
seed, `start` and the rates then in force, which the checkpoint keeps, so a resumed run
continues with exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence

from alter.config import RebalanceConfig, StageConfig
from alter.data.mixture import batch_plan
from alter.training.datasets import StageData

_START_SEED_STRIDE = 7919  # a redraw from step s uses seed + stride * s (s = 0: the stage's own plan)


class TaskPlan:
    """The batches of one stage, as (task index, example index) pairs."""

    def __init__(self, data: StageData, stage: StageConfig, seed: int):
        self.lengths = [[len(row.input_ids) for row in rows] for rows in data.rows]
        self.stage, self.seed = stage, seed
        self.redraw(0, data.rates)

    def redraw(self, start: int, rates: Sequence[float]) -> None:
        """Draw the batches of steps `start`... from `rates`."""
        self.start, self.rates = start, [float(rate) for rate in rates]
        steps = self.stage.steps - start
        self._batches = batch_plan(self.lengths, self.rates, steps * self.stage.grad_accum, self.stage.batch_size,
                                   self.seed + _START_SEED_STRIDE * start,
                                   one_task=self.stage.batches == "one_task")

    def batch(self, step: int, micro: int) -> list[tuple[int, int]]:
        return self._batches[(step - self.start) * self.stage.grad_accum + micro]

    def state(self) -> dict:
        """What a checkpoint keeps to draw the same batches again."""
        return {"rates": self.rates, "rates_from_step": self.start}


def rebalanced_rates(task_names: Sequence[str], rates: Sequence[float], unlearned: Sequence[str],
                     config: RebalanceConfig) -> list[float]:
    """`rates` with each unlearned task's multiplied by `boost` (to at most `max_rate`; never
    lowered), renormalised."""
    weights = [max(rate, min(rate * config.boost, config.max_rate)) if name in unlearned else rate
               for name, rate in zip(task_names, rates)]
    total = sum(weights)
    return [weight / total for weight in weights]
