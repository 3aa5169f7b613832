"""The `alter` command line: a thin map from subcommands to library functions."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Small language models as multi-task learners with Mixture-of-Task-Adapters.")
console = Console()
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, OSError)


class Quantize(str, Enum):
    """How generation reads the pretrained weights: `alter.config.Quantize`'s values, written out
    here because importing the config loads torch, which `alter --help` should not wait for
    (tests/test_quantized.py checks that the two agree)."""

    int8 = "int8"
    none = "none"


QuantizeOption = Annotated[Quantize, typer.Option(
    help="int8: generation reads int8 copies of the backbone's pretrained weights (faster; scoring "
         "stays float32; docs/serving.md, 'The fast decode path'); none: float32")]


def friendly_errors(command):
    """One clear line instead of a traceback for bad input (ALTER_DEBUG=1 shows tracebacks)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        for noisy in ("httpx", "urllib3", "transformers", "huggingface_hub", "absl"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: the last checkpoint is saved; run the same command to resume")
            raise typer.Exit(130) from None
        except USER_ERRORS as error:
            if os.environ.get("ALTER_DEBUG") == "1":
                raise
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None
    return wrapper


def score_table(title: str, metrics: dict, before: dict | None = None, macro: float | None = None,
                macro_before: float | None = None, trivial: dict | None = None,
                macro_trivial: float | None = None) -> Table:
    """Scores (0-100) of every task and metric, beside the untrained model's and the trivial
    ones (`trivial`: {task: {"metrics": ...}}) when given."""
    table = Table(title=title)
    table.add_column("task")
    table.add_column("metric")
    if before:
        table.add_column("untrained", justify="right")
    if trivial:
        table.add_column("trivial", justify="right")
    table.add_column("score" if not before else "trained", justify="right")
    for task, values in metrics.items():
        for metric, value in values.items():
            cells = [task, metric]
            if before:
                cells.append(f"{100 * before[task][metric]:.1f}")
            if trivial:
                floor = trivial.get(task, {}).get("metrics", {}).get(metric)
                cells.append("–" if floor is None else f"{100 * floor:.1f}")
            cells.append(f"{100 * value:.1f}")
            table.add_row(*cells)
    if macro is not None:
        untrained = [f"{macro_before:.1f}" if macro_before is not None else ""] if before else []
        floors = [f"{macro_trivial:.1f}" if macro_trivial is not None else ""] if trivial else []
        table.add_row("macro", "main metrics", *untrained, *floors, f"{macro:.1f}")
    return table


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


def print_run(report, title: str, output_dir: str) -> None:
    """A training run's scores table, what was not learned, each stage's cost, and its files."""
    trivial = {name: score.model_dump() for name, score in report.trivial.items()} if report.trivial else None
    console.print(score_table(title, report.metrics, report.before_training, report.macro,
                              report.macro_before_training, trivial, report.macro_trivial))
    for line in report.shortfalls:
        console.print(f"[yellow]{line}[/yellow]")
    if report.inputs_cut:
        from alter.evaluate.report import inputs_cut_text

        console.print(f"[yellow]inputs cut to model.max_source_length ({report.max_source_length} tokens):[/yellow] "
                      f"{inputs_cut_text(report.inputs_cut)}")
    for label, stage in report.stages.items():
        console.print(f"{label}: {stage.trainable_params:,} trainable parameters, "
                      f"{stage.wall_seconds:.1f} s, {stage.tokens_per_s:.0f} tokens/s")
    console.print(f"training {report.train_seconds:.0f} s, evaluation {sum(report.eval_seconds.values()):.0f} s")
    console.print(f"report: {output_dir}/report.md, model: {output_dir}/model")


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


def experiment_table(results: dict, title: str) -> Table:
    """Every system's mean scores, its difference from the reference system with the paired
    95% interval (* where it excludes zero), and the tasks' trivial scores."""
    from alter.experiment.tables import format_difference

    reference, trivial = results["reference"], results.get("trivial", {})
    table = Table(title=f"{title} (0-100, mean over each system's seeds)")
    tasks = list(dict.fromkeys(task for result in results["systems"].values() for task in result["tasks"]))
    for column in ("system", "seeds", *tasks, "macro", f"{reference} − system [95% CI]", "params", "train s",
                   "eval s"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, result in results["systems"].items():
        cells = [f"{result['tasks'][t][result['main_metrics'][t]]:.1f}" if t in result["tasks"] else "–" for t in tasks]
        difference = format_difference(result.get(f"paired_vs_{reference}"), significant="{}*")
        table.add_row(name, str(len(result["seeds"])), *cells, f"{result['macro']:.1f}", difference,
                      f"{result['trainable_params']:,}", f"{result['train_seconds']:.0f}",
                      f"{result.get('eval_seconds', 0):.0f}")
    if trivial:
        table.add_row("trivial", "", *(f"{trivial[t]['metrics'][results['main_metrics'][t]]:.1f}" if t in trivial
                                       else "–" for t in tasks), "", "", "", "", "")
    return table


@app.command("eval")
@friendly_errors
def eval_(checkpoint: Annotated[Path, typer.Argument(help="a saved model folder")],
          split: str = "dev", max_eval: Annotated[Optional[int], typer.Option(help="examples per task")] = None,
          data_root: Annotated[Optional[str], typer.Option(help="data folder")] = None,
          output: Annotated[Optional[Path], typer.Option(help="write the metrics as JSON here")] = None,
          batch_size: int = 16, num_beams: int = 1, max_new_tokens: int = 48,
          prune_to: Annotated[Optional[int], typer.Option(
              min=1, help="first prune the MTA gates: each row keeps its K largest gate weights")] = None,
          quantize: QuantizeOption = Quantize.int8) -> None:
    """Evaluate a saved model (any system, the Bi-LSTM included) on its tasks."""
    from alter.config import EvalConfig
    from alter.data.task import data_root as resolve_root
    from alter.evaluate.evaluator import evaluate, macro_average
    from alter.models.loading import load
    from alter.training.datasets import sample

    model = load(checkpoint, quantize.value)
    if prune_to:
        if not model.capabilities.gates:
            raise ValueError(f"--prune-to: {checkpoint} has no MTA gates to prune")
        model.prune_gates(prune_to)
    root = resolve_root(data_root)
    sets = {task.name: sample(task.read(split, root), max_eval, 0, task.name) for task in model.tasks}
    metrics = evaluate(model, sets, EvalConfig(batch_size=batch_size, num_beams=num_beams,
                                               max_new_tokens=max_new_tokens))
    macro = macro_average(model.tasks, metrics)
    console.print(score_table(f"{checkpoint} on {split}", metrics, macro=macro))
    if output:
        output.write_text(json.dumps({"metrics": metrics, "macro": macro}, indent=2))


@app.command()
@friendly_errors
def predict(checkpoint: Annotated[Path, typer.Argument(help="a saved model folder")],
            input: Annotated[Path, typer.Option(help="JSONL: one request per line, "
                                                     '{"task": NAME, "inputs": {FIELD: TEXT}} (mixed tasks)')],
            task: Annotated[Optional[str], typer.Option(help="every line is this task's input fields")] = None,
            output: Annotated[Optional[Path], typer.Option(help="JSONL results (default: stdout)")] = None,
            batch_size: int = 16, num_beams: int = 1, max_new_tokens: int = 48,
            quantize: QuantizeOption = Quantize.int8) -> None:
    """Predict every request of a JSONL file (any mix of tasks, batched together)."""
    from tqdm.auto import tqdm

    from alter.data.readers import DataError, read_rows
    from alter.models.loading import load
    from alter.serve.predictor import Predictor, RequestError

    if not input.exists():
        raise FileNotFoundError(f"input file not found: {input}")
    predictor = Predictor(load(checkpoint, quantize.value), batch_size=batch_size, max_new_tokens=max_new_tokens,
                          num_beams=num_beams)
    if task and task not in predictor.model.task_index:  # the flag is wrong, not the file's lines
        raise typer.BadParameter(f"the model has no task '{task}'; its tasks: {', '.join(predictor.model.task_index)}",
                                 param_hint="'--task'")
    requests, lines = [], []
    for line, row in read_rows(input, "jsonl"):
        if "__malformed__" in row:
            raise DataError(f"{input}:{line}: {row['__malformed__']}")
        requests.append({"task": task, "inputs": row} if task else row)
        lines.append(line)
    results = []
    with tqdm(total=len(requests), desc="predict", unit="request", disable=None) as progress:
        for start in range(0, len(requests), 256):
            try:
                results += predictor.predict(requests[start: start + 256])
            except RequestError as error:  # "request i: ..." -> the file and line
                index, _, problem = str(error).partition(": ")
                raise DataError(f"{input}:{lines[start + int(index.split()[-1])]}: {problem}") from None
            progress.update(min(256, len(requests) - start))
    text = "".join(json.dumps(result) + "\n" for result in results)
    if output:
        output.write_text(text)
        console.print(f"{len(results)} predictions written to {output}")
    else:
        sys.stdout.write(text)


@app.command()
@friendly_errors
def serve(checkpoint: Annotated[Path, typer.Argument(help="a saved model folder")],
          host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes it to the network")] = "127.0.0.1",
          port: int = 8000,
          scheduler: Annotated[str, typer.Option(help="continuous (scoring between decoding steps, generations "
                                                     "joining a running batch) or static")] = "continuous",
          max_queue: Annotated[int, typer.Option(help="items waiting at most; beyond, 503 + Retry-After")] = 256,
          batching: Annotated[bool, typer.Option(help="static: predict items of concurrent requests together")] = True,
          max_batch_size: int = 16, max_wait_ms: float = 10.0, max_items: int = 64,
          max_input_chars: int = 20_000, max_body_bytes: int = 1_000_000,
          request_timeout: Annotated[float, typer.Option(help="seconds; unanswered by then: 504")] = 300.0,
          num_beams: Annotated[int, typer.Option(help="beams where neither task nor request says")] = 1,
          max_beams: Annotated[int, typer.Option(help="the most beams a request may ask for")] = 4,
          max_new_tokens: Annotated[int, typer.Option(help="a generation's budget; requests may ask for less")] = 48,
          quantize: QuantizeOption = Quantize.int8,
          ) -> None:
    """Serve a model over HTTP: POST /v1/predict, GET /v1/tasks, GET /health, docs at /docs.
    Set ALTER_API_KEY to require 'Authorization: Bearer <key>'."""
    import signal

    import uvicorn
    from pydantic import ValidationError

    from alter.config import ConfigError, describe_errors
    from alter.models.loading import load
    from alter.serve.config import ServeConfig
    from alter.serve.predictor import Predictor
    from alter.serve.server import create_app

    try:
        config = ServeConfig(scheduler=scheduler, max_queue=max_queue, batching=batching,
                             max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                             max_items=max_items, max_input_chars=max_input_chars, max_body_bytes=max_body_bytes,
                             request_timeout_s=request_timeout)
    except ValidationError as error:  # one line per option, not pydantic's report
        raise ConfigError(describe_errors(error, "alter serve")) from None
    predictor = Predictor(load(checkpoint, quantize.value), batch_size=max_batch_size, max_new_tokens=max_new_tokens,
                               num_beams=num_beams, max_beams=max_beams)
    # On Ctrl-C / SIGTERM uvicorn stops accepting and lets in-flight requests finish, then
    # raises the signal again for the handler it found: this one, so that a drained server
    # ends with exit status 0 (what process managers read as a clean stop).
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(create_app(predictor, config), host=host, port=port, timeout_graceful_shutdown=30)


@app.command()
@friendly_errors
def export(checkpoint: Annotated[Path, typer.Argument(help="a saved model folder")],
           out: Annotated[Path, typer.Argument(help="a new folder")],
           task: Annotated[str, typer.Option(help="the task to export")],
           format: Annotated[str, typer.Option(help="auto, transformers, peft or alter")] = "auto") -> None:
    """One task as a self-contained folder. transformers: a plain Hugging Face model, its LoRA
    adapters merged into the weights (no extra inference cost); peft: a PEFT LoRA adapter of
    the base model, for vLLM / LoRAX / PeftModel.from_pretrained; alter: the checkpoint and
    its backbone; auto: transformers where the adapters merge, else alter."""
    from alter.models.mta_model import MTAModel
    from alter.serve.export import export_task

    card = export_task(MTAModel.from_pretrained(checkpoint), task, out, format)
    console.print(f"{task} exported to {out} ({card['format']}): {card['note']}")


@app.command()
@friendly_errors
def tasks(data_root: Annotated[Optional[str], typer.Option(help="data folder")] = None) -> None:
    """List the registered tasks and the sizes of their splits."""
    from alter.data.registry import builtin_registry
    from alter.data.task import data_root as resolve_root

    root = resolve_root(data_root)
    registry = builtin_registry()
    table = Table(title=f"tasks (data root: {root})")
    for column in ("task", "kind", "main metric", "splits"):
        table.add_column(column)
    skipped = _Collected()  # rows a reader skipped: a note under the table, once per file
    readers = logging.getLogger("alter.data.readers")
    readers.addHandler(skipped)
    readers.propagate = False
    try:
        for name in registry.names():
            task = registry.get(name)
            sizes = []
            for split, source in task.spec.splits.items():
                path = root / source.path
                sizes.append(f"{split} {len(task.read(split, root)):,}" if path.exists() else f"{split} (missing)")
            table.add_row(name, task.kind, task.main_metric, ", ".join(sizes))
    finally:
        readers.removeHandler(skipped)
        readers.propagate = True
    console.print(table)
    for note in dict.fromkeys(skipped.messages):
        console.print(f"[dim]note: {note}[/dim]")


class _Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


if __name__ == "__main__":  # python -m alter.cli
    app()
