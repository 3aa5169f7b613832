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
from alter.data.prepare import StageData
from alter.distributed import SINGLE, Ranks, finish_gradients, no_sync, wrap
from alter.trainable import TrainableModel
from alter.training.checkpoint import load_training_state, read_training_state, save_training_state
from alter.training.early_stopping import BEST_FOLDER, EarlyStopper
from alter.training.expert_lr import ExpertStepScaler, routed_experts, routed_shares
from alter.training.rebalance import TaskPlan, rebalanced_rates
from alter.training.run_log import RunLog
from alter.training.stages import prepare_stage

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
    warmup = int(stage.warmup_ratio * stage.steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if stage.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, stage.steps - warmup)
        return 1.0 - progress if stage.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _trained_experts(model: TrainableModel, trainable: dict[str, torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    expert_names = model.param_groups()["experts"]
    return [param for name, param in trainable.items() if name in expert_names]


def _expert_step_scaler(model: TrainableModel, stage: StageConfig, data: StageData,
                        trainable: dict[str, torch.nn.Parameter]) -> ExpertStepScaler | None:
    if stage.expert_lr == "same":
        return None
    shares = routed_shares(model, data.task_names, data.rates)
    experts = _trained_experts(model, trainable)
    if shares is None or not experts:
        raise ValueError(f"stage '{stage.label}': expert_lr={stage.expert_lr} needs MTA experts that this stage "
                         "trains")
    return ExpertStepScaler(experts, shares)


def _still_experts(model: TrainableModel, stage: StageConfig, data: StageData,
                   trainable: dict[str, torch.nn.Parameter]) -> Callable[[set[int]], ExpertStepScaler] | None:
    """With one task per stage-1 batch: for the tasks of a step, the scaler that keeps every
    other task's expert where it is (alter.training.expert_lr)."""
    if stage.batches != "one_task" or stage.kind != "stage1":
        return None
    experts = _trained_experts(model, trainable)
    if not experts:
        return None

    def scaler(task_ids: set[int]) -> ExpertStepScaler:
        routed = routed_experts(model, data.task_names, {data.task_names[task] for task in task_ids})
        return ExpertStepScaler(experts, routed)

    return scaler


def train_stage(model: TrainableModel, stage: StageConfig, data: StageData, stage_dir: Path, log: RunLog,
                seed: int, evaluate: Callable[[], dict[str, float]] | None = None, ranks: Ranks = SINGLE,
                unlearned: Callable[[], dict[str, tuple[float, float]]] | None = None,
                floors: dict[str, float] | None = None) -> StageResult:
    """Run (or resume) one stage; checkpoints in `stage_dir/last`, best model in `stage_dir/best`.

    `evaluate` (for `stage.eval_every`) returns each task's main score (0-1) on the examples
    that choose the best checkpoint; with `stage.early_stopping` the stage may end before its
    steps and ends with its best weights (alter.training.early_stopping), its starting point
    (scored before its first step) among the candidates.

    `unlearned` (for `stage.rebalance`) scores the validation examples and returns the tasks
    not above their trivial score there, as {task: (score, trivial score)}; `floors` are those
    trivial scores (0-1), which per-task early stopping waits for a task to pass
    (`early_stopping.until_learned`).

    On several processes (`ranks`), each runs its share of every global batch and the
    gradients are averaged (by DDP, or by `finish_gradients` under FSDP); the main process
    alone writes checkpoints and logs.
    """
    if stage.batch_size < ranks.world_size:
        raise ValueError(f"stage '{stage.label}': batch_size {stage.batch_size} is smaller than the "
                         f"{ranks.world_size} processes; each needs at least one row of every batch")
    trainable = prepare_stage(model, stage)
    params = list(trainable.values())
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    if stage.rebalance and unlearned is None:
        raise ValueError(f"stage '{stage.label}': rebalance needs validation examples (data.validation)")
    if stage.early_stopping and evaluate is None:
        raise ValueError(f"stage '{stage.label}': early_stopping needs validation examples (data.validation)")
    stopper = EarlyStopper(model, stage.early_stopping, trainable, stage_dir, floors) if stage.early_stopping else None
    factor = _schedule(stage)
    plan = TaskPlan(data, stage, seed)
    last = stage_dir / "last"
    step, spent, tokens, best = 0, 0.0, 0, float("-inf")
    # `last.old` exists alone only when a run was killed while replacing `last`.
    resume_from = next((path for path in (last, last.with_name("last.old")) if path.exists()), None)
    # The main process reads the checkpoint and sends it to the others, whose machines may
    # not share its disk (and may be fewer or more than when it was written).
    state = ranks.from_main(read_training_state(resume_from) if ranks.is_main and resume_from else None)
    if state is not None:
        try:
            meta = load_training_state(state, model, optimizer)
        except ValueError as error:  # torch: the saved optimizer holds other parameters
            raise ValueError(f"{last}: the checkpoint holds an optimizer for other parameters than stage "
                             f"'{stage.label}' trains ({error}); it was written by another version of the model "
                             f"or stage: delete {stage_dir} to train the stage again") from None
        step, spent, tokens, best = meta["step"], meta["wall_seconds"], meta["tokens"], meta["best"]
        if "rates" in meta:  # the stage rebalanced its tasks before this checkpoint
            plan.redraw(meta["rates_from_step"], meta["rates"])
        if stopper:
            stopper.load(meta)
        if ranks.is_main:
            logger.info("%s: resumed from step %d of %d", stage.label, step, stage.steps)
    scaler = _expert_step_scaler(model, stage, replace(data, rates=plan.rates), trainable)
    still_experts = _still_experts(model, stage, data, trainable)
    engine = wrap(model, ranks)

    def save(at_step: int) -> None:
        if ranks.is_main:
            save_training_state(last, model, optimizer, at_step,
                                {"wall_seconds": spent, "tokens": tokens, "best": best, "stage": stage.label,
                                 **plan.state(), **(stopper.state() if stopper else {})})

    def follow(rates: list[float], at_step: int) -> None:
        """Draw the rest of the stage from new task rates (and step the experts by them)."""
        nonlocal scaler
        if rates != plan.rates:
            plan.redraw(at_step, rates)
            scaler = _expert_step_scaler(model, stage, replace(data, rates=rates), trainable)

    def rebalance(at_step: int) -> None:
        behind = unlearned()
        rates = rebalanced_rates(data.task_names, plan.rates, list(behind), stage.rebalance)
        log.write({"stage": stage.label, "step": at_step, "not_learned": {
            name: {"validation": score, "trivial": floor} for name, (score, floor) in behind.items()},
            "rates": dict(zip(data.task_names, rates))})
        model.train()
        follow(rates, at_step)

    def check(at_step: int) -> None:
        """Score the validation examples: keep the best model, and stop tasks or the stage."""
        nonlocal best
        scores = evaluate()
        score = 100.0 * sum(scores.values()) / max(len(scores), 1)
        log.write({"stage": stage.label, "step": at_step, "eval_macro": score, "eval_scores": scores})
        model.train()
        if score > best:
            best = score
            if ranks.is_main:
                model.save(stage_dir / BEST_FOLDER, {"stage": stage.label, "step": at_step, "macro": score})
        if stopper and stopper.observe(scores):
            log.write({"stage": stage.label, "step": at_step, "stopped_tasks": stopper.stopped,
                       "best_scores": stopper.best})
            follow(stopper.rates(data.task_names, plan.rates), at_step)

    if stopper and state is None:
        # The stage's starting point is a candidate too: a task that the stage only makes worse
        # on validation ends it as it began (stage 2 never leaves a task below stage 1 there).
        check(0)
    model.train()
    # Per task: summed loss and number of rows since the last log line (this rank's rows).
    task_losses = torch.zeros(len(data.task_names), 2)
    progress = tqdm(total=stage.steps, initial=step, desc=stage.label, unit="step", dynamic_ncols=True,
                    disable=not ranks.is_main)
    loss_value = float("nan")
    try:
        while step < stage.steps and not (stopper and stopper.finished):
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = stage.lr * factor(step)
            local_loss = torch.zeros(())
            step_scaler = scaler or (still_experts({task for micro in range(stage.grad_accum)
                                                    for task, _ in plan.batch(step, micro)})
                                     if still_experts else None)
            for micro in range(stage.grad_accum):
                batch = [data.rows[task][index] for task, index in plan.batch(step, micro)]
                rows = ranks.shard(batch)
                with no_sync(engine, accumulating=micro < stage.grad_accum - 1):
                    losses = engine(rows)  # (b,) this rank's rows
                    # The mean over the global batch: ranks' gradients are averaged, so each rank
                    # scales its sum by world_size / global batch size.
                    share = losses.sum() * ranks.world_size / (len(batch) * stage.grad_accum)
                    share.backward()
                local_loss += losses.detach().sum() / (len(batch) * stage.grad_accum)
                tokens += sum(len(row.input_ids) for row in batch)
                for row, value in zip(rows, losses.detach().tolist()):
                    task_losses[row.task_id] += torch.tensor([value, 1.0])
            finish_gradients(engine, params, ranks)
            step_loss = ranks.sum(local_loss).item()
            if stage.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, stage.max_grad_norm)
            if step_scaler:
                step_scaler.before_step()
            optimizer.step()
            if step_scaler:
                step_scaler.after_step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            spent += time.perf_counter() - started
            loss_value = step_loss
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens / max(spent, 1e-9):.0f}")
            if step % stage.log_every == 0 or step == stage.steps:
                totals = ranks.sum(task_losses)  # (tasks, 2)
                log.write({"stage": stage.label, "step": step, "loss": step_loss, "lr": optimizer.param_groups[0]["lr"],
                           "task_loss": {name: total / count for name, (total, count)
                                         in zip(data.task_names, totals.tolist()) if count},
                           "tokens_per_s": tokens / max(spent, 1e-9), "elapsed_s": spent})
                task_losses.zero_()
            if evaluate and stage.eval_every and (step % stage.eval_every == 0 or step == stage.steps):
                check(step)
            if stage.rebalance and step % stage.rebalance.every == 0 and step < stage.steps:
                rebalance(step)
            if step % stage.save_every == 0 or step == stage.steps or (stopper and stopper.finished):
                save(step)
    except KeyboardInterrupt:
        save(step)
        progress.close()
        raise
    progress.close()
    if stopper:
        if ranks.is_main:
            log.write({"stage": stage.label, "step": step, "early_stopped": step < stage.steps,
                       "best_macro": best, **({"best_scores": stopper.best} if stopper.best else {})})
        stopper.restore()
    model.eval()
    return StageResult(stage.label, step, sum(p.numel() for p in params), spent, tokens / max(spent, 1e-9), loss_value)
