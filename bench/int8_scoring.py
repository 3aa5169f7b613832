"""Why scoring stays float32: how far int8 scoring passes move label probabilities.

    .venv/bin/python bench/int8_scoring.py [runs/quickstart/model] [--per-task 100] [--json]

Scores the first dev examples of sst2 and rte (the model's scored tasks among them) in float32,
then with every pretrained linear layer in int8 (`Int8InferenceLinear`: one activation scale
per token), then in int8 with the input channels whose largest magnitude on training prompts
passes a threshold computed in float32 beside the int8 product (LLM.int8()'s decomposition,
with the channels chosen once per layer on calibration prompts, so that a row's result does
not depend on its batchmates). Prints, per setting, the seconds, the channels kept in float32,
and against float32: the mean and largest change of a label probability, the share of
examples whose every probability is the same to the second decimal, and how many predicted
labels agree.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import alter
from alter.data.task import data_root
from alter.models import quantized

TASKS = ("sst2", "rte")
THRESHOLDS = (None, 20.0, 6.0, 3.0)  # None: int8 throughout


def score(model, examples) -> tuple[list[dict], float]:
    started = time.perf_counter()
    predictions = model.predict(examples, batch_size=16)
    return [dict(prediction[1]) for prediction in predictions], time.perf_counter() - started


def channel_maxima(model, layers, examples) -> dict[int, torch.Tensor]:
    """Each layer's largest input magnitude per channel (in,), over float32 passes of `examples`."""
    maxima: dict[int, torch.Tensor] = {}

    def record(module, args) -> None:
        rows = args[0].detach().abs().reshape(-1, args[0].shape[-1])  # (N, in)
        maxima[id(module)] = torch.maximum(maxima.get(id(module), torch.zeros(rows.shape[1])), rows.amax(0))

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        score(model, examples)
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def int8_scores(model, layers, maxima, threshold: float | None, examples) -> tuple[list[dict], float, int]:
    """Scores with every scoring pass in int8, the channels above `threshold` in float32."""
    kept = {}
    for layer in layers:
        channels = (maxima[id(layer)] > threshold).nonzero()[:, 0] if threshold is not None else torch.zeros(0)
        if len(channels):
            kept[id(layer)] = (channels, layer.weight.detach()[:, channels].t().contiguous())  # (k,), (k, out)
    plain = quantized.Int8InferenceLinear._int8_linear

    def decomposed(self, x: torch.Tensor) -> torch.Tensor:
        if id(self) not in kept:
            return plain(self, x)
        channels, weight = kept[id(self)]
        return plain(self, x.index_fill(-1, channels, 0.0)) + x[..., channels] @ weight

    quantized.Int8InferenceLinear._int8_linear = decomposed
    try:
        with quantized.int8_prompts():  # every pass in int8, as a generation's prompt pass
            scores, seconds = score(model, examples)
    finally:
        quantized.Int8InferenceLinear._int8_linear = plain
    return scores, seconds, sum(len(channels) for channels, _ in kept.values())


def agreement(reference: list[dict], other: list[dict]) -> dict:
    changes = [max(abs(a[label] - b[label]) for label in a) for a, b in zip(reference, other)]
    same_label = sum(max(a, key=a.get) == max(b, key=b.get) for a, b in zip(reference, other))
    return {"mean_change": round(sum(changes) / len(changes), 4), "max_change": round(max(changes), 4),
            "same_to_2_decimals": sum(change < 0.005 for change in changes) / len(changes),
            "same_label": same_label, "examples": len(changes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="runs/quickstart/model")
    parser.add_argument("--per-task", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        model = alter.load(args.model, "int8")
    except FileNotFoundError as error:  # no saved model there: say so, as argparse says a bad flag
        parser.error(str(error))
    root, tasks = data_root(), {task.name: task for task in model.tasks}
    names = [name for name in TASKS if name in tasks]
    dev = {name: tasks[name].read("dev", root)[: args.per_task] for name in names}
    calibration = [example for name in names for example in tasks[name].read("train", root)[:32]]
    layers = [module for module in model.modules() if isinstance(module, quantized.Int8InferenceLinear)]
    everything = [example for name in names for example in dev[name]]
    reference, seconds = score(model, everything)
    report = {"model": args.model, "int8_layers": len(layers), "float32_seconds": round(seconds, 2), "settings": {}}
    maxima = channel_maxima(model, layers, calibration)
    for threshold in THRESHOLDS:
        scores, seconds, channels = int8_scores(model, layers, maxima, threshold, everything)
        found, start = {"seconds": round(seconds, 2), "float32_channels": channels}, 0
        for name in names:
            count = len(dev[name])
            found[name] = agreement(reference[start: start + count], scores[start: start + count])
            start += count
        report["settings"]["int8" if threshold is None else f"int8, channels above {threshold:g} in float32"] = found
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"float32: {report['float32_seconds']} s for {len(everything)} examples")
    for setting, found in report["settings"].items():
        print(f"{setting}: {found['seconds']} s, {found['float32_channels']} channels in float32; "
              + "; ".join(f"{name} mean change {found[name]['mean_change']}, max {found[name]['max_change']}, "
                          f"same label {found[name]['same_label']}/{found[name]['examples']}" for name in names))


if __name__ == "__main__":
    main()
