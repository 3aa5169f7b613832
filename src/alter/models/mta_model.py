"""MTAModel: a backbone, MTA layers inside it, and task heads; forward, predict, save, load."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alter.backbones import (
    backbone_is_loadable,
    check_backbone,
    load_backbone,
    load_config,
    plain_backbone,
    stable_name,
    with_pad_token,
)
from alter.config import ModelConfig, StageConfig
from alter.data.collate import MAX_PADDING, Encoded, length_batches
from alter.data.generation import GenerationSettings
from alter.data.registry import resolve_tasks
from alter.data.spec import TaskSpec
from alter.data.task import Example, Task, as_example
from alter.models.card import write_model_card
from alter.models.contract import Capabilities, Prediction
from alter.models.decode_batch import DecodeBatch
from alter.models.heads import ClassifierHead, LMHead
from alter.models.quantized import Quantize, quantize_linears
from alter.models.saved import (
    BACKBONE_FOLDER,
    SavedFolder,
    point_at_backbone_beside,
    read_saved,
    read_weights,
    write_saved,
)
from alter.models.shared_lora import add_shared_lora, shared_lora_parameters
from alter.mta import ExpertFusion, ExpertModule, MTAConfig, MTALayer, TaskGate, inject_mta
from alter.mta.plan import ExpertPlan, plan_experts

HEADS = {"lm": LMHead, "classifier": ClassifierHead}


def task_group(task: Task) -> str:
    """The groups of ALTER's released code: generation, sentence-pair and single-sentence tasks."""
    if task.kind == "generation":
        return "generation"
    return "pair" if len(task.spec.inputs) > 1 else "single"


SMALLEST_PROB = 1e-30  # a probability that underflowed to 0 still has a (very low) log


def decide(labels: Sequence[str], probs: dict[str, float], offsets: Sequence[float]) -> str:
    """The label with the largest log-probability plus its offset (the task's decision offsets,
    fitted by `alter.evaluate.calibration`)."""
    return max(zip(labels, offsets), key=lambda pair: math.log(max(probs[pair[0]], SMALLEST_PROB)) + pair[1])[0]


