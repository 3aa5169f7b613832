"""Commands that use a trained model: `eval`, `predict`, `serve`, `export`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from alter.cli.common import Quantize, QuantizeOption, app, console, friendly_errors
from alter.cli.tables import score_table


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
          label_wait_ms: Annotated[float, typer.Option(help="continuous: how long a scored item may wait while "
                                                            "summaries are written (0: scored at once)")] = 0.0,
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
        config = ServeConfig(scheduler=scheduler, label_wait_ms=label_wait_ms, max_queue=max_queue, batching=batching,
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
