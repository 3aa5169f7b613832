"""The one training loop. A stage config says what trains and for how long; this runs it."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alter.config import StageConfig
from alter.evaluate.ranks import SINGLE, Ranks
from alter.models.contract import TrainableModel
from alter.training.checkpoint import load_training_state, read_training_state, save_training_state
from alter.training.datasets import StageData
from alter.training.distributed import finish_gradients, no_sync, wrap
from alter.training.early_stopping import BEST_FOLDER, EarlyStopper, gains
from alter.training.expert_lr import ExpertStepScaler, routed_experts, routed_shares
from alter.training.held_weights import HeldWeights
from alter.training.rebalance import TaskPlan, rebalanced_rates
from alter.training.run_log import RunLog
from alter.training.stages import optimizer_groups, prepare_stage

logger = logging.getLogger(__name__)


@dataclass
class StageResult:
    label: str
    steps: int
    trainable_params: int
    wall_seconds: float  # this stage's training time, summed over resumed pieces
    tokens_per_s: float
    final_loss: float


def _schedule(stage: StageConfig) -> Callable[[int], float]:
    """The learning rate's factor at a step of the stage, or at a task's own step on task clocks."""
    steps = stage.task_steps or stage.steps
    warmup = int(stage.warmup_ratio * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if stage.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        return 1.0 - progress if stage.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _trained_experts(model: TrainableModel, trainable: dict[str, torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    expert_names = model.param_groups()["experts"]
    return [param for name, param in trainable.items() if name in expert_names]


def _shares_by_default(model: TrainableModel, stage: StageConfig, experts: list[torch.nn.Parameter]) -> bool:
    """`expert_lr: auto`: routed shares where they were measured best, task experts trained in
    mixed batches beside a shared expert."""
    return bool(experts) and model.expert_plan is not None and model.expert_plan.shared and stage.batches == "mixed"


def _expert_step_scaler(model: TrainableModel, stage: StageConfig, data: StageData,
                        trainable: dict[str, torch.nn.Parameter]) -> ExpertStepScaler | None:
    experts = _trained_experts(model, trainable)
    if stage.expert_lr == "same" or (stage.expert_lr == "auto" and not _shares_by_default(model, stage, experts)):
        return None
    shares = routed_shares(model, data.task_names, data.rates)
    if shares is None or not experts:
        raise ValueError(f"stage '{stage.label}': expert_lr={stage.expert_lr} needs MTA experts that this stage "
                         "trains")
    return ExpertStepScaler(experts, shares)


def _still_experts(model: TrainableModel, stage: StageConfig, data: StageData,
                   trainable: dict[str, torch.nn.Parameter]) -> Callable[[set[int]], ExpertStepScaler] | None:
    """With one task per batch (stage 1, or joint): for the tasks of a step, the scaler that
    keeps every other task's expert where it is (alter.training.expert_lr). In a joint stage a
    task also reaches the other experts through its learned gate weights, at first near 0; Adam
    would scale that small gradient up to a full step, so every batch of every task would move
    every expert as far as its own task does. Each expert steps on its own tasks' batches only,
    and the gates learn how the tasks draw on them."""
    if stage.batches != "one_task" or stage.kind not in ("stage1", "joint"):
        return None
    experts = _trained_experts(model, trainable)
    if not experts:
        return None

    def scaler(task_ids: set[int]) -> ExpertStepScaler:
        routed = routed_experts(model, data.task_names, {data.task_names[task] for task in task_ids})
        return ExpertStepScaler(experts, routed)

    return scaler


def train_stage(model: TrainableModel, stage: StageConfig, data: StageData, stage_dir: Path, log: RunLog,
                seed: int, validation_scores: Callable[[], dict[str, float]] | None = None, ranks: Ranks = SINGLE,
                unlearned: Callable[[], dict[str, tuple[float, float]]] | None = None,
                floors: dict[str, float] | None = None) -> StageResult:
    """Run (or resume) one stage; checkpoints in `stage_dir/last`, best model in `stage_dir/best`.

    `validation_scores` (for `stage.eval_every`) returns each task's main score (0-1) on the examples
    that choose the best checkpoint; with `stage.early_stopping` the stage may end before its
    steps and ends with its best weights (alter.training.early_stopping), its starting point
    (scored before its first step) among the candidates.

    `unlearned` (for `stage.rebalance`) scores the validation examples and returns the tasks
    not above their trivial score there, as {task: (score, trivial score)}; `floors` are those
    trivial scores (0-1), which early stopping waits for a task to pass before it counts
    patience (`early_stopping.until_learned`).

    On several processes (`ranks`), each runs its share of every global batch and the
    gradients are averaged (by DDP, or by `finish_gradients` under FSDP); the main process
    alone writes checkpoints and logs.
    """
    if stage.batch_size < ranks.world_size:
        raise ValueError(f"stage '{stage.label}': batch_size {stage.batch_size} is smaller than the "
                         f"{ranks.world_size} processes; each needs at least one row of every batch")
    if stage.rebalance and unlearned is None:
        raise ValueError(f"stage '{stage.label}': rebalance needs validation examples (data.validation)")
    if stage.early_stopping and validation_scores is None:
        raise ValueError(f"stage '{stage.label}': early_stopping needs validation examples (data.validation)")
    return StageRun(model, stage, data, stage_dir, log, seed, validation_scores, ranks, unlearned, floors).run()


class StageRun:
    """One stage's training state (optimizer, batch plan, early stopping, counters) and the
    steps that move it: resume, train a step, log, check on validation, rebalance, save."""

    def __init__(self, model: TrainableModel, stage: StageConfig, data: StageData, stage_dir: Path, log: RunLog,
                 seed: int, validation_scores: Callable[[], dict[str, float]] | None, ranks: Ranks,
                 unlearned: Callable[[], dict[str, tuple[float, float]]] | None, floors: dict[str, float] | None):
        self.model, self.stage, self.data, self.stage_dir, self.log = model, stage, data, stage_dir, log
        self.validation_scores, self.ranks, self.unlearned = validation_scores, ranks, unlearned
        self.trainable = prepare_stage(model, stage)
        self.held = HeldWeights.of(model, self.trainable)  # a task added to a trained model trains alone
        if self.held:
            self.trainable = self.held.trainable
        self.params = list(self.trainable.values())
        groups = optimizer_groups(self.trainable, stage)
        self.base_lrs = [group["lr"] for group in groups]  # what the schedule scales (a resume keeps them)
        self.optimizer = torch.optim.AdamW(groups, weight_decay=stage.weight_decay)
        self.stopper = (EarlyStopper(model, stage.early_stopping, self.trainable, stage_dir, floors)
                        if stage.early_stopping else None)
        self.factor = _schedule(stage)
        self.plan = TaskPlan(data, stage, seed)
        self.last = stage_dir / "last"
        self.step, self.spent, self.tokens, self.best = 0, 0.0, 0, float("-inf")
        # Per task: the batches it has trained on (its clock; counted with `stage.task_steps` only).
        self.task_batches = [0] * len(data.task_names)
        self.resumed = self._resume()
        self.scaler = _expert_step_scaler(model, stage, replace(data, rates=self.plan.rates), self.trainable)
        self.still_experts = _still_experts(model, stage, data, self.trainable)
        self.engine = wrap(model, ranks)
        # Per task: summed loss and number of rows since the last log line (this rank's rows).
        self.task_losses = torch.zeros(len(data.task_names), 2)

    def _resume(self) -> bool:
        """Load the stage's last checkpoint, if any; whether there was one."""
        # `last.old` exists alone only when a run was killed while replacing `last`.
        resume_from = next((path for path in (self.last, self.last.with_name("last.old")) if path.exists()), None)
        # The main process reads the checkpoint and sends it to the others, whose machines may
        # not share its disk (and may be fewer or more than when it was written).
        state = self.ranks.from_main(read_training_state(resume_from) if self.ranks.is_main and resume_from else None)
        if state is None:
            return False
        try:
            meta = load_training_state(state, self.model, self.optimizer)
        except ValueError as error:  # torch: the saved optimizer holds other parameters
            raise ValueError(f"{self.last}: the checkpoint holds an optimizer for other parameters than stage "
                             f"'{self.stage.label}' trains ({error}); it was written by another version of the "
                             f"model or stage: delete {self.stage_dir} to train the stage again") from None
        self.step, self.spent, self.tokens, self.best = meta["step"], meta["wall_seconds"], meta["tokens"], meta["best"]
        self.task_batches = meta.get("task_batches", self.task_batches)  # older checkpoints kept no clocks
        if "rates" in meta:  # the stage rebalanced its tasks before this checkpoint
            self.plan.redraw(meta["rates_from_step"], meta["rates"])
        if self.stopper:
            self.stopper.load(meta)
        if self.ranks.is_main:
            logger.info("%s: resumed from step %d of %d", self.stage.label, self.step, self.stage.steps)
        return True

    def run(self) -> StageResult:
        stage, stopper = self.stage, self.stopper
        if stopper and not self.resumed:
            # The stage's starting point is a candidate too: a task that the stage only makes worse
            # on validation ends it as it began (stage 2 never leaves a task below stage 1 there).
            self.check(0)
        self.model.train()
        progress = tqdm(total=stage.steps, initial=self.step, desc=stage.label, unit="step", dynamic_ncols=True,
                        disable=not self.ranks.is_main)
        loss = float("nan")
        try:
            while self.step < stage.steps and not (stopper and stopper.finished):
                loss = self.train_step()
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{self.tokens / max(self.spent, 1e-9):.0f}")
                self.after_step(loss)
        except KeyboardInterrupt:
            self.save(self.step)
            progress.close()
            raise
        progress.close()
        if stopper:
            if self.ranks.is_main:
                self.log.write({"stage": stage.label, "step": self.step, "early_stopped": self.step < stage.steps,
                                "best_macro": self.best, **({"best_scores": stopper.best} if stopper.best else {})})
            stopper.restore()
        self.model.eval()
        trained = self.held.trained_numel() if self.held else sum(p.numel() for p in self.params)
        return StageResult(stage.label, self.step, trained, self.spent,
                           self.tokens / max(self.spent, 1e-9), loss)

    def train_step(self) -> float:
        """One optimizer step over a global batch (its micro-batches); the batch's mean loss."""
        stage, plan, ranks = self.stage, self.plan, self.ranks
        started = time.perf_counter()
        # On task clocks (one task per step) the step's task; its clock sets the learning rate.
        task = plan.batch(self.step, 0)[0][0] if stage.task_steps else None
        clock = self.step if task is None else self.task_batches[task]
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * self.factor(clock)
        local_loss = torch.zeros(())
        step_scaler = self.scaler or (self.still_experts({task for micro in range(stage.grad_accum)
                                                          for task, _ in plan.batch(self.step, micro)})
                                      if self.still_experts else None)
        for micro in range(stage.grad_accum):
            batch = [self.data.rows[task][index] for task, index in plan.batch(self.step, micro)]
            rows = ranks.shard(batch)
            with no_sync(self.engine, accumulating=micro < stage.grad_accum - 1):
                losses = self.engine(rows)  # (b,) this rank's rows
                # The mean over the global batch: ranks' gradients are averaged, so each rank
                # scales its sum by world_size / global batch size.
                share = losses.sum() * ranks.world_size / (len(batch) * stage.grad_accum)
                share.backward()
            local_loss += losses.detach().sum() / (len(batch) * stage.grad_accum)
            self.tokens += sum(len(row.input_ids) for row in batch)
            for row, value in zip(rows, losses.detach().tolist()):
                self.task_losses[row.task_id] += torch.tensor([value, 1.0])
        finish_gradients(self.engine, self.params, ranks)
        step_loss = ranks.sum(local_loss).item()
        if stage.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, stage.max_grad_norm)
        if step_scaler:
            step_scaler.before_step()
        self.optimizer.step()
        if step_scaler:
            step_scaler.after_step()
        if self.held:
            self.held.restore()
        self.optimizer.zero_grad(set_to_none=True)
        if task is not None:
            self.task_batches[task] += 1
        self.step += 1
        self.spent += time.perf_counter() - started
        return step_loss

    def after_step(self, loss: float) -> None:
        """What falls due after a step: a log line, a validation check, rebalancing, a save."""
        stage, step = self.stage, self.step
        if step % stage.log_every == 0 or step == stage.steps:
            totals = self.ranks.sum(self.task_losses)  # (tasks, 2)
            self.log.write({"stage": stage.label, "step": step, "loss": loss,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "task_loss": {name: total / count for name, (total, count)
                                          in zip(self.data.task_names, totals.tolist()) if count},
                            "tokens_per_s": self.tokens / max(self.spent, 1e-9), "elapsed_s": self.spent})
            self.task_losses.zero_()
        checked = bool(self.validation_scores and stage.eval_every
                       and (step % stage.eval_every == 0 or step == stage.steps))
        if checked:
            self.check(step)
        if stage.task_steps:
            self.stop_run_out_clocks(step, checked)
        if stage.rebalance and step % stage.rebalance.every == 0 and step < stage.steps:
            self.rebalance(step)
        if step % stage.save_every == 0 or step == stage.steps or (self.stopper and self.stopper.finished):
            self.save(step)

    def save(self, at_step: int) -> None:
        if self.ranks.is_main:
            save_training_state(self.last, self.model, self.optimizer, at_step,
                                {"wall_seconds": self.spent, "tokens": self.tokens, "best": self.best,
                                 "stage": self.stage.label, "task_batches": self.task_batches, **self.plan.state(),
                                 **(self.stopper.state() if self.stopper else {})})

    def follow(self, rates: list[float], at_step: int) -> None:
        """Draw the rest of the stage from new task rates (and step the experts by them)."""
        if rates != self.plan.rates:
            self.plan.redraw(at_step, rates)
            self.scaler = _expert_step_scaler(self.model, self.stage, replace(self.data, rates=rates), self.trainable)

    def rebalance(self, at_step: int) -> None:
        behind = self.unlearned()
        rates = rebalanced_rates(self.data.task_names, self.plan.rates, list(behind), self.stage.rebalance)
        self.log.write({"stage": self.stage.label, "step": at_step, "not_learned": {
            name: {"validation": score, "trivial": floor} for name, (score, floor) in behind.items()},
            "rates": dict(zip(self.data.task_names, rates))})
        self.model.train()
        self.follow(rates, at_step)

    def stop_run_out_clocks(self, at_step: int, checked: bool) -> None:
        """Task clocks: a task that has trained its `task_steps` batches is scored (unless this
        step was) and stops, with the best weights its evaluations found."""
        names = self.data.task_names

        def run_out() -> list[str]:
            return [name for name, count in zip(names, self.task_batches)
                    if count >= self.stage.task_steps and name not in self.stopper.stopped]

        if not run_out():
            return
        if not checked:
            self.check(at_step)  # which may stop it on its patience first
        ended = run_out()
        if not ended:
            return
        for name in ended:
            self.stopper.stop(name)
        self.log.write({"stage": self.stage.label, "step": at_step, "clocks_run_out": ended,
                        "stopped_tasks": self.stopper.stopped, "best_scores": self.stopper.best})
        self.follow(self.stopper.rates(names, self.plan.rates), at_step)

    def check(self, at_step: int) -> None:
        """Score the validation examples: keep the best model, and stop tasks or the stage."""
        scores = self.validation_scores()
        score = 100.0 * sum(scores.values()) / max(len(scores), 1)
        clocks = {"task_batches": dict(zip(self.data.task_names, self.task_batches))} if self.stage.task_steps else {}
        self.log.write({"stage": self.stage.label, "step": at_step, "eval_macro": score, "eval_scores": scores,
                        **clocks})
        self.model.train()
        improved = gains(score, self.best, self.stopper.config if self.stopper else None)
        if improved:
            self.best = score
            if self.ranks.is_main:
                self.model.save(self.stage_dir / BEST_FOLDER, {"stage": self.stage.label, "step": at_step,
                                                              "macro": score})
        # task clocks: the evaluations' worth of each task's own batches
        clock = ({name: count / self.stage.eval_every for name, count in clocks["task_batches"].items()}
                 if clocks else None)
        if self.stopper and self.stopper.observe(scores, model_improved=improved, clock=clock):
            self.log.write({"stage": self.stage.label, "step": at_step, "stopped_tasks": self.stopper.stopped,
                            "best_scores": self.stopper.best})
            self.follow(self.stopper.rates(self.data.task_names, self.plan.rates), at_step)