class MTAModel(nn.Module):
    """A backbone with MTA layers inside it and task heads (`from_backbone` builds one from a
    Hugging Face model or its name; `alter.load` loads a saved one)."""

    def __init__(self, config: ModelConfig, tasks: Sequence[Task], backbone: PreTrainedModel | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None):
        super().__init__()
        if not tasks:
            raise ValueError("an MTA model needs at least one task")
        self.config = config
        self.tasks = list(tasks)
        self.task_index = {task.name: i for i, task in enumerate(self.tasks)}
        head_class = HEADS[config.head]
        if backbone is None:
            backbone_config = load_config(config.backbone)
            backbone, tokenizer = load_backbone(config.backbone, head_class.auto_class(backbone_config))
        elif tokenizer is None:
            raise ValueError("a backbone given as a model object needs its tokenizer too")
        self.head = head_class(backbone.config, self.tasks, config)
        check_backbone(backbone, config.head)
        self.backbone, self.tokenizer = backbone, with_pad_token(tokenizer)
        self.backbone.requires_grad_(False)
        self.mta_layers: list[MTALayer] = []
        self.expert_plan: ExpertPlan | None = None
        if config.mta.enabled:
            self.expert_plan = plan_experts([task.name for task in self.tasks],
                                            [task_group(task) for task in self.tasks], config.mta)
            self.mta_layers = inject_mta(self.backbone, config.mta, self.expert_plan)
        if config.lora is not None:
            add_shared_lora(self.backbone, config.lora)
        self.backbone_trained = False
        # Per classification task, an offset per label added to its log-probability before the
        # decision (alter.evaluate.calibration; fitted by `eval.calibrate`), saved in alter.json.
        self.label_offsets: dict[str, list[float]] = {}
        self.trained_in: Path | None = None  # the run folder of the last training run (its report and plots)
        self.changing_tasks: tuple[str, ...] = ()  # set by task_surgery: training changes these tasks alone

    @classmethod
    def from_backbone(cls, backbone: str | PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None, *,
                      tasks: Sequence[str | Task | TaskSpec], mta: MTAConfig | dict | None = None,
                      **settings: Any) -> MTAModel:
        """Wrap a Hugging Face model (a loaded one, changed in place as `peft.get_peft_model`
        changes it, or a name: a built-in one, a local folder or a hub id) with MTA layers
        and heads for `tasks` (built-in names, `Task`s or `TaskSpec`s). `settings`: the
        other fields of `ModelConfig` (`head`, `max_source_length`, `lora`, ...)."""
        name = stable_name(backbone if isinstance(backbone, str) else backbone.config.name_or_path)
        config = ModelConfig.model_validate({"backbone": name, **settings,
                                             "mta": mta if mta is not None else MTAConfig()})
        return cls(config, resolve_tasks(tasks), None if isinstance(backbone, str) else backbone, tokenizer)

    # --- parameters as data -------------------------------------------------------------
    def param_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """Every parameter in exactly one group: experts, gates, adapters (a shared PEFT LoRA),
        heads or backbone."""
        groups: dict[str, dict[str, nn.Parameter]] = {
            "experts": {}, "gates": {}, "adapters": {}, "heads": {}, "backbone": {}}
        owner: dict[int, str] = {id(param): "adapters" for param in shared_lora_parameters(self.backbone)}
        for module in self.modules():
            if isinstance(module, ExpertModule):
                owner.update({id(param): "experts" for param in module.expert_parameters()})
            elif isinstance(module, (TaskGate, ExpertFusion)):
                owner.update({id(param): "gates" for param in module.parameters()})
        owner.update({id(param): "heads" for param in self.head.parameters()})
        for name, param in self.named_parameters():
            groups[owner.get(id(param), "backbone")][name] = param
        return groups

    def task_parameters(self, task_id: int) -> dict[str, int | None]:
        """The weights that serve task `task_id` alone: its expert's row of every stacked
        expert weight, its row of every gate's task weights, and its head (None: all of it).
        A shared expert, a shared LoRA, an input router and the backbone are nobody's alone."""
        names = {id(param): name for name, param in self.named_parameters()}
        owned: dict[str, int | None] = {}
        expert = int(self.expert_plan.assignment[task_id]) if self.expert_plan else None
        for module in self.modules():
            if isinstance(module, ExpertModule) and expert is not None:
                owned.update({names[id(param)]: expert for param in module.expert_parameters()})
            elif isinstance(module, TaskGate):
                owned.update({names[id(param)]: task_id for param in (module.task_logits, module.shared_logits)
                              if param is not None})
            elif isinstance(module, ExpertFusion):
                owned.update({names[id(param)]: task_id for param in module.parameters()})
        owned.update({names[id(param)]: None for param in self.head.task_parameters(task_id)})
        return owned

    # --- data -> tensors ----------------------------------------------------------------
    def encode(self, examples: Sequence[Example | dict], with_target: bool = True) -> list[Encoded]:
        """Rows of examples, given as `Example`s or as requests {"task": NAME, "inputs": {...}}."""
        examples = [as_example(example) for example in examples]
        ids = [self.task_id(example.task) for example in examples]
        for task_id, example in zip(ids, examples):
            missing = self.tasks[task_id].missing_inputs(example.inputs)
            if missing:
                raise ValueError(f"{example.source or example.task}: task {example.task} needs the input field(s) "
                                 f"{', '.join(missing)}")
        return [self.head.encode(task_id, self.tasks[task_id], example, self.tokenizer, with_target)
                for task_id, example in zip(ids, examples)]

    def task_id(self, name: str) -> int:
        if name not in self.task_index:
            raise KeyError(f"this model was not trained on task '{name}'; its tasks: {', '.join(self.task_index)}")
        return self.task_index[name]

    def forward(self, rows: Sequence[Encoded]) -> torch.Tensor:
        """Per-example training losses of a (mixed-task) batch; (B,)."""
        return self.head.losses(self.backbone, self.head.collate(rows, self.tokenizer), self.tasks)

    @torch.no_grad()
    def predict(self, examples: Sequence[Example | dict], batch_size: int = 16, max_new_tokens: int = 48,
                num_beams: int = 1, progress: str | None = None) -> list[Prediction]:
        """Predictions in input order: (label, scores) / (score, {}) / (text, {}). A summary is
        written with its task's generation settings, `max_new_tokens` and `num_beams` filling
        what they leave unset. `progress`: the label of a progress bar (none by default)."""
        return self.predict_encoded(self.encode(examples, with_target=False), batch_size, max_new_tokens, num_beams,
                                    progress)

    @torch.no_grad()
    def predict_encoded(self, rows: Sequence[Encoded], batch_size: int = 16, max_new_tokens: int = 48,
                        num_beams: int = 1, progress: str | None = None,
                        settings: Sequence[GenerationSettings] | None = None) -> list[Prediction]:
        """`predict` on examples already encoded (without targets), any mix of tasks.
        `settings`: each row's complete generation settings, when the caller resolved them
        (`generation_settings`); unused for rows that are scored."""
        was_training = self.training
        if was_training:  # walking every module costs a scored request about 5 ms
            self.eval()
        if settings is None:
            defaults = GenerationSettings(max_new_tokens=max_new_tokens, num_beams=num_beams)
            settings = [self.generation_settings(row.task_id, defaults) for row in rows]
        bar = tqdm(total=len(rows), desc=progress, unit="ex", dynamic_ncols=True, disable=progress is None)
        results: list[Prediction | None] = [None] * len(rows)
        lengths = [len(row.input_ids) for row in rows]
        for indices, run, max_padding in self._passes(rows, settings):
            for chunk in length_batches(indices, lengths, batch_size, max_padding):  # little padding, same results
                for i, prediction in zip(chunk, run([rows[i] for i in chunk])):
                    results[i] = prediction
                bar.update(len(chunk))
        bar.close()
        if was_training:
            self.train()
        return results  # type: ignore[return-value]

    def generation_settings(self, task_id: int, defaults: GenerationSettings,
                            requested: GenerationSettings | None = None) -> GenerationSettings:
        """How a row of the task writes: `requested`, over the task's own settings, over
        `defaults`; a sample gets a seed of its own."""
        task_settings = self.tasks[task_id].spec.generation
        merged = (task_settings.over(defaults) if task_settings else defaults)
        return (requested.over(merged) if requested else merged).with_seed()

    def _passes(self, rows: Sequence[Encoded], settings: Sequence[GenerationSettings]):
        """(row indices, how to predict them, the padding their batches may carry): the scored
        rows together, then the generating rows by their settings (a sampled row alone, so that
        its draws follow its seed only). Scored rows of far apart lengths go in separate passes
        (`length_batches`); generating rows stay together whatever their prompts' lengths, since
        a decoding step reads every weight once for the whole batch: 16 rows cost little more
        than 4."""
        by_settings: dict[tuple, list[int]] = {}
        scoring = []
        for i, row in enumerate(rows):
            if self.tasks[row.task_id].kind != "generation":
                scoring.append(i)
            else:
                by_settings.setdefault((settings[i], i if settings[i].samples else None), []).append(i)
        if scoring:
            yield scoring, self._score, MAX_PADDING
        for (how, _), indices in by_settings.items():
            yield indices, self._generate(how), math.inf

    def _score(self, rows: Sequence[Encoded]) -> list[Prediction]:
        predictions = self.head.score(self.backbone, rows, self.tasks, self.tokenizer)
        if not self.label_offsets:
            return predictions
        decided = []
        for row, (value, probs) in zip(rows, predictions):
            task = self.tasks[row.task_id]
            offsets = self.label_offsets.get(task.name)
            decided.append((decide(task.spec.labels, probs, offsets), probs) if offsets else (value, probs))
        return decided

    def _generate(self, settings: GenerationSettings):
        def run(rows: Sequence[Encoded]) -> list[Prediction]:
            return self.head.generate(self.backbone, rows, self.tokenizer, settings)
        return run

    # --- gates --------------------------------------------------------------------------
    def begin_stage(self, stage: StageConfig) -> None:
        """Set the gates for a stage: stage 1 trains each task's own expert under the fixed
        one-hot assignment; stage 2 and joint learn how tasks draw on every expert. While only
        `changing_tasks` train, the others' gates stay as they are (`TaskGate.begin_rows`)."""
        if self.changing_tasks:
            refusal = self.refuses_changing_tasks(stage)
            if refusal:
                raise ValueError(refusal)
            task_ids = [self.task_id(name) for name in self.changing_tasks]
            for layer in self.mta_layers:
                layer.gate.begin_rows(task_ids, stage.kind, stage.collaboration, stage.own_expert_weight)
            return
        if stage.kind == "stage1":
            for layer in self.mta_layers:
                layer.gate.fixed.fill_(True)
        else:
            self.start_collaboration(stage.collaboration, stage.own_expert_weight, tied=stage.gate_layers == "tied")

    def refuses_changing_tasks(self, stage: StageConfig) -> str | None:
        """Why `stage` cannot train the `changing_tasks` alone over this model's gates, or None
        (`TaskGate.refuses_rows`): add-task asks before its first stage, not when it comes."""
        for layer in self.mta_layers:
            refusal = layer.gate.refuses_rows(stage.kind, stage.collaboration)
            if refusal:
                return f"stage {stage.label}: {refusal}"
        return None

    def start_collaboration(self, how: str = "residual", own_weight: float = 0.8, tied: bool = False) -> None:
        """Gates leave the stage-1 assignment and learn (`TaskGate.start_collaboration`);
        `tied`: every MTA layer learns through the first layer's gate weights."""
        for layer in self.mta_layers:
            layer.gate.start_collaboration(how, own_weight)
            if tied:
                layer.gate.tie_to(self.mta_layers[0].gate)

    def prune_gates(self, kept: int) -> None:
        """Every row draws on its `kept` largest gate weights in every layer (`TaskGate.prune`)."""
        if not self.mta_layers:
            raise ValueError("this model has no MTA gates to prune")
        if self.config.mta.fusion:
            raise ValueError("mta.fusion weighs every expert at every token: its experts cannot be pruned")
        for layer in self.mta_layers:
            layer.gate.prune(kept)

    def set_inference(self, quantize: Quantize) -> None:
        """The backbone's pretrained linear layers (inside LoRA experts' and PEFT's wrappers
        too) generate from int8 copies of their weights, or in float32 (`alter.models.quantized`)."""
        pretrained = {id(param) for param in self.param_groups()["backbone"].values()}
        quantize_linears(self.backbone, pretrained, quantize)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(gates=bool(self.mta_layers), label_offsets=True, serving=True, fsdp=True)

    # --- continuous decoding (the server's running batch) ------------------------------
    def decodes(self, settings: GenerationSettings | None = None) -> bool:
        """Whether `decode_batch` can write under `settings`: one beam, a decoder-only backbone
        with plain (not sliding-window) key/value caches, the LM head."""
        backbone = self.backbone.config
        one_beam = settings is None or (settings.num_beams or 1) == 1
        return (one_beam and self.config.head == "lm" and not backbone.is_encoder_decoder
                and not getattr(backbone, "sliding_window", None) and not getattr(backbone, "layer_types", None))

    def decode_batch(self) -> DecodeBatch:
        return DecodeBatch(self.backbone, self.mta_layers, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)

    @torch.no_grad()
    def task_gate_weights(self) -> torch.Tensor:
        """Task-level gate weights of every MTA layer, (L, tasks, K) (input router left out)."""
        if not self.mta_layers:
            return torch.empty(0)
        device = self.head.device
        task_ids = torch.arange(len(self.tasks), device=device)
        no_input = torch.zeros(len(self.tasks), self.backbone.config.hidden_size, device=device)  # R(0) = 0
        return torch.stack([layer.gate(task_ids, no_input) for layer in self.mta_layers]).cpu()

    # --- checkpoints --------------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        """What training can change: MTA layers, adapters and heads (and the backbone if it was
        trained)."""
        groups = self.param_groups()
        names = [*groups["experts"], *groups["gates"], *groups["adapters"], *groups["heads"]]
        if self.backbone_trained:
            names += list(groups["backbone"])
        state = self.state_dict()
        kept = {name: state[name] for name in names}
        kept.update({name: value for name, value in state.items() if ".mta." in name})  # gate buffers
        # Tied gates appear under every layer's name; safetensors stores tensors that share
        # memory only once, so every name after the first gets its own copy.
        seen: set[int] = set()
        trained = {}
        for name, value in kept.items():
            value = value.detach().contiguous()
            trained[name] = value.clone() if value.data_ptr() in seen and value.numel() else value
            seen.add(value.data_ptr())
        return trained

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write what training changed (`trained_state`), `alter.json` (with `extra`) and the
        model card (README.md: the tasks and, after a training run, `trained_in`'s scores) into
        `directory`. A backbone with no name to load it by (built in memory) is saved beside
        them, once per folder: it is frozen, or its trained weights are in the weights file.
        `alter.load` reads the folder back; `save_pretrained` is this, by the Hub's name."""
        offsets = {"label_offsets": self.label_offsets} if self.label_offsets else {}
        directory = write_saved(directory, "transformer", self.config, self.tasks, self.trained_state(),
                                backbone_trained=self.backbone_trained, **offsets, **(extra or {}))
        if not backbone_is_loadable(self.config.backbone):
            self.save_backbone_beside(directory)
        write_model_card(directory, self, self.trained_in)

    save_pretrained = save

    def load_trained(self, directory: str | Path) -> None:
        state = read_weights(directory)
        missing = set(state) - set(self.state_dict())
        if missing:
            raise ValueError(f"{directory}: checkpoint holds weights this model lacks: {sorted(missing)[:3]}")
        for name in self.state_dict():  # written before residual gates: softmax logits
            if name.endswith("gate.residual") and name not in state:
                state[name] = torch.tensor(False)
        self.load_state_dict(state, strict=False)

    def save_backbone_beside(self, directory: Path) -> None:
        """Copy the backbone itself (its current weights, no adapters) into the saved folder
        `directory` unless it is there already, and point the checkpoint at it, so that the
        folder loads anywhere."""
        if not (directory / BACKBONE_FOLDER / "config.json").exists():
            plain_backbone(self.backbone).save_pretrained(directory / BACKBONE_FOLDER)
            self.tokenizer.save_pretrained(directory / BACKBONE_FOLDER)
        point_at_backbone_beside(directory)

    @classmethod
    def from_saved(cls, saved: SavedFolder, directory: Path) -> MTAModel:
        """The model saved in `directory` (what `read_saved` found there), in eval mode."""
        config = saved.config
        beside = directory / config.backbone  # an exported model carries its backbone in its folder
        if not Path(config.backbone).is_absolute() and (beside / "config.json").exists():
            config = config.model_copy(update={"backbone": str(beside)})
        model = cls(config, saved.tasks)
        model.backbone_trained = saved.meta.get("backbone_trained", False)
        model.label_offsets = saved.meta.get("label_offsets", {})
        model.load_trained(directory)
        return model.eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MTAModel:
        """`alter.load` by the Hub's name, for a transformer system (a Bi-LSTM's folder is an
        error that says to use `alter.load`)."""
        saved = read_saved(directory)
        if saved.architecture != "transformer":
            raise ValueError(f"{directory} holds a {saved.architecture} model, not an MTAModel: load it with "
                             "alter.load")
        return cls.from_saved(saved, Path(directory))
