"""AdapterHub's AdapterFusion (Pfeiffer et al., 2021) beside alter's encoder track, run by the
`adapters` library itself, on the same backbone, data, step caps and early stopping.

    make peers      # its own venv: adapters 1.3 needs transformers 4.57
    bench/peers/.venv/bin/python bench/peers/adapterfusion.py configs/convergence.yaml --seeds 0
    bench/peers/.venv/bin/python bench/peers/adapterfusion.py configs/convergence.yaml --seeds 0 \
        --system mta_aux --suffix _aux      # beside mta_aux: its data, caps and auxiliary validation

Two systems per seed, written where `alter experiment` reads them (kind `external`), in its
per-example predictions format, so that its paired intervals cover them:

- `adapterhub_single` (ST-A): one bottleneck adapter (`SeqBnConfig`, reduction 16) with its own
  head per task, each trained on its task alone until its validation score stops improving
  (the experiment's stage-1 cap, check interval and patience; an auxiliary task that holds no
  validation examples, for `--aux-steps`).
- `adapterfusion`: per scored target task, a fusion layer over every task's adapter
  (`Fuse`), trained with the target's head on the target's own training rows, early-stopped
  on its validation examples (the experiment's stage-2 cap, interval and patience).

Early stopping follows the experiment's rule, `until_learned` included: a task not yet above
its trivial validation score counts no patience.

Data come from alter's own preparation of the experiment's base config (the same capped
training rows, validation examples and dev sets as every other system); inputs go to the
tokenizer as text pairs, as AdapterHub's users give them. Every finished adapter and target is
kept on disk: an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from adapters import AutoAdapterModel, SeqBnConfig
from adapters.composition import Fuse

from alter.backbones import load_tokenizer, resolve_backbone
from alter.evaluate.evaluator import main_score
from alter.evaluate.predictions import compute_task_metrics, task_record, write_predictions
from alter.evaluate.trivial import beats_trivial, trivial_main_scores, trivial_scores
from alter.experiment.config import load_experiment
from alter.training.datasets import load_split, load_tasks, load_training

SINGLE, FUSION = "adapterhub_single", "adapterfusion"


class Peer:
    """One seed's data, tokenizer and the schedule that alter's systems train under."""

    def __init__(self, experiment, seed: int, out: Path, args):
        # The data, caps and stopping rule of the alter system it stands beside (`--system`).
        self.config = experiment.train_config(args.system, seed, out)
        self.single, self.fusion = SINGLE + args.suffix, FUSION + args.suffix
        self.seed, self.out, self.args = seed, out, args
        self.tasks = {task.name: task for task in load_tasks(self.config)}
        training = load_training(self.config, list(self.tasks.values()))
        self.train, self.validation = training.train, training.validation
        tasks = list(self.tasks.values())
        self.floors = trivial_main_scores(tasks, trivial_scores(tasks, self.train, self.validation))
        self.dev = load_split(self.config, list(self.tasks.values()), self.config.data.eval_split, training=False)
        self.backbone = resolve_backbone(self.config.model.backbone)
        self.tokenizer = load_tokenizer(self.config.model.backbone)
        self.stage1, self.stage2 = self.config.stages[0], self.config.stages[1]

    def batch(self, task: str, examples):
        texts = [list(example.inputs[field] for field in self.tasks[task].spec.inputs) for example in examples]
        encoded = self.tokenizer(*zip(*texts), truncation=True, max_length=self.config.model.max_source_length,
                                 padding=True, return_tensors="pt")
        return dict(encoded)

    def new_model(self):
        torch.manual_seed(self.seed)
        return AutoAdapterModel.from_pretrained(self.backbone)

    def loss(self, model, task: str, examples) -> torch.Tensor:
        logits = model(**self.batch(task, examples), head=task).logits
        spec = self.tasks[task]
        if spec.kind == "regression":
            return F.mse_loss(logits[:, 0], torch.tensor([float(e.target) for e in examples]))
        return F.cross_entropy(logits, torch.tensor([spec.label_index(e) for e in examples]))

    @torch.no_grad()
    def predict(self, model, task: str, examples) -> list:
        model.eval()
        spec, values = self.tasks[task], []
        for start in range(0, len(examples), 64):
            logits = model(**self.batch(task, examples[start: start + 64]), head=task).logits
            values += logits[:, 0].tolist() if spec.kind == "regression" else \
                [spec.spec.labels[i] for i in logits.argmax(-1).tolist()]
        model.train()
        return values

    def score(self, model, task: str, examples) -> float:
        return main_score(self.tasks[task], compute_task_metrics(self.tasks[task], self.predict(model, task, examples),
                                                                 examples))

    def fit(self, model, task: str, stage, steps: int | None = None) -> tuple[int, float]:
        """Train `model`'s trainable weights on `task`'s rows (AdamW, linear decay, the stage's
        batch size), early-stopped on its validation examples when it has some; the best
        weights restored. Returns (steps run, seconds)."""
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=stage.lr)
        cap = steps or stage.steps
        rows, rng = self.train[task], random.Random(self.seed)
        order: list[int] = []
        validation = self.validation.get(task) if steps is None else None
        best, waited, best_state = -math.inf, 0, None
        started, step = time.perf_counter(), 0
        model.train()
        while step < cap:
            if len(order) < stage.batch_size:
                order += rng.sample(range(len(rows)), len(rows))
            chosen, order = order[: stage.batch_size], order[stage.batch_size:]
            for group in optimizer.param_groups:
                group["lr"] = stage.lr * (1 - step / cap)
            self.loss(model, task, [rows[i] for i in chosen]).backward()
            torch.nn.utils.clip_grad_norm_(params, stage.max_grad_norm or math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if validation and (step % stage.eval_every == 0 or step == cap):
                value = 100.0 * self.score(model, task, validation)
                if value > best + stage.early_stopping.min_delta:
                    best, waited = value, 0
                    best_state = {id(p): p.detach().clone() for p in params}
                elif stage.early_stopping.until_learned and not beats_trivial(value / 100, self.floors[task]):
                    pass  # not above its trivial score yet: no patience counts down, as in alter's stages
                else:
                    waited += 1
                    if waited >= stage.early_stopping.patience:
                        break
        if best_state is not None:
            with torch.no_grad():
                for p in params:
                    p.copy_(best_state[id(p)])
        return step, time.perf_counter() - started

    # --- the two systems ----------------------------------------------------------------------
    def adapter_dir(self, task: str) -> Path:
        return self.out / self.single / "adapters" / task

    def train_single(self, task: str) -> None:
        target = self.adapter_dir(task)
        if (target / "trained.json").exists():
            return
        model = self.new_model()
        spec = self.tasks[task]
        model.add_adapter(task, config=SeqBnConfig(reduction_factor=self.args.reduction_factor))
        model.add_classification_head(task, num_labels=spec.num_outputs)
        model.train_adapter(task)
        model.set_active_adapters(task)
        stage = self.stage1.model_copy(update={"lr": self.args.adapter_lr})
        # An auxiliary task without validation examples trains for --aux-steps; with some (the config's
        # own for it), to its plateau as every other task.
        aux = None if self.validation.get(task) else self.args.aux_steps
        steps, seconds = self.fit(model, task, stage, aux)
        target.mkdir(parents=True, exist_ok=True)
        model.save_adapter(str(target), task, with_head=True)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        (target / "trained.json").write_text(json.dumps({"steps": steps, "seconds": seconds,
                                                         "trainable_params": trainable}))

    def single_result(self) -> dict:
        records, metrics = {}, {}
        for task in self.dev:
            model = self.new_model()
            name = model.load_adapter(str(self.adapter_dir(task)), with_head=True)
            model.set_active_adapters(name)
            records[task], metrics[task] = self.evaluate(model, task)
        # Its cost: the scored tasks' adapters (the auxiliary ones serve AdapterFusion only).
        trained = {task: json.loads((self.adapter_dir(task) / "trained.json").read_text()) for task in self.dev}
        return self.result(self.single, records, metrics, trained)

    def train_fusion(self, target: str) -> dict:
        folder = self.out / self.fusion / "targets" / target
        if (folder / "done.json").exists():
            return json.loads((folder / "done.json").read_text())
        model = self.new_model()
        names = [model.load_adapter(str(self.adapter_dir(task)), with_head=task == target) for task in self.tasks]
        fuse = Fuse(*names)
        model.add_adapter_fusion(fuse)
        model.set_active_adapters(fuse)
        model.train_adapter_fusion(fuse)
        for param in model.heads[target].parameters():
            param.requires_grad_(True)
        stage = self.stage2.model_copy(update={"lr": self.args.fusion_lr})
        steps, seconds = self.fit(model, target, stage)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        record, metrics = self.evaluate(model, target)
        done = {"steps": steps, "seconds": seconds, "trainable_params": trainable, "metrics": metrics,
                "record": record}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "done.json").write_text(json.dumps(done))
        return done

    def fusion_result(self) -> dict:
        done = {target: self.train_fusion(target) for target in self.dev}
        records = {task: part["record"] for task, part in done.items()}
        metrics = {task: part["metrics"] for task, part in done.items()}
        singles = {task: json.loads((self.adapter_dir(task) / "trained.json").read_text()) for task in self.tasks}
        result = self.result(self.fusion, records, metrics, {task: {k: v for k, v in part.items() if k in
                                                               ("steps", "seconds", "trainable_params")}
                                                        for task, part in done.items()})
        result["adapter_seconds"] = round(sum(part["seconds"] for part in singles.values()), 2)
        return result

    def evaluate(self, model, task: str) -> tuple[dict, dict]:
        values = self.predict(model, task, self.dev[task])
        spec = self.tasks[task]
        return task_record(spec, values, self.dev[task]), compute_task_metrics(spec, values, self.dev[task])

    def result(self, system: str, records: dict, metrics: dict, trained: dict) -> dict:
        folder = self.out / system
        folder.mkdir(parents=True, exist_ok=True)
        write_predictions(folder / "predictions_final.json", records)
        macro = 100.0 * sum(main_score(self.tasks[t], metrics[t]) for t in metrics) / len(metrics)
        return {"tasks": metrics, "macro": macro,
                "train_seconds": round(sum(part["seconds"] for part in trained.values()), 2),
                "trainable_params": sum(part["trainable_params"] for part in trained.values()),
                "steps": {task: part["steps"] for task, part in trained.items()},
                "predictions": "predictions_final.json",
                "eval_examples": {task: len(examples) for task, examples in self.dev.items()},
                "peer": "adapters 1.3 (AdapterHub)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the experiment config (configs/convergence.yaml)")
    parser.add_argument("--seeds", type=int, nargs="*", help="default: the experiment's seeds")
    parser.add_argument("--adapter-lr", type=float, default=1e-3, help="ST-A learning rate")
    parser.add_argument("--fusion-lr", type=float, default=1e-4, help="fusion learning rate")
    parser.add_argument("--reduction-factor", type=int, default=16)
    parser.add_argument("--system", default="mta",
                        help="the alter system whose data, caps and early stopping it follows (e.g. mta_aux)")
    parser.add_argument("--suffix", default="", help="appended to the two systems' names (e.g. _aux)")
    parser.add_argument("--aux-steps", type=int, default=1500, help="steps of each auxiliary task's adapter")
    args = parser.parse_args()
    experiment = load_experiment(args.config)
    for seed in args.seeds if args.seeds is not None else experiment.seeds:
        out = Path(experiment.output_dir) / f"seed{seed}"
        peer = Peer(experiment, seed, out, args)
        for task in peer.tasks:
            print(f"seed {seed}: ST-A adapter {task}", flush=True)
            peer.train_single(task)
        for system, build in ((peer.single, peer.single_result), (peer.fusion, peer.fusion_result)):
            path = out / system / "result.json"
            if not path.exists():
                result = build()
                path.write_text(json.dumps(result, indent=2))
                print(f"seed {seed}: {system} macro {result['macro']:.1f}", flush=True)


if __name__ == "__main__":
    main()
