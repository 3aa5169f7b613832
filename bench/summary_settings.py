"""How a trained model's summaries change with generation settings: how many loop on a
repeated phrase, ROUGE-L, length and time, for each candidate on the same dialogues.

    .venv/bin/python bench/summary_settings.py runs/quickstart/model --split test --n 100 \
        --candidate '{}' --candidate '{"no_repeat_ngram_size": 3}' [--json out.json]
    .venv/bin/python bench/summary_settings.py runs/quickstart/model --split dev --n 200 \
        --candidate '{"no_repeat_ngram_size": 3}' --quantize none --quantize int8

With two `--quantize` settings (`inference.quantize`), every candidate is measured under
each, and the second's ROUGE-L minus the first's is given with a 95% bootstrap interval over
the dialogues (paired: the same dialogues under both).

Choose settings on a split the model is not scored on (dialogsum's test split beside a
dev-scored model), then report the choice on the scored split: settings are never tuned on
the evaluation examples. A summary loops when some phrase of three words comes back three
times, or the last words repeat the ones before them (a loop cut off by the length limit).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter
from typing import get_args

import alter
from alter.config import Quantize
from alter.data.generation import GenerationSettings
from alter.data.task import data_root
from alter.evaluate.metrics import rouge
from alter.models.mta_model import MTAModel
from alter.training.datasets import sample

PHRASE, TIMES = 3, 3  # a phrase of PHRASE words coming back TIMES times is a loop


def loops(text: str) -> bool:
    words = text.split()
    phrases = Counter(tuple(words[i: i + PHRASE]) for i in range(len(words) - PHRASE + 1))
    if phrases and max(phrases.values()) >= TIMES:
        return True
    tail = words[-2 * PHRASE:]  # the text ends in a phrase said twice in a row
    return len(tail) == 2 * PHRASE and tail[:PHRASE] == tail[PHRASE:]


def measure(model: MTAModel, examples, settings: GenerationSettings, batch_size: int) -> dict:
    rows = model.encode(examples, with_target=False)
    complete = [model.generation_settings(row.task_id, GenerationSettings(max_new_tokens=48, num_beams=1), settings)
                for row in rows]
    started = time.perf_counter()
    texts = [text for text, _ in model.predict_encoded(rows, batch_size, settings=complete)]
    seconds = time.perf_counter() - started
    scores = rouge(texts, [example.references for example in examples])
    looping = [i for i, text in enumerate(texts) if loops(text)]
    each = [100 * rouge([text], [example.references])["rougeL"] for text, example in zip(texts, examples)]
    return {"settings": settings.model_dump(exclude_none=True), "looping": len(looping), "of": len(texts),
            "rougeL": round(100 * scores["rougeL"], 2), "rouge1": round(100 * scores["rouge1"], 2),
            "mean_words": round(statistics.mean(len(text.split()) for text in texts), 1),
            "seconds": round(seconds, 1), "examples_looping": [texts[i] for i in looping[:3]],
            "rougeL_each": [round(value, 2) for value in each]}


def paired_difference(first: list[float], second: list[float], resamples: int = 2000) -> dict:
    """Mean of second - first over the same examples, with a 95% bootstrap interval."""
    differences = [b - a for a, b in zip(first, second)]
    generator = random.Random(0)
    means = sorted(statistics.fmean(generator.choices(differences, k=len(differences))) for _ in range(resamples))
    return {"mean": round(statistics.fmean(differences), 2),
            "ci95": [round(means[int(0.025 * resamples)], 2), round(means[int(0.975 * resamples) - 1], 2)],
            "examples_changed": sum(difference != 0 for difference in differences)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--task", default="dialogsum")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="which examples of the split")
    parser.add_argument("--candidate", action="append", default=[], help="settings as JSON; repeatable")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--quantize", action="append", choices=get_args(Quantize),
                        help="inference.quantize; repeatable (two: a paired comparison); default: int8")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    model = alter.load(args.checkpoint).eval()
    task = model.tasks[model.task_id(args.task)]
    examples = sample(task.read(args.split, data_root()), args.n, args.seed, task.name)
    results, paired = [], []
    for candidate in args.candidate or ["{}"]:
        under = {}
        for quantize in args.quantize or ["int8"]:
            model.set_inference(quantize)
            result = {"quantize": quantize,
                      **measure(model, examples, GenerationSettings(**json.loads(candidate)), args.batch_size)}
            results.append(result)
            under[quantize] = result
            print(f"{json.dumps(result['settings']):50s} {quantize:>5} loops {result['looping']:3d}/{result['of']}  "
                  f"ROUGE-L {result['rougeL']:5.2f}  ROUGE-1 {result['rouge1']:5.2f}  "
                  f"words {result['mean_words']:5.1f}  {result['seconds']:6.1f} s", flush=True)
        if len(under) == 2:
            (first, a), (second, b) = under.items()
            paired.append({"settings": a["settings"], "difference": f"{second} - {first}",
                           "rougeL": paired_difference(a["rougeL_each"], b["rougeL_each"])})
            print(f"ROUGE-L {second} - {first}: {paired[-1]['rougeL']}", flush=True)
        if args.json:  # after every candidate: an interrupted run keeps what it measured
            with open(args.json, "w") as out:
                json.dump({"checkpoint": args.checkpoint, "task": args.task, "split": args.split, "n": args.n,
                           "seed": args.seed, "results": results, "paired": paired}, out, indent=1)


if __name__ == "__main__":
    main()
