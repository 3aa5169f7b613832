"""What the commands print: score tables, a training run's results, an experiment's table."""

from __future__ import annotations

from rich.table import Table

from alter.cli.common import console


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
