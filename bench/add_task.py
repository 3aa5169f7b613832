"""What adding a task to a trained MTA model costs and scores, against training everything
again and against a shared LoRA, on the quickstart's former model (bottleneck experts) and
tasks plus one new task.

    .venv/bin/python bench/add_task.py [--base configs/quickstart-bottleneck.yaml] [--add configs/add-aeslc.yaml] \
        [--seeds 0 1 2] [--runs runs/add-task] [--json docs/results/add-task.json]

Per seed, each a resumable training run under `--runs` (run the script again to continue):
- `base`: the MTA model of `--base` (the old tasks);
- `mta_add`: `--add`'s tasks trained into it (`alter add-task`); the old tasks scored on the
  same evaluation examples before and after;
- `mta_all`: the same MTA model trained on the old and new tasks from the start, on the same
  examples (`all_from_the_start`);
- `shared_lora_base` / `shared_lora_retrain`: one shared PEFT LoRA (r 8 on q and v, no MTA,
  `--base`'s steps in one joint stage) on the old tasks, and on all of them from scratch;
- `shared_lora_new_only`: `shared_lora_base`'s adapter trained further on the new tasks alone
  (`--add`'s stage-1 schedule), the old tasks scored before and after (what it forgets).

With `--json`, the seeds already in that file are kept and not run again. Seconds are the
runs' training wall time (their evaluations left out); scores the main metric
of each task on its evaluation examples (0-100). The JSON holds every seed's figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import alter
from alter.config import Config, SharedLoraConfig, StageConfig, load_config
from alter.evaluate.evaluator import evaluate, main_score
from alter.experiment.paired import seed_t_interval
from alter.models.mta_model import MTAModel
from alter.training.add_task import add_tasks
from alter.training.datasets import load_split, load_tasks
from alter.training.run import run_training

SHARED_LORA = SharedLoraConfig(r=8, alpha=16, targets=["q_proj", "v_proj"])


def training_seconds(report: dict[str, Any]) -> float:
    return round(sum(stage["wall_seconds"] for stage in report["stages"].values()), 1)


def scores(model, config: Config, names: list[str]) -> dict[str, float]:
    """The main score of each of `names` on `config`'s evaluation examples of it: for a model
    that no run of its own has scored on them (a grown or tuned model, on the old tasks)."""
    tasks = [task for task in load_tasks(config) if task.name in names]
    sets = load_split(config, tasks, config.data.eval_split, training=False)
    metrics = evaluate(model, sets, config.eval)
    return {task.name: round(100 * main_score(task, metrics[task.name]), 2) for task in tasks}


def report_scores(report: dict[str, Any], config: Config, names: list[str]) -> dict[str, float]:
    """The main score of each of `names` in a run's report (0-100): its final evaluation, on
    the same evaluation examples `scores` reads (not evaluated a second time)."""
    return {task.name: round(100 * main_score(task, report["metrics"][task.name]), 2)
            for task in load_tasks(config) if task.name in names}


def joint(config: Config, steps: int) -> list[StageConfig]:
    """One joint stage of `steps` with the first stage's batch and rate: the shared LoRA's."""
    first = config.stages[0]
    return [StageConfig(kind="joint", steps=steps, batch_size=first.batch_size, lr=first.lr,
                        save_every=first.save_every)]


def all_from_the_start(base: Config, add: Config) -> Config:
    """--base with --add's tasks appended and its stage 1 made as long as both runs' stage 1s
    together, each task drawn as often as in the two runs (the old tasks at their rates over
    --base's steps, the new ones over --add's): the same examples, trained at once."""
    old_steps, new_steps = base.stages[0].steps, add.stages[0].steps
    total = old_steps + new_steps
    mixture = base.data.mixture
    if mixture.sampling == "manual":
        new = [ref.name for ref in add.data.refs()]
        rates = {name: rate * old_steps / total for name, rate in mixture.rates.items()}
        rates.update({name: new_steps / total / len(new) for name in new})
        mixture = mixture.model_copy(update={"rates": rates})
    data = base.data.model_copy(update={"tasks": [*base.data.tasks, *add.data.tasks], "mixture": mixture,
                                        "custom_tasks": [*base.data.custom_tasks, *add.data.custom_tasks]})
    stages = [base.stages[0].model_copy(update={"steps": total}), *base.stages[1:]]
    return base.model_copy(update={"data": data, "stages": stages})


def run_seed(base: Config, add: Config, seed: int, runs: Path) -> dict[str, Any]:
    out = runs / f"seed{seed}"
    # No run scores its untrained model: nothing here compares with it.
    base, add = (config.model_copy(update={"seed": seed, "eval": config.eval.model_copy(
        update={"before_training": False})}) for config in (base, add))
    old = [ref.name for ref in base.data.refs()]
    new = [ref.name for ref in add.data.refs()]
    every = all_from_the_start(base, add)
    steps = sum(stage.steps for stage in base.stages)
    lora_model = base.model.model_copy(update={"mta": base.model.mta.model_copy(update={"enabled": False}),
                                               "lora": SHARED_LORA})
    result: dict[str, Any] = {}

    base_report = run_training(base.model_copy(update={"output_dir": str(out / "base")}))
    report = add_tasks(out / "base" / "model", add.model_copy(update={"output_dir": str(out / "mta_add")}))
    before, after = report_scores(base_report, base, old), scores(alter.load(out / "mta_add" / "model"), base, old)
    result["mta_add"] = {"seconds": training_seconds(report), "base_seconds": training_seconds(base_report),
                         "new_task": report_scores(report, add, new),
                         "old_tasks": {name: {"before": before[name], "after": after[name]} for name in old},
                         "old_tasks_identical": before == after}

    report = run_training(every.model_copy(update={"output_dir": str(out / "mta_all")}))
    result["mta_all"] = {"seconds": training_seconds(report), "scores": report_scores(report, every, old + new)}

    lora_base = base.model_copy(update={"model": lora_model, "stages": joint(base, steps),
                                        "output_dir": str(out / "shared_lora_base")})
    lora_base_report = run_training(lora_base)
    result["shared_lora_base"] = {"seconds": training_seconds(lora_base_report)}
    retrain = joint(every, steps + add.stages[0].steps)  # the same examples as base + add, at once
    report = run_training(every.model_copy(update={"model": lora_model, "stages": retrain,
                                                   "output_dir": str(out / "shared_lora_retrain")}))
    result["shared_lora_retrain"] = {"seconds": training_seconds(report),
                                     "scores": report_scores(report, every, old + new)}

    # The shared adapter trained further on the new tasks alone: a model of those tasks that
    # starts from shared_lora_base's adapter (an LM head has no weights of a task's own).
    tuned = MTAModel(lora_model, load_tasks(add))
    tuned.load_trained(out / "shared_lora_base" / "model")
    report = run_training(add.model_copy(update={"model": lora_model, "stages": joint(add, add.stages[0].steps),
                                                 "output_dir": str(out / "shared_lora_new_only")}),
                          build=lambda _config, _tasks: tuned)
    forgetting = MTAModel(lora_model, load_tasks(base))
    forgetting.load_trained(out / "shared_lora_new_only" / "model")
    before, after = report_scores(lora_base_report, base, old), scores(forgetting.eval(), base, old)
    result["shared_lora_new_only"] = {
        "seconds": training_seconds(report),
        "new_task": report_scores(report, add, new),
        "old_tasks": {name: {"before": before[name], "after": after[name]} for name in old}}
    return result


def _mean(values: list[float]) -> float:
    return round(statistics.fmean(values), 2)


def _spread(values: list[float]) -> float:
    return round(statistics.stdev(values), 2) if len(values) > 1 else 0.0


def summary(seeds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures in the issue's shape, as means over the seeds, and what the claims rest
    on: the new task's score added against trained with the others from the start (per-seed
    differences and their 95% t-interval), whether the old tasks stayed identical on every
    seed, and what the shared LoRA forgot."""
    runs = list(seeds.values())
    new = list(runs[0]["mta_add"]["new_task"])
    old = list(runs[0]["mta_add"]["old_tasks"])

    def mean_of(path: Callable[[dict], float]) -> float:
        return _mean([path(run) for run in runs])

    def before_after(system: str) -> dict[str, dict[str, float]]:
        return {task: {when: mean_of(lambda run: run[system]["old_tasks"][task][when]) for when in ("before", "after")}
                for task in old}

    found: dict[str, Any] = {
        "seeds": sorted(int(seed) for seed in seeds),
        "mta_add": {"seconds": mean_of(lambda run: run["mta_add"]["seconds"]),
                    "new_task": {task: mean_of(lambda run: run["mta_add"]["new_task"][task]) for task in new},
                    "old_tasks": before_after("mta_add"),
                    "old_tasks_identical_on_every_seed": all(run["mta_add"]["old_tasks_identical"] for run in runs)},
        **{system: {"seconds": mean_of(lambda run: run[system]["seconds"]),
                    "scores": {task: mean_of(lambda run: run[system]["scores"][task]) for task in old + new}}
           for system in ("mta_all", "shared_lora_retrain")},
        "shared_lora_new_only": {"seconds": mean_of(lambda run: run["shared_lora_new_only"]["seconds"]),
                                 "new_task": {task: mean_of(lambda run: run["shared_lora_new_only"]["new_task"][task])
                                              for task in new},
                                 "old_tasks": before_after("shared_lora_new_only")},
    }
    found["added_minus_all_from_the_start"] = {}
    for task in new:
        differences = [round(run["mta_add"]["new_task"][task] - run["mta_all"]["scores"][task], 2) for run in runs]
        found["added_minus_all_from_the_start"][task] = {
            "per_seed": differences, "mean": _mean(differences), "t95": seed_t_interval(differences),
            "spread_added": _spread([run["mta_add"]["new_task"][task] for run in runs]),
            "spread_all": _spread([run["mta_all"]["scores"][task] for run in runs])}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="configs/quickstart-bottleneck.yaml")
    parser.add_argument("--add", default="configs/add-aeslc.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/add-task"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override of both configs, key=value (e.g. model.backbone=tiny-llama for a smoke run)")
    parser.add_argument("--json", type=Path, help="write the figures here (after every seed)")
    args = parser.parse_args()
    base, add = load_config(args.base, args.overrides), load_config(args.add, args.overrides)
    found: dict[str, Any] = {"base": args.base, "add": args.add, "seeds": {}}
    if args.json and args.json.exists():  # seeds measured before are kept, not run again
        found["seeds"] = json.loads(args.json.read_text())["seeds"]
    for seed in args.seeds:
        if str(seed) in found["seeds"]:
            continue
        found["seeds"][str(seed)] = run_seed(base, add, seed, args.runs)
        print(json.dumps({seed: found["seeds"][str(seed)]}, indent=1), flush=True)
        if args.json:
            args.json.write_text(json.dumps({**found, "summary": summary(found["seeds"])}, indent=1) + "\n")


if __name__ == "__main__":
    main()
