"""Data for a run: each task's examples read, capped and cut into training, validation and
held-out parts; the evaluation sample; encoded rows with their mixture rates for a stage."""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alter.config import Config, ConfigError, MixtureConfig, TaskRef
from alter.data.collate import Encoded
from alter.data.mixture import mixture_rates
from alter.data.readers import DataError
from alter.data.registry import builtin_registry
from alter.data.spec import TaskSpec
from alter.data.task import Example, Task, data_root

if TYPE_CHECKING:  # the contract imports the heads; this module needs only the type
    from alter.models.contract import TrainableModel


@dataclass
class StageData:
    rows: list[list[Encoded]]  # encoded training examples, per task
    rates: list[float]  # mixture sampling rate per task
    task_names: list[str]


def sample(examples: list[Example], cap: int | None, seed: int, task: str) -> list[Example]:
    """At most `cap` examples, the same ones for the same seed on every machine."""
    if cap is None or len(examples) <= cap:
        return examples
    rng = random.Random(seed * 1_000_003 + zlib.crc32(task.encode()))
    return [examples[i] for i in sorted(rng.sample(range(len(examples)), cap))]


def load_tasks(config: Config) -> list[Task]:
    registry = builtin_registry(config.data.custom_tasks)
    return [_with_settings(registry.get(ref.name), ref) for ref in config.data.refs()]


def _with_settings(task: Task, ref: TaskRef) -> Task:
    """The task with the generation settings its entry in `data.tasks` gives (over its own)."""
    if ref.generation is None:
        return task
    where = f"data.tasks ({ref.name}).generation"
    if task.kind != "generation":
        raise ConfigError(f"{where}: settings for generation tasks; {task.name} is a {task.kind} task")
    try:
        settings = ref.generation.over(task.spec.generation)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    return Task(TaskSpec(**{**task.spec.model_dump(), "generation": settings}))


def words(example: Example) -> int:
    return sum(len(text.split()) for text in example.inputs.values())


@dataclass
class TrainingSets:
    """Each task's examples of its training split, in three parts that share none."""

    train: dict[str, list[Example]]  # what training draws from, capped at `max_train`
    validation: dict[str, list[Example]]  # `data.validation`: for comparing settings, never trained on
    held_out: dict[str, list[Example]]  # `data.held_out`: only for stages with `train_on: held_out`


def load_training(config: Config, tasks: Sequence[Task], split: str | None = None) -> TrainingSets:
    """The training split (`split`, default `data.train_split`; a task's own `train_split` where
    it names one), each task's file read once and cut into its three parts."""
    refs = {ref.name: ref for ref in config.data.refs()}
    sets = TrainingSets({}, {}, {})
    for task in tasks:
        ref = refs[task.name]
        validation, held_out, rest = _training_pool(config, task, ref, split or config.data.train_split)
        sets.train[task.name] = sample(rest, ref.max_train, config.data.seed, task.name)
        if ref.validation:
            sets.validation[task.name] = validation
        if ref.scored and config.data.held_out:
            sets.held_out[task.name] = held_out
    return sets


def load_split(config: Config, tasks: Sequence[Task], split: str, training: bool) -> dict[str, list[Example]]:
    """Each task's examples of `split`, capped. Training: `load_training`'s training part;
    evaluation leaves out auxiliary (unscored) tasks."""
    if training:
        return load_training(config, tasks, split).train
    refs = {ref.name: ref for ref in config.data.refs()}
    root = data_root(config.data.root)
    return {task.name: sample(task.read(split, root, config.data.strict), refs[task.name].max_eval,
                              config.data.seed, task.name)
            for task in tasks if refs[task.name].scored}  # an auxiliary task is trained on, never scored


def _training_pool(config: Config, task: Task, ref: TaskRef,
                   split: str) -> tuple[list[Example], list[Example], list[Example]]:
    """(validation examples, held-out examples, the rest) of a task's training split."""
    examples = task.read(ref.train_split or split, data_root(config.data.root), config.data.strict)
    unlabelled = next((example for example in examples if example.target is None), None)
    if unlabelled is not None:
        raise DataError(f"{unlabelled.source}: the target column '{task.spec.target}' of task {task.name} is "
                        "empty; every training example needs one")
    if ref.min_train_words:
        examples = [example for example in examples if words(example) >= ref.min_train_words]
    parts = []
    for key, size in (("validation", ref.validation), ("held_out", config.data.held_out if ref.scored else None)):
        part = sample(examples, size, config.data.seed, f"{task.name}/{key}") if size else []
        if len(part) == len(examples) and part:
            raise ConfigError(f"data.{key}: task {task.name} has only {len(examples)} training examples, "
                              f"none left to train on after holding out {size}")
        kept = {id(example) for example in part}
        examples = [example for example in examples if id(example) not in kept]
        parts.append(part)
    return parts[0], parts[1], examples


def stage_data(model: TrainableModel, config: Config, sets: dict[str, list[Example]],
               held_out: bool = False) -> StageData:
    """Encoded examples and mixture rates of every task. `held_out`: the held-out examples,
    which auxiliary tasks lack (they get a rate of 0)."""
    rows: list[list[Encoded]] = [model.encode(sets.get(task.name, [])) for task in model.tasks]
    training = set(model.changing_tasks) or {task.name for task in model.tasks}  # the others are held as they are
    for task, encoded in zip(model.tasks, rows):
        if not encoded and not held_out and task.name in training:
            raise ValueError(f"task {task.name} has no training examples")
    return with_mixture(config, StageData(rows, [0.0] * len(rows), [task.name for task in model.tasks]))


def inputs_cut(rows: dict[str, dict[str, list[Encoded]]]) -> dict[str, dict[str, list[int]]]:
    """{task: {split: [inputs cut to max_source_length, inputs]}} from each split's encoded
    rows by task ({split: {task: rows}}), for the tasks that had any input cut."""
    cut: dict[str, dict[str, list[int]]] = {}
    for split, by_task in rows.items():
        for task, encoded in by_task.items():
            shortened = sum(row.truncated for row in encoded)
            if shortened:
                cut.setdefault(task, {})[split] = [shortened, len(encoded)]
    return cut


def task_rates(config: Config, sizes: dict[str, int], mix: MixtureConfig | None = None) -> dict[str, float]:
    """Each task's share of the mixture (`mix`, default the config's), from its number of
    training examples."""
    mix = mix or config.data.mixture
    return mixture_rates(sizes, mix.sampling, mix.temperature, mix.rates)


def with_mixture(config: Config, data: StageData, mix: MixtureConfig | None = None) -> StageData:
    """`data` with the rates of `mix` (default the config's); a task without examples gets 0."""
    sizes = {name: len(rows) for name, rows in zip(data.task_names, data.rows) if rows}
    mix = mix or config.data.mixture
    manual = {name: rate for name, rate in (mix.rates or {}).items() if name in sizes} if mix.rates else None
    rates = task_rates(config, sizes, mix.model_copy(update={"rates": manual}))
    return StageData(data.rows, [rates.get(name, 0.0) for name in data.task_names], data.task_names)
