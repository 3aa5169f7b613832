"""Typed configuration: YAML files validated by pydantic, with `key=value` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alter.data.generation import GenerationSettings
from alter.data.registry import check_unique
from alter.data.spec import TaskSpec
from alter.mta.config import MTAConfig


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SharedLoraConfig(_Strict):
    """One PEFT LoRA adapter shared by every task: the multi-task (and, on one task, the
    single-task) baseline without task modules."""

    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    targets: list[str] = ["q_proj", "v_proj"]


UNFITTED_SOURCE_LENGTH = 256  # the fixed default before `auto`


class ModelConfig(_Strict):
    backbone: str = "smollm2-135m"
    head: Literal["lm", "classifier"] = "lm"
    pooling: Literal["first", "mean", "last"] | None = None  # classifier head; default by family
    # Prompt tokens kept (the longest input field is shortened); `auto`: fitted to the training
    # data when a training run starts (alter.training.source_length).
    max_source_length: Annotated[int, Field(ge=8)] | Literal["auto"] = "auto"
    max_target_length: int = Field(default=64, ge=1)
    mta: MTAConfig = MTAConfig()
    lora: SharedLoraConfig | None = None  # a PEFT LoRA adapter in the backbone (baselines)

    @property
    def source_tokens(self) -> int:
        """max_source_length in tokens; a model that no training run has fitted yet (`auto`)
        keeps UNFITTED_SOURCE_LENGTH."""
        return UNFITTED_SOURCE_LENGTH if self.max_source_length == "auto" else self.max_source_length


class TaskRef(_Strict):
    name: str
    max_train: int | None = Field(default=None, ge=1)
    max_eval: int | None = Field(default=None, ge=1)
    # Train only on examples whose inputs hold at least this many words (e.g. SST-2's train
    # split is mostly short phrases, its dev split whole sentences).
    min_train_words: int | None = Field(default=None, ge=1)
    # The split this task trains on, when not `data.train_split` (e.g. QNLI, whose train set
    # is not here: its dev file serves as an auxiliary training set).
    train_split: str | None = None
    # An auxiliary task trains with the others but is never scored (its own dev examples may
    # be what it trains on) and is left out of every macro average.
    scored: bool = True
    # This task's `data.validation` (0: none). An auxiliary task has none unless it names its
    # own: then they serve its early stopping alone (it trains to its own plateau), never a macro.
    validation: int | None = Field(default=None, ge=0)
    # A generation task's settings (alter.data.generation), over those its spec carries.
    generation: GenerationSettings | None = None


class MixtureConfig(_Strict):
    sampling: Literal["proportional", "temperature", "uniform", "manual"] = "proportional"
    temperature: float = Field(default=2.0, gt=0)
    rates: dict[str, float] | None = None


class DataConfig(_Strict):
    root: str | None = None  # default: ALTER_DATA_DIR, else ../shared/data
    tasks: list[str | TaskRef]
    custom_tasks: list[TaskSpec] = []  # a user's own tasks, from CSV / TSV / JSONL files
    max_train: int | None = Field(default=None, ge=1)  # per task, unless the task says otherwise
    max_eval: int | None = Field(default=None, ge=1)
    train_split: str = "train"
    eval_split: str = "dev"
    seed: int = 0  # which examples the caps keep
    # Examples held out of each scored task's training split (never trained on): the scores
    # that choose the best checkpoint (`eval_every`) and compare settings, so that nothing is
    # tuned on the evaluation split.
    validation: int | None = Field(default=None, ge=1)
    # Examples held out of each scored task's training split for stages with `train_on:
    # held_out` (beside and apart from `validation`); no other stage trains on them.
    held_out: int | None = Field(default=None, ge=1)
    mixture: MixtureConfig = MixtureConfig()
    # Malformed rows (wrong number of fields, invalid JSON) are errors instead of skipped with
    # a warning (and counted in the report).
    strict: bool = False

    def scored_tasks(self) -> list[str]:
        return [ref.name for ref in self.refs() if ref.scored]

    def refs(self) -> list[TaskRef]:
        refs = [TaskRef(name=t) if isinstance(t, str) else t for t in self.tasks]
        names = [ref.name for ref in refs]
        try:
            check_unique(names, "data.tasks")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return [ref.model_copy(update={"max_train": ref.max_train or self.max_train,
                                       "max_eval": ref.max_eval or self.max_eval,
                                       "validation": (ref.validation if ref.validation is not None
                                                      else self.validation) if ref.scored else ref.validation or 0})
                for ref in refs]


class RebalanceConfig(_Strict):
    """Dynamic task adjustment: every `every` steps the stage scores the validation examples
    (`data.validation`), and each scored task whose main score there is not above its trivial
    score (majority label, training mean) has its sampling rate multiplied by `boost`, to at
    most `max_rate`, before the rates are renormalised. The rest of the stage is drawn anew
    from the new rates; with `expert_lr: routed_share` the experts' steps follow them."""

    every: int = Field(ge=1)
    boost: float = Field(default=2.0, gt=1)
    max_rate: float = Field(default=0.5, gt=0, le=1)


