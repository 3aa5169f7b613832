"""Commands that train: `train`, `add-task`, `remove-task`, `experiment`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from alter.cli.common import app, console, friendly_errors
from alter.cli.tables import experiment_table, print_run


@app.command()
@friendly_errors
def train(config: Annotated[Path, typer.Argument(help="YAML config file")],
          set_: Annotated[Optional[list[str]], typer.Option("--set", help="override: key.path=value")] = None) -> None:
    """Train the configured stages; resumes from the last checkpoint when run again.

    Under `torchrun --nproc_per_node N` (or `accelerate launch`) it trains on N processes."""
    from alter.config import load_config
    from alter.evaluate.report_data import Report
    from alter.training import distributed
    from alter.training.run import run_training

    cfg = load_config(config, set_ or [])
    try:
        report = Report.model_validate(run_training(cfg))
    finally:
        distributed.stop()
    if os.environ.get("RANK", "0") != "0":
        return  # the main process prints the scores
    print_run(report, cfg.output_dir, cfg.output_dir)


@app.command("add-task")
@friendly_errors
def add_task(checkpoint: Annotated[Path, typer.Argument(help="a saved MTA model folder")],
             config: Annotated[Path, typer.Argument(help="YAML config: data.tasks = the tasks to add, and stages")],
             output: Annotated[Optional[Path], typer.Option(help="run folder (default: the config's output_dir)")]
             = None,
             replace: Annotated[Optional[list[str]], typer.Option(help="retrain this task of the model from the "
                                                                   "config's data (repeatable)")] = None,
             set_: Annotated[Optional[list[str]], typer.Option("--set", help="override: key.path=value")] = None,
             ) -> None:
    """Train new tasks into a saved MTA model; every old task answers exactly as before.
    Resumes when run again. The grown model is saved in OUTPUT/model (docs/tasks.md)."""
    from alter.config import load_config
    from alter.evaluate.report_data import Report
    from alter.training.add_task import add_tasks

    cfg = load_config(config, [*(set_ or []), *([f"output_dir={output}"] if output else [])])
    report = Report.model_validate(add_tasks(checkpoint, cfg, replace or []))
    print_run(report, f"{cfg.output_dir} (added tasks)", cfg.output_dir)
    console.print("the model holds every task; the old ones answer as they did")


@app.command("remove-task")
@friendly_errors
def remove_task(checkpoint: Annotated[Path, typer.Argument(help="a saved MTA model folder")],
                name: Annotated[str, typer.Argument(help="the task to remove")],
                output: Annotated[Path, typer.Option(help="where to save the model without it")]) -> None:
    """Save a model without one of its tasks; every other task answers exactly as before
    (refused when another task's gates draw on its expert)."""
    from alter.training.add_task import remove_task as remove

    console.print(f"model without {name}: {remove(checkpoint, name, output)}")


@app.command()
@friendly_errors
def experiment(config: Annotated[Path, typer.Argument(help="experiment YAML file")],
               set_: Annotated[Optional[list[str]], typer.Option("--set", help="override: key.path=value")] = None,
               only: Annotated[Optional[str], typer.Option(help="comma-separated systems to run")] = None,
               seeds: Annotated[Optional[str], typer.Option(help="comma-separated seeds to run now")] = None) -> None:
    """Train and score every system of an experiment over its seeds; resumable, so run it
    again to finish an interrupted one (finished systems are not run again)."""
    from alter.experiment.config import load_experiment
    from alter.experiment.runner import run_experiment

    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise typer.BadParameter("alter experiment runs on one process; launch `alter train` under torchrun "
                                 "to train one system on several (docs/scaling.md)")
    cfg = load_experiment(config, set_ or [])
    try:
        seed_list = [int(seed) for seed in seeds.split(",")] if seeds else None
    except ValueError:
        raise typer.BadParameter(f"--seeds: {seeds!r} is not a comma-separated list of integers")
    results = run_experiment(cfg, only.split(",") if only else None, seed_list)
    console.print(experiment_table(results, cfg.output_dir))
    for line in results["shortfalls"]:
        console.print(f"[yellow]{line}[/yellow]")
    console.print(f"results: {cfg.output_dir}/results.md, {cfg.output_dir}/results.json")