class EarlyStoppingConfig(_Strict):
    """End a stage when its validation score (`data.validation`, scored every `eval_every`
    steps) has not improved for `patience` evaluations, and keep its best weights.

    `per_task`: each task stops on its own: once its main score has not improved for
    `patience` evaluations its rows leave the mixture (the others take their share) and its
    own weights (its expert, gate row and head) are restored to those of its best evaluation;
    the stage ends when every task with validation examples has stopped. It needs tasks that
    share no trained weight (no shared expert or shared LoRA in training, one expert per task),
    as AdapterFusion's single-task adapters.

    `until_learned`: a task whose validation score is not yet above its trivial score there
    (mrpc's all-positive F1, cola's MCC of 0) counts no patience: a main metric that stays flat
    until the model passes the trivial rule would otherwise stop a task that has not started to
    learn. Per task, that task trains on until it rises above it; for the whole model, no
    patience counts while any scored task is at its trivial score (the best checkpoint is still
    the best macro). Either way, at most until the stage's steps run out. Runs made before
    2026-12-07 stopped whole models without it: their configs say `until_learned: false`."""

    patience: int = Field(default=3, ge=1)
    # On the 0-100 scale: a smaller gain is no improvement, so it neither resets the patience nor
    # replaces the weights kept as best (the whole model's, or each task's own).
    min_delta: float = Field(default=0.0, ge=0)
    per_task: bool = False
    until_learned: bool = True


class StageConfig(_Strict):
    """One training stage. `kind` names the trainable groups; the rest is the schedule."""

    name: str | None = None  # default: the kind
    kind: Literal["stage1", "stage2", "joint"]
    steps: int = Field(default=100, ge=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    # The learning rate of `mta.fusion`'s attention (its queries and weights; default: `lr`),
    # so that the fusion can move faster than the gates and heads it trains beside.
    fusion_lr: float | None = Field(default=None, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    train_backbone: bool = False
    train_heads: bool | None = None  # default: yes in stage1/joint, no in stage2
    mixture: MixtureConfig | None = None  # this stage's task rates, when not `data.mixture`
    # What a batch holds: rows of tasks drawn one by one (`mixed`), or `one_task`: each batch is
    # one task's, drawn by the rates, so that a task's expert and head step on a whole batch of
    # their task instead of its rate's share of a mixed one (a few rows, a noisy gradient).
    batches: Literal["mixed", "one_task"] = "mixed"
    rebalance: RebalanceConfig | None = None  # rates that follow which tasks have not learned yet
    # What the stage trains on: the training examples, or `data.held_out`, examples that the
    # earlier stages never saw: gates fitted there learn which experts carry over to new inputs.
    train_on: Literal["train", "held_out"] = "train"
    # How the gates leave the stage-1 assignment (stage2, joint; docs/results.md compares them).
    # residual: each task keeps its own expert at weight 1 and learns additive weights on every
    # expert, from 0, so the stage starts from the stage-1 model itself. softmax: softmax of
    # learned logits, starting with `own_expert_weight` on the own expert, the rest spread.
    collaboration: Literal["residual", "softmax"] = "residual"
    own_expert_weight: float = Field(default=0.8, gt=0, lt=1)  # softmax start
    # Which layers learn their own gate weights: `each` MTA layer, or one set `tied` across all
    # of them (a task draws the same on each expert in every layer): 1/L as many numbers, each
    # fitted on the gradient of every layer instead of one.
    gate_layers: Literal["each", "tied"] = "each"
    # How far each expert steps (alter.training.expert_lr): `same`, every expert at `lr`;
    # `routed_share`, each at `lr` times the share of the batch's rows routed to it in
    # stage 1 (a shared expert: all of them), as if it trained on its rows alone; `auto`,
    # routed_share where it was measured best (mixed batches that train task experts beside a
    # shared expert, docs/results.md "Transfer: what makes task experts pay"), else same.
    expert_lr: Literal["auto", "same", "routed_share"] = "auto"
    # After the stage (stage2, joint): every row keeps its `prune_to` largest gate weights,
    # renormalised, so that it computes that many experts however many there are; the
    # model is scored before pruning as well (`after_<stage>_unpruned`).
    prune_to: int | None = Field(default=None, ge=1)
    eval_every: int | None = Field(default=None, ge=1)
    early_stopping: EarlyStoppingConfig | None = None  # `steps` is then the cap
    # Each task on its own clock (one task per batch, per-task early stopping): its learning-rate
    # schedule (warmup, decay) runs over its own batches, `task_steps` of them at most, and its
    # patience counts `eval_every` of its own batches as one evaluation, so that each expert
    # trains as it would alone, however many tasks share the stage's steps (`steps`: the cap on
    # all of them together). Without it a task drawn at 1/8 of the batches gets an eighth of
    # `eval_every` between checks and trains late in the schedule, at a decayed rate.
    task_steps: int | None = Field(default=None, ge=1)
    save_every: int = Field(default=50, ge=1)
    log_every: int = Field(default=10, ge=1)

    def __init__(self, kind: str | None = None, /, **settings: Any) -> None:
        """`StageConfig("stage1", steps=100)` as well as `StageConfig(kind="stage1", ...)`."""
        super().__init__(**({"kind": kind} if kind is not None else {}), **settings)

    @property
    def label(self) -> str:
        return self.name or self.kind

    @model_validator(mode="after")
    def _early_stopping_needs_evaluations(self) -> StageConfig:
        if self.early_stopping is not None and self.eval_every is None:
            raise ValueError("early_stopping: set eval_every, how often the validation score is checked")
        return self

    @model_validator(mode="after")
    def _routed_share_needs_mixed_batches(self) -> StageConfig:
        if self.expert_lr == "routed_share" and self.batches == "one_task":
            raise ValueError("expert_lr: routed_share scales an expert's steps by its share of a mixed batch's "
                             "rows; with batches: one_task each expert steps on whole batches of its task: "
                             "use expert_lr: same")
        return self

    @model_validator(mode="after")
    def _task_clocks_need_one_task_batches(self) -> StageConfig:
        if self.task_steps is None:
            return self
        if self.batches != "one_task" or self.grad_accum != 1:
            raise ValueError("task_steps: each step must train one task (batches: one_task, grad_accum: 1) "
                             "for the step to move that task's clock alone")
        if self.early_stopping is None or not self.early_stopping.per_task:
            raise ValueError("task_steps: each task stops on its own clock; set early_stopping with per_task: true")
        return self

    @model_validator(mode="after")
    def _prune_learned_gates(self) -> StageConfig:
        if self.prune_to is not None and self.kind == "stage1":
            raise ValueError("prune_to: stage-1 gates draw on one expert already; prune after stage2 or joint")
        return self


class EvalConfig(_Strict):
    batch_size: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=48, ge=1)
    num_beams: int = Field(default=1, ge=1)
    before_training: bool = True  # score the untrained model on the same examples
    after_each_stage: bool = False  # also score the model after every stage but the last
    # After the last stage, fit each classification task's decision offsets (alter.evaluate.calibration)
    # on its validation examples (`data.validation`); they are saved with the model. The
    # validation scores reported afterwards are then those the offsets were fitted on.
    calibrate: bool = False


Quantize = Literal["int8", "none"]  # how generation reads the pretrained weights (InferenceConfig)


class InferenceConfig(_Strict):
    """How a model computes when it writes (the evaluations of `alter train` and `alter
    experiment`, `alter eval`, `predict`, `serve`): with `quantize: int8` generation (decoding
    steps and a generation's prompt pass) reads int8 copies of the pretrained backbone's linear
    weights (`alter.models.quantized`); experts, adapters, heads and scoring stay float32,
    training always computes in float32 and a checkpoint stays float32. Measured in
    docs/serving.md ("The fast decode path")."""

    quantize: Quantize = "int8"


class DistributedConfig(_Strict):
    """Used when a launcher (torchrun, accelerate launch) starts several processes."""

    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on GPUs, gloo on CPUs
    timeout_s: int = Field(default=3600, ge=60)  # how long a rank waits for the others
    # ddp: a whole model on every rank. fsdp: the frozen backbone's blocks sharded over the
    # ranks (each holds 1/N of them), for a backbone that does not fit one device.
    strategy: Literal["ddp", "fsdp"] = "ddp"


class LoggingConfig(_Strict):
    # TensorBoard events in OUTPUT_DIR/tensorboard beside log.jsonl: training loss per task,
    # learning rate, tokens/s, evaluation metrics and gate weights (needs `tensorboard`).
    tensorboard: bool = False


class Config(_Strict):
    output_dir: str = "runs/default"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU when there is one
    model: ModelConfig = ModelConfig()
    data: DataConfig
    stages: list[StageConfig] = [StageConfig(kind="stage1"), StageConfig(kind="stage2", steps=30, lr=1e-2)]
    eval: EvalConfig = EvalConfig()
    inference: InferenceConfig = InferenceConfig()
    distributed: DistributedConfig = DistributedConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _unique_stage_names(self) -> Config:
        labels = [stage.label for stage in self.stages]
        if len(set(labels)) != len(labels):
            raise ValueError("stages: stage names must be unique (set `name:` on repeated kinds)")
        return self

    @model_validator(mode="after")
    def _held_out_training_needs_held_out_examples(self) -> Config:
        if not self.data.held_out:
            for index, stage in enumerate(self.stages):
                if stage.train_on == "held_out":
                    raise ValueError(f"stages.{index}.train_on: held_out needs held-out examples: set data.held_out")
        return self

    @model_validator(mode="after")
    def _early_stopping_needs_validation(self) -> Config:
        if not self.data.validation and not any(isinstance(ref, TaskRef) and ref.validation for ref in self.data.tasks):
            for index, stage in enumerate(self.stages):
                if stage.early_stopping is not None:
                    raise ValueError(f"stages.{index}.early_stopping: stops on the validation examples: set "
                                     "data.validation")
        return self

    @model_validator(mode="after")
    def _top_k_needs_softmax_gates(self) -> Config:
        if self.model.mta.top_k is None:
            return self
        for index, stage in enumerate(self.stages):
            if stage.kind != "stage1" and stage.collaboration == "residual":
                raise ValueError(f"stages.{index}.collaboration: model.mta.top_k selects experts of a softmax "
                                 "gate; set collaboration: softmax")
        return self

    @model_validator(mode="after")
    def _fusion_lr_needs_a_trained_fusion(self) -> Config:
        for index, stage in enumerate(self.stages):
            if stage.fusion_lr is not None and (not self.model.mta.fusion or stage.kind == "stage1"):
                raise ValueError(f"stages.{index}.fusion_lr: the learning rate of model.mta.fusion, which trains "
                                 "with the gates (stage2, joint) when model.mta.fusion is true")
        return self

    @model_validator(mode="after")
    def _fsdp_keeps_the_backbone_frozen(self) -> Config:
        # FSDP here shards only frozen backbone weights; trained ones would need sharded
        # gradients, optimizer state and checkpoints.
        if self.distributed.strategy == "fsdp":
            for index, stage in enumerate(self.stages):
                if stage.train_backbone:
                    raise ValueError(f"stages.{index}.train_backbone: distributed.strategy fsdp shards a frozen "
                                     "backbone; to train the backbone's weights use strategy ddp")
        return self


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {dotted}: '{'.'.join(parts[:depth + 1])}' is not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` (value parsed as YAML); list items by index: `stages.0.steps=10`."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        try:
            _set_path(tree, key.strip(), yaml.safe_load(raw))
        except (IndexError, ValueError) as error:
            raise ConfigError(f"--set {key}: {error}") from None
    return tree


def describe_errors(error: ValidationError, source: str, overrides: list[str] | None = None) -> str:
    """One line per problem: where it is (`source`, or the `--set` that wrote the key), the
    key and what is wrong."""
    set_keys = [item.partition("=")[0].strip() for item in overrides or []]
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"]
        written = next((item for item in set_keys if key == item or key.startswith(item + ".")), None)
        lines.append(f"--set {written}: {key}: {message}" if written else f"{source}: {key}: {message}")
    return "\n".join(lines)


def parse_config(tree: dict, source: str = "config", overrides: list[str] | None = None) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(describe_errors(error, source, overrides)) from None


def read_yaml(path: str | Path, overrides: list[str] | None = None, what: str = "config") -> dict:
    """A YAML file's top-level mapping with `key=value` overrides applied."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return apply_overrides(tree, overrides or [])


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    return parse_config(read_yaml(path, overrides), str(path), overrides)
